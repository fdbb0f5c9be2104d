"""Manifests of prepared datasets: counts, shapes and the size and sha256 of every file."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from mmhpc.atomic import atomic_write_text
from mmhpc.data.specs import SPLITS
from mmhpc.errors import RunError

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(RunError):
    """A prepared dataset does not match its manifest (missing, truncated or altered files), or has
    none."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _data_files(root: Path):
    for dirpath, _, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if rel != MANIFEST and not name.startswith("."):
                yield rel, p


def write_manifest(root: Path, spec, shapes, source: dict) -> dict:
    files = {
        rel: {"size": p.stat().st_size, "sha256": sha256(p)} for rel, p in sorted(_data_files(root))
    }
    counts = {s: len((root / "splits" / f"{s}.txt").read_text().split()) for s in SPLITS}
    manifest = {
        "format": FORMAT,
        "dataset": spec.name,
        "modalities": list(spec.modalities),
        "classes": list(spec.classes),
        "shapes": asdict(shapes),
        "counts": counts,
        "source": source,
        "files": files,
    }
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise ManifestError(
            f"{root}: no {MANIFEST}; prepare the dataset first (mmhpc prepare / mmhpc data synth)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ManifestError(f"{path}: unreadable ({e}); prepare the dataset again") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if fmt != FORMAT:
        raise ManifestError(f"{path}: format {fmt!r}, this mmhpc reads format {FORMAT}")
    return manifest


def verify(root: Path, level: str = "size", modalities=None) -> list[str]:
    """Check files against the manifest; return the problems found (empty list: all good).

    level "size" is a stat per file (catches missing and truncated files cheaply), "checksum" reads
    all.
    """
    root = Path(root)
    manifest = read_manifest(root)
    if level == "none":
        return []
    problems = []
    wanted = set(modalities or manifest["modalities"])
    for rel, meta in manifest["files"].items():
        top = rel.split("/", 1)[0]
        if top in ("audio", "visual", "text") and top not in wanted:
            continue
        p = root / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        if size != meta["size"]:
            problems.append(
                f"{rel}: size {size} != {meta['size']} in the manifest (truncated or altered)"
            )
        elif level == "checksum" and sha256(p) != meta["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    return problems


def check(root: Path, level: str = "size", modalities=None) -> dict:
    problems = verify(root, level, modalities)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ManifestError(
            f"{root}: {len(problems)} file(s) do not match the manifest:\n  {shown}{more}"
        )
    return read_manifest(root)
