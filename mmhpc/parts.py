"""The parts a trainer (`mmhpc.train`) is built from: the seeded random number generators, the
datasets, the model, the strategy and the loaders."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.models.multimodal import MultimodalModel
from mmhpc.strategies import STRATEGIES
from mmhpc.strategies.data import StrategyData


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; `deterministic` picks repeatable kernels (algorithm runs, tests) or the
    fastest ones with cuDNN autotuning (system sweeps and benchmarks). Both are process-global: set
    both ways."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclass
class Parts:
    datasets: dict
    model: MultimodalModel
    strategy: object
    loaders: dict
    num_classes: int


def build_parts(cfg, rt, to_device) -> Parts:
    """Datasets, model, strategy and loaders, in this order from the seeded RNGs: every process
    trains on its shard; validation and test run whole on rank 0 only. `to_device`: the trainer's
    batch transfer, for the strategy's own passes."""
    if cfg.system.threads:
        torch.set_num_threads(cfg.system.threads)
    seed_everything(cfg.train.seed, cfg.system.deterministic)
    datasets = build_datasets(cfg)
    train_ds = datasets["train"]
    num_classes = train_ds.spec.num_classes
    preset = cfg.data.preset if cfg.data.source == "synthetic" else "full"
    model = MultimodalModel(cfg.modalities, num_classes, cfg.model, train_ds.shapes,
                            preset).to(rt.device)
    kind = STRATEGIES[cfg.strategy.name]
    datasets = kind.split_datasets(cfg, datasets)  # Gradient Blending holds part of train out
    strategy = kind(cfg, model, rt, StrategyData(datasets, cfg, to_device))
    return Parts(datasets, model, strategy, _loaders(cfg, rt, datasets), num_classes)


def _loaders(cfg, rt, datasets: dict) -> dict:
    loaders = {
        "train": build_loader(datasets["train"], cfg, True, rt.rank, rt.world, device=rt.device)
    }
    if cfg.loader.prefetch_factor == 0:  # the estimate's own standard loader (prefetch 1, A.2.1)
        loaders["idle"] = build_loader(datasets["train"], cfg, True, rt.rank, rt.world,
                                       preinit=False)
    if rt.is_main:
        loaders["val"] = build_loader(datasets["val"], cfg, False, device=rt.device)
        loaders["test"] = build_loader(datasets["test"], cfg, False, preinit=False)  # used once
    return loaders
