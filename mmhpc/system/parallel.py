"""Parallelism (thesis Sec. 2.7.3.3-2.7.3.4, 3.4.4): single, DataParallel, DDP and Branch-Level Parallelism.

- single: one device.
- dp: `nn.DataParallel` over all visible GPUs; needs at least two (no silent fallback).
- ddp: one process per device (torchrun or SLURM tasks set RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/PORT),
  NCCL on GPUs and gloo on the CPU; the global batch is split evenly over the processes.
- blp: each encoder branch on its own device, run concurrently from threads (on one GPU: one CUDA stream
  per branch; on the CPU: threads), fusion and loss on the master device. Backward crosses devices
  through autograd, so every branch gets its gradient from the one loss.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mmhpc.compat import autocast_state
from mmhpc.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg) -> DistInfo:
    """Join the process group of a DDP run (started by torchrun or as SLURM tasks)."""
    if cfg.system.parallelism != "ddp":
        return DistInfo()
    if "WORLD_SIZE" not in os.environ:
        raise ConfigError("system.parallelism: ddp runs one process per device; launch it with "
                          "`torchrun --nproc-per-node N -m mmhpc.cli train ...`, or submit it with `mmhpc sweep` "
                          "(one SLURM task per GPU)")
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.train.batch_size % info.world:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is not divisible by the {info.world} DDP "
                          "processes; the global batch is split evenly")
    if not dist.is_initialized():
        use_cuda = cfg.system.device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


def ddp_device(info: DistInfo, requested: torch.device) -> torch.device:
    if requested.type == "cuda":
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return requested


def wrap(model: nn.Module, parallelism: str, device: torch.device) -> nn.Module:
    """The module strategies call forward on: the model itself, or its DP/DDP wrapper."""
    if parallelism == "dp":
        n = torch.cuda.device_count() if device.type == "cuda" else 0
        if n < 2:
            raise ConfigError(f"system.parallelism: dp (nn.DataParallel) needs at least 2 CUDA devices, this "
                              f"machine has {n}; use single, or ddp (which also runs on the CPU with gloo)")
        return nn.DataParallel(model)
    if parallelism == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return model


def all_mean(values: dict[str, float], weight: float) -> dict[str, float]:
    """Weighted mean of per-process metrics over the DDP group (weight = samples seen)."""
    if not dist.is_initialized():
        return values
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (values, weight))
    total = sum(w for _, w in gathered)
    return {k: sum(v[k] * w for v, w in gathered) / total for k in values}


def broadcast(obj):
    """Rank 0's object on every rank (validation metrics drive per-epoch decisions everywhere)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- Branch-Level Parallelism --------------------------------------------------------------------

def blp_devices(master: torch.device) -> list[torch.device]:
    if master.type == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [master]


def assign_branches(costs: dict[str, float], devices: list[torch.device]) -> dict[str, torch.device]:
    """Load-aware placement: most expensive branch first, each onto the least loaded device (LPT)."""
    load = {d: 0.0 for d in devices}
    placement = {}
    for m in sorted(costs, key=lambda k: (-costs[k], k)):
        target = min(devices, key=lambda d: (load[d], str(d)))
        placement[m] = target
        load[target] += costs[m]
    return placement


def measure_branch_costs(model, batch: dict[str, torch.Tensor], device: torch.device, reps: int = 2) -> dict:
    """Seconds of forward+backward of each encoder branch on `device` (after one warm-up)."""
    costs = {}
    for m in model.modalities:
        x = batch[m].to(device)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            model.encode_one(m, x).float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        costs[m] = min(times[1:])
    model.zero_grad(set_to_none=True)
    return costs


class BranchParallel:
    """Runs each modality's encoder branch on its device, concurrently, and returns embeddings on the master.

    Grad mode and autocast are thread-local in PyTorch, so each branch thread re-enters the caller's.
    """

    def __init__(self, model, placement: dict[str, torch.device], master: torch.device):
        self.model, self.placement, self.master = model, placement, master
        for m, dev in placement.items():
            model.encoders[m].to(dev)
            for part in (model.project, model.dropout):
                if m in part:
                    part[m].to(dev)
        self.streams = {m: torch.cuda.Stream(dev) for m, dev in placement.items()} if master.type == "cuda" else {}
        self.pool = ThreadPoolExecutor(len(placement), thread_name_prefix="mmhpc-blp")

    def _branch(self, m: str, x: torch.Tensor, grad: bool, amp: tuple[bool, torch.dtype]) -> torch.Tensor:
        dev = self.placement[m]
        stream = self.streams.get(m)
        with torch.set_grad_enabled(grad), torch.autocast(dev.type, dtype=amp[1], enabled=amp[0]):
            if stream is None:
                return self.model.encode_one(m, x.to(dev)).to(self.master)
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                e = self.model.encode_one(m, x.to(dev, non_blocking=True))
            return e, stream

    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grad = torch.is_grad_enabled()
        amp = autocast_state(self.master.type)
        futures = {m: self.pool.submit(self._branch, m, batch[m], grad, amp) for m in self.placement}
        out = {}
        for m, fut in futures.items():
            res = fut.result()
            if isinstance(res, tuple):  # CUDA: join the branch stream before the master uses its output
                e, stream = res
                torch.cuda.current_stream(self.master).wait_stream(stream)
                e.record_stream(torch.cuda.current_stream(self.master))
                res = e.to(self.master, non_blocking=True)
            out[m] = res
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True)
