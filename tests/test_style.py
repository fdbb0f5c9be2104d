"""The maintainer's limits (issue 21): no function of the package over 60 lines, no line of Python
over 100 characters (ruff's E501 lets a line ending in a URL or a long string pass; this does not),
and sources named by title, never by a seed file or a machine path."""
from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = [p for d in ("mmhpc", "tests", "env", "benchmarks") for p in (REPO / d).rglob("*.py")]


def test_no_function_of_the_package_is_over_60_lines():
    long = [
        f"{p.relative_to(REPO)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in (REPO / "mmhpc").rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno >= 60
    ]
    assert not long, long


def test_no_line_is_over_100_characters():
    assert PYTHON
    long = [
        f"{p.relative_to(REPO)}:{i}"
        for p in PYTHON
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if len(line) > 100
    ]
    assert not long, long


def test_sources_are_named_by_title_not_by_seed_file_or_machine_path():
    cited = re.compile(r"\bseeds?/|\bseed 0\d\d\b|/work/|/home/\w+/")
    found = [
        f"{p.relative_to(REPO)}:{i}"
        for p in (REPO / "mmhpc").rglob("*.py")
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if cited.search(line)
    ]
    assert not found, found
