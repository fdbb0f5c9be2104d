"""Run records: one JSON per run, written atomically, loaded into pandas for reports."""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = 1
_PACKAGES = ("torch", "torchvision", "transformers", "numpy", "submitit", "nvidia-ml-py", "psutil")


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON so readers see the old file or the new one, never a partial one."""
    return atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write through a temporary file beside `path`, then rename it over `path`. The file's permissions
    follow the umask (mode 0666 & ~umask, as for any new file; so a group-readable umask shares records,
    manifests and series with the project's group), and the temporary name is unique per host, process
    and call, so two writers never share one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_record(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def environment(device=None) -> dict:
    import torch

    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else None,
        "slurm": {k: v for k, v in os.environ.items() if k.startswith("SLURM_") and k in _SLURM_KEYS},
    }
    if device is not None and getattr(device, "type", None) == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2 ** 30, 1), "count": torch.cuda.device_count()}
    return env


_SLURM_KEYS = {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
               "SLURM_NTASKS", "SLURM_PROCID", "SLURM_JOB_PARTITION", "SLURM_CLUSTER_NAME", "SLURM_RESTART_COUNT"}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def iter_records(root: str | Path):
    for p in sorted(Path(root).rglob("*.json")):
        if p.name.startswith(".") or p.name in ("manifest.json",):
            continue
        try:
            rec = read_record(p)
        except (json.JSONDecodeError, OSError):
            continue
        if isinstance(rec, dict) and rec.get("schema") == SCHEMA and "config" in rec:
            yield p, rec


def single_accuracies(source: dict | str | None, cfg=None) -> dict[str, float] | None:
    """Single-modality test accuracies for IBF: a {modality: acc} map, a JSON file of one, or a directory of
    run records (single-modality runs of the same dataset and preset; mean over seeds)."""
    if source is None or isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_file():
        data = read_record(path)
        if "summary" in data:  # a run record of a single-modality run
            (m,) = data["config"]["data"]["modalities"]
            return {m: data["summary"]["test"]["acc/fused"]}
        return {k: float(v) for k, v in data.items()}
    found: dict[str, list[float]] = {}
    for _, rec in iter_records(path):
        c = rec["config"]
        mods = c["data"]["modalities"]
        if rec.get("status") != "done" or not mods or len(mods) != 1:
            continue
        if cfg is not None and (c["data"]["dataset"], c["data"]["preset"]) != (cfg.data.dataset, cfg.data.preset):
            continue
        found.setdefault(mods[0], []).append(rec["summary"]["test"]["acc/fused"])
    if not found:
        raise FileNotFoundError(f"train.single_acc: no finished single-modality records under {path}")
    return {m: sum(v) / len(v) for m, v in found.items()}
