"""Snapshot the public API of an old torch release from its PyPI wheel, without downloading the
wheel.

    python env/torch_api.py 2.1.0          # writes env/torch-api/torch-2.1.0.json

A wheel is a zip: its central directory sits at the end, and each member is compressed on its own.
With HTTP range requests this reads the directory and the few Python sources and type stubs of the
modules mmhpc uses (a few MB of the ~700 MB wheel), and records for each module its public names
and, for functions, their parameters. tests/test_torch_floor.py checks every `torch.*` use in mmhpc
against the snapshot of the oldest torch mmhpc supports (setup.cfg), offline.
"""
from __future__ import annotations

import ast
import io
import json
import re
import sys
import urllib.request
import zipfile
from pathlib import Path

# the torch modules whose names mmhpc may use; a use of another module fails the floor test until
# added here
MODULES = (
    "torch",
    "torch.cuda",
    "torch.nn",
    "torch.nn.functional",
    "torch.nn.parallel",
    "torch.distributed",
    "torch.utils.data",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "torch.profiler",
    "torch.backends.cuda",
    "torch.backends.cudnn",
    "torch.random",
    "torch.version",
    "torch.amp",
    "torch.autograd",
    "torch.serialization",
    "torch.multiprocessing",
)
# torch's top level also re-exports the C extension's functions (torch.cat, torch.zeros, ...) from
# these stubs
EXTRA_STUBS = {"torch": ("torch/_C/__init__.pyi", "torch/_C/_VariableFunctions.pyi")}
OUT = Path(__file__).with_name("torch-api")


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over HTTP range requests (what zipfile needs)."""

    def __init__(self, url: str):
        self.url, self.pos = url, 0
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as r:
            self.size = int(r.headers["Content-Length"])

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: offset, 1: self.pos + offset, 2: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        req = urllib.request.Request(self.url, headers={"Range": f"bytes={self.pos}-{end - 1}"})
        with urllib.request.urlopen(req, timeout=120) as r:
            data = r.read()
        self.pos += len(data)
        return data


def wheel_url(version: str, tag: str = "cp311-cp311-manylinux") -> str:
    with urllib.request.urlopen("https://pypi.org/simple/torch/", timeout=60) as r:
        index = r.read().decode()
    for href in re.findall(r'href="([^"]+)"', index):
        name = href.split("#")[0].rsplit("/", 1)[-1]
        if name.startswith(f"torch-{version}-{tag}") and "x86_64" in name:
            return href.split("#")[0]
    raise SystemExit(f"no torch {version} {tag} x86_64 wheel on PyPI")


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    names += [f"**{a.kwarg.arg}"] if a.kwarg else []
    return names


class Wheel:
    def __init__(self, version: str):
        self.zf = zipfile.ZipFile(RangeFile(wheel_url(version)))
        self.members = set(self.zf.namelist())
        self.cache: dict[str, dict] = {}

    def files(self, module: str) -> list[str]:
        base = module.replace(".", "/")
        return [
            f
            for f in (f"{base}/__init__.py", f"{base}/__init__.pyi", f"{base}.py", f"{base}.pyi")
            if f in self.members
        ] + [f for f in EXTRA_STUBS.get(module, ()) if f in self.members]

    def names(self, module: str, depth: int = 0) -> dict[str, list[str] | str | None]:
        """A module's top-level names: a function's parameters (list), an import's origin
        ('->a.b.c'), or None (class, variable, submodule). `from x import *` of a torch module
        brings x's public names."""
        if module in self.cache:
            return self.cache[module]
        out: dict[str, list[str] | str | None] = {}
        for f in self.files(module):
            package = (
                module if f.endswith(("__init__.py", "__init__.pyi")) else module.rsplit(".", 1)[0]
            )
            self._walk(ast.parse(self.zf.read(f).decode()).body, package, out, depth)
        base = module.replace(".", "/") + "/"
        for (
            m
        ) in self.members:  # submodules are attributes too (torch.cuda, torch.nn.functional ...)
            if m.startswith(base):
                head = m[len(base):].split("/")[0].removesuffix(".py")
                if (
                    head.isidentifier()
                    and not head.startswith("_")
                    and (m.endswith(".py") or m.count("/") > base.count("/"))
                ):
                    out.setdefault(head, None)
        self.cache[module] = out
        return out

    def _walk(self, body: list, package: str, out: dict, depth: int) -> None:
        for node in body:
            if isinstance(node, (ast.If, ast.Try)):  # `if is_available():`, try/except imports
                self._walk(
                    node.body
                    + node.orelse
                    + [s for h in getattr(node, "handlers", []) for s in h.body],
                    package,
                    out,
                    depth,
                )
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                params, prev = _params(node), out.get(node.name)
                out[node.name] = (
                    params
                    if not isinstance(prev, list)
                    else prev + [p for p in params if p not in prev]
                )
            elif isinstance(node, ast.ClassDef):
                out.setdefault(node.name, None)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    for n in ast.walk(t):
                        if isinstance(n, ast.Name):
                            out.setdefault(n.id, None)
            elif isinstance(node, ast.Import):
                for a in node.names:
                    out.setdefault(a.asname or a.name.split(".")[0], None)
            elif isinstance(node, ast.ImportFrom):
                src = node.module or ""
                if node.level:
                    parts = package.split(".")
                    src = ".".join(parts[:len(parts) - node.level + 1] + ([src] if src else []))
                for a in node.names:
                    if a.name == "*":
                        if src.startswith("torch") and depth < 4:
                            for k, v in self.names(src, depth + 1).items():
                                if not k.startswith("_"):
                                    out.setdefault(k, v)
                    elif src.startswith("torch"):
                        out.setdefault(a.asname or a.name, f"->{src}.{a.name}")
                    else:
                        out.setdefault(a.asname or a.name, None)


def snapshot(version: str) -> dict:
    wheel = Wheel(version)
    api = {
        m: {"files": wheel.files(m), "names": dict(sorted(wheel.names(m).items()))} for m in MODULES
    }
    return {"torch": version, "modules": api}


def main(argv: list[str]) -> int:
    version = argv[1] if len(argv) > 1 else "2.1.0"
    OUT.mkdir(exist_ok=True)
    path = OUT / f"torch-{version}.json"
    path.write_text(json.dumps(snapshot(version), indent=1, sort_keys=True) + "\n")
    print(
        f"{path}: {sum(len(m['names']) for m in json.loads(path.read_text())['modules'].values())} "
        "names"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
