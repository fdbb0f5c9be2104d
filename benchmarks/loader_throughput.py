"""Benchmark e: samples/s per loader worker on full-shape synthetic CREMA-D (3 frames 224x224,
filterbank 1024x128), the former pipeline against the current one, in one run. Target:
current/former >= 2.

- former: each worker opens the JPEGs with PIL, crops, flips, converts and normalises the clip with
  torchvision's v2 transforms, and sends float32 frames (~116 MB per batch of 64) through shared
  memory.
  Kept here only, as the reference implementation.
- current (`mmhpc.data`): each worker decodes with `mmhpc.compat.read_jpeg` (TorchCodec), draws the
crops, and sends
  uint8 frames; `frames.finish_batch` does the rest per batch on the device. Its cost is printed
  apart
  (here on the CPU, in the main process; on a GPU it is one kernel sequence per batch).

One worker per pipeline (prefetch 2), timed from its first batch to its last (start-up excluded);
rounds alternate the two pipelines to spread machine noise; the best round of each is reported.

    .venv/bin/python benchmarks/loader_throughput.py [--samples 192] [--batch 32] [--rounds 2]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.frames import IMAGENET_MEAN, IMAGENET_STD, finish_batch
from mmhpc.data.specs import DATASETS
from mmhpc.data.synthetic import write_synthetic


class FormerDataset(PreparedDataset):
    """The pipeline before: PIL decoding and the whole visual transform in the worker, float32
    frames out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        size = self.shapes.image
        self.former = v2.Compose(
            [
                v2.RandomResizedCrop(size, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        item.pop("visual_crop", None)
        return item

    def _load_visual(self, clip: str) -> torch.Tensor:
        frames = []
        for k in range(self.shapes.frames):
            with Image.open(self.root / "visual" / clip / f"{k}.jpg") as img:
                frames.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
        return self.former(torch.stack(frames))


def measure(dataset, batch: int, finish: bool) -> tuple[float, float]:
    """(samples/s of the one worker, seconds of finish_batch per batch in the main process)."""
    loader = DataLoader(dataset, batch_size=batch, num_workers=1, prefetch_factor=2,
                        generator=torch.Generator().manual_seed(0), shuffle=True)
    it = iter(loader)
    next(it)
    t0, n, finish_s = time.perf_counter(), 0, 0.0
    for b in it:
        n += len(b["label"])
        if finish:
            t1 = time.perf_counter()
            finish_batch(b)
            finish_s += time.perf_counter() - t1
    elapsed = time.perf_counter() - t0 - finish_s
    batches = max(len(loader) - 1, 1)
    return n / elapsed, finish_s / batches


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=192)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--root", default=None, help="reuse this synthetic dataset directory (made if missing)"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    root = (
        Path(args.root or tempfile.mkdtemp(prefix="mmhpc-throughput-"))
        / f"cremad-full-{args.samples}"
    )
    if not (root / "manifest.json").exists():
        write_synthetic(root, DATASETS["cremad"], "full", 0, progress=False, samples=args.samples)
    former_ds = FormerDataset(root, "train", ["audio", "visual"], train=True)
    current_ds = PreparedDataset(root, "train", ["audio", "visual"], train=True)
    best = {"former": (0.0, 0.0), "current": (0.0, 0.0)}
    for _ in range(args.rounds):
        for label, ds in (("former", former_ds), ("current", current_ds)):
            rate, finish = measure(ds, args.batch, finish=label == "current")
            best[label] = max(best[label], (rate, finish))
    frame_mb = {k: b["visual"].element_size() * b["visual"].nelement() * args.batch / 1e6
                for k, b in (("former", former_ds[0]), ("current", current_ds[0]))}
    print(
        f"full-shape synthetic CREMA-D, {len(current_ds)} training samples, batch {args.batch}, 1 "
        "worker, "
        f"best of {args.rounds} rounds"
    )
    print(
        f"{'pipeline':>9}  {'samples/s/worker':>16}  {'frames MB/batch':>15}  "
        f"{'finish_batch s/batch (CPU)':>26}"
    )
    for label in ("former", "current"):
        rate, finish = best[label]
        print(
            f"{label:>9}  {rate:16.1f}  {frame_mb[label]:15.1f}  "
            f"{finish if label == 'current' else 0:26.3f}"
        )
    print(f"current/former per worker: {best['current'][0] / best['former'][0]:.2f}x (target >= 2)")
