"""Numeric precision as one object (thesis Sec. 3.4.2 and 4.3.2.1, Tables 4.6-4.9).

`Precision(name, device_type)` knows what a precision means on a device, whether a GPU of a given
compute capability can run it (the trainer asks with the GPU it has, the launcher with the GPU type
a profile names), sets PyTorch's backend flags, and carries the autocast dtype that the run's model
(`mmhpc.system.runtime.RunModel`) enters in its forward, so that DataParallel replicas, BLP branch
threads and every strategy run at the run's precision without entering an autocast themselves.

| name          | matmul TF32 | cuDNN TF32 | autocast | what it is                                |
|---------------|-------------|------------|----------|-------------------------------------------|
| `fp32`        | off         | on         | -        | PyTorch's defaults: the thesis' "No TF32" |
| `fp32_strict` | off         | off        | -        | every op in IEEE float32 (not the thesis) |
| `tf32`        | on          | on         | -        | thesis Fig. 3.6, its default precision    |
| `bf16`        | on          | on         | bfloat16 | thesis Fig. 3.7, on the code base's TF32  |

Sec. 4.3.2.1: "TF32 support for convolution operations is enabled by default in PyTorch", which is
why the CNN encoders "show minimal performance change" in Tables 4.6/4.7: the baseline `fp32` keeps
cuDNN TF32 on. The thesis' code base (CXianRen/AMST, `code/common.py`) turns both flags on unless
`--no_tf32`, also in its BF16 runs; ops that autocast leaves in float32 therefore use TF32 under
`bf16` too. TF32 and BF16 need compute capability 8.0+ (A100, A40, H100); `fp32_strict` and `fp32`
run anywhere. On the CPU there is no TF32: `fp32` and `fp32_strict` are plain float32, `bf16` is CPU
autocast to bfloat16 (real, mostly useful to check numerics) and `tf32` is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmhpc import compat
from mmhpc.errors import ConfigError
from mmhpc.names import PRECISIONS
from mmhpc.rules.system import PrecisionRules


@dataclass(frozen=True)
class _Mode:
    matmul_tf32: bool
    cudnn_tf32: bool
    dtype: torch.dtype | None  # autocast dtype; None: no autocast
    tensor_cores: bool         # needs compute capability 8.0+ on a GPU
    cpu: bool                  # has a meaning on the CPU
    loss_scale: bool = False   # backward on a scaled loss, unscaled before the step (GradScaler)


#: the registry's entries (mmhpc.names.PRECISIONS) with their torch dtypes
MODES = {
    name: _Mode(
        c.matmul_tf32,
        c.cudnn_tf32,
        getattr(torch, c.autocast) if c.autocast else None,
        c.tensor_cores,
        c.cpu,
        c.loss_scale,
    )
    for name, c in PRECISIONS.items()
}


@dataclass(frozen=True)
class Precision(PrecisionRules):
    """One run's precision on one kind of device (`cuda` or `cpu`): its fields and `problem` are
    `mmhpc.rules.system.PrecisionRules`' (torch-free, for the launcher); this adds torch's part."""

    @property
    def mode(self) -> _Mode:
        self.choice  # refuses an unknown name, naming the valid ones
        return MODES[self.name]

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: no autocast)."""
        return self.mode.dtype

    def validate(self, device: torch.device | None = None) -> None:
        """Refuse, before any work, a precision the (current) device cannot run."""
        capability, gpu = None, "this GPU"
        if self.device_type == "cuda":
            index = (
                device.index
                if device is not None and device.index is not None
                else torch.cuda.current_device()
            )
            capability, gpu = (
                torch.cuda.get_device_capability(index),
                torch.cuda.get_device_name(index),
            )
        problem = self.problem(capability, gpu)
        if problem:
            raise ConfigError(problem)

    def apply(self) -> None:
        """Set the process' TF32 flags (they are global in PyTorch; set both ways on every run)."""
        mode = self.mode
        torch.backends.cuda.matmul.allow_tf32 = mode.matmul_tf32
        torch.backends.cudnn.allow_tf32 = mode.cudnn_tf32

    def autocast(self):
        """The autocast context of this precision (disabled without an autocast dtype)."""
        dtype = self.dtype
        return torch.autocast(
            self.device_type, dtype=dtype or torch.float32, enabled=dtype is not None
        )

    def grad_scaler(self):
        """The loss scaler of a mode with `loss_scale` (float16 needs one), else None."""
        return compat.grad_scaler(self.device_type) if self.mode.loss_scale else None


def to_float(out):
    """Floating-point tensors (also inside dicts, lists, tuples) cast to float32 at the autocast
    boundary."""
    if torch.is_tensor(out):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: to_float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_float(v) for v in out)
    return out
