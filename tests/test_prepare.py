"""`mmhpc prepare` on tiny raw copies made by the tests: raw -> prepare -> load -> one epoch of training,
per-file errors, resumption, and the manifest check of a prepared dataset."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fixtures_raw import MAKERS, make_cremad, make_tokenizer, tweet_sentiments
from mmhpc.cli import main
from mmhpc.config import load_config
from mmhpc.data.dataset import PreparedDataset
from mmhpc.data.manifest import ManifestError, verify
from mmhpc.data.prepare import PrepareError, prepare
from mmhpc.data.prepare.mvsa import tweet_label
from mmhpc.data.prepare.video import sample_times
from mmhpc.data.specs import DATASETS

# dataset -> (clips prepared, samples the dataset's own rules drop)
EXPECTED = {"cremad": (10, 0), "ave": (10, 0), "mvsa": (10, 2), "iemocap": (10, 2), "urfunny": (10, 0)}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tokenizer):
    """`prepared(name)` -> (raw copy, prepared root, report), made once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            base = tmp_path_factory.mktemp(name)
            raw = MAKERS[name](base / "raw")
            report = prepare(name, raw, base / "prepared", jobs=2, seed=0, tokenizer=tokenizer, progress=False)
            made[name] = raw, base / "prepared", report
        return made[name]

    return get


def _train_one_epoch(name, root, runs, *overrides):
    cfg = load_config(None, [f"data.dataset={name}", "data.source=prepared", f"data.root={root}", "train.epochs=1",
                             "train.batch_size=4", "system.threads=2", "model.text_size=tiny",
                             f"output.runs_dir={runs}", *overrides])
    from mmhpc.train import train

    return train(cfg, progress=False)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_to_prepared_to_one_epoch(prepared, tokenizer, tmp_path, name):
    raw, root, report = prepared(name)
    spec = DATASETS[name]
    assert report.ok, report.summary()
    assert (report.prepared, sum(report.skipped.values())) == EXPECTED[name]
    assert verify(root, "checksum") == []
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["modalities"] == list(spec.modalities) and manifest["classes"] == list(spec.classes)
    assert sum(manifest["counts"].values()) == EXPECTED[name][0]
    assert manifest["source"]["split"] == ("official" if name == "ave" else "random")
    if "text" in spec.modalities:  # the tiny RoBERTa's vocabulary is the tokenizer's
        assert manifest["shapes"]["vocab"] == len(json.loads((tokenizer / "vocab.json").read_text()))

    ds = PreparedDataset(root, "train", train=True)
    item = ds[0]
    if "audio" in spec.modalities:
        assert item["audio"].shape == (1, 1024, 128) and item["audio"].dtype == torch.float32
        assert item["audio"].abs().sum() > 0
    if "visual" in spec.modalities:
        assert item["visual"].shape == (spec.frames, 3, 224, 224)
    if "text" in spec.modalities:
        ids = item["text"]
        assert ids.shape == (2, 128) and ids.dtype == torch.int64
        assert ids[0, 0] == 0 and ids[1].sum() > 2  # <s> first, real tokens attended
    labels = [int(y) for y in PreparedDataset(root, "val").labels] + [int(y) for y in ds.labels]
    assert all(0 <= y < spec.num_classes for y in labels)

    record = _train_one_epoch(name, root, tmp_path / "runs")
    assert record.status == "done" and len(record.epochs) == 1
    assert record.data["train"] == manifest["counts"]["train"]


def test_labels_follow_the_raw_annotations(prepared):
    _, root, _ = prepared("cremad")
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    assert labels["1001_IEO_ANG_HI"] == "0" and labels["1001_IEO_SAD_HI"] == "5"
    _, root, _ = prepared("ave")
    ave = DATASETS["ave"].classes
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    assert labels["-vid00_x"] == str(ave.index("Church bell"))
    assert (root / "splits" / "test.txt").read_text().split() == ["-vid09_x"]  # the official split, kept
    _, root, _ = prepared("mvsa")
    mvsa = DATASETS["mvsa"].classes
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    assert {c: mvsa[int(y)] for c, y in labels.items()} == tweet_sentiments(10)


def test_iemocap_two_modal_variant_is_the_same_data_read_with_fewer_modalities(prepared):
    """The trainer's own config -> datasets path; training itself is the 3-modal epoch above."""
    from mmhpc.data.loading import build_datasets

    _, root, _ = prepared("iemocap")
    cfg = load_config(None, ["data.dataset=iemocap", "data.source=prepared", f"data.root={root}",
                             "data.modalities=[audio,visual]"])
    datasets = build_datasets(cfg)
    item = datasets["train"][0]
    assert set(item) == {"audio", "visual", "label", "index"}
    assert sum(len(d) for d in datasets.values()) == EXPECTED["iemocap"][0]


def test_a_missing_or_corrupt_raw_file_fails_only_its_clip_and_a_rerun_resumes(tmp_path, capsys):
    raw = make_cremad(tmp_path / "raw")
    out = tmp_path / "prepared"
    missing = raw / "AudioWAV" / "1001_IEO_FEA_HI.wav"
    corrupt = raw / "VideoFlash" / "1001_IEO_HAP_HI.flv"
    kept_audio, kept_video = missing.read_bytes(), corrupt.read_bytes()
    missing.unlink()
    corrupt.write_bytes(b"this is not a video" * 10)

    assert main(["prepare", "cremad", "--raw", str(raw), "--out", str(out), "--jobs", "2", "-q"]) == 1
    err = capsys.readouterr().err
    assert "8 clips prepared" in err and "2 failed" in err
    assert f"{missing}: missing" in err and str(corrupt) in err
    failed = json.loads((out / "prepare_errors.json").read_text())["failed"]
    assert set(failed) == {"1001_IEO_FEA_HI", "1001_IEO_HAP_HI"}
    assert str(missing) in failed["1001_IEO_FEA_HI"] and "corrupt" in failed["1001_IEO_HAP_HI"]
    listed = sum(((out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")), [])
    assert len(listed) == 8 and not set(failed) & set(listed)
    assert not (out / "audio" / "1001_IEO_HAP_HI.npy").exists()  # a failed clip leaves no partial outputs
    assert verify(out) == []
    splits_before = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}

    # a crash mid-clip: one frame never renamed into place, its temporary file left behind
    (out / "visual" / "1001_IEO_ANG_HI" / "2.jpg").rename(out / "visual" / "1001_IEO_ANG_HI" / ".2.jpg.tmp-99")
    missing.write_bytes(kept_audio)
    corrupt.write_bytes(kept_video)
    report = prepare("cremad", raw, out, jobs=1, progress=False)
    assert report.ok and report.prepared == 3 and report.reused == 7
    assert not (out / "visual" / "1001_IEO_ANG_HI" / ".2.jpg.tmp-99").exists()
    assert verify(out, "checksum") == []
    assert sum(json.loads((out / "manifest.json").read_text())["counts"].values()) == 10
    after = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert all(set(splits_before[s]) <= set(after[s]) for s in after)  # fixing files moves no other clip


def test_the_manifest_check_catches_a_truncated_prepared_file(prepared, tmp_path):
    _, root, _ = prepared("cremad")
    copy = shutil.copytree(root, tmp_path / "copy")
    clip = (copy / "splits" / "train.txt").read_text().split()[0]
    npy = copy / "audio" / f"{clip}.npy"
    npy.write_bytes(npy.read_bytes()[:1000])
    problems = verify(copy)
    assert len(problems) == 1 and f"audio/{clip}.npy" in problems[0] and "truncated" in problems[0]
    with pytest.raises(ManifestError, match="truncated"):
        PreparedDataset(copy, "train")


def test_another_recipe_in_the_same_directory_is_refused(prepared, tmp_path):
    raw, root, _ = prepared("ave")
    with pytest.raises(PrepareError, match="another recipe"):
        prepare("cremad", prepared("cremad")[0], root, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not empty"):
        prepare("ave", raw, tmp_path / "other", progress=False)
    assert main(["prepare", "mvsa", "--raw", str(raw), "--out", str(tmp_path / "m"), "-q"]) == 2  # no tokenizer


def test_mvsa_labelling_rule():
    assert tweet_label("positive", "positive") == "positive"
    assert tweet_label("neutral", "negative") == "negative"
    assert tweet_label("positive", "neutral") == "positive"
    assert tweet_label("positive", "negative") is None


def test_frame_times_at_fps_evenly_spaced():
    assert sample_times(0.0, 10.0, 1.0, 3) == [0.5, 5.5, 9.5]          # AVE: 10 frames at 1 fps, 3 kept
    assert sample_times(6.0, 8.0, 2.0, 3) == [6.25, 7.25, 7.75]        # IEMOCAP: a 2 s utterance at 2 fps
    assert sample_times(0.0, 2.5, 1.0, 3) == [0.5, 1.5, 1.5]           # CREMA-D: 2 slots for 3 frames
    assert sample_times(1.0, 1.4, 2.0, 3) == [1.2, 1.2, 1.2]           # shorter than one slot: its middle


def test_fbank_is_padded_and_cut_to_1024_frames():
    from mmhpc.data.prepare.audio import SAMPLE_RATE, filterbank

    tone = np.sin(np.arange(SAMPLE_RATE) * 0.1).astype(np.float32)
    short = filterbank(tone)
    assert short.shape == (1024, 128) and short.dtype == np.float32
    assert (short[100:] == 0).all() and (short[:90] != 0).any()
    assert filterbank(np.tile(tone, 12)).shape == (1024, 128)


def test_torchaudio_and_pyav_stay_out_of_the_trainer():
    code = ("import sys, mmhpc.cli, mmhpc.train, mmhpc.data.loading; "
            "bad = {'torchaudio', 'av'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
