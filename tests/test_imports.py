"""The package's import graph has no cycle, and importing the config schema imports no strategy.

The graph is read from the source (every `import` statement, function-local ones included, not those
under `if TYPE_CHECKING:`): importing `a.b.c` runs `a/__init__` and `a/b/__init__` too, so an edge
also goes to each package above the imported module, except the importer's own packages (already
running when it runs).
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
                base = module.split(".")[
                    : len(module.split(".")) - node.level + (1 if is_pkg else 0)
                ]
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
    # function-local imports count: config asks the strategies' rules inside a validator
    assert "mmhpc.rules.strategies" in graph["mmhpc.config"]


def test_no_import_cycle():
    try:
        list(graphlib.TopologicalSorter(import_graph()).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import cycle: {' -> '.join(e.args[1])}") from None


def test_errors_is_the_bottom_module():
    assert import_graph()["mmhpc.errors"] == set()


def test_config_imports_no_strategy():
    code = (
        "import sys, mmhpc.config; "
        "print(','.join(m for m in sys.modules if m.startswith('mmhpc.strategies') or m == "
        "'torch'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""  # no strategy, and no torch either: the schema is cheap to import


# ---- the light commands import no heavy library
# ----------------------------------------------------------

HEAVY = ("torch", "pandas", "matplotlib", "transformers")
FAKE_SLURM = Path(__file__).parent / "fake_slurm" / "fake_slurm.py"
REPO = Path(__file__).parent.parent
# runs each command line (one per line of stdin) in this one process, printing the heavy modules
# loaded after each: the first command that loads one is named
_RUNNER = """
import sys
from mmhpc.cli import main
for line in sys.stdin.read().splitlines():
    try:
        code = main(line.split("\\t"))
    except SystemExit as e:  # --help
        code = e.code
    heavy = [m for m in HEAVY if m in sys.modules]
    shown = line.replace(chr(9), " ")
    print(f"{shown} => exit {code}, heavy: {','.join(heavy) or 'none'}", file=sys.stderr)
"""


def _light_commands(argvs: list[list[str]], env: dict[str, str], cwd: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}" + _RUNNER],
        cwd=cwd,
        env=env,
        text=True,
        input="\n".join("\t".join(a) for a in argvs),
        capture_output=True,
        timeout=300,
    )
    lines = [ln for ln in proc.stderr.splitlines() if " => exit " in ln]
    assert len(lines) == len(argvs), proc.stderr[-3000:]
    return lines


def test_light_commands_import_no_torch(tmp_path, monkeypatch):
    """`--help` of every command, `clusters`, `strategies`, `config`, `sweep expand`, `sweep
    submit`, `sweep status` and a `sweep resume` with nothing to do start without torch, pandas,
    matplotlib or transformers (each used to import torch, 3.5-7 s, for the knob list of `--help`;
    validating a run imported every strategy and the precision/parallelism rules with torch; the
    strategies' listing imported them all), against a fake scheduler on PATH: a login node whose
    architecture differs from the GPU nodes' runs these on the pure-Python part alone."""
    import os

    from mmhpc import names
    from mmhpc.launch.submit import hold_sweep

    bindir, state = tmp_path / "bin", tmp_path / "fake-slurm"
    bindir.mkdir()
    state.mkdir()
    for cmd in ("sbatch", "squeue", "sacct", "scontrol", "srun"):
        (bindir / cmd).symlink_to(FAKE_SLURM)
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_SLURM": str(state),
        "MMHPC_CLUSTERS": str(tmp_path / "none.yaml"),
        "MMHPC_SCHEDULER_TIMEOUT": "60",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        "name: s\ngrid: {train.lr: [0.1, 0.2]}\nbase: {data.source: prepared, data.root: /d}\n"
    )
    sweep_dir, _ = hold_sweep(sweep, "local", "full", results=tmp_path / "results")
    (state / "queue").write_text(
        ""
    )  # the held jobs are in no queue: resume submits them once, then has none
    argvs = [
        ["--help"],
        *(
            [cmd, "--help"]
            for cmd in (
                "train",
                "bench",
                "config",
                "doctor",
                "report",
                "demo",
                "prepare",
                "clusters",
                "sweep",
                "strategies",
            )
        ),
        ["data", "synth", "--help"],
        *(["sweep", cmd, "--help"] for cmd in ("expand", "submit", "status", "resume")),
        ["clusters"],
        ["clusters", "alvis"],
        ["strategies"],  # each strategy's parameters, from the rules the trainer's inherit
        ["sweep", "status", str(sweep_dir.path)],
        ["sweep", "resume", str(sweep_dir.path), "-q"],
        ["sweep", "resume", str(sweep_dir.path), "-q"],
        # validation: every strategy's rules, and the precision/parallelism rules against a profile
        *(
            [
                "config",
                f"strategy.name={s}",
                "data.modalities=[audio,visual]",
                "model.cosine=true",
                "model.fusion=early_sum",
            ]
            for s in names.STRATEGIES
        ),
        ["config", "system.precision=bf16", "system.parallelism=ddp"],
        ["sweep", "expand", str(REPO / "sweeps" / "parallelism.yaml"), "--cluster", "arrhenius"],
        ["sweep", "expand", str(REPO / "sweeps" / "precision.yaml"), "--cluster", "alvis"],
        ["sweep", "submit", str(sweep), "--cluster", "local", "--results", str(tmp_path / "r2")],
    ]
    lines = _light_commands(argvs, env, tmp_path)
    assert all(ln.endswith("heavy: none") for ln in lines), "\n".join(lines)
    assert all(" => exit 0," in ln for ln in lines), "\n".join(lines)
    sbatch = [ln for ln in (state / "calls").read_text().splitlines() if ln.startswith("sbatch")]
    # the first resume submitted the held array, the second had nothing to do; `sweep submit` one
    # array
    assert len(sbatch) == 2


def test_names_for_validation_are_the_registries_names():
    """Validation and `--help` take the fusion and strategy names from mmhpc.names (no torch); the
    registries themselves must hold exactly those."""
    from mmhpc import names
    from mmhpc.launch.cli_sweep import SIZES as CLI_SIZES
    from mmhpc.launch.clusters import SIZES
    from mmhpc.models.fusion import FUSION_CLASSES
    from mmhpc.strategies import STRATEGIES

    assert {n: c.symmetric for n, c in FUSION_CLASSES.items()} == names.FUSION_SYMMETRIC
    assert sorted(STRATEGIES) == sorted(names.STRATEGIES)
    assert CLI_SIZES == SIZES


def test_the_trainer_runs_the_validated_rules():
    """Validation (no torch) uses `mmhpc.rules`; the trainer's strategies, precisions and
    parallelisms inherit those classes, so their checks are the same functions, not copies."""
    from mmhpc.rules.strategies import RULES
    from mmhpc.rules.system import PARALLELISM_RULES, PrecisionRules
    from mmhpc.strategies import STRATEGIES
    from mmhpc.system.parallel import PARALLELISMS
    from mmhpc.system.precision import Precision

    assert sorted(RULES) == sorted(STRATEGIES)
    for name, cls in STRATEGIES.items():
        assert issubclass(cls, RULES[name]), name
        assert cls.check_config.__func__ is RULES[name].check_config.__func__, name
        assert cls.Params is RULES[name].Params and cls.fusions == RULES[name].fusions, name
    assert sorted(PARALLELISM_RULES) == sorted(PARALLELISMS)
    for name, cls in PARALLELISMS.items():
        assert issubclass(cls, PARALLELISM_RULES[name]), name
        for rule in ("devices_needed", "tasks_per_node", "problem"):
            assert getattr(cls, rule).__func__ is getattr(PARALLELISM_RULES[name], rule).__func__, (
                name,
                rule,
            )
    assert issubclass(Precision, PrecisionRules) and Precision.problem is PrecisionRules.problem
