"""`mmhpc gpu-check` (`make gpu-check`): one command that checks a GPU node and records what it
measured.

Each check prints PASS, FAIL or SKIP (with the reason) and writes its record to `<out>/<check>.json`
(default `reports/results/<gpu>/`, e.g. `reports/results/h100/`; on a machine without a GPU
`reports/out/gpu-check-cpu/`, so CPU runs never mix with committed GPU records):

    env          driver, CUDA build, cuDNN, compute capability, versions of what is installed
    precision    precision flags, large-matmul TFLOP/s and ResNet-18 forward+backward images/s
                 (64x3x224x224) at fp32_strict, fp32 (the thesis' baseline), tf32 and bf16
    syncs        host synchronisations in training steps (torch.cuda.set_sync_debug_mode) of every
                 strategy and of a text run: zero
    blp          Branch-Level Parallelism on one GPU: branch kernels on their own streams (profiler
                 trace), the same gradients as a single-device model
    trainer      short runs through the trainer: 1-rank DDP (NCCL), BLP at bf16 with the
                 pre-initialised loader; DataParallel and BLP over two GPUs where two exist
    sampler      the NVML sampler under load: utilisation, power, energy, cost per sample
    ddp          DistributedDataParallel with NCCL in one process
    bench        `mmhpc bench` per encoder (visual, text) at fp32/tf32/bf16 (those the GPU runs: no
                 tf32/bf16 before Ampere) on full synthetic MVSA
    loader       standard (persistent workers, as sweeps/loader.yaml) vs pre-initialised loader
                 (thesis Alg. 6) with GPU utilisation
    report       `mmhpc report` of the records above

It needs only torch (plus torchvision, transformers and nvidia-ml-py for some checks): run from the
repository with `PYTHONPATH=. python3 -m mmhpc.gpucheck`. pydantic and PyYAML are needed by the
checks that build the trainer (syncs, blp, trainer, bench, loader), psutil and pandas by the
sampler, pandas and matplotlib by the report; on a node without network, wheels fetched elsewhere by
`make gpu-wheels` into `.whl/` supply them (`use_wheels`). Each check runs in its own process with
its own time limit (a hung NCCL, gloo or loader worker fails that check, the others still run). On a
machine without a GPU it runs what it can and exits 0, listing what needs a GPU; on a GPU node a
check that cannot run (a package missing, the time budget spent) FAILs. Exit 1 when a check fails.
The whole run is sized for under 8 minutes on one H100.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

from mmhpc.atomic import atomic_write_text
from mmhpc.names import THESIS_PRECISIONS

NEEDS_GPU = "needs a CUDA GPU"
PRECISIONS = THESIS_PRECISIONS  # the thesis' settings (mmhpc.names, the registry of system choices)
# the precision check's sizes and timed steps; the sampler check's matmul size and seconds of load
MATMUL_N, RESNET_BATCH, RESNET_SIZE, TIMED = 8192, 64, 224, 20
SAMPLER_N, SAMPLER_LOAD_S = 8192, 4.0


class Skip(Exception):
    """A check that cannot run here (no GPU, a package missing, the time budget spent). `hardware`:
    for want of a GPU (or of a second one), the only reason that is not a FAIL on a GPU node."""

    def __init__(self, reason: str, hardware: bool = False):
        super().__init__(reason)
        self.hardware = hardware


class Check:
    def __init__(self, out: Path, budget_s: float, workers: int):
        self.out = out
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", 0) if self.cuda else torch.device("cpu")
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.workers = workers
        self.scratch = Path(tempfile.mkdtemp(prefix="mmhpc-gpu-check-"))  # runs kept no record
        self.not_here: list[str] = []  # parts of passing checks that need more GPUs than here
        self.preset = "full"  # the bench and loader checks' data (the CPU tier: tiny)

    def need_gpu(self):
        if not self.cuda:
            raise Skip(NEEDS_GPU, hardware=True)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)


def _need(*modules: str) -> None:
    missing = [m for m in modules if not _importable(m)]
    if missing:
        hint = (
            "; make gpu-wheels fetches them for a node without network"
            if set(missing) & set(WHEEL_MODULES)
            else ""
        )
        raise Skip(f"needs {', '.join(missing)} (not installed{hint})")


def _need_trainer() -> None:
    """The trainer, configs and records validate with pydantic (and read YAML)."""
    _need("pydantic", "yaml")


# what the trainer's checks import beyond torch, torchvision, transformers and nvidia-ml-py (their
# wheels: the Makefile's GPU_WHEELS)
WHEEL_MODULES = ("pydantic", "yaml", "psutil", "tqdm", "pandas")


# distributions the node keeps even when the wheel set brings them: numpy (torch was built against
# the node's)
KEEP = ("numpy",)
# the distribution of each of WHEEL_MODULES (what pip installs)
DISTRIBUTIONS = {
    "pydantic": "pydantic",
    "yaml": "PyYAML",
    "psutil": "psutil",
    "tqdm": "tqdm",
    "pandas": "pandas",
}


def missing_modules(modules=None, env=None) -> list[str]:
    """Those of `modules` (default WHEEL_MODULES) that a fresh process of this Python cannot import
    (with `env`): where the checks run. An import can fail for more than absence: pydantic fails on
    an older typing_extensions than it needs, which this process may already hold."""
    modules = list(modules or WHEEL_MODULES)
    probe = (
        "import importlib, sys\nfor m in sys.argv[1:]:\n    try:\n        "
        "importlib.import_module(m)\n"
        "    except Exception:\n        print(m)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", probe, *modules],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return [m for m in res.stdout.split() if m in modules]


def use_wheels(wheels: Path) -> tuple[list[str], Path | None]:
    """Where this Python cannot import one of WHEEL_MODULES and `wheels` holds wheels (`make
    gpu-wheels`, for a node without network): pip-install the missing ones with their dependencies,
    resolved in the wheel set alone, into a temporary directory put first on sys.path and PYTHONPATH
    (the checks' processes, and loader workers, see it). Inside it the set shadows what the node has
    (pydantic with the typing_extensions it needs, not the node's older one), except KEEP: the
    node's numpy stays (torch was built against it).
    Returns the installed distributions (name-version) and the directory."""
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        return [], None
    missing = missing_modules()
    if not missing:
        return [], None
    target = Path(tempfile.mkdtemp(prefix="mmhpc-wheels-"))
    try:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--find-links",
                str(wheels),
                "--no-compile",
                "--disable-pip-version-check",
                "--target",
                str(target),
                *(DISTRIBUTIONS.get(m, m) for m in missing),
            ],
            check=True,
        )
        installed = []
        for info in sorted(target.glob("*.dist-info")):
            dist, version = info.name[:-len(".dist-info")].rsplit("-", 1)
            if dist.lower() in KEEP and _distribution_installed(dist):
                _remove_distribution(target, info)
                continue
            installed.append(f"{dist}-{version}")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, (str(target), os.environ.get("PYTHONPATH")))
    )
    importlib.invalidate_caches()
    return installed, target


def _remove_distribution(target: Path, info: Path) -> None:
    """Delete what a dist-info's RECORD lists (and the dist-info) from a --target directory."""
    tops = {
        line.split(",", 1)[0].split("/", 1)[0]
        for line in (info / "RECORD").read_text().splitlines()
        if line
    }
    for top in tops - {"", ".", ".."}:  # scripts are listed as ../../bin/...: outside the directory
        path = target / top
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def _distribution_installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def gpu_slug(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "h100"; "NVIDIA A100-SXM4-40GB" -> "a100"."""
    m = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name.replace("NVIDIA", "").replace("-", " "))
    return (m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def set_precision(name: str, device: torch.device, device_type: str | None = None):
    """The run's precision on `device` (checked, flags set now); returns a zero-argument autocast
    factory."""
    from mmhpc.system.precision import Precision

    precision = Precision(name, device_type or device.type)
    precision.validate(device if precision.device_type == device.type else None)
    precision.apply()
    return precision.autocast


def _flags() -> dict:
    return {"matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


def _cuda_time(fn, reps: int) -> float:
    """Seconds per call of `fn` on the GPU (CUDA events around `reps` calls after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0 / reps


def _tiny_config(ck: Check, *overrides: str):
    from mmhpc.config import load_config

    return load_config(
        None,
        [
            "data.dataset=cremad",
            "data.preset=tiny",
            f"system.device={ck.device.type}",
            "train.batch_size=16",
            "train.epochs=1",
            "system.sample_interval=0",
            f"output.runs_dir={ck.scratch}",
            "output.overwrite=true",
            *overrides,
        ],
    )


# ---- the checks
# ------------------------------------------------------------------------------------------

def check_env(ck: Check) -> tuple[dict, str]:
    rec = {
        "host": socket.gethostname(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": ck.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "packages": {},
    }
    for m in (
        "torchvision",
        "transformers",
        "pynvml",
        "numpy",
        "PIL",
        "yaml",
        "psutil",
        "pandas",
        "matplotlib",
        "pydantic",
        "submitit",
    ):
        try:
            rec["packages"][m] = getattr(importlib.import_module(m), "__version__", "installed")
        except ImportError:
            rec["packages"][m] = None
    from mmhpc.doctor import nvml_driver

    rec["driver"], _, note = nvml_driver()
    if note:  # no NVML is a finding, not an error
        rec["nvml"] = note
    if ck.cuda:
        p = torch.cuda.get_device_properties(0)
        rec["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "memory_gib": round(p.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "sms": p.multi_processor_count,
        }
        line = (f"{p.name}, capability {p.major}.{p.minor}, driver {rec['driver']}, "
                f"CUDA {torch.version.cuda}")
    else:
        line = f"no CUDA GPU; torch {torch.__version__} (CUDA build {torch.version.cuda})"
    return rec, line


def precision_problem(name: str, device_type: str, device: torch.device) -> str | None:
    """Why `device` (a GPU's capability, or the CPU) cannot run precision `name`, or None."""
    from mmhpc.system.precision import Precision

    if device_type != "cuda":
        return Precision(name, device_type).problem()
    index = device.index if device.type == "cuda" and device.index is not None else 0
    return Precision(name, "cuda").problem(torch.cuda.get_device_capability(index),
                                           torch.cuda.get_device_name(index))


def check_precision(ck: Check) -> tuple[dict, str]:
    ck.need_gpu()
    rec = {"matmul_n": MATMUL_N, "resnet18_batch": [RESNET_BATCH, 3, RESNET_SIZE, RESNET_SIZE],
           "precisions": {}}
    for name in ("fp32_strict", *PRECISIONS):  # strict: cuDNN TF32 off too, what fp32 keeps on
        problem = precision_problem(name, "cuda", ck.device)
        rec["precisions"][name] = {"skipped": problem} if problem else _time_precision(ck, name)
    torch.cuda.empty_cache()
    p = {k: r for k, r in rec["precisions"].items() if "skipped" not in r}
    _check_flags(p)
    line = "; ".join(f"{k}: matmul {r['matmul_tflops']:.0f} TFLOP/s, ResNet-18 "
                     f"{r['resnet18_images_per_s']:.0f} img/s" for k, r in p.items())
    if "tf32" in p:
        rec["tf32_matmul_speedup"] = p["tf32"]["matmul_tflops"] / p["fp32"]["matmul_tflops"]
        if rec["tf32_matmul_speedup"] < 1.5:
            raise AssertionError(
                f"TF32 matmul only {rec['tf32_matmul_speedup']:.2f}x FP32: the TF32 flag has no "
                f"effect ({line})"
            )
    return rec, line


def _time_precision(ck: Check, name: str) -> dict:
    """One precision's backend flags, large-matmul TFLOP/s and ResNet-18 training images/s."""
    from mmhpc.system.precision import Precision

    autocast = set_precision(name, ck.device, "cuda")
    # the matmul of a precision: bf16 operands for bf16 (an autocast of float32 ones would time the
    # casts)
    dtype = Precision(name, "cuda").dtype or torch.float32
    n = MATMUL_N
    a, b = (torch.randn(n, n, device=ck.device, dtype=dtype) for _ in range(2))
    t_mm = _cuda_time(lambda: a @ b, 10)
    return {"flags": _flags(), "autocast": dtype != torch.float32, "matmul_dtype": str(dtype),
            "matmul_tflops": 2 * n**3 / t_mm / 1e12,
            "resnet18_images_per_s": RESNET_BATCH / _resnet_step_s(ck, autocast)}


def _resnet_step_s(ck: Check, autocast) -> float:
    """Seconds per ResNet-18 training step (forward, backward, SGD) on RESNET_BATCH images."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=1000).to(ck.device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(RESNET_BATCH, 3, RESNET_SIZE, RESNET_SIZE, device=ck.device)
    y = torch.randint(0, 1000, (RESNET_BATCH,), device=ck.device)

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    torch.backends.cudnn.benchmark = True
    for _ in range(3):
        step()
    return _cuda_time(step, TIMED)


def _check_flags(precisions: dict) -> None:
    """The backend flags each precision set, as Precision says they should be."""
    from mmhpc.system.precision import Precision

    for k, r in precisions.items():
        mode, got = Precision(k, "cuda").mode, r["flags"]
        if (got["matmul_allow_tf32"], got["cudnn_allow_tf32"]) != (mode.matmul_tf32,
                                                                   mode.cudnn_tf32):
            raise AssertionError(f"{k}: flags {got}, expected matmul TF32 {mode.matmul_tf32}, "
                                 f"cuDNN TF32 {mode.cudnn_tf32}")


def _count_syncs(ck: Check, *overrides: str, steps: int = 3) -> list[str]:
    """The host synchronisations CUDA reports (torch.cuda.set_sync_debug_mode) in `steps` training
    steps of a tiny run (batch to the device, the strategy's step, the metrics), after one warm-up
    step."""
    from mmhpc.metrics import MetricAccumulator
    from mmhpc.train import Trainer

    pin = str(
        ck.device.type == "cuda"
    ).lower()  # pinned batches, as sweeps run (not on the CPU tier)
    trainer = Trainer(
        _tiny_config(ck, f"loader.pin_memory={pin}", "system.deterministic=false", *overrides),
        progress=False,
    )
    try:
        batches = iter(trainer.loaders["train"].epoch(0))
        host = [next(batches) for _ in range(steps + 1)]
        acc = MetricAccumulator()

        def step(batch):
            batch = trainer._to_device(batch)
            out = trainer.strategy.train_step(batch, batch["label"])
            acc.update(out.logits, batch["label"])

        step(host[0])  # warm-up: allocator, cuDNN plans, lazily made state
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for batch in host[1:]:
                    step(batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()
    finally:
        trainer.close()
    return [
        str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()
    ]


def _strategies() -> list[str]:
    from mmhpc.strategies import STRATEGIES

    return sorted(STRATEGIES)


# what a strategy's config check requires beyond the defaults (the cosine classifier, MLA's shared
# head)
STRATEGY_NEEDS = {"entropy": ("model.cosine=true",), "reliability": ("model.cosine=true",),
                  "mla": ("model.fusion=early_sum",)}
# the text run of the syncs check: RoBERTa (tiny) with the visual branch, on synthetic MVSA
TEXT_RUN = ("data.dataset=mvsa", "data.modalities=[visual, text]", "strategy.name=naive")


def check_syncs(ck: Check) -> tuple[dict, str]:
    ck.need_gpu()
    _need_trainer()
    runs = {
        f"cremad/{name}": (f"strategy.name={name}", *STRATEGY_NEEDS.get(name, ()))
        for name in _strategies()
    }
    runs["mvsa/text+visual"] = TEXT_RUN
    rec: dict = {"steps": 3, "runs": {}}
    for name, overrides in runs.items():
        try:
            syncs = _count_syncs(ck, *overrides)
        # a strategy that cannot build here is a finding of its own
        except Exception as e:  # noqa: BLE001
            rec["runs"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        rec["runs"][name] = {"host_syncs": len(syncs), "messages": syncs[:5]}
    bad = {k: r for k, r in rec["runs"].items() if r.get("host_syncs") or "error" in r}
    if bad:
        raise AssertionError("host synchronisations or failures in training steps: " + "; ".join(
            f"{k}: {r.get('error') or str(r['host_syncs']) + ' syncs, first: ' + r['messages'][0]}"
            for k, r in bad.items()))
    return (
        rec,
        f"0 host synchronisations in 3 steps of each of {len(runs)} runs ({', '.join(runs)})",
    )


def _forward_backward(trainer, batch) -> dict:
    model = trainer.model
    model.zero_grad(set_to_none=True)
    out = trainer.strategy.net(batch)  # the run's model: its precision, BLP's branch threads
    torch.nn.functional.cross_entropy(out["fused"].float(), batch["label"]).backward()
    return {
        k: p.grad.detach().float().cpu().clone()
        for k, p in model.named_parameters()
        if p.grad is not None
    }


def check_blp(ck: Check) -> tuple[dict, str]:
    _need_trainer()
    from mmhpc.train import Trainer

    dev = str(ck.device)
    common = ("system.deterministic=true", "system.precision=fp32")
    single = Trainer(_tiny_config(ck, *common, "output.name=blp-single"), progress=False)
    blp = Trainer(
        _tiny_config(
            ck,
            *common,
            "system.parallelism=blp",
            "output.name=blp-blp",
            f"system.blp_devices={{audio: '{dev}', visual: '{dev}'}}",
        ),
        progress=False,
    )
    try:
        blp.model.load_state_dict(single.model.state_dict())
        batch = single._to_device(next(iter(single.loaders["train"].epoch(0))))
        g_single = _forward_backward(single, batch)
        g_blp = _forward_backward(blp, batch)
        worst = max(
            ((g_blp[k] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item()
            for k, g in g_single.items()
        )
        rec = {"parameters_compared": len(g_single), "max_relative_grad_diff": worst, "device": dev}
        if set(g_single) != set(g_blp) or worst > 1e-4:
            raise AssertionError(
                f"BLP gradients differ from single: max relative difference {worst:.2e}"
            )
        line = f"gradients equal to single (max relative difference {worst:.1e})"
        if ck.cuda:
            streams = _kernel_streams(lambda: _forward_backward(blp, batch))
            rec["kernel_streams"] = streams
            if len(streams) < 2:
                raise AssertionError(
                    f"BLP kernels ran on {len(streams)} CUDA stream(s), expected one per branch"
                )
            line += f"; kernels on {len(streams)} CUDA streams"
        else:
            line += " (CPU: branches in threads; the stream check needs a CUDA GPU)"
    finally:
        single.close()
        blp.close()
    return rec, line


def _kernel_streams(fn) -> dict[str, int]:
    """CUDA stream -> number of kernels launched by `fn`, from a torch.profiler Chrome trace."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    return trace_streams(events)


def trace_streams(events: list[dict]) -> dict[str, int]:
    """CUDA stream -> kernels, from a Chrome trace's events."""
    streams: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "kernel":
            s = str((e.get("args") or {}).get("stream", e.get("tid")))
            streams[s] = streams.get(s, 0) + 1
    return streams


def _free_port() -> int:
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        return sk.getsockname()[1]


def _trainer_run(ck: Check, name: str, *overrides: str, env: dict | None = None) -> dict:
    """A short run through the trainer (`mmhpc.train.train`, 1 epoch of 4 steps): its record's
    figures."""
    from mmhpc.train import train

    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        record = train(
            _tiny_config(ck, f"output.name=trainer-{name}", "train.max_batches=4", *overrides),
            progress=False,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if record.status != "done":
        raise AssertionError(f"{name}: the run ended {record.status}")
    epoch = record.epochs[-1]
    return {
        "status": record.status,
        "train_loss": epoch.train["loss/fused"],
        "val_acc": epoch.val["acc/fused"],
        "epoch_s": epoch.time.epoch_s,
        "device": record.env.device,
    }


def check_trainer(ck: Check) -> tuple[dict, str]:
    """Parallelisms and precisions through the trainer, as sweeps run them."""
    _need_trainer()
    dev = ck.device.type
    rank0 = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    rec = {
        "ddp-1rank": _trainer_run(ck, "ddp", "system.parallelism=ddp", env=rank0),
        "blp-bf16-preinit": _trainer_run(
            ck,
            "blp-bf16",
            "system.parallelism=blp",
            "system.precision=bf16",
            "loader.num_workers=1",
            "loader.preinit=true",
            "loader.persistent_workers=false",
        ),
    }
    rec["ddp-1rank"]["backend"] = "nccl" if dev == "cuda" else "gloo"
    if ck.cuda and torch.cuda.device_count() >= 2:
        rec["dp-2gpu"] = _trainer_run(ck, "dp", "system.parallelism=dp")
        rec["blp-2gpu"] = _trainer_run(ck, "blp-2gpu", "system.parallelism=blp",
                                       "system.blp_devices={audio: 'cuda:0', visual: 'cuda:1'}")
    else:
        ck.not_here += ["trainer: dp-2gpu", "trainer: blp-2gpu"]
        rec["not_run"] = {"dp-2gpu": "needs two CUDA GPUs", "blp-2gpu": "needs two CUDA GPUs"}
    bad = [
        k for k, r in rec.items() if k != "not_run" and not r["train_loss"] == r["train_loss"]
    ]  # NaN
    if bad:
        raise AssertionError(f"a NaN training loss in {', '.join(bad)}")
    runs = [k for k in rec if k != "not_run"]
    line = f"{', '.join(runs)} trained on {dev}" + (
        " (ddp over NCCL)" if dev == "cuda" else " (ddp over gloo)"
    )
    if "not_run" in rec:
        line += "; dp-2gpu, blp-2gpu need two CUDA GPUs"
    return rec, line


def check_sampler(ck: Check) -> tuple[dict, str]:
    _need("psutil", "pandas")
    from mmhpc.system.sampler import UtilSampler, energy_key

    if not ck.cuda:
        raise Skip(NEEDS_GPU + " (NVML utilisation, power, energy)", hardware=True)
    a = torch.randn(SAMPLER_N, SAMPLER_N, device=ck.device, dtype=torch.bfloat16)
    with UtilSampler(0.1) as s:
        s.mark("load start")
        end = time.monotonic() + SAMPLER_LOAD_S
        while time.monotonic() < end:
            for _ in range(20):
                a @ a
            torch.cuda.synchronize()
        s.mark("load end")
    summary = s.summary("load start", "load end")
    rec = {
        "interval_s": 0.1,
        "gpus": s.gpus,
        "notes": s.notes,
        "summary": summary,
        "sample_cost_us": s.sample_cost_us,
    }
    if not s.gpus:
        raise AssertionError(f"the sampler found no GPU through NVML: {s.notes}")
    first = next(iter(s.gpus))
    g = f"gpu{first}"
    energy = summary.get(energy_key(first, s.energy_scope.get(first, "gpu")))  # GH200: the module's
    util, power = summary.get(f"{g}_util_pct_mean"), summary.get(f"{g}_power_w_mean")
    if util is None or util < 50:
        raise AssertionError(f"GPU utilisation under a matmul loop: {util} % (expected > 50)")
    if not power or not energy:
        raise AssertionError(
            f"power {power} W, energy {energy} J: NVML power/energy missing ({s.notes})"
        )
    cost = s.sample_cost_us
    return rec, (f"utilisation {util:.0f} %, power {power:.0f} W, energy {energy:.0f} J over "
                 f"{SAMPLER_LOAD_S:g} s; "
                 f"{cost['wall_us']:.0f} us per sample")


def check_ddp(ck: Check) -> tuple[dict, str]:
    ck.need_gpu()
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    gpu = ck.device.type == "cuda"  # else the CPU tier's fake CUDA: the same steps over gloo
    if gpu and not dist.is_nccl_available():
        raise AssertionError("this torch has no NCCL")
    from mmhpc.compat import init_process_group

    init_process_group("nccl" if gpu else "gloo", ck.device if gpu else None,
                       init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        t = torch.full((4,), 3.0, device=ck.device)
        dist.all_reduce(t)
        model = DistributedDataParallel(torch.nn.Linear(32, 4).to(ck.device),
                                        device_ids=[ck.device.index] if gpu else None)
        model(torch.randn(8, 32, device=ck.device)).sum().backward()
        torch.cuda.synchronize()
        ok = bool((t == 3.0).all()) and all(p.grad is not None for p in model.parameters())
        version = torch.cuda.nccl.version()  # a tuple (2, 21, 5); an int on old releases
        rec = {
            "backend": dist.get_backend(),
            "nccl_version": ".".join(map(str, version))
            if isinstance(version, tuple)
            else str(version),
            "world_size": dist.get_world_size(),
        }
    finally:
        dist.destroy_process_group()
    if not ok:
        raise AssertionError("NCCL all-reduce or DDP backward gave a wrong result")
    return rec, f"NCCL {rec['nccl_version']}: all-reduce and a DDP step in one process"


def _bench(
    ck: Check, name: str, dataset: str, *overrides: str, epochs: int = 1, warmup: int = 1
) -> dict:
    """`mmhpc bench` of one config on the full synthetic `dataset` (generated once under
    data/synthetic/)."""
    from mmhpc.bench import bench
    from mmhpc.config import load_config

    sampling = _importable("psutil") and _importable("pandas")
    cfg = load_config(
        None,
        [
            f"data.dataset={dataset}",
            f"data.preset={ck.preset}",
            f"system.device={ck.device.type}",
            "system.deterministic=false",
            "train.batch_size=64",
            f"loader.num_workers={ck.workers}",
            "loader.prefetch_factor=2",
            f"loader.pin_memory={str(ck.device.type == 'cuda').lower()}",  # pinned for a GPU
            f"system.sample_interval={0.5 if sampling else 0}",
            f"output.runs_dir={ck.out / 'runs'}",
            f"output.name={name}",
            "output.overwrite=true",
            *overrides,
        ],
    )
    return bench(cfg, epochs=epochs, warmup=warmup, progress=False).bench


def bench_precisions(ck: Check, dataset: str, encoders: list[str], epochs: int = 1, warmup: int = 1,
                     precisions=PRECISIONS) -> dict:
    """Train time per epoch of each single encoder at fp32, tf32 and bf16 (thesis Tables
    4.6-4.9)."""
    rec = {}
    for modality in encoders:
        for p in precisions:
            if ck.left_s() < 150:
                raise Skip(f"time budget spent after {sorted(rec)}")
            problem = precision_problem(p, ck.device.type, ck.device)
            if problem:  # tf32, bf16 on a GPU older than Ampere (or on the CPU tier: tf32)
                rec[f"{modality}/{p}"] = {"skipped": problem}
                continue
            r = _bench(
                ck,
                f"precision-{dataset}-{modality}-{p}",
                dataset,
                f"data.modalities=[{modality}]",
                f"system.precision={p}",
                "loader.persistent_workers=true",
                epochs=epochs,
                warmup=warmup,
            )
            rec[f"{modality}/{p}"] = {
                k: r[k] for k in ("epoch_s_mean", "train_s_mean", "train_samples_per_s_mean")
            }
    return rec


LOADERS = (("standard", "true", "false"), ("preinit", "false", "true"))  # name, persistent, preinit


def bench_loaders(
    ck: Check, dataset: str, *overrides: str, epochs: int = 2, warmup: int = 1
) -> dict:
    """The thesis' standard loader (persistent workers, as sweeps/loader.yaml's preinit block) vs
    the pre-initialised one (Alg. 6, workers rebuilt each epoch by a helper thread): times, the
    epoch-start stall, GPU utilisation. `stall_ratio`: the pre-initialised loader's stall over the
    standard one's."""
    rec = {}
    for loader, persistent, preinit in LOADERS:
        r = _bench(
            ck,
            f"loader-{dataset}-{loader}",
            dataset,
            f"loader.persistent_workers={persistent}",
            f"loader.preinit={preinit}",
            *overrides,
            epochs=epochs,
            warmup=warmup,
        )
        rec[loader] = {k: v for k, v in r.items() if k.endswith("_mean") or k.startswith("util/")}
        rec[loader]["stall_s"] = r["train_loader_init_s_mean"] + r["val_loader_init_s_mean"]
        rec[loader]["persistent_workers"], rec[loader]["preinit"] = (
            persistent == "true",
            preinit == "true",
        )
    rec["stall_ratio"] = rec["preinit"]["stall_s"] / max(rec["standard"]["stall_s"], 1e-9)
    rec["epoch_speedup"] = rec["standard"]["epoch_s_mean"] / max(
        rec["preinit"]["epoch_s_mean"], 1e-9
    )
    return rec


def check_bench(ck: Check) -> tuple[dict, str]:
    ck.need_gpu()
    _need_trainer()
    _need("transformers")
    rec = bench_precisions(ck, "mvsa", ["visual", "text"])
    return rec, bench_line(rec)


def bench_line(rec: dict) -> str:
    """Train s/epoch of each encoder and precision, with the speed-up over fp32."""
    parts = []
    for modality in dict.fromkeys(k.split("/")[0] for k in rec):
        times = {p: rec[f"{modality}/{p}"].get("train_s_mean") for p in PRECISIONS
                 if f"{modality}/{p}" in rec}
        parts.append(f"{modality} " + ", ".join(
            f"{p} {t:.1f} s ({times['fp32'] / t:.2f}x)" if t else f"{p} skipped"
            for p, t in times.items()))
    return "MVSA train s/epoch: " + "; ".join(parts)


def check_loader(ck: Check) -> tuple[dict, str]:
    ck.need_gpu()
    _need_trainer()
    if ck.left_s() < 120:
        raise Skip("time budget spent")
    rec = bench_loaders(ck, "mvsa", "data.modalities=[visual]", "system.precision=bf16")
    return rec, loader_line(rec)


def loader_line(rec: dict) -> str:
    """The loader check's line. AssertionError when the pre-initialised loader (thesis Alg. 6:
    workers rebuilt every epoch by a helper thread) stalls at the epoch's start beyond the
    persistent workers (which never rebuild) by more than a factor 2 and 0.5 s: the seconds of a
    fresh start-up."""
    std, opt = rec["standard"], rec["preinit"]
    util = [r.get("util/gpu0_util_pct_mean") for r in (std, opt)]
    line = (f"MVSA visual, standard (persistent workers) -> pre-initialised: epoch "
            f"{std['epoch_s_mean']:.2f} s -> {opt['epoch_s_mean']:.2f} s, epoch-start stall "
            f"{std['stall_s']:.3f} s -> {opt['stall_s']:.3f} s")
    line += (f", GPU util {util[0]:.0f} -> {util[1]:.0f} %" if None not in util
             else " (no GPU utilisation: psutil/pandas missing, or none from NVML as on MIG)")
    if opt["stall_s"] > max(2 * std["stall_s"], std["stall_s"] + 0.5):
        raise AssertionError(
            f"the pre-initialised loader stalls more than the standard one: {line}")
    return line


def check_report(ck: Check) -> tuple[dict, str]:
    _need("pandas", "matplotlib", "pydantic")
    runs = ck.out / "runs"
    if not any(runs.glob("*.json")):
        raise Skip("no run records to report on (the bench and loader checks did not run)")
    from mmhpc.report import build_report

    written = build_report(runs, ck.out / "report", query_slurm=False)
    return ({"pdf": str(written["pdf"]), "pages": written["pages"], "tables": written["kinds"]},
            f"{written['pdf']} ({written['pages']} pages; tables {', '.join(written['kinds'])})")


CHECKS = {
    "env": check_env,
    "precision": check_precision,
    "syncs": check_syncs,
    "blp": check_blp,
    "trainer": check_trainer,
    "sampler": check_sampler,
    "ddp": check_ddp,
    "bench": check_bench,
    "loader": check_loader,
    "report": check_report,
}


# ---- the command
# -----------------------------------------------------------------------------------------

def default_out() -> Path:
    if torch.cuda.is_available():
        return Path("reports/results") / gpu_slug(torch.cuda.get_device_name(0))
    return Path("reports/out/gpu-check-cpu")


# each check's time limit in its own process (s) on a GPU node: a hung NCCL, gloo or loader worker
# fails it, no more. Without a GPU the checks that run compute on the CPU (blp, trainer): CPU_SLOWER
# times as long.
CPU_SLOWER = 4
TIMEOUTS = {
    "env": 60,
    "precision": 120,
    "syncs": 180,
    "blp": 90,
    "trainer": 150,
    "sampler": 60,
    "ddp": 60,
    "bench": 240,
    "loader": 180,
    "report": 120,
}


def run_check(name: str, ck: Check) -> dict:
    """One check in this process: status, detail line, record, and what of it needs more GPUs."""
    saved = _global_state()
    hardware = False
    try:
        rec, line = CHECKS[name](ck)
        status = "PASS"
    except Skip as e:
        rec, line, status, hardware = {}, str(e), "SKIP", e.hardware
    except Exception as e:  # noqa: BLE001 - a failing check is reported, the others still run
        rec, line, status = (
            {"traceback": traceback.format_exc(limit=8)},
            f"{type(e).__name__}: {e}",
            "FAIL",
        )
    finally:
        _restore(
            saved
        )  # a check's determinism or precision must not leak into the next one's timings
    return {
        "status": status,
        "detail": line,
        "record": rec,
        "hardware": hardware,
        "not_here": ck.not_here,
    }


def _run_child(name: str, out: Path, budget_s: float, workers: int, limit_s: float) -> dict:
    """One check in a process of its own, killed (with its loader workers) after `limit_s`
    seconds."""
    result = out / f".{name}.result.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "mmhpc.gpucheck", "--child", name, "--out", str(out),
           "--budget", str(budget_s), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        code = proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return _failed(f"timed out after {limit_s:g} s (killed; a hung collective, loader worker "
                       "or kernel?)")
    try:
        return json.loads(result.read_text())
    except (OSError, ValueError):
        return _failed(f"its process ended with exit code {code} and no result")
    finally:
        result.unlink(missing_ok=True)


def _failed(detail: str) -> dict:
    return {"status": "FAIL", "detail": detail, "record": {}, "hardware": False, "not_here": []}


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run(out: Path, only: list[str] | None = None, budget_s: float = 450.0,
        workers: int | None = None, wheels: Path = Path(".whl"), timeout_s: float | None = None,
        isolate: bool = True) -> int:
    """Every check (or `only` these), each in its own process (`isolate`) with its TIMEOUTS limit
    (CPU_SLOWER times that without a GPU, or `timeout_s`); records under `out`. Exit status: 1 when
    a check failed."""
    out.mkdir(parents=True, exist_ok=True)
    wheel_dir = _install_wheels(wheels)
    workers = workers or min(16, os.cpu_count() or 1)
    slower = 1 if torch.cuda.is_available() else CPU_SLOWER
    t0 = time.monotonic()
    results, not_here = {}, []
    try:
        for name in (n for n in CHECKS if not only or n in only):
            start = time.monotonic()
            left = budget_s - (start - t0)
            if isolate:
                res = _run_child(name, out, left, workers, timeout_s or TIMEOUTS[name] * slower)
            else:
                res = _run_here(name, out, left, workers)
            results[name] = _report(name, res, out, time.monotonic() - start)
            not_here += res["not_here"]
    finally:
        if wheel_dir is not None:
            shutil.rmtree(wheel_dir, ignore_errors=True)
    total_s = time.monotonic() - t0
    _write(out / "gpu-check.json", {"checks": results, "total_s": total_s, "time": time.time(),
                                    "not_run_here": not_here})
    return _summary(results, not_here, out, total_s)


def _install_wheels(wheels: Path) -> Path | None:
    """`use_wheels`, said on the console; the wheels' directory (None: nothing installed)."""
    try:
        installed, wheel_dir = use_wheels(wheels)
    except (OSError, subprocess.CalledProcessError) as e:  # no pip, or a wheel for another Python
        print(f"gpu-check: could not install the wheels in {wheels}/ (pip: "
              f"{getattr(e, 'returncode', e)}; wheels for Python {sys.version_info.major}."
              f"{sys.version_info.minor}? make gpu-wheels GPU_PYTHON_VERSION=...); checks needing "
              "them cannot run")
        return None
    if installed:
        print(f"gpu-check: installed from {wheels}/ for this run: {', '.join(installed)}")
    return wheel_dir


def _run_here(name: str, out: Path, budget_s: float, workers: int) -> dict:
    ck = Check(out, budget_s, workers)
    try:
        return run_check(name, ck)
    finally:
        shutil.rmtree(ck.scratch, ignore_errors=True)


def _report(name: str, res: dict, out: Path, seconds: float) -> dict:
    """A check's line on the console and its record (none for a SKIP). On a GPU node nothing skips
    quietly: a SKIP for any reason but missing hardware is a FAIL."""
    status, line = res["status"], res["detail"]
    if status == "SKIP" and torch.cuda.is_available() and not res["hardware"]:
        status, line = "FAIL", f"cannot run on this GPU node: {line}"
    print(f"{status:<5} {name:<10} {seconds:6.1f} s  {line}", flush=True)
    if status != "SKIP":
        _write(out / f"{name}.json", {"check": name, "status": status, "detail": line,
                                      "seconds": seconds, "time": time.time(), **res["record"]})
    return {"status": status, "detail": line, "seconds": seconds}


def _summary(results: dict, not_here: list[str], out: Path, total_s: float) -> int:
    """The closing lines (what passed, failed, skipped, and what needs a GPU); the exit status."""
    skipped = [n for n, r in results.items() if r["status"] == "SKIP"]
    failed = [n for n, r in results.items() if r["status"] == "FAIL"]
    gpu_skips = [n for n in skipped if results[n]["detail"].startswith(NEEDS_GPU)]
    print(f"{len(results) - len(skipped) - len(failed)} passed, {len(failed)} failed, "
          f"{len(skipped)} skipped in {total_s:.0f} s; records: {out}")
    if gpu_skips:
        print(f"skipped for want of a CUDA GPU: {', '.join(gpu_skips)}")
    if not_here:
        print(f"not run for want of a second GPU: {', '.join(not_here)}")
    return 1 if failed else 0


def _child(name: str, out: Path, budget_s: float, workers: int) -> int:
    """`--child NAME`: one check, its result as JSON for the parent process (`_run_child`)."""
    ck = Check(out, budget_s, workers)
    try:
        res = run_check(name, ck)
    finally:
        shutil.rmtree(ck.scratch, ignore_errors=True)
    _write(out / f".{name}.result.json", res)
    return 0


def _global_state() -> tuple:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def _restore(state: tuple) -> None:
    torch.use_deterministic_algorithms(state[0])
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = state[1:]


def _write(path: Path, obj: dict) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def _arguments(p) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="records directory (default reports/results/<gpu>/, or "
                   "reports/out/gpu-check-cpu/ without a GPU)")
    p.add_argument(
        "--only", action="append", choices=list(CHECKS), help="run only these checks (repeatable)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=450.0,
        help="seconds after which the long checks skip (default 450)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="loader workers (default: CPU count, at most 16)"
    )
    p.add_argument("--wheels", type=Path, default=Path(".whl"),
                   help="wheels for what this Python lacks (make gpu-wheels; default .whl)")
    p.add_argument("--check-timeout", type=float, default=None,
                   help="seconds each check may run before it is killed and FAILs (default: per "
                   "check, "
                        "mmhpc.gpucheck.TIMEOUTS)")
    p.add_argument("--child", choices=list(CHECKS), default=None, help=argparse.SUPPRESS)


def main(argv: list[str] | None = None, prog: str = "python -m mmhpc.gpucheck") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    _arguments(p)
    args = p.parse_args(argv)
    out = args.out or default_out()
    if args.child:
        return _child(args.child, out, args.budget, args.workers or 1)
    return run(out, args.only, args.budget, args.workers, args.wheels, args.check_timeout)


if __name__ == "__main__":
    sys.exit(main())
