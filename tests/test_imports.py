"""The package's import graph has no cycle, and importing the config schema imports no strategy.

The graph is read from the source (every `import` statement, function-local ones included, not those under
`if TYPE_CHECKING:`): importing `a.b.c` runs `a/__init__` and `a/b/__init__` too, so an edge also goes to
each package above the imported module, except the importer's own packages (already running when it runs).
"""
from __future__ import annotations

import ast
import functools
import graphlib
import subprocess
import sys
from pathlib import Path

import mmhpc

ROOT = Path(mmhpc.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ("mmhpc",) + path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    names: set[str] = set()
    is_pkg = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    deps = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it runs
            prefix = ".".join(parts[:i])
            if prefix in known and not (module == prefix or module.startswith(prefix + ".")):
                deps.add(prefix)
    return deps


@functools.cache
def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_graph_is_read_from_the_package():
    graph = import_graph()
    assert "mmhpc.train" in graph and "mmhpc.config" in graph["mmhpc.train"]
    assert "mmhpc.strategies.base" in graph["mmhpc.strategies"]
    # function-local imports count: config asks the strategy registry inside a validator
    assert "mmhpc.strategies" in graph["mmhpc.config"]


def test_no_import_cycle():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_errors_is_the_bottom_module():
    assert import_graph()["mmhpc.errors"] == set()


def test_config_imports_no_strategy():
    code = ("import sys, mmhpc.config; "
            "print(','.join(m for m in sys.modules if m.startswith('mmhpc.strategies') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""  # no strategy, and no torch either: the schema is cheap to import
