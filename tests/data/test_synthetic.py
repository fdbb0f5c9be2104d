"""Synthetic datasets: the prepared layout, determinism per seed, the manifest check."""
import json

import numpy as np
import pytest
import torch

from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.manifest import ManifestError, verify
from mmhpc.data.specs import DATASETS
from mmhpc.data.synthetic import ensure_synthetic


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_layout_and_shapes(synth_dir, name):
    root = synth_dir(name)
    spec = DATASETS[name]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["modalities"] == list(spec.modalities)
    assert sum(manifest["counts"].values()) == spec.tiny_samples
    assert manifest["counts"]["train"] == int(0.8 * spec.tiny_samples)
    ds = PreparedDataset(root, "val")
    item = ds[0]
    shapes = spec.shapes("tiny")
    if "audio" in spec.modalities:
        assert item["audio"].shape == (1, *shapes.audio)
        assert (root / "audio" / f"{ds.ids[0]}.npy").exists()
    if "visual" in spec.modalities:
        assert item["visual"].shape == (spec.frames, 3, shapes.image, shapes.image)
        assert (root / "visual" / ds.ids[0] / "0.jpg").exists()
    if "text" in spec.modalities:
        assert item["text"].shape == (2, shapes.text_len) and item["text"].dtype == torch.int64
    assert 0 <= int(item["label"]) < spec.num_classes
    # the three splits partition the samples
    ids = [
        set((root / "splits" / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")
    ]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_full_preset_has_the_real_shapes_and_counts():
    spec = DATASETS["cremad"]
    full = spec.shapes("full")
    assert (full.audio, full.frames, full.image, full.text_len) == ((1024, 128), 3, 224, 128)
    assert spec.samples("full") == 7442
    assert DATASETS["mvsa"].shapes("full").frames == 1
    assert DATASETS["mvsa"].shapes("full").text_len == 256  # the thesis code's MVSA token length
    assert (
        DATASETS["iemocap"].shapes("full").text_len
        == DATASETS["urfunny"].shapes("full").text_len
        == 128
    )


def test_synthetic_iemocap_has_the_thesis_five_classes(synth_dir):
    root = synth_dir("iemocap")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == ["angry", "excited", "frustrated", "neutral", "sad"]
    labels = {int(line.split(",")[1]) for line in (root / "labels.csv").read_text().split()[1:]}
    assert labels == {0, 1, 2, 3, 4}
    assert PreparedDataset(root, "train").spec.num_classes == 5


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = ensure_synthetic("mvsa", "tiny", 3, root=tmp_path / "a", progress=False)
    b = ensure_synthetic("mvsa", "tiny", 3, root=tmp_path / "b", progress=False)
    c = ensure_synthetic("mvsa", "tiny", 4, root=tmp_path / "c", progress=False)
    files = lambda r: json.loads((r / "manifest.json").read_text())["files"]  # noqa: E731
    assert files(a) == files(b)
    assert files(a) != files(c)


def test_fast_modality_overfits_by_design(synth_dir):
    """Audio templates show the true class on every training clip but not on every held-out clip."""
    root = synth_dir("cremad")
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])

    def agreement(split):
        ids = (root / "splits" / f"{split}.txt").read_text().split()
        x = np.stack([np.load(root / "audio" / f"{c}.npy") for c in ids])
        y = np.array([int(labels[c]) for c in ids])
        # nearest class mean of the training split as a template detector
        return x, y

    xt, yt = agreement("train")
    means = np.stack([xt[yt == k].mean(0) for k in range(6)])
    score = lambda x: np.einsum("ntf,ktf->nk", x, means).argmax(1)  # noqa: E731
    xv, yv = agreement("test")
    train_acc, test_acc = (score(xt) == yt).mean(), (score(xv) == yv).mean()
    assert train_acc > 0.95
    assert 0.4 < test_acc < 0.8


def test_manifest_catches_truncated_and_missing_files(tmp_path):
    root = ensure_synthetic("cremad", "tiny", 0, root=tmp_path / "d", progress=False)
    assert verify(root, "checksum") == []
    clip = next((root / "audio").iterdir())
    clip.write_bytes(clip.read_bytes()[:-10])
    frame = next((root / "visual").iterdir()) / "1.jpg"
    frame.unlink()
    problems = verify(root, "size")
    assert any(clip.name in p and "truncated" in p for p in problems)
    assert any("1.jpg: missing" in p for p in problems)
    with pytest.raises(ManifestError, match="2 file"):
        PreparedDataset(root, "train")
