"""Passes a strategy runs over the data itself, outside the trainer's epoch loop.

PMR computes its prototypes before each epoch from a share of the training batches (the thesis code
base's `calculate_prototype`); Gradient Blending estimates its weights on a part of the training
data held out of training (`split_held_out`). The trainer builds every strategy with a
`StrategyData`; a strategy built without a trainer (unit tests) can be given one directly.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset, Subset

from mmhpc.data.loading import build_loader


class StrategyData:
    def __init__(self, datasets: dict[str, Dataset], cfg, to_device: Callable[[dict], dict]):
        self.datasets, self.cfg, self.to_device = datasets, cfg, to_device

    def batches(
        self, split: str, epoch: int = 0, fraction: float = 1.0, shuffle: bool = False
    ) -> Iterator[dict]:
        """Device batches of `split`: the first ceil(fraction x batches), in the training order of
        `epoch` when `shuffle` (the permutation the training pass of that epoch uses), else in file
        order."""
        if split not in self.datasets:
            raise KeyError(f"no {split!r} split here; the run has {', '.join(self.datasets)}")
        loader = build_loader(self.datasets[split], self.cfg, shuffle, preinit=False)
        limit = max(1, math.ceil(fraction * len(loader)))
        for i, batch in enumerate(loader.epoch(epoch)):
            if i >= limit:
                break
            yield self.to_device(batch)


    def probe(self) -> dict:
        """One training batch on the device, the first of epoch 0's order (BLP measures branch costs
        on it)."""
        return next(self.batches("train", 0, shuffle=True))


class Part(Subset):
    """A subset that still answers the whole dataset's attributes (spec, shapes, modalities,
    ...)."""

    def __getattr__(self, name):
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


def split_held_out(
    train: Dataset, fraction: float, seed: int, evaluation: Dataset
) -> tuple[Part, Part]:
    """(training part, held-out part) of the training split: a seeded random `fraction` of its
    samples is held out, read from `evaluation` (the same samples without training augmentation)."""
    n = len(train)
    k = round(fraction * n)
    if not 0 < k < n:
        raise ValueError(f"holding out {fraction} of {n} training samples leaves an empty part")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return Part(train, sorted(order[k:].tolist())), Part(evaluation, sorted(order[:k].tolist()))
