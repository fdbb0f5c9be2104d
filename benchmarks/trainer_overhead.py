"""Benchmark a: the trainer's overhead against a minimal hand-written PyTorch loop (target <= 3 % on the CPU).

Both train the same model (same init), on the same data through the same loader, with the same loss
(naive joint training: fused CE plus the probes' CE) for the same batches; the trainer adds its metric
accumulation, per-modality logits, timing and hooks. Rounds alternate the two to spread machine noise.

    .venv/bin/python benchmarks/trainer_overhead.py [--rounds 3] [--batches 8]
"""
import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from mmhpc.config import load_config
from mmhpc.data.frames import finish_batch
from mmhpc.train import Trainer


def hand_loop(trainer: Trainer, batches: int) -> float:
    """The loop a researcher would write: forward, loss, backward, step; nothing else."""
    model, opt = trainer.model, trainer.strategy.optimizer
    model.train()
    t0 = time.perf_counter()
    for i, batch in enumerate(trainer.loaders["train"].epoch(0)):
        if i == batches:
            break
        batch = finish_batch(batch)  # uint8 frames -> model input, as the trainer does
        out = model(batch)
        loss = F.cross_entropy(out["fused"], batch["label"]) + sum(
            F.cross_entropy(z, batch["label"]) for z in out["probes"].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_pass(trainer: Trainer) -> float:
    t0 = time.perf_counter()
    trainer._pass("train", 0)
    return time.perf_counter() - t0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(None, ["data.dataset=cremad", "train.lr=0.01", "system.sample_interval=0",
                             f"train.max_batches={args.batches}", f"output.runs_dir={tempfile.mkdtemp()}",
                             *args.overrides])
    trainer = Trainer(cfg, progress=False)
    trainer.progress = False
    hand_loop(trainer, 2)  # warm-up: allocator, thread pools
    hand, mine = [], []
    for _ in range(args.rounds):
        torch.manual_seed(0)
        hand.append(hand_loop(trainer, args.batches))
        torch.manual_seed(0)
        mine.append(trainer_pass(trainer))
    trainer.close()
    ratio = [m / h for m, h in zip(mine, hand)]
    print(f"{args.batches} batches of {cfg.train.batch_size}, {args.rounds} rounds")
    print(f"hand-written loop: {statistics.mean(hand):.3f} s (rounds: {', '.join(f'{t:.2f}' for t in hand)})")
    print(f"mmhpc trainer:     {statistics.mean(mine):.3f} s (rounds: {', '.join(f'{t:.2f}' for t in mine)})")
    print(f"overhead: {100 * (statistics.median(ratio) - 1):+.1f} % (median of per-round ratios; target <= 3 %)")
