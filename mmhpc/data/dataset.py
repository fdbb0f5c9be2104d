"""Reading the prepared layout (real or synthetic data alike) as a torch Dataset."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mmhpc.data import manifest as mf
from mmhpc.data.frames import CROP_KEY, crop_params, read_frames
from mmhpc.data.specs import DATASETS, SPLITS, Shapes
from mmhpc.errors import problem


class PreparedDataset(Dataset):
    """One split of a prepared dataset: items are {modality: tensor, "label": int, "index": int}.

    audio [1, frames, mel] float32; visual [frames, 3, S, S] uint8, with "visual_crop" [frames, 5]
    (each frame's random crop and flip) in a training split, both made model input by
    `frames.finish_batch` on the device; text [2, L] int64 (ids, mask).
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        modalities: list[str] | None = None,
        train: bool = False,
        verify: str = "size",
        audio_augment=None,
    ):
        if split not in SPLITS:
            raise ValueError(problem("split", f"invalid value {split!r}", SPLITS))
        self.root = Path(root)
        self.manifest = mf.check(self.root, verify, modalities)
        # the class list of the data (an option such as IEMOCAP classes=six changes the spec's)
        self.spec = replace(
            DATASETS[self.manifest["dataset"]], classes=tuple(self.manifest["classes"])
        )
        self.shapes = Shapes(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in self.manifest["shapes"].items()})
        self.modalities = list(modalities or self.manifest["modalities"])
        missing = set(self.modalities) - set(self.manifest["modalities"])
        if missing:
            raise ValueError(
                f"{root}: has no {sorted(missing)} (it has {self.manifest['modalities']})"
            )
        labels = dict(
            line.split(",") for line in (self.root / "labels.csv").read_text().split()[1:]
        )
        self.ids = (self.root / "splits" / f"{split}.txt").read_text().split()
        if not self.ids:
            raise ValueError(
                f"{self.root / 'splits' / f'{split}.txt'}: the {split} split is empty; prepare the "
                "dataset from a larger raw copy"
            )
        self.labels = torch.tensor([int(labels[c]) for c in self.ids])
        self.train = train
        self.audio_augment = audio_augment if train else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        clip = self.ids[i]
        item = {"label": self.labels[i], "index": i}
        for m in self.modalities:
            item[m] = getattr(self, f"_load_{m}")(clip)
        if self.train and "visual" in item:
            item[CROP_KEY] = crop_params(item["visual"])
        return item

    def _load_audio(self, clip: str) -> torch.Tensor:
        x = torch.from_numpy(np.load(self.root / "audio" / f"{clip}.npy")).unsqueeze(0)
        return self.audio_augment(x) if self.audio_augment else x

    def _load_visual(self, clip: str) -> torch.Tensor:
        d = self.root / "visual" / clip
        return read_frames(d / f"{k}.jpg" for k in range(self.shapes.frames))

    def _load_text(self, clip: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.root / "text" / f"{clip}.npy"))
