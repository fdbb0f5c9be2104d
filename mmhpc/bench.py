"""`mmhpc bench`: a run config timed for N epochs after W warm-up epochs, with the system section.

The record is a normal run record (same trainer, same sampler) plus a `bench` section aggregating
the measured epochs: the Table 2.8 breakdown, throughput, utilisation and peak memory, as mean and
standard error. `--profile` writes a torch.profiler trace of a few training steps beside the record.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mmhpc.metrics import mean_se
from mmhpc.results import RunRecord, write_record
from mmhpc.system.runtime import release_host_memory
from mmhpc.train import Trainer

TIME_KEYS = (
    "epoch_s",
    "train_loader_init_s",
    "train_s",
    "val_loader_init_s",
    "val_s",
    "train_samples_per_s",
)
# where measured: the strategies' own per-epoch passes, the host's data wait, the GPU's idle between
# steps
MAYBE_TIME_KEYS = ("strategy_s", "train_data_wait_s", "train_gpu_idle_s")


def bench_summary(epochs: list[dict], warmup: int) -> dict:
    measured = epochs[warmup:]
    if not measured:
        raise ValueError(
            f"bench: {len(epochs)} epoch(s) run, none left after {warmup} warm-up epoch(s)"
        )
    out = {"warmup_epochs": warmup, "measured_epochs": len(measured)}
    for key in TIME_KEYS:
        mean, se = mean_se([e["time"][key] for e in measured])
        out[f"{key}_mean"], out[f"{key}_se"] = mean, se
    for key in MAYBE_TIME_KEYS:
        values = [e["time"][key] for e in measured if e["time"].get(key) is not None]
        if values:
            out[f"{key}_mean"], out[f"{key}_se"] = mean_se(values)
    # utilisation and memory: the mean of per-epoch means, the max of per-epoch peaks
    for key in sorted({k for e in measured for k in e.get("util", {})}):
        if not key.endswith(("_mean", "_peak", "_j")):
            continue
        values = [e["util"][key] for e in measured if e.get("util", {}).get(key) is not None]
        if (
            not values
        ):  # none measured (a MIG slice's utilisation, epochs shorter than the interval)
            out[f"util/{key}"] = None
        else:
            out[f"util/{key}"] = float(np.max(values) if key.endswith("_peak") else np.mean(values))
    for key in sorted({k for e in measured for k in e.get("memory", {})}):
        out[f"memory/{key}"] = max(e["memory"][key] for e in measured if key in e["memory"])
    return out


def bench(
    cfg, epochs: int = 3, warmup: int = 1, profile: bool = False, progress: bool = True
) -> RunRecord:
    name = cfg.output.name or f"{cfg.run_name()}-bench"
    cfg = cfg.replace({"train.epochs": warmup + epochs, "output.name": name})
    trainer = Trainer(cfg, progress=progress)
    profiler = _profiler(trainer.record_path.with_suffix(".trace.json")) if profile else None
    if profiler is not None:
        profiler.start()
        trainer.components.append(ProfilerSteps(profiler))
    try:
        record = trainer.fit()
    finally:
        if profiler is not None:
            profiler.stop()
    record.bench = bench_summary([e.model_dump() for e in record.epochs], warmup)
    trace = trainer.record_path.with_suffix(".trace.json")
    if (
        profiler is not None and trace.exists()
    ):  # written after 5 training steps (the profiler's schedule)
        record.bench["trace"] = trace.name
    write_record(trainer.record_path, record)
    del trainer, profiler
    release_host_memory()
    return record


class ProfilerSteps:
    """A trainer component: the profiler's schedule advances at every training step."""

    def __init__(self, profiler):
        self.profiler = profiler

    def on_step_end(self, trainer) -> None:
        self.profiler.step()


def _profiler(trace: Path):
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if torch.cuda.is_available() else []
    )
    if ProfilerActivity.CUDA not in activities:
        # kineto on a CPU: "ERROR ... gpuGetDeviceCount failed" and its start/stop lines on stderr,
        # noise
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    return profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=3, repeat=1),
                   on_trace_ready=lambda p: p.export_chrome_trace(str(trace)), record_shapes=True)
