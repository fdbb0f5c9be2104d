"""The system layer of one run: the devices it computes on and the precision it computes at.

`Runtime(parallelism, precision)` is everything a strategy needs of the system, in the shape of
Lightning Fabric's strategy and precision plugins (`strategy.backward -> precision.backward`):
- `setup_model(model, probe)`: the model wrapped for the run (`RunModel`: the run's autocast, BLP's
  branch threads; then `nn.DataParallel` or `DistributedDataParallel` around it), and `Net`, the one
  object strategies call forward on;
- `to_device(batch)`, `backward(loss)` (the precision's loss-scaling hook; DDP's gradient
  all-reduce, correct for steps with several backward passes), `step(optimizer)`;
- the collectives `reduce`, `broadcast`, `gather`, `any_rank`, `mean`, `synchronize`,
  `peak_memory`, and `state_dict` / `load_state_dict` for a resumed run.

DDP synchronises gradients in two ways. The step's full forward (`net(batch)`: embeddings, fused and
probe logits) runs through `DistributedDataParallel`, whose reducer all-reduces the gradients during
the one backward that follows, overlapped with it. Every other forward with gradients (`net.encode`,
`net.fusion`, ...: strategies that update several times per step, such as Alternating training) runs
on the local model, and `backward` then all-reduces the gradients itself after each backward pass,
so every optimiser step of every process sees the same averaged gradients.
"""
from __future__ import annotations

import ctypes
import gc

import torch
import torch.distributed as dist
from torch import nn

from mmhpc.system import parallel
from mmhpc.system.precision import Precision, to_float


class RunModel(nn.Module):
    """The model at the run's precision: `forward(op, *args)` runs one of the model's parts (`step`,
    `encode`, `fusion`, `probe_logits`) inside the run's autocast and returns float32 (losses
    computed outside see float32, as they would inside an autocast). Autocast state is thread-local:
    DataParallel replicas enter it here, in their own thread; BLP's branch threads enter it in
    `BranchParallel`."""

    def __init__(self, model: nn.Module, precision: Precision, branches=None):
        super().__init__()
        self.model = model
        self.precision = precision
        self.branches = branches  # a `parallel.BranchParallel` under BLP

    def forward(self, op: str = "step", *args):
        with self.precision.autocast():
            out = getattr(self, f"_{op}")(*args)
        return to_float(out) if self.precision.dtype is not None else out

    def _encode(self, batch: dict) -> dict:
        if self.branches is not None:
            return self.branches.encode(batch)
        return self.model.encode(batch)

    def _fusion(self, embs: dict) -> torch.Tensor:
        return self.model.fusion(embs)

    def _probe_logits(self, embs: dict) -> dict:
        return self.model.probe_logits(embs)

    def _step(self, batch: dict) -> dict:
        """Embeddings, fused and probe logits in one forward: what a one-backward step trains on."""
        embs = self._encode(batch)
        return {
            "embs": embs,
            "fused": self.model.fusion(embs),
            "probes": self.model.probe_logits(embs),
        }


class Net:
    """What strategies call forward on, at the run's precision and parallelism: `net(batch)` (the
    step's full forward), `net.encode(batch)`, `net.fusion(embs)`, `net.probe_logits(embs)`.
    `net.part(name)` is the same for a submodel (AMST's joint module)."""

    def __init__(self, runtime: Runtime, local: RunModel, wrapped: nn.Module | None = None):
        self.runtime, self.local, self.wrapped = runtime, local, wrapped

    def __call__(self, batch: dict) -> dict:
        return self.runtime.forward(self, "step", batch)

    def encode(self, batch: dict) -> dict:
        return self.runtime.forward(self, "encode", batch)

    def fusion(self, embs: dict) -> torch.Tensor:
        return self.runtime.forward(self, "fusion", embs)

    def probe_logits(self, embs: dict) -> dict:
        return self.runtime.forward(self, "probe_logits", embs)

    @property
    def model(self) -> nn.Module:
        """The plain model (parameters and modules, no precision or parallelism)."""
        return self.local.model

    def part(self, name: str) -> Net:
        return Net(self.runtime, RunModel(getattr(self.local.model, name), self.local.precision))


class Runtime:
    def __init__(self, parallelism: parallel.Parallelism, precision: Precision):
        self.parallelism, self.precision = parallelism, precision
        self.net: Net | None = None
        self.scaler = precision.grad_scaler()  # None unless the precision scales its loss
        self._synced = False  # a DDP forward is pending whose backward DDP's reducer synchronises

    @classmethod
    def from_config(cls, cfg) -> Runtime:
        """Choose the device (joining the process group under DDP), check and set the precision."""
        par = parallel.build(cfg)
        device = par.setup()
        precision = Precision(cfg.system.precision, device.type)
        precision.validate(device)
        precision.apply()
        return cls(par, precision)

    # ---- where the run computes ---------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.parallelism.device

    @property
    def rank(self) -> int:
        return self.parallelism.rank

    @property
    def world(self) -> int:
        return self.parallelism.world

    @property
    def is_main(self) -> bool:
        return self.parallelism.is_main

    def setup_model(self, model: nn.Module, probe=None) -> Net:
        """Wrap `model` for the run; `probe()` gives one training batch (BLP measures branch costs
        on it)."""
        branches = self.parallelism.branches(model, probe, self.precision)
        local = RunModel(model, self.precision, branches)
        self.net = Net(self, local, self.parallelism.wrap(local))
        return self.net

    def to_device(self, batch: dict, non_blocking: bool = False) -> dict:
        return self.parallelism.to_device(batch, non_blocking=non_blocking)

    def forward(self, net: Net, op: str, *args):
        """Run `op` through the DP/DDP wrapper where that is right, else on the local model."""
        wrapped = net.wrapped
        if wrapped is None or wrapped is net.local or not torch.is_grad_enabled():
            return net.local(op, *args)  # evaluation and metrics: no replicas, no collectives
        if isinstance(wrapped, nn.parallel.DistributedDataParallel):
            if op != "step" or self._synced:
                return net.local(op, *args)  # its gradients are all-reduced by `backward`
            self._synced = True
        return wrapped(op, *args)

    # ---- one update ---------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss` (through the precision's loss-scaling hook), the same on every
        process."""
        synced, self._synced = self._synced, False
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        if self.world > 1 and not synced:
            self._all_reduce_grads()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """The optimiser's step; with loss scaling on unscaled gradients, skipped when one is not
        finite."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def _all_reduce_grads(self) -> None:
        """Average every gradient over the processes, one all-reduce per dtype. Every process has
        the same set of gradients: the strategy's graph is the same on every process."""
        if not dist.is_initialized():
            return
        grads = [p.grad for p in self.net.local.parameters() if p.grad is not None]
        for dtype in dict.fromkeys(g.dtype for g in grads):
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            flat /= self.world
            for g, part in zip(group, flat.split([g.numel() for g in group])):
                g.copy_(part.view_as(g))

    # ---- collectives --------------------------------------------------------------------------
    def reduce(self, values: dict[str, float], weight: float) -> dict[str, float]:
        return self.parallelism.reduce(values, weight)

    def broadcast(self, obj):
        return self.parallelism.broadcast(obj)

    def gather(self, obj, what: str = "an all-gather of every rank's figures") -> list:
        """Every rank's object, in rank order (`[obj]` in one process)."""
        return self.parallelism.gather(obj, what)

    def any_rank(self, flag: bool) -> bool:
        return self.parallelism.any_rank(flag)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of a device tensor over the processes (the tensor itself in one process)."""
        if self.world > 1 and dist.is_initialized():
            tensor = tensor.clone()
            dist.all_reduce(tensor)
            tensor /= self.world
        return tensor

    def synchronize(self) -> None:
        self.parallelism.synchronize()

    def peak_memory(self) -> dict:
        return self.parallelism.peak_memory()

    # ---- checkpoints and the end --------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def close(self) -> None:
        self.parallelism.close()


def release_host_memory() -> bool:
    """Give the host memory of finished runs back to the system; True when glibc's heaps were
    trimmed. Two things keep it otherwise: a trainer's reference cycles (its components point back
    at it) hold its model, gradients and optimiser state until the collector's rare full pass, and
    glibc keeps what is freed in the malloc arena of each thread that freed it (intra-op, loader,
    BLP). Measured here, 15 tiny runs in one process grow it from 0.7 to 3.4 GB, and 0.8 GB after a
    collection and `malloc_trim`; a local sweep, a test suite or a DDP worker running several runs
    in one process otherwise adds up to an out-of-memory kill. The trim is a no-op where the C
    library is not glibc (musl, macOS)."""
    gc.collect()
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
