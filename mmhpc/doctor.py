"""`mmhpc doctor`: is this machine (a login node, or the node a job landed on) able to run mmhpc?

Checks, in order: Python; torch and the CUDA it was built for; the NVIDIA driver (NVML) and whether it
is new enough for that build; GPUs visible to torch against those SLURM allocated (and against the
cluster's: a GPU cluster needs a GPU); compute capability against the requested precision; the dataset
and its manifest; a writable results directory. Each check gives one sentence.

Every sweep job runs `check_job` first (mmhpc.launch.submit.execute_run): a mismatch ends the job at
once with the first failing sentence (e.g. "torch built for CUDA 13.0 needs NVIDIA driver >= 580.65.06,
this node has 575.51.03") instead of training on the CPU or failing an hour later.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from mmhpc.errors import RunError

# The oldest driver of each CUDA major version (CUDA minor-version compatibility: a build for 12.x runs
# on any 12.x driver from the first one on). From NVIDIA's CUDA Toolkit release notes, table 3.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def driver_problem(torch_cuda: str | None, driver: str | None, driver_cuda: int | None = None) -> str | None:
    """Why a torch built for CUDA `torch_cuda` cannot use this driver (`driver_cuda` as NVML reports it,
    e.g. 12090 for 12.9), or None."""
    if not torch_cuda or not driver:
        return None
    major = _ver(torch_cuda)[0]
    need = MIN_DRIVER.get(major)
    if driver_cuda is not None and driver_cuda // 1000 >= major:
        return None
    if need and _ver(driver) >= _ver(need):
        return None
    supports = f" (it supports CUDA {driver_cuda // 1000}.{driver_cuda % 1000 // 10})" if driver_cuda else ""
    return (f"torch built for CUDA {torch_cuda} needs NVIDIA driver >= {need or 'a newer one'}, this node has "
            f"{driver}{supports}; use the site's PyTorch (module or image, see env/) or a torch built for an "
            "older CUDA")


def slurm_gpus(env=os.environ) -> int:
    """GPUs SLURM allocated to this job on this node (0 outside a GPU job)."""
    count = env.get("SLURM_GPUS_ON_NODE")
    if count and count.isdigit():
        return int(count)
    per_node = env.get("SLURM_GPUS_PER_NODE", "")  # "A100:4" or "4"
    tail = per_node.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def nvml_driver() -> tuple[str | None, int | None, str]:
    """(driver version, the CUDA version the driver supports, note)."""
    try:
        import pynvml as nv

        nv.nvmlInit()
    except Exception as e:  # no driver here: an ordinary CPU machine or login node
        return None, None, f"no NVIDIA driver (NVML: {e})"
    try:
        driver = nv.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        return driver, int(nv.nvmlSystemGetCudaDriverVersion()), ""
    finally:
        nv.nvmlShutdown()


def run_checks(cfg=None, profile=None, results: str | Path | None = None, env=os.environ) -> list[Check]:
    """Every check for a run config (default: the default config) on a cluster profile (optional)."""
    import torch

    from mmhpc.config import load_config
    from mmhpc.system.precision import Precision

    cfg = cfg or load_config(None, [])
    checks = [Check("python", sys.version_info >= (3, 10), f"Python {platform.python_version()} ({sys.executable})")]
    cuda = torch.version.cuda
    checks.append(Check("torch", True, f"torch {torch.__version__}, "
                        + (f"built for CUDA {cuda}" if cuda else "a CPU-only build")))
    driver, driver_cuda, note = nvml_driver()
    bad_driver = driver_problem(cuda, driver, driver_cuda)
    checks.append(Check("driver", bad_driver is None, bad_driver or (
        f"NVIDIA driver {driver} (supports CUDA {driver_cuda // 1000}.{driver_cuda % 1000 // 10})" if driver
        else note)))
    visible = torch.cuda.device_count() if cuda else 0
    allocated = slurm_gpus(env)
    wants_gpu = bool(profile is not None and profile.is_gpu) or allocated > 0 or cfg.system.device == "cuda"
    if allocated and visible != allocated:
        gpus = Check("gpus", False, f"SLURM allocated {allocated} GPU(s) on this node, torch sees {visible}"
                     + (f" ({note})" if not driver else ""))
    elif wants_gpu and not visible:
        where = (f"cluster {profile.name} runs on GPUs ({', '.join(profile.gpus)})" if profile is not None
                 and profile.is_gpu else f"system.device={cfg.system.device} needs a GPU")
        why = "torch is a CPU-only build" if not cuda else note or "CUDA is not usable"
        gpus = Check("gpus", False, f"{where}, and torch sees no GPU on this machine ({why}); run on a GPU "
                     "node (sbatch/srun --gpus-per-node=TYPE:N)")
    else:
        names = [torch.cuda.get_device_name(i) for i in range(visible)]
        gpus = Check("gpus", True, f"{visible} GPU(s): {', '.join(names)}" if visible else "no GPU (CPU runs)")
    checks.append(gpus)
    if visible:
        caps = {torch.cuda.get_device_capability(i) for i in range(visible)}
        bad = [p for c in sorted(caps) if (p := Precision(cfg.system.precision, "cuda").problem(
            c, torch.cuda.get_device_name(0)))]
        checks.append(Check("precision", not bad, bad[0] if bad else f"{cfg.system.precision} on compute capability "
                            + ", ".join(f"{a}.{b}" for a, b in sorted(caps))))
    checks.append(_data_check(cfg))
    checks.append(_results_check(results or cfg.output.runs_dir))
    return checks


def _data_check(cfg) -> Check:
    if cfg.data.source != "prepared":
        return Check("data", True, f"{cfg.data.dataset}: synthetic, generated on first use")
    from mmhpc.data.manifest import ManifestError, read_manifest

    root = Path(cfg.data.root)
    if not root.is_dir():
        return Check("data", False, f"data.root: {root} is not a directory; valid: a prepared dataset "
                                    "(mmhpc prepare)")
    try:
        manifest = read_manifest(root)
    except (ManifestError, ValueError) as e:
        return Check("data", False, f"data.root: {e}")
    return Check("data", True, f"{root}: manifest with {len(manifest.get('files', {}))} files")


def _results_check(path: str | Path) -> Check:
    """Writable, or creatable: the nearest existing ancestor is a writable directory (nothing is created)."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return Check("results", True, f"{path} " + ("is writable" if probe == path else f"can be made (in {probe})"))
    why = "is not a directory" if probe.exists() and not probe.is_dir() else "is not writable"
    return Check("results", False, f"results directory {path}: {probe} {why}")


def check_job(cfg, env=os.environ) -> None:
    """The first thing a sweep job does: raise RunError with the first failing check's sentence."""
    failed = [c for c in run_checks(cfg, env=env) if not c.ok]
    if failed:
        raise RunError(f"mmhpc doctor: {failed[0].detail}")


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    return "\n".join(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in checks)
