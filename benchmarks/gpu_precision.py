"""Benchmark e (needs a CUDA GPU of compute capability 8.0+): fp32 / tf32 / bf16 train time per
epoch of each single encoder on the `full` synthetic datasets (the shape of thesis Tables 4.6-4.9),
and standard vs pre-initialised loader with GPU utilisation (Tables 4.10-4.12), at the system
sweeps' settings (batch 64, prefetch 2, pinned memory, non-deterministic kernels with
cudnn.benchmark). The same measurements as the bench and loader checks of `make gpu-check`
(mmhpc/gpucheck.py), for more datasets and epochs; records go to reports/results/<gpu>/runs/ (or
--out).

    .venv/bin/python benchmarks/gpu_precision.py --datasets cremad mvsa --epochs 2
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from mmhpc.gpucheck import PRECISIONS, Check, bench_loaders, bench_precisions, default_out

ENCODERS = {"cremad": ["audio", "visual"], "ave": ["audio", "visual"], "mvsa": ["visual", "text"],
            "iemocap": ["audio", "visual", "text"], "urfunny": ["audio", "visual", "text"]}

if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["cremad", "mvsa"], choices=sorted(ENCODERS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument(
        "--out", type=Path, default=None, help="records directory (default reports/results/<gpu>/)"
    )
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_precision: no CUDA device visible; this benchmark measures GPU precisions")
    ck = Check(args.out or default_out(), budget_s=float("inf"), workers=args.workers)
    print(f"{torch.cuda.get_device_name(0)}; train s/epoch after {args.warmup} warm-up epoch(s)")
    print(
        f"{'dataset':<9}{'encoder':<8}"
        + "".join(f"{q + ' s':>9}" for q in PRECISIONS)
        + f"{'tf32 x':>8}{'bf16 x':>8}"
    )
    for ds in args.datasets:
        rec = bench_precisions(ck, ds, ENCODERS[ds], args.epochs, args.warmup)
        for enc in ENCODERS[ds]:
            t = {q: rec[f"{enc}/{q}"]["train_s_mean"] for q in PRECISIONS}
            print(f"{ds:<9}{enc:<8}" + "".join(f"{t[q]:9.2f}" for q in PRECISIONS)
                  + f"{t['fp32'] / t['tf32']:8.2f}{t['fp32'] / t['bf16']:8.2f}")
    print(f"{'dataset':<9}{'loader':<10}{'epoch s':>9}{'stall s':>9}{'GPU util %':>11}")
    for ds in args.datasets:
        rec = bench_loaders(ck, ds, epochs=args.epochs, warmup=args.warmup)
        for loader in ("standard", "preinit"):
            r = rec[loader]
            print(f"{ds:<9}{loader:<10}{r['epoch_s_mean']:9.2f}{r['stall_s']:9.2f}"
                  f"{r.get('util/gpu0_util_pct_mean', float('nan')):11.1f}")
