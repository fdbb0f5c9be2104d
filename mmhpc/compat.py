"""What differs between the torch releases mmhpc supports (setup.cfg: torch>=2.1, the oldest release
whose API the package keeps to: tests/test_torch_floor.py checks every `torch.*` use against it).

A newer-only API is used here only, behind a check, through getattr (so the floor check, which reads
attribute chains, sees the old path it can verify).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch


def grad_scaler(device_type: str):
    """A loss scaler for `device_type`: torch.amp.GradScaler (torch 2.3+, also on the CPU), else the
    CUDA one of older releases."""
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device_type)
    return torch.cuda.amp.GradScaler(enabled=device_type == "cuda")


def init_process_group(backend: str, device: torch.device | None = None, **kwargs) -> None:
    """torch.distributed.init_process_group, binding NCCL to `device` at once where torch can (the
    `device_id` argument, torch 2.3+); an older torch binds it on first use."""
    import inspect

    import torch.distributed as dist

    if device is not None and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device
    dist.init_process_group(backend, **kwargs)


def read_jpeg(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] RGB of a JPEG file, decoded with libjpeg-turbo on the CPU.

    TorchCodec's decoder where it is installed: torchvision 0.29 deprecated its own image decoding
    (`torchvision.io.decode_jpeg`, `read_file`) in favour of TorchCodec 0.16+, which needs torch
    2.11+. With an older stack (down to the torch floor) torchvision's, not deprecated there; both
    give the same pixels (tests/data/test_loading.py)."""
    return _jpeg_decoder()(str(path))


@functools.cache
def _jpeg_decoder():
    try:
        from torchcodec.decoders import decode_jpeg
    except (
        ImportError,
        OSError,
        RuntimeError,
    ):  # absent, or built for another torch (a site's module)
        from torchvision.io import ImageReadMode, decode_jpeg, read_file

        return lambda path: decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    return lambda path: decode_jpeg(path, mode="RGB")
