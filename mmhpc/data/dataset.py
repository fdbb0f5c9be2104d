"""Reading the prepared layout (real or synthetic data alike) as a torch Dataset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from mmhpc.data import manifest as mf
from mmhpc.data.specs import DATASETS, SPLITS, Shapes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def visual_transform(size: int, train: bool) -> v2.Transform:
    """The thesis code base's transforms: random crop + flip for training, resize + centre crop to evaluate.

    Applied to all frames of a clip at once, so the frames of one clip share one crop.
    """
    if train:
        geometry = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(int(round(size * 256 / 224)), antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class PreparedDataset(Dataset):
    """One split of a prepared dataset: items are {modality: tensor, "label": int, "index": int}.

    audio [1, frames, mel] float32; visual [frames, 3, S, S] normalised; text [2, L] int64 (ids, mask).
    """

    def __init__(self, root: str | Path, split: str, modalities: list[str] | None = None, train: bool = False,
                 verify: str = "size", audio_augment=None):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}; valid: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.manifest = mf.check(self.root, verify, modalities)
        self.spec = DATASETS[self.manifest["dataset"]]
        self.shapes = Shapes(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in self.manifest["shapes"].items()})
        self.modalities = list(modalities or self.manifest["modalities"])
        missing = set(self.modalities) - set(self.manifest["modalities"])
        if missing:
            raise ValueError(f"{root}: has no {sorted(missing)} (it has {self.manifest['modalities']})")
        labels = dict(line.split(",") for line in (self.root / "labels.csv").read_text().split()[1:])
        self.ids = (self.root / "splits" / f"{split}.txt").read_text().split()
        self.labels = torch.tensor([int(labels[c]) for c in self.ids])
        self.train = train
        self.transform = visual_transform(self.shapes.image, train)
        self.audio_augment = audio_augment if train else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        clip = self.ids[i]
        item = {"label": self.labels[i], "index": i}
        for m in self.modalities:
            item[m] = getattr(self, f"_load_{m}")(clip)
        return item

    def _load_audio(self, clip: str) -> torch.Tensor:
        x = torch.from_numpy(np.load(self.root / "audio" / f"{clip}.npy")).unsqueeze(0)
        return self.audio_augment(x) if self.audio_augment else x

    def _load_visual(self, clip: str) -> torch.Tensor:
        d = self.root / "visual" / clip
        frames = []
        for k in range(self.shapes.frames):
            with Image.open(d / f"{k}.jpg") as img:
                frames.append(torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1))
        return self.transform(torch.stack(frames))

    def _load_text(self, clip: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self.root / "text" / f"{clip}.npy"))
