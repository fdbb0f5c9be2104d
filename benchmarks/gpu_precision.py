"""Benchmark e (needs a CUDA GPU of compute capability 8.0+): fp32 / tf32 / bf16 epoch time per encoder on
the `full` synthetic datasets (the shape of thesis Tables 4.6-4.9), and standard vs pre-initialised loader
with GPU utilisation (Tables 4.10-4.12). Records go to --runs-dir (default reports/results/gpu).

    .venv/bin/python benchmarks/gpu_precision.py --datasets cremad mvsa --batch 64
"""
import argparse
import sys

import torch

from mmhpc.bench import bench
from mmhpc.config import load_config

ENCODERS = {"cremad": ["audio", "visual"], "ave": ["audio", "visual"], "mvsa": ["visual", "text"],
            "iemocap": ["audio", "visual", "text"], "urfunny": ["audio", "visual", "text"]}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["cremad", "mvsa"], choices=sorted(ENCODERS))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--max-batches", type=int, default=None, help="cap batches per epoch")
    p.add_argument("--runs-dir", default="reports/results/gpu")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_precision: no CUDA device visible; this benchmark measures GPU precisions")
    common = [f"train.batch_size={args.batch}", "data.preset=full", "system.device=cuda", "loader.num_workers=8",
              "loader.pin_memory=true", f"output.runs_dir={args.runs_dir}", "output.overwrite=true"]
    if args.max_batches:
        common.append(f"train.max_batches={args.max_batches}")
    print(f"{'dataset':<9}{'encoder':<8}{'fp32 s':>9}{'tf32 s':>9}{'bf16 s':>9}{'tf32 x':>8}{'bf16 x':>8}")
    for ds in args.datasets:
        for enc in ENCODERS[ds]:
            t = {}
            for prec in ("fp32", "tf32", "bf16"):
                cfg = load_config(None, [*common, f"data.dataset={ds}", f"data.modalities=[{enc}]",
                                         f"system.precision={prec}", f"output.name=precision-{ds}-{enc}-{prec}"])
                t[prec] = bench(cfg, args.epochs, args.warmup, progress=False)["bench"]["train_s_mean"]
            print(f"{ds:<9}{enc:<8}{t['fp32']:9.2f}{t['tf32']:9.2f}{t['bf16']:9.2f}"
                  f"{t['fp32'] / t['tf32']:8.2f}{t['fp32'] / t['bf16']:8.2f}")
    print(f"{'dataset':<9}{'loader':<10}{'epoch s':>9}{'stall s':>9}{'GPU util %':>11}")
    for ds in args.datasets:
        for preinit in (False, True):
            cfg = load_config(None, [*common, f"data.dataset={ds}", f"loader.preinit={str(preinit).lower()}",
                                     f"output.name=loader-{ds}-{'preinit' if preinit else 'standard'}"])
            b = bench(cfg, args.epochs, args.warmup, progress=False)["bench"]
            util = b.get("util/gpu0_util_pct_mean", float("nan"))
            print(f"{ds:<9}{'preinit' if preinit else 'standard':<10}{b['epoch_s_mean']:9.2f}"
                  f"{b['train_loader_init_s_mean'] + b['val_loader_init_s_mean']:9.2f}{util:11.1f}")
