"""`mmhpc doctor`: is this machine (a login node, or the node a job landed on) able to run mmhpc?

Checks, in order: Python; the architecture of this node and of the jobs' interpreter or image (read
from its ELF or SIF header; another architecture is refused, `mmhpc doctor` exits 2); torch and the
CUDA (or ROCm: AMD GPUs, answered through torch.cuda) it was built for; the NVIDIA driver (NVML) and
whether it is new enough for that build; GPUs visible to torch against those SLURM allocated (and
against the cluster's: a GPU cluster needs a GPU); compute capability against the requested
precision; the dataset and its manifest; a writable results directory. Each check gives one
sentence.

Every sweep job runs `check_job` first (mmhpc.launch.submit.execute_run): a mismatch ends the job at
once with the first failing sentence (e.g. "torch built for CUDA 13.0 needs NVIDIA driver >=
580.65.06, this node has 575.51.03") instead of training on the CPU or failing an hour later.
"""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from mmhpc.errors import RunError, problem

# The oldest driver of each CUDA major version (CUDA minor-version compatibility: a build for 12.x
# runs on any 12.x driver from the first one on). From NVIDIA's CUDA Toolkit release notes, table 3.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def _ver(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def driver_problem(
    torch_cuda: str | None, driver: str | None, driver_cuda: int | None = None
) -> str | None:
    """Why a torch built for CUDA `torch_cuda` cannot use this driver (`driver_cuda` as NVML reports
    it, e.g. 12090 for 12.9), or None."""
    if not torch_cuda or not driver:
        return None
    major = _ver(torch_cuda)[0]
    need = MIN_DRIVER.get(major)
    if driver_cuda is not None and driver_cuda // 1000 >= major:
        return None
    if need and _ver(driver) >= _ver(need):
        return None
    supports = (
        f" (it supports CUDA {driver_cuda // 1000}.{driver_cuda % 1000 // 10})"
        if driver_cuda
        else ""
    )
    return (
        f"torch built for CUDA {torch_cuda} needs NVIDIA driver >= {need or 'a newer one'}, this "
        "node has "
        f"{driver}{supports}; use the site's PyTorch (module or image, see env/) or a torch "
        "built for an "
        "older CUDA"
    )


def slurm_gpus(env=os.environ) -> int:
    """GPUs SLURM allocated to this job on this node (0 outside a GPU job)."""
    count = env.get("SLURM_GPUS_ON_NODE")
    if count and count.isdigit():
        return int(count)
    per_node = env.get("SLURM_GPUS_PER_NODE", "")  # "A100:4" or "4"
    tail = per_node.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def slurm_gpus_per_task(env=os.environ) -> int:
    """GPUs SLURM binds to each task (`--gpus-per-task`, "1" or "A100:1"); 0 without such a
    binding."""
    tail = env.get("SLURM_GPUS_PER_TASK", "").rsplit(":", 1)[-1]
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


def run_checks(
    cfg=None, profile=None, results: str | Path | None = None, env=os.environ
) -> list[Check]:
    """Every check for a run config (default: the default config) on a cluster profile
    (optional)."""
    import torch

    from mmhpc.config import load_config

    cfg = cfg or load_config(None, [])
    checks = [
        Check(
            "python",
            sys.version_info >= (3, 10),
            f"Python {platform.python_version()} ({sys.executable})",
        )
    ]
    checks.append(arch_check(profile, env))
    cuda, hip = torch.version.cuda, getattr(torch.version, "hip", None)
    checks.append(Check("torch", True, f"torch {torch.__version__}, " + (
        f"built for CUDA {cuda}" if cuda else f"built for ROCm (HIP {hip}): AMD GPUs" if hip
        else "a CPU-only build")))
    driver, driver_cuda, note = nvml_driver()
    checks.append(_driver_check(cuda, hip, driver, driver_cuda, note))
    visible = (
        torch.cuda.device_count() if cuda or hip else 0
    )  # ROCm builds answer through torch.cuda
    checks.append(_gpus_check(cfg, profile, env, visible, bool(cuda or hip), driver, note))
    if visible:
        checks.append(_precision_check(cfg, visible, bool(hip)))
    checks.append(_data_check(cfg))
    return checks + _results_checks(cfg, profile, results)


def _driver_check(cuda, hip, driver, driver_cuda, note: str) -> Check:
    bad_driver = driver_problem(cuda, driver, driver_cuda)
    return Check(
        "driver",
        bad_driver is None,
        bad_driver
        or (
            f"NVIDIA driver {driver} (supports CUDA "
            f"{driver_cuda // 1000}.{driver_cuda % 1000 // 10})"
            if driver
            else f"ROCm build: the NVIDIA driver check does not apply ({note})"
            if hip
            else note
        ),
    )


def _gpus_check(cfg, profile, env, visible: int, gpu_build: bool, driver, note: str) -> Check:
    """The GPUs torch sees against those SLURM allocated and those the run or cluster needs
    (`driver`, `note`: NVML's answer)."""
    import torch

    allocated, per_task = slurm_gpus(env), slurm_gpus_per_task(env)
    wants_gpu = (
        bool(profile is not None and profile.is_gpu) or allocated > 0 or cfg.system.device == "cuda"
    )
    if (
        allocated and visible != allocated and not (per_task and visible == per_task)
    ):  # --gpus-per-task:
        # the task sees its own GPUs, not the node's
        return Check("gpus", False, f"SLURM allocated {allocated} GPU(s) on this node"
                     + (f" ({per_task} per task)" if per_task else "") + f", torch sees {visible}"
                     + (f" ({note})" if not driver else ""))
    if wants_gpu and not visible:
        where = (
            f"cluster {profile.name} runs on GPUs ({', '.join(profile.gpus)})"
            if profile is not None and profile.is_gpu
            else f"system.device={cfg.system.device} needs a GPU"
        )
        why = "torch is a CPU-only build" if not gpu_build else note or "CUDA is not usable"
        return Check(
            "gpus",
            False,
            f"{where}, and torch sees no GPU on this machine ({why}); run on a GPU "
            "node (sbatch/srun --gpus-per-node=TYPE:N)",
        )
    names = [torch.cuda.get_device_name(i) for i in range(visible)]
    return Check(
        "gpus",
        True,
        f"{visible} GPU(s): {', '.join(names)}" if visible else "no GPU (CPU runs)",
    )


def _precision_check(cfg, visible: int, hip: bool) -> Check:
    """system.precision on the GPUs torch sees."""
    import torch

    from mmhpc.system.precision import Precision

    if hip:  # AMD: BF16 on CDNA2+ (MI200/MI300)
        gpu = torch.cuda.get_device_name(0)
        bad = Precision(cfg.system.precision, "cuda").rocm_problem(gpu)
        return Check("precision", not bad, bad or f"{cfg.system.precision} on {gpu} (ROCm)")
    caps = {torch.cuda.get_device_capability(i) for i in range(visible)}
    bad = [p for c in sorted(caps) if (p := Precision(cfg.system.precision, "cuda").problem(
        c, torch.cuda.get_device_name(0)))]
    return Check(
        "precision",
        not bad,
        bad[0]
        if bad
        else f"{cfg.system.precision} on compute capability "
        + ", ".join(f"{a}.{b}" for a, b in sorted(caps)),
    )


def _results_checks(cfg, profile, results) -> list[Check]:
    """A writable results directory: the one given, the profile's, or output.runs_dir."""
    if results is None and profile is not None and profile.results_root:
        if profile.uses_placeholder_path():  # never "ok" for a directory no project owns
            return [Check("results", False, f"cluster {profile.name}: the results path "
                          f"{profile.results_dir()} is built from the placeholder account; "
                          "set "
                          "MMHPC_ACCOUNT (or MMHPC_PROJECT, the storage project) or "
                          "MMHPC_RESULTS")]
        results = profile.results_dir()
    return [_results_check(results or cfg.output.runs_dir)]


# ---- architecture: the node's, and the one the jobs' interpreter or image was built for
# ----------------

ELF_MACHINES = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 21: "ppc64le", 243: "riscv64"}
SIF_ARCHES = {b"01": "i386", b"02": "x86_64", b"03": "arm", b"04": "aarch64", b"06": "ppc64le"}


def node_arch() -> str:
    """This machine's architecture as SLURM and Linux name it (x86_64, aarch64)."""
    machine = platform.machine()
    return {"AMD64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def binary_arch(path: str | Path) -> str | None:
    """The architecture an ELF executable or a SIF image (Apptainer) was built for, from its header;
    None when the file is neither (or unreadable)."""
    try:
        with open(Path(path).resolve(), "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    if head[:4] == b"\x7fELF" and len(head) >= 20:
        return ELF_MACHINES.get(
            int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"), "unknown"
        )
    if (
        head[32:41] == b"SIF_MAGIC"
    ):  # SIF global header: launch line (32), magic (10), version (3), arch (3)
        return SIF_ARCHES.get(head[45:47])
    return None


def jobs_interpreter(profile) -> tuple[str, str]:
    """(what, file) the jobs of `profile` execute: its image, its python, its venv's python, or this
    one."""
    import shlex
    import shutil

    if profile is not None and profile.apptainer:
        return "image", profile.apptainer
    if profile is not None and profile.python:
        first = shlex.split(profile.python)[0]
        return "interpreter", shutil.which(first) or first
    if profile is not None and profile.venv:
        return "interpreter", f"{profile.venv.rstrip('/')}/bin/python"
    return "interpreter", sys.executable


def arch_check(profile=None, env=os.environ) -> Check:
    """The node's architecture, and a refusal when the jobs' interpreter or image was built for
    another (an x86 venv on an aarch64 GH200 node cannot even start)."""
    here = node_arch()
    in_job = "SLURM_JOB_ID" in env
    target = profile.arch if profile is not None and profile.scheduler == "slurm" else here
    if in_job and target != here:
        return Check(
            "arch",
            False,
            f"this node is {here}, cluster {profile.name}'s nodes are {target}: "
            "a profile for another cluster?",
        )
    what, path = jobs_interpreter(profile)
    built = binary_arch(path)
    where = f"nodes of {profile.name} are" if target != here else "this node is"
    if built and built != "unknown" and built != target:
        fix = (
            "build the image for it (env/apptainer/mmhpc.def, on a node of that architecture)"
            if what == "image"
            else "build the venv on a compute node (make install-cluster CLUSTER="
            f"{profile.name if profile is not None else '...'})"
        )
        return Check(
            "arch", False, f"the jobs' {what} {path} is built for {built}, {where} {target}; " + fix
        )
    login = (
        f"; cluster {profile.name}'s nodes: {target} (this machine only submits)"
        if target != here
        else ""
    )
    return Check("arch", True, f"{here}{login}; jobs run {path}" + (f" ({built})" if built else ""))


def _data_check(cfg) -> Check:
    if cfg.data.source != "prepared":
        return Check("data", True, f"{cfg.data.dataset}: synthetic, generated on first use")
    from mmhpc.data.manifest import ManifestError, read_manifest

    root = Path(cfg.data.root)
    if not root.is_dir():
        return Check(
            "data",
            False,
            problem("data.root", f"{root} is not a directory",
                    ["a prepared dataset (mmhpc prepare)"]),
        )
    try:
        manifest = read_manifest(root)
    except (ManifestError, ValueError) as e:
        return Check("data", False, f"data.root: {e}")
    return Check("data", True, f"{root}: manifest with {len(manifest.get('files', {}))} files")


def _results_check(path: str | Path) -> Check:
    """Writable, or creatable: the nearest existing ancestor is a writable directory (nothing is
    created)."""
    path = Path(path).expanduser().absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK):
        return Check(
            "results",
            True,
            f"{path} " + ("is writable" if probe == path else f"can be made (in {probe})"),
        )
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
