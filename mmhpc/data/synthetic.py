"""Synthetic multimodal datasets written in the prepared on-disk layout (see `mmhpc.data.specs`).

Each class has a template per modality; a sample is its class template buried in noise. Two knobs
per modality make the thesis' imbalance reproducible:

- `strength`: template amplitude against unit noise. A strong modality is learned in a few steps, a
weak
  one slowly (audio fast, visual slow, as in CREMA-D/AVE; text fast as in MVSA/IEMOCAP).
- `informative`: the fraction of samples whose template shows the true class (the rest show another
  class), separately for the training split and for validation/test. The fast modality is fully
  informative on the training split but only partly on held-out data: it fits the training set at
  once
  and generalises worse, which is what an overfitting modality does. The slow one is fully
  informative
  everywhere, so the two are complementary, and a fused model beats both unless the slow modality is
  suppressed (thesis Sec. 1.2.1, 2.3).

Visual templates are a colour shift plus a left-right symmetric low-frequency pattern, so they
survive the RandomResizedCrop/flip of the real training transform.
"""
from __future__ import annotations

import io
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mmhpc.data.manifest import write_manifest
from mmhpc.data.specs import DATASETS, DatasetSpec
from mmhpc.data.splits import random_split, write_split_files
from mmhpc.progress import bars

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class Signal:
    strength: float
    informative_train: float
    informative_eval: float


# Fast modalities are strong and overfit (misleading on held-out data); slow ones weak but always
# right.
SIGNALS = {
    "audio": Signal(strength=1.0, informative_train=1.0, informative_eval=0.6),
    "visual": Signal(strength=0.25, informative_train=1.0, informative_eval=1.0),
    "text": Signal(strength=0.5, informative_train=1.0, informative_eval=0.6),
}


def default_root(dataset: str, preset: str, data_seed: int) -> Path:
    base = Path(os.environ.get("MMHPC_DATA", "data"))
    return base / "synthetic" / f"{dataset}-{preset}-d{data_seed}"


def ensure_synthetic(dataset: str, preset: str, data_seed: int = 0, root: str | Path | None = None,
                     progress: bool = True) -> Path:
    """Return the directory of the synthetic dataset, generating it once (atomically) if missing."""
    root = Path(root) if root else default_root(dataset, preset, data_seed)
    if (root / "manifest.json").exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write_synthetic(tmp, DATASETS[dataset], preset, data_seed, progress=progress)
    try:
        os.rename(tmp, root)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (root / "manifest.json").exists():
            raise
    return root


def write_synthetic(
    root: Path,
    spec: DatasetSpec,
    preset: str,
    data_seed: int,
    progress: bool = True,
    samples: int | None = None,
) -> None:
    """`samples` overrides the preset's sample count (benchmarks: a few hundred samples of the full
    shapes)."""
    shapes = spec.shapes(preset)
    n = samples or spec.samples(preset)
    rng = np.random.default_rng([data_seed, GENERATOR_VERSION, sum(map(ord, spec.name))])
    templates = _templates(spec, shapes, rng)
    labels = np.arange(n) % spec.num_classes
    rng.shuffle(labels)
    ids = [f"{spec.name}_{i:06d}" for i in range(n)]
    for m in spec.modalities:
        (root / m).mkdir(parents=True, exist_ok=True)
    splits = random_split(ids, seed=data_seed)
    in_train = np.isin(ids, splits["train"])
    shown = {
        m: _shown_labels(
            labels,
            np.where(in_train, SIGNALS[m].informative_train, SIGNALS[m].informative_eval),
            spec.num_classes,
            rng,
        )
        for m in spec.modalities
    }
    for i in tqdm(
        range(n), desc=f"synth {spec.name}/{preset}", disable=not bars(progress), leave=False
    ):
        sample_rng = np.random.default_rng(
            [data_seed, GENERATOR_VERSION, i, sum(map(ord, spec.name))]
        )
        for m in spec.modalities:
            _WRITERS[m](
                root, ids[i], templates[m][shown[m][i]], SIGNALS[m].strength, shapes, sample_rng
            )
    write_split_files(root, splits, dict(zip(ids, labels.tolist())))
    write_manifest(
        root,
        spec,
        shapes,
        source={
            "kind": "synthetic",
            "preset": preset,
            "data_seed": data_seed,
            "generator_version": GENERATOR_VERSION,
            "signals": {m: asdict(SIGNALS[m]) for m in spec.modalities},
        },
    )


def _shown_labels(labels: np.ndarray, informative: np.ndarray, num_classes: int, rng) -> np.ndarray:
    """The class each sample's template shows: the true one, or (for the uninformative rest)
    another."""
    wrong = rng.random(len(labels)) >= informative
    offset = rng.integers(1, num_classes, size=len(labels))
    return np.where(wrong, (labels + offset) % num_classes, labels)


def _templates(spec: DatasetSpec, shapes, rng) -> dict[str, np.ndarray]:
    c = spec.num_classes
    out = {}
    if "audio" in spec.modalities:
        t, f = shapes.audio
        # A class is a set of mel bands switched on with a slow temporal envelope.
        bands = (rng.random((c, 1, f)) < 0.25).astype(np.float32)
        envelope = 1.0 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, t))[None, :, None] * rng.choice(
            [-1, 1], (c, 1, 1)
        )
        proto = bands * envelope
        out["audio"] = (proto - proto.mean(axis=(1, 2), keepdims=True)) / (
            proto.std(axis=(1, 2), keepdims=True) + 1e-6
        )
    if "visual" in spec.modalities:
        s = shapes.image
        colour = rng.normal(size=(c, 1, 1, 3))
        colour /= np.linalg.norm(colour, axis=-1, keepdims=True)
        yy, xx = np.meshgrid(np.linspace(-1, 1, s), np.linspace(-1, 1, s), indexing="ij")
        freq = rng.integers(1, 4, size=(c, 2))
        pattern = np.stack([np.cos(np.pi * fy * yy) * np.cos(np.pi * fx * xx) for fy, fx in freq])[
            ..., None
        ]
        out["visual"] = (colour + 0.5 * pattern).astype(np.float32)
    if "text" in spec.modalities:
        # Each class owns a slice of the vocabulary; informative tokens are drawn from it.
        first = 4  # ids 0-3 are RoBERTa's <s>, <pad>, </s>, <unk>
        per = (shapes.vocab - first) // (c + 1)
        out["text"] = (
            np.array([first + k * per for k in range(c)])[:, None] + np.arange(per)[None, :]
        )
    return out


def _write_audio(root, clip, template, strength, shapes, rng) -> None:
    x = strength * template + rng.standard_normal(template.shape, dtype=np.float32)
    np.save(root / "audio" / f"{clip}.npy", x.astype(np.float32))


def _write_visual(root, clip, template, strength, shapes, rng) -> None:
    d = root / "visual" / clip
    d.mkdir()
    for k in range(shapes.frames):
        x = strength * template + rng.standard_normal(template.shape, dtype=np.float32)
        img = np.clip(128 + 48 * x, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=92)
        (d / f"{k}.jpg").write_bytes(buf.getvalue())


def _write_text(root, clip, template, strength, shapes, rng) -> None:
    length = shapes.text_len
    used = int(rng.integers(length // 2, length + 1))
    ids = rng.integers(4, shapes.vocab, size=used)  # filler tokens from the whole vocabulary
    informative = rng.random(used) < strength
    ids[informative] = rng.choice(template, size=int(informative.sum()))
    ids[0], ids[used - 1] = 0, 2  # <s> ... </s>
    out = np.ones((2, length), dtype=np.int64)  # pad id 1
    out[1] = 0
    out[0, :used] = ids
    out[1, :used] = 1
    np.save(root / "text" / f"{clip}.npy", out)


_WRITERS = {"audio": _write_audio, "visual": _write_visual, "text": _write_text}
