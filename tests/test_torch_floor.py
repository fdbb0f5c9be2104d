"""The oldest torch mmhpc supports (setup.cfg's `torch>=`) is checked against that release's real
API: every `torch.*` name mmhpc uses must exist there, and calls must pass arguments its signatures
take. The API is a snapshot taken from the release's PyPI wheel by env/torch_api.py (range requests,
no full download)."""
from __future__ import annotations

import ast
import configparser
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def torch_floor() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = cfg["options"]["install_requires"]
    return re.search(r"^\s*torch>=([\d.]+)\s*$", reqs, re.M).group(1)


def load_api() -> dict:
    version = torch_floor()
    version = version if version.count(".") == 2 else version + ".0"
    path = REPO / "env" / "torch-api" / f"torch-{version}.json"
    assert path.exists(), (
        f"no API snapshot of torch {version}: run `python env/torch_api.py {version}`"
    )
    return json.loads(path.read_text())["modules"]


class Uses(ast.NodeVisitor):
    """`torch.*` chains used in a module, with the arguments of the calls made through them."""

    def __init__(self):
        self.aliases: dict[str, str] = {}
        self.found: list[
            tuple[str, int, int | None, list[str]]
        ] = []  # (chain, line, positional args, keywords)

    def visit_Import(self, node):
        for a in node.names:
            if a.name.split(".")[0] == "torch":
                self.aliases[a.asname or "torch"] = a.name if a.asname else "torch"

    def visit_ImportFrom(self, node):
        if node.module and node.module.split(".")[0] == "torch" and not node.level:
            for a in node.names:
                self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                self.found.append((f"{node.module}.{a.name}", node.lineno, None, []))

    def chain(self, node) -> str | None:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in self.aliases:
            return ".".join([self.aliases[node.id], *reversed(parts)])
        return None

    def visit_Call(self, node):
        name = self.chain(node.func)
        if name:
            star = any(isinstance(a, ast.Starred) for a in node.args) or any(
                k.arg is None for k in node.keywords
            )
            self.found.append(
                (
                    name,
                    node.lineno,
                    None if star else len(node.args),
                    [k.arg for k in node.keywords if k.arg],
                )
            )
        self.generic_visit(node)

    def visit_Attribute(self, node):
        name = self.chain(node)
        if name:
            self.found.append((name, node.lineno, None, []))
            return  # the longest chain only
        self.generic_visit(node)


def resolve(api: dict, chain: str) -> tuple[str | None, list[str] | None]:
    """(problem, parameters) of a dotted torch name against the snapshot."""
    parts = chain.split(".")
    module, i = "torch", 1
    while i < len(parts):
        if f"{module}.{parts[i]}" in api:
            module, i = f"{module}.{parts[i]}", i + 1
            continue
        names = api[module]["names"]
        if parts[i] not in names:
            return f"{module}.{parts[i]}: not in this torch", None
        value, seen = names[parts[i]], set()
        while isinstance(value, str) and value.startswith(
            "->"
        ):  # an import: follow it when it is known
            origin, _, leaf = value[2:].rpartition(".")
            if origin not in api or value in seen:
                return None, None
            seen.add(value)
            if leaf not in api[origin]["names"]:
                return f"{value[2:]}: not in this torch", None
            value = api[origin]["names"][leaf]
        return None, value if i == len(parts) - 1 else None
    return None, None


def all_uses():
    for path in sorted((REPO / "mmhpc").rglob("*.py")):
        visitor = Uses()
        visitor.visit(ast.parse(path.read_text()))
        for chain, line, nargs, keywords in visitor.found:
            yield f"{path.relative_to(REPO)}:{line}", chain, nargs, keywords


def test_every_torch_name_and_call_exists_in_the_oldest_supported_torch():
    api = load_api()
    problems = []
    for where, chain, nargs, keywords in all_uses():
        top = chain.split(".")[1] if chain.count(".") >= 2 else ""
        if top and f"torch.{top}" not in api and top not in api["torch"]["names"]:
            problems.append(
                f"{where}: {chain}: module torch.{top} is not in the snapshot; add it to "
                "env/torch_api.py MODULES and rerun the script"
            )
            continue
        problem, params = resolve(api, chain)
        if problem:
            problems.append(f"{where}: {problem}")
        elif params is not None:
            if not any(p.startswith("**") for p in params):
                problems += [
                    f"{where}: {chain}(..., {k}=...): no such parameter in this torch"
                    for k in keywords
                    if k not in params
                ]
            plain = [p for p in params if not p.startswith("*") and p != "self"]
            if (
                nargs is not None
                and not any(p.startswith("*") and not p.startswith("**") for p in params)
                and nargs > len(plain)
            ):
                problems.append(
                    f"{where}: {chain}: {nargs} positional arguments, this torch takes {len(plain)}"
                )
    problems = sorted(set(problems))
    assert not problems, f"torch {torch_floor()} (setup.cfg's floor) lacks:\n" + "\n".join(problems)


def test_the_check_catches_a_newer_only_api():
    """The snapshot is real: APIs added after the floor are missing from it, old ones are there."""
    api = load_api()
    assert (
        resolve(api, "torch.cat")[0] is None
        and resolve(api, "torch.utils.data.DataLoader")[0] is None
    )
    assert "weights_only" in resolve(api, "torch.load")[1]
    if tuple(map(int, torch_floor().split(".")[:2])) < (2, 4):
        assert resolve(api, "torch.get_autocast_dtype")[0]  # torch 2.4
        assert (
            resolve(api, "torch.is_autocast_enabled")[1] == []
        )  # 2.4 added its device_type argument
    if tuple(map(int, torch_floor().split(".")[:2])) < (2, 6):
        assert resolve(api, "torch.accelerator")[0]                # torch 2.6


@pytest.mark.parametrize(
    "snippet, flagged",
    [
        ("torch.get_autocast_dtype('cuda')", True),
        ("torch.is_autocast_enabled('cuda')", True),
        ("torch.load(p, map_location='cpu', weights_only=False)", False),
        ("torch.load(p, mmap=True)", True),  # torch 2.1 has mmap? see below
        ("torch.zeros(3)", False),
    ],
)
def test_a_snippet_is_judged_like_the_package(snippet, flagged):
    api = load_api()
    visitor = Uses()
    visitor.visit(ast.parse("import torch\n" + snippet))
    chain, _, nargs, keywords = next(f for f in visitor.found if f[0] != "torch")
    problem, params = resolve(api, chain)
    bad = bool(problem) or (
        params is not None
        and (
            any(k not in params for k in keywords)
            or (nargs or 0) > len([p for p in params if not p.startswith("*")])
        )
    )
    if snippet.startswith("torch.load(p, mmap"):
        flagged = "mmap" not in (
            params or []
        )  # mmap= came with torch 2.1: whatever the snapshot says
    if tuple(map(int, torch_floor().split(".")[:2])) >= (2, 4) and "autocast" in snippet:
        flagged = False
    assert bad == flagged, (snippet, problem, params)
