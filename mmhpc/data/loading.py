"""From a RunConfig to datasets and DataLoaders with the configured loader knobs."""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.synthetic import ensure_synthetic


def dataset_root(cfg) -> Path:
    d = cfg.data
    if d.source == "prepared":
        return Path(d.root)
    return ensure_synthetic(d.dataset, d.preset, d.data_seed, root=d.root)


def build_datasets(cfg) -> dict[str, PreparedDataset]:
    root = dataset_root(cfg)
    augment = None
    if cfg.model.audio_augment and "audio" in cfg.modalities:
        from mmhpc.strategies.formulas import audio_augment

        augment = audio_augment
    return {split: PreparedDataset(root, split, cfg.modalities, train=(split == "train"),
                                   verify=cfg.data.verify if split == "train" else "none",
                                   audio_augment=augment)
            for split in ("train", "val", "test")}


def build_loader(dataset: Dataset, cfg, train: bool, sampler=None) -> DataLoader:
    """A DataLoader with the run's loader knobs; training order is a pure function of the seed."""
    lc = cfg.loader
    generator = torch.Generator().manual_seed(cfg.train.seed + (0 if train else 1))
    kwargs = {}
    if lc.num_workers > 0:
        kwargs.update(persistent_workers=lc.persistent_workers, prefetch_factor=lc.prefetch_factor)
        kwargs["multiprocessing_context"] = "fork" if _fork_ok() else "spawn"
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=lc.num_workers, pin_memory=lc.pin_memory, generator=generator,
                      drop_last=False, **kwargs)


def _fork_ok() -> bool:
    # Forking after CUDA is initialised breaks the children; spawn is the safe choice then.
    return not (torch.cuda.is_available() and torch.cuda.is_initialized())
