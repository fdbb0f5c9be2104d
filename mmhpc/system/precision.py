"""Numeric precision (thesis Sec. 3.4.2): FP32, TF32 (matmul + cuDNN flags) and BF16 autocast.

What each precision means per device:
- cuda: fp32 turns TF32 off for matmuls and cuDNN; tf32 turns both on; bf16 autocasts to bfloat16.
  TF32 and BF16 need compute capability 8.0+ (A100, A40, H100); older GPUs (V100, T4) are refused.
- cpu: fp32 is plain float32; bf16 is CPU autocast to bfloat16 (slower than fp32 on most CPUs but real,
  useful for checking numerics); tf32 is refused, since TF32 is a tensor-core format of NVIDIA GPUs.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from mmhpc.errors import ConfigError


def precision_problem(precision: str, device_type: str, capability: tuple[int, int] | None = None,
                      name: str = "this GPU") -> str | None:
    """Why `precision` cannot run on the device, or None if it can (used before jobs are submitted too)."""
    if device_type == "cpu" and precision == "tf32":
        return ("system.precision: tf32 is a tensor-core format of NVIDIA GPUs (compute capability 8.0+); "
                "on the CPU use fp32 or bf16")
    if device_type == "cuda" and precision in ("tf32", "bf16") and capability is not None and capability < (8, 0):
        return (f"system.precision: {precision} needs compute capability 8.0+, {name} has "
                f"{capability[0]}.{capability[1]}; use fp32 on this GPU")
    return None


def check_precision(precision: str, device: torch.device) -> None:
    capability = name = None
    if device.type == "cuda":
        capability, name = torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device)
    problem = precision_problem(precision, device.type, capability, name or "this GPU")
    if problem:
        raise ConfigError(problem)


def apply_precision(precision: str, device: torch.device):
    """Set the global TF32 flags and return a zero-argument factory of the autocast context."""
    check_precision(precision, device)
    if device.type == "cuda":
        tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if precision == "bf16":
        return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext
