"""Split and label files of the prepared layout: splits/{train,val,test}.txt and labels.csv."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mmhpc.data.specs import SPLITS

TRAIN_FRACTION, VAL_FRACTION = 0.8, 0.1


def random_split(clip_ids: list[str], seed: int) -> dict[str, list[str]]:
    """80/10/10 at random (thesis Sec. 4.2), a function of the seed and the set of ids only.

    Callers pass every clip found in the raw copy, failed ones included, so that fixing a broken
    file and preparing again does not move the other clips between splits.
    """
    ids = sorted(clip_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train, n_val = int(TRAIN_FRACTION * len(ids)), int(VAL_FRACTION * len(ids))
    bounds = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {split: sorted(ids[i] for i in bounds[split]) for split in SPLITS}


def stratified_split(labels: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Per class, at random: 80 % training, 10 % test, the rest validation, as the thesis code base
    splits IEMOCAP (AMST `code/data/IEMOCAP/split_iemo_dataset.py`), so every split keeps the class
    balance."""
    rng = np.random.default_rng(seed)
    out = {split: [] for split in SPLITS}
    for label in sorted(set(labels.values())):
        ids = sorted(c for c, y in labels.items() if y == label)
        ids = [ids[i] for i in rng.permutation(len(ids))]
        n_train, n_test = int(TRAIN_FRACTION * len(ids)), int(VAL_FRACTION * len(ids))
        out["train"] += ids[:n_train]
        out["test"] += ids[n_train:n_train + n_test]
        out["val"] += ids[n_train + n_test:]
    return {split: sorted(ids) for split, ids in out.items()}


def write_split_files(
    root: Path, splits: dict[str, list[str]], labels: dict[str, int]
) -> dict[str, int]:
    """labels.csv and the split lists, restricted to the clips in `labels` (the prepared ones);
    returns the number of clips per split."""
    kept = {split: [c for c in splits[split] if c in labels] for split in SPLITS}
    listed = sorted(c for ids in kept.values() for c in ids)
    (root / "labels.csv").write_text(
        "clip_id,label\n" + "".join(f"{c},{labels[c]}\n" for c in listed)
    )
    (root / "splits").mkdir(exist_ok=True)
    for split, ids in kept.items():
        (root / "splits" / f"{split}.txt").write_text("".join(f"{c}\n" for c in ids))
    return {split: len(ids) for split, ids in kept.items()}
