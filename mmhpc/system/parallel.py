"""Parallelism as one interface (thesis Sec. 2.7.3.3-2.7.3.4, 3.4.4, Tables 4.13-4.15).

`Parallelism` subclasses, one per `system.parallelism`, answer the launcher and run the trainer's
side:
- rules, asked before anything runs (by `mmhpc sweep` with a cluster's GPU type, by the trainer with
the
  devices it sees): `devices_needed`, `tasks_per_node`, `problem`;
- a run: `setup` (choose the device, join the process group), `branches` (BLP's branch threads),
  `wrap` (DP/DDP around the run's model, `mmhpc.system.runtime`), `to_device` (where each input
  goes), `synchronize` (every device the run computes on, before a
  timer is read), `reduce`/`broadcast` (metrics over processes), `peak_memory`, `close`.

- single: one device.
- dp: `nn.DataParallel` over all visible GPUs; needs at least two (no silent fallback).
- ddp: one process per device (torchrun or SLURM tasks set
RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/PORT),
  NCCL on GPUs and gloo on the CPU; the global batch is split evenly over the processes.
- blp: each encoder branch on its own device, run concurrently from threads (on one GPU: one CUDA
stream
  per branch; on the CPU: threads), fusion and loss on the master device. Backward crosses devices
  through autograd, so every branch gets its gradient from the one loss.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from mmhpc import compat
from mmhpc.errors import ConfigError, RunError
from mmhpc.rules.system import (
    BranchLevelRules,
    DataParallelRules,
    DistributedRules,
    ParallelismRules,
    SingleRules,
)


def resolve_device(name: str) -> torch.device:
    """`system.device`: cpu, cuda (fails without a visible GPU: never a silent CPU run), auto."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("system.device: cuda requested but torch sees no CUDA device (driver, "
                          "CUDA_VISIBLE_DEVICES or a CPU-only torch build); valid here: cpu, auto")
    return torch.device(name)


def local_device(local_rank: int, env=os.environ) -> torch.device:
    """The GPU of the process with this node-local rank, whatever SLURM lets it see.

    All of the node's GPUs visible (torchrun, `--gpus-per-node`): GPU `local_rank`. One GPU per task
    (`--gpus-per-task=1`, cgroups): that GPU is ordinal 0 in every process. One GPU visible without
    a per-task binding while the node runs several ranks: they would all share it (NCCL: "Duplicate
    GPU detected"), so it is refused.
    """
    count = torch.cuda.device_count()
    local_world = int(env.get("LOCAL_WORLD_SIZE") or env.get("SLURM_NTASKS_PER_NODE") or 1)
    if count == 1 and (env.get("SLURM_GPUS_PER_TASK") or (local_rank == 0 and local_world <= 1)):
        return torch.device("cuda", 0)
    if count == 1:
        raise ConfigError(
            f"system.parallelism: ddp process of LOCAL_RANK {local_rank} sees one GPU "
            "(CUDA_VISIBLE_DEVICES="
            f"{env.get('CUDA_VISIBLE_DEVICES', '<unset>')}) and so does every other rank on this "
            "node: two ranks "
            "on one GPU fail in NCCL (duplicate GPU); give each task its own GPU "
            "(--gpus-per-task=1) or let "
            "every rank see all of the node's GPUs (--gpus-per-node=N, torchrun --nproc-per-node "
            "<= GPUs)")
    if local_rank < count:
        return torch.device("cuda", local_rank)
    raise ConfigError(
        f"system.parallelism: ddp process of local rank {local_rank} sees {count} GPUs; run one "
        "process per GPU (torchrun --nproc-per-node <= GPUs, or one SLURM task per "
        "GPU)"
    )


class Parallelism(ParallelismRules):
    """A run's parallelism; what it needs (`devices_needed`, `tasks_per_node`, `problem`) is
    `mmhpc.rules.system`'s, inherited (torch-free, for the launcher)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rank, self.world = 0, 1
        self.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -----------------------------------------


    # ---- a run
    # ------------------------------------------------------------------------------------
    def setup(self) -> torch.device:
        """Choose the run's device (and make it the current CUDA device of this thread)."""
        self.device = resolve_device(self.cfg.system.device)
        if self.device.type == "cuda":
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self._check(
            self.device.type, torch.cuda.device_count() if self.device.type == "cuda" else 0
        )
        return self.device

    def _check(self, device_type: str, devices: int) -> None:
        problem = self.problem(self.cfg, device_type, devices, self.world)
        if problem:
            raise ConfigError(problem)

    def branches(
        self, model: nn.Module, probe: Callable[[], dict] | None, precision
    ) -> BranchParallel | None:
        """BLP's branch runner for `model` (None: the model encodes its inputs itself). `probe()`
        gives one training batch (BLP measures on it)."""
        return None

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module the step's forward runs through: DP/DDP around the run's model, or the
        model."""
        return module

    def input_device(self, key: str) -> torch.device:
        return self.device

    def to_device(self, batch: dict, non_blocking: bool = False) -> dict:
        """Each tensor of a batch straight to the device that consumes it."""
        return {
            k: v.to(self.input_device(k), non_blocking=non_blocking) if torch.is_tensor(v) else v
            for k, v in batch.items()
        }

    def compute_devices(self) -> list[torch.device]:
        return [self.device]

    def synchronize(self) -> None:
        """Wait for every device the run computes on (before an epoch timer is read)."""
        wait_for(self.compute_devices())

    def reduce(self, values: dict[str, float], weight: float) -> dict[str, float]:
        """Weighted mean of per-process metrics (weight = samples seen); the values themselves in
        one process."""
        return values

    def broadcast(self, obj):
        """Rank 0's object on every rank."""
        return obj

    def gather(self, obj, what: str = "") -> list:
        """Every rank's object, in rank order, on every rank (`what`: the collective, for a
        timeout's message)."""
        return [obj]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (one process: the flag itself)."""
        return flag

    def peak_memory(self) -> dict:
        """GPU memory of the epoch in MiB per device the run uses (empty on the CPU), and resets the
        peaks:
        the peak of the tensors (`_peak_mib`), the peak the caching allocator reserved
        (`_reserved_peak_mib`),
        and what NVML counts as used on the device at the epoch's end (`_device_used_mib`: every
        process and
        CUDA context on it)."""
        from mmhpc.system.sampler import device_used_mib

        out = {}
        for d in dict.fromkeys(self.compute_devices()):
            if d.type == "cuda":
                out[f"{d}_peak_mib"] = torch.cuda.max_memory_allocated(d) / 2 ** 20
                out[f"{d}_reserved_peak_mib"] = torch.cuda.max_memory_reserved(d) / 2 ** 20
                used = device_used_mib(d)
                if used is not None:
                    out[f"{d}_device_used_mib"] = used
                torch.cuda.reset_peak_memory_stats(d)
        return out

    def close(self) -> None:
        pass


class Single(Parallelism, SingleRules):
    pass


class DataParallel(Parallelism, DataParallelRules):
    def compute_devices(self):
        return (
            [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
            if self.device.type == "cuda"
            else [self.device]
        )

    def wrap(self, module):
        # the run's model enters its autocast in forward: replicas run in new threads, where the
        # caller's autocast state is absent (mmhpc.system.runtime.RunModel)
        return nn.DataParallel(module)


class Distributed(Parallelism, DistributedRules):
    _votes = None   # the gloo group of the stop vote (made at the first vote)
    _vote = None    # (work, tensor) of the vote in flight

    def setup(self):
        if "WORLD_SIZE" not in os.environ:
            raise ConfigError("system.parallelism: ddp runs one process per device; launch it with "
                              "`torchrun --nproc-per-node N -m mmhpc.cli train ...`, or submit it "
                              "with `mmhpc sweep` "
                              "(one SLURM task per GPU)")
        self.rank, self.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        self._check("cpu", 0)  # the batch split: before the device is touched
        requested = resolve_device(self.cfg.system.device)
        if requested.type == "cuda":
            self.device = local_device(int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(self.device)
        else:
            self.device = requested
        if not dist.is_initialized():
            timeout = dist_timeout()
            if self.device.type == "cuda":  # device_id: NCCL bound to this GPU at once
                compat.init_process_group("nccl", self.device, timeout=timeout)
            else:
                compat.init_process_group("gloo", timeout=timeout)
            self._host_group()  # collective: every rank makes it here, in the same order
        return self.device

    def _host_group(self):
        """The gloo group of the host-side collectives (stop vote, metrics, rank 0's evaluation,
        peaks): CPU tensors, no GPU sync. Its timeout stays gloo's default (the other ranks wait
        there while rank 0 evaluates alone); a dead peer's closed connection fails it at once. Made
        at the first call (new_group is collective: setup calls it on every rank)."""
        if self._votes is None:
            self._votes = dist.new_group(backend="gloo")
        return self._votes

    @contextlib.contextmanager
    def _collective(self, what: str):
        """A failed or timed-out collective as a RunError naming the rank(s) that did not answer."""
        try:
            yield
        except RuntimeError as e:  # DistBackendError, DistNetworkError, gloo's timeouts
            raise RunError(f"ddp rank {self.rank}: {what} failed ({str(e).splitlines()[0][:200]}); "
                           f"{self._lost_ranks()}") from e

    def _lost_ranks(self, wait_s: float = 5.0) -> str:
        """Which ranks no longer answer: every rank that saw a collective fail marks itself alive in
        the rendezvous store and waits `wait_s` for the others' marks. The store lives in rank 0's
        process: when it cannot be reached, rank 0 is the one gone."""
        try:
            store = dist.distributed_c10d._get_default_store()
            store.set(f"mmhpc/alive/{self.rank}", "1")
            deadline = time.monotonic() + wait_s
            while True:
                lost = [r for r in range(self.world) if not store.check([f"mmhpc/alive/{r}"])]
                if not lost or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        except (RuntimeError, ValueError, AttributeError):  # the store's host (rank 0) is gone
            return ("rank(s) 0 died or hang (rank 0 holds the rendezvous store, which no longer "
                    "answers)")
        if lost:
            return (
                f"rank(s) {', '.join(map(str, lost))} died or hang (no answer within {wait_s:g} s)"
            )
        return "every rank still answers"

    def wrap(self, module):
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def reduce(self, values, weight):
        if not dist.is_initialized():
            return values
        gathered: list = [None] * dist.get_world_size()
        with self._collective("the metrics' all-gather"):
            dist.all_gather_object(gathered, (values, weight), group=self._host_group())
        total = sum(w for _, w in gathered)
        return {k: sum(v[k] * w for v, w in gathered) / total for k in values}

    def any_rank(self, flag):
        """One call late: True on every rank when `flag` was true on any rank at the previous call.
        The vote is an all-reduce on the CPU over its own gloo group, started at one training step
        and read at the next, so it travels while the step runs: a blocking one held every rank's
        host in lockstep at each step, and an NCCL one read with .item() would wait for the GPU's
        queue. The group is made at the first call, which every rank reaches at the same step
        (new_group is collective)."""
        if not dist.is_initialized():
            return flag
        group = self._host_group()
        seen = False
        if self._vote is not None:
            work, box = self._vote
            with self._collective("the stop vote"):
                work.wait()
            seen = bool(box.item())
        box = torch.tensor([int(flag)], dtype=torch.int32)  # CPU tensor, CPU group: no device sync
        self._vote = (dist.all_reduce(box, op=dist.ReduceOp.MAX, group=group, async_op=True), box)
        return seen

    def broadcast(self, obj):
        if not dist.is_initialized():
            return obj
        box = [obj]
        with self._collective("the broadcast of rank 0's evaluation"):
            dist.broadcast_object_list(box, src=0, group=self._host_group())
        return box[0]

    def gather(self, obj, what: str = "an all-gather of every rank's figures"):
        if not dist.is_initialized():
            return [obj]
        gathered: list = [None] * dist.get_world_size()
        with self._collective(what):
            dist.all_gather_object(gathered, obj, group=self._host_group())
        return gathered

    def peak_memory(self):
        """Every rank's peak, keyed by rank and device (a DDP run's memory is not rank 0's
        alone)."""
        mine = super().peak_memory()
        if not dist.is_initialized():
            return mine
        gathered = self.gather(mine, "the peak-memory all-gather")
        return {f"rank{r}/{k}": v for r, peaks in enumerate(gathered) for k, v in peaks.items()}

    def close(self):
        if dist.is_initialized():
            if self._vote is not None:  # the last step's vote, which every rank started
                self._vote[0].wait()
                self._vote = None
            dist.destroy_process_group()


class BranchLevel(Parallelism, BranchLevelRules):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.runner: BranchParallel | None = None
        self.costs: dict[str, float] | None = None

    def setup(self):
        device = super().setup()
        self.given_devices(device)  # checked before anything is built or trained
        return device

    def given_devices(self, device: torch.device) -> dict[str, torch.device] | None:
        """`system.blp_devices` as devices: a bare `cuda` is the run's GPU, an index must be a
        visible GPU, and every entry must be of the run's device type (ConfigError naming the entry
        otherwise)."""
        explicit = self.cfg.system.blp_devices
        if not explicit:
            return None
        visible = torch.cuda.device_count() if device.type == "cuda" else 0
        valid = (
            ", ".join(["cuda", *(f"cuda:{i}" for i in range(visible))])
            if device.type == "cuda"
            else "cpu"
        )
        out = {}
        for m, name in explicit.items():
            try:
                d = torch.device(name)
            except (RuntimeError, ValueError):
                d = None
            if d is not None and d.type == "cuda" and d.index is None:
                d = device if device.type == "cuda" else d
            if (
                d is None
                or d.type != device.type
                or (d.type == "cuda" and not 0 <= d.index < visible)
            ):
                raise ConfigError(f"system.blp_devices: {m}: {name!r} is not a device of this run ("
                                  f"system.device={self.cfg.system.device}, {visible} visible "
                                  "GPU(s)); "
                                  f"valid: {valid}")
            out[m] = d
        return out

    def placement(self, model, probe, precision=None) -> dict[str, torch.device]:
        explicit = self.given_devices(self.device)
        if explicit:
            return explicit
        # measuring must not change what the run does next: the RNG and the BatchNorm statistics
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.random.fork_rng(devices=[]):
            self.costs = measure_branch_costs(model, probe(), self.device, precision)
        model.load_state_dict(saved)
        return assign_branches(self.costs, blp_devices(self.device))

    def branches(self, model, probe, precision):
        self.runner = BranchParallel(
            model, self.placement(model, probe, precision), self.device, precision
        )
        return self.runner

    def input_device(self, key):
        if self.runner is not None and key in self.runner.placement:
            return self.runner.placement[key]
        return self.device

    def compute_devices(self):
        devices = [self.device]
        if self.runner is not None:
            devices += [d for d in self.runner.placement.values() if d not in devices]
        return devices

    def close(self):
        if self.runner is not None:
            self.runner.close()


def wait_for(devices) -> None:
    """Wait until the CUDA devices among `devices` finished their queued work (the CPU computes
    synchronously)."""
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def dist_timeout() -> timedelta:
    """How long a collective of the default group (DDP's gradient all-reduce) waits for a peer:
    MMHPC_DIST_TIMEOUT_S, default 60 s. torch's defaults (NCCL 10 minutes, gloo 30) leave the live
    ranks of a run whose rank died waiting that long; NCCL, unlike gloo, does not see a dead peer's
    closed socket."""
    return timedelta(seconds=float(os.environ.get("MMHPC_DIST_TIMEOUT_S") or 60))


PARALLELISMS: dict[str, type[Parallelism]] = {
    p.name: p for p in (Single, DataParallel, Distributed, BranchLevel)
}


def build(cfg) -> Parallelism:
    return PARALLELISMS[cfg.system.parallelism](cfg)


# ---- Branch-Level Parallelism --------------------------------------------------------------------

def blp_devices(master: torch.device) -> list[torch.device]:
    if master.type == "cuda":
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [master]


def assign_branches(
    costs: dict[str, float], devices: list[torch.device]
) -> dict[str, torch.device]:
    """Load-aware placement: most expensive branch first, each onto the least loaded device
    (LPT)."""
    load = {d: 0.0 for d in devices}
    placement = {}
    for m in sorted(costs, key=lambda k: (-costs[k], k)):
        target = min(devices, key=lambda d: (load[d], str(d)))
        placement[m] = target
        load[target] += costs[m]
    return placement


def measure_branch_costs(
    model, batch: dict[str, torch.Tensor], device: torch.device, precision=None, reps: int = 2
) -> dict:
    """Seconds of forward+backward of each encoder branch on `device` (after one warm-up), at the
    run's precision (a `mmhpc.system.precision.Precision`; None: as called)."""
    costs = {}
    for m in model.modalities:
        x = batch[m].to(device)
        times = []
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            with precision.autocast() if precision is not None else contextlib.nullcontext():
                e = model.encode_one(m, x)
            e.float().sum().backward()
            wait_for([device])
            times.append(time.perf_counter() - t0)
        costs[m] = min(times[1:])
    model.zero_grad(set_to_none=True)
    return costs


class BranchParallel:
    """Runs each modality's encoder branch on its device, concurrently, and returns embeddings on
    the master.

    Grad mode and autocast are thread-local in PyTorch, so each branch thread re-enters the caller's
    grad mode and the run's precision (returning float32, as `mmhpc.system.runtime.RunModel` does).
    Inputs arrive on their branch's device already (the trainer asks `BranchLevel.input_device`), so
    a branch copies nothing through the master.
    """

    def __init__(
        self, model, placement: dict[str, torch.device], master: torch.device, precision=None
    ):
        self.model, self.placement, self.master, self.precision = (
            model,
            placement,
            master,
            precision,
        )
        for m, dev in placement.items():
            model.encoders[m].to(dev)
            for part in (model.project, model.dropout):
                if m in part:
                    part[m].to(dev)
        self.streams = (
            {m: torch.cuda.Stream(dev) for m, dev in placement.items()}
            if master.type == "cuda"
            else {}
        )
        self.pool = ThreadPoolExecutor(len(placement), thread_name_prefix="mmhpc-blp")

    def _branch(self, m: str, x: torch.Tensor, grad: bool):
        dev = self.placement[m]
        stream = self.streams.get(m)
        with torch.set_grad_enabled(grad):
            if stream is None:
                return self._encode_one(m, x.to(dev)).to(self.master)
            torch.cuda.set_device(dev)  # this thread's current device: the branch's
            stream.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(stream):
                e = self._encode_one(m, x.to(dev, non_blocking=True))
            return e, stream

    def _encode_one(self, m: str, x: torch.Tensor) -> torch.Tensor:
        if self.precision is None or self.precision.dtype is None:
            return self.model.encode_one(m, x)
        with self.precision.autocast():
            return self.model.encode_one(m, x).float()

    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grad = torch.is_grad_enabled()
        futures = {m: self.pool.submit(self._branch, m, batch[m], grad) for m in self.placement}
        out = {}
        for m, fut in futures.items():
            res = fut.result()
            if isinstance(
                res, tuple
            ):  # CUDA: join the branch stream before the master uses its output
                e, stream = res
                torch.cuda.current_stream(self.master).wait_stream(stream)
                e.record_stream(torch.cuda.current_stream(self.master))
                res = e.to(self.master, non_blocking=True)
            out[m] = res
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True)
