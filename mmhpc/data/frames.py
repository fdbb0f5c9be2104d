"""Video frames: decoded to uint8 in the loader workers, made model input on the device, once per
batch.

The thesis code base's transforms (AMST `code/dataset/dataset.py`): for training each frame gets its
own RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3, bilinear) and horizontal flip; for
evaluation the full frame is resized to 224 x 224 (`Resize((224, 224))`, done once by `mmhpc
prepare`, so the stored frame already is the evaluation frame); then ImageNet normalisation.

A worker only decodes the JPEGs (`mmhpc.compat.read_jpeg`: TorchCodec, libjpeg-turbo) and draws each
frame's crop and flip (`crop_params`); the frames travel as uint8 [T, 3, S, S], a quarter of float32
in shared memory
and over PCIe. `finish_batch` then converts, crops, flips and normalises the whole batch where it
lands:
one `grid_sample` over all frames. A crop of an S x S frame resized to S x S only ever enlarges, so
bilinear sampling without antialiasing is what a resize of the crop computes
(`tests/data/test_loading.py`
checks it against torchvision's own crop, resize and flip).
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from mmhpc.compat import read_jpeg

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE, CROP_RATIO = [0.08, 1.0], [3 / 4, 4 / 3]   # torchvision's RandomResizedCrop defaults
CROP_KEY = "visual_crop"  # batch key of the per-frame crop parameters


def read_frames(paths) -> torch.Tensor:
    """uint8 [T, 3, H, W] from JPEG files."""
    return torch.stack([read_jpeg(p) for p in paths])


def crop_params(frames: torch.Tensor) -> torch.Tensor:
    """float32 [T, 5]: top, left, height, width and flip (0/1) of each frame's random crop.

    Drawn from torch's global generator, which the DataLoader seeds per worker from the loader's
    generator, so a run's crops are a function of its seed as before.
    """
    rows = []
    for frame in frames:
        top, left, h, w = RandomResizedCrop.get_params(frame, CROP_SCALE, CROP_RATIO)
        rows.append((top, left, h, w, float(torch.rand(1) < 0.5)))
    return torch.tensor(rows, dtype=torch.float32)


def finish_batch(batch: dict) -> dict:
    """The batch's uint8 frames [B, T, 3, S, S] -> normalised float32, cropped and flipped where the
    batch carries crop parameters (a training batch), on the device the frames are on. Other keys
    pass through."""
    if "visual" not in batch or batch["visual"].dtype != torch.uint8:
        return batch
    out = dict(batch)
    frames = out["visual"]
    crop = out.pop(CROP_KEY, None)
    x = frames.flatten(0, 1).float()
    if crop is not None:
        x = _crop_flip(x, crop.to(x.device, non_blocking=True).flatten(0, 1))
    scale, shift = _normalisation(x.device)
    out["visual"] = torch.addcmul(shift, x, scale).view(frames.shape)  # (x / 255 - mean) / std
    return out


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel scale and shift, copied to the device once (a copy per batch would block the
    host)."""
    mean, std = (
        torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
    )
    return (1 / (255 * std)).to(device), (-mean / std).to(device)


def _crop_flip(x: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
    """Each image of x [N, 3, H, W] cropped to its (top, left, h, w), resized to H x W and maybe
    flipped.

    A bilinear resize (align_corners=False) reads output pixel k at source pixel left + (k + 0.5) w
    / W - 0.5, clamped to the crop's first and last pixel; the grid holds those positions in
    grid_sample's [-1, 1].
    """
    n, _, h, w = x.shape
    top, left, ch, cw, flip = (c[:, None] for c in crop.unbind(1))
    cols = torch.arange(w, device=x.device, dtype=torch.float32)[None, :]
    rows = torch.arange(h, device=x.device, dtype=torch.float32)[None, :]
    cols = torch.where(flip > 0, w - 1 - cols, cols)
    sx = torch.minimum(torch.maximum(left + (cols + 0.5) * cw / w - 0.5, left), left + cw - 1)
    sy = torch.minimum(torch.maximum(top + (rows + 0.5) * ch / h - 0.5, top), top + ch - 1)
    grid = torch.stack(
        torch.broadcast_tensors((2 * sx + 1)[:, None, :] / w - 1, (2 * sy + 1)[:, :, None] / h - 1),
        dim=-1,
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
