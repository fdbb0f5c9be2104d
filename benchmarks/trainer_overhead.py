"""Benchmark a: the trainer's overhead against a minimal hand-written PyTorch loop (target <= 3 % on
the CPU).

Both train the same model (same init), on the same data through the same loader, with the same loss
(naive joint training: fused CE plus the probes' CE) for the same batches, on the run's device and
at its precision (the hand loop enters the run's autocast itself), and both wait for the device
before the clock is read; the trainer adds its metric accumulation, per-modality logits, timing and
hooks. Rounds alternate the two to spread machine noise. Non-deterministic kernels with cuDNN
autotuning, as a system benchmark runs.

    .venv/bin/python benchmarks/trainer_overhead.py [--rounds 3] [--batches 8]
    .venv/bin/python benchmarks/trainer_overhead.py system.device=cuda system.precision=bf16
    data.preset=full
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
    model, opt, device = trainer.model, trainer.strategy.optimizer, trainer.device
    pinned = trainer.cfg.loader.pin_memory
    model.train()
    sync(device)
    t0 = time.perf_counter()
    for i, batch in enumerate(trainer.loaders["train"].epoch(0)):
        if i == batches:
            break
        batch = {
            k: v.to(device, non_blocking=pinned) for k, v in batch.items() if torch.is_tensor(v)
        }
        batch = finish_batch(
            batch
        )  # uint8 frames -> model input on the device, as the trainer does
        with trainer.runtime.precision.autocast():
            out = model(batch)
        loss = F.cross_entropy(out["fused"].float(), batch["label"]) + sum(
            F.cross_entropy(z, batch["label"]) for z in out["probes"].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return time.perf_counter() - t0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_pass(trainer: Trainer) -> float:
    sync(trainer.device)
    t0 = time.perf_counter()
    trainer._pass("train", 0)  # synchronises every device of the run before it returns
    return time.perf_counter() - t0


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(
        None,
        [
            "data.dataset=cremad",
            "train.lr=0.01",
            "system.sample_interval=0",
            "system.deterministic=false",
            f"train.max_batches={args.batches}",
            f"output.runs_dir={tempfile.mkdtemp()}",
            *args.overrides,
        ],
    )
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
    print(
        f"hand-written loop: {statistics.mean(hand):.3f} s (rounds: "
        f"{', '.join(f'{t:.2f}' for t in hand)})"
    )
    print(
        f"mmhpc trainer:     {statistics.mean(mine):.3f} s (rounds: "
        f"{', '.join(f'{t:.2f}' for t in mine)})"
    )
    print(
        f"overhead: {100 * (statistics.median(ratio) - 1):+.1f} % (median of per-round ratios; "
        "target <= 3 %)"
    )
