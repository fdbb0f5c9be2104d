"""`mmhpc prepare` on tiny raw copies made by the tests: raw -> prepare -> load -> one epoch of
training, per-file errors, resumption, and the manifest check of a prepared dataset."""
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
EXPECTED = {
    "cremad": (10, 0),
    "ave": (11, 0),
    "mvsa": (10, 2),
    "iemocap": (14, 4),
    "urfunny": (10, 0),
}
TEXT_LEN = {"mvsa": 256, "iemocap": 128, "urfunny": 128}  # the thesis code's tokenisers


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
            report = prepare(
                name, raw, base / "prepared", jobs=2, seed=0, tokenizer=tokenizer, progress=False
            )
            made[name] = raw, base / "prepared", report
        return made[name]

    return get


def _train_one_epoch(name, root, runs, *overrides):
    cfg = load_config(
        None,
        [
            f"data.dataset={name}",
            "data.source=prepared",
            f"data.root={root}",
            "train.epochs=1",
            "train.batch_size=4",
            "system.threads=2",
            "model.text_size=tiny",
            f"output.runs_dir={runs}",
            *overrides,
        ],
    )
    from mmhpc.train import train

    return train(cfg, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_raw_to_prepared_to_one_epoch(prepared, tokenizer, tmp_path, name):
    raw, root, report = prepared(name)
    spec = DATASETS[name]
    assert report.ok, report.summary()
    assert (report.prepared, sum(report.skipped.values())) == EXPECTED[name]
    assert verify(root, "checksum") == []
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["modalities"] == list(spec.modalities) and manifest["classes"] == list(
        spec.classes
    )
    assert sum(manifest["counts"].values()) == EXPECTED[name][0]
    assert manifest["source"]["split"] == {"ave": "official", "iemocap": "stratified"}.get(
        name, "random"
    )
    if "text" in spec.modalities:  # the tiny RoBERTa's vocabulary is the tokenizer's
        assert manifest["shapes"]["vocab"] == len(
            json.loads((tokenizer / "vocab.json").read_text())
        )

    ds = PreparedDataset(root, "train", train=True)
    item = ds[0]
    if "audio" in spec.modalities:
        assert item["audio"].shape == (1, 1024, 128) and item["audio"].dtype == torch.float32
        assert item["audio"].abs().sum() > 0
    if "visual" in spec.modalities:
        assert (
            item["visual"].shape == (spec.frames, 3, 224, 224)
            and item["visual"].dtype == torch.uint8
        )
    if "text" in spec.modalities:
        ids = item["text"]
        assert ids.shape == (2, TEXT_LEN[name]) and ids.dtype == torch.int64
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
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:])
    assert labels["-vid00_x"] == str(ave.index("Church bell"))
    assert (root / "splits" / "test.txt").read_text().split() == [
        "-vid09_x"
    ]  # the official split, kept
    # a video annotated twice is two samples, each with its own label and split
    assert labels["-vid00_x.2"] == str(ave.index("Bark"))
    assert (root / "splits" / "val.txt").read_text().split() == [
        "-vid08_x",
        "-vid00_x.2",
    ]  # official order
    _, root, _ = prepared("mvsa")
    mvsa = DATASETS["mvsa"].classes
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    assert {c: mvsa[int(y)] for c, y in labels.items()} == tweet_sentiments(10)


def test_iemocap_has_the_thesis_five_classes_split_per_class(prepared):
    _, root, report = prepared("iemocap")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["classes"] == ["angry", "excited", "frustrated", "neutral", "sad"]
    assert report.skipped == {
        "emotion code hap is not one of ['ang', 'exc', 'fru', 'neu', 'sad']": 2,
        "emotion code xxx is not one of ['ang', 'exc', 'fru', 'neu', 'sad']": 2,
    }
    labels = dict(line.split(",") for line in (root / "labels.csv").read_text().split()[1:])
    split = {s: [labels[c] for c in (root / "splits" / f"{s}.txt").read_text().split()]
             for s in ("train", "val", "test")}
    # ten `neu`: 8 train, 1 test, 1 validation; a class of one goes to validation (the rest)
    neutral = "3"
    assert sorted(split["train"]) == [neutral] * 8 and split["test"] == [neutral]
    assert sorted(split["val"]) == ["0", "1", "2", neutral, "4"]


def test_iemocap_six_classes_only_by_option_and_options_are_checked():
    from mmhpc.data.prepare import RAW_FORMATS

    fmt = RAW_FORMATS["iemocap"]
    assert fmt.chosen(None) == {"classes": "five"}
    with pytest.raises(PrepareError, match="valid: five, six"):
        fmt.chosen({"classes": "seven"})
    with pytest.raises(PrepareError, match="valid: classes"):
        fmt.chosen({"text": "context"})
    with pytest.raises(PrepareError, match="none for this dataset"):
        RAW_FORMATS["cremad"].chosen({"classes": "six"})


def test_iemocap_six_class_discovery(tmp_path):
    from fixtures_raw import make_iemocap

    from mmhpc.data.prepare.iemocap import find

    raw = make_iemocap(tmp_path / "raw")
    six = find(raw, classes="six")
    assert six.classes == ("angry", "excited", "frustrated", "happy", "neutral", "sad")
    happy = [c for c in six.clips if c.label == 3]
    assert len(six.clips) == 16 and [c.clip_id for c in happy] == [
        "Ses01F_impro01_M007",
        "Ses01M_script01_1_M007",
    ]
    assert len(find(raw).clips) == 14


def test_urfunny_text_is_the_punchline(prepared, tokenizer):
    from fixtures_raw import SENTENCES
    from transformers import AutoTokenizer

    from mmhpc.data.prepare.urfunny import sample_text

    _, root, _ = prepared("urfunny")
    tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    ids = np.load(root / "text" / "1.npy")
    assert (
        tok.decode(ids[0][ids[1] == 1], skip_special_tokens=True) == SENTENCES[4]
    )  # clip 1: humorous
    language = {
        "punchline_sentence": "and then it rained.",
        "context_sentences": ["We went out.", "Sun."],
    }
    assert sample_text(language) == "and then it rained."
    assert sample_text(language, "context") == "We went out. Sun. and then it rained."


def test_evaluation_frames_are_the_whole_frame_resized_as_the_thesis_resize(prepared):
    """MVSA's prepared image against torchvision's Resize((224, 224)) of the raw image (the thesis'
    transform)."""
    from PIL import Image
    from torchvision import transforms

    raw, root, _ = prepared("mvsa")
    with Image.open(raw / "data" / "1.jpg") as img:
        expected = np.asarray(transforms.Resize((224, 224))(img.convert("RGB")), dtype=np.float32)
    with Image.open(root / "visual" / "1" / "0.jpg") as img:
        got = np.asarray(img, dtype=np.float32)
    assert (
        got.shape == expected.shape and np.abs(got - expected).mean() < 3
    )  # JPEG re-encoding only


def test_a_zip_download_of_cremad_with_git_lfs_pointers_is_named(tmp_path):
    raw = make_cremad(tmp_path / "raw", clips=2)
    for p in (*raw.glob("AudioWAV/*.wav"), *raw.glob("VideoFlash/*.flv")):
        p.write_text(
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{'0' * 64}\nsize 123456\n"
        )
    with pytest.raises(PrepareError, match="Git LFS pointer file.*git-lfs"):
        prepare("cremad", raw, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # stopped before anything was written


def test_a_split_that_comes_out_empty_stops_with_a_message(tmp_path, capsys):
    raw = make_cremad(tmp_path / "raw", clips=3)  # 80/10/10 of 3 clips: no validation clip
    out = tmp_path / "out"
    assert (
        main(["prepare", "cremad", "--raw", str(raw), "--out", str(out), "--jobs", "1", "-q"]) == 2
    )
    assert (
        "split val came out empty (3 clips prepared: train 2, val 0, test 1)"
        in capsys.readouterr().err
    )
    assert not (out / "manifest.json").exists()


def test_iemocap_two_modal_variant_is_the_same_data_read_with_fewer_modalities(prepared):
    """The trainer's own config -> datasets path; training itself is the 3-modal epoch above."""
    from mmhpc.data.loading import build_datasets

    _, root, _ = prepared("iemocap")
    cfg = load_config(None, ["data.dataset=iemocap", "data.source=prepared", f"data.root={root}",
                             "data.modalities=[audio,visual]"])
    datasets = build_datasets(cfg)
    item = datasets["train"][0]
    assert set(item) == {"audio", "visual", "visual_crop", "label", "index"}
    assert sum(len(d) for d in datasets.values()) == EXPECTED["iemocap"][0]


def test_a_missing_or_corrupt_raw_file_fails_only_its_clip_and_a_rerun_resumes(tmp_path, capsys):
    raw = make_cremad(tmp_path / "raw")
    out = tmp_path / "prepared"
    missing = raw / "AudioWAV" / "1001_IEO_FEA_HI.wav"
    corrupt = raw / "VideoFlash" / "1001_IEO_HAP_HI.flv"
    kept_audio, kept_video = missing.read_bytes(), corrupt.read_bytes()
    missing.unlink()
    corrupt.write_bytes(b"this is not a video" * 10)

    assert (
        main(["prepare", "cremad", "--raw", str(raw), "--out", str(out), "--jobs", "2", "-q"]) == 1
    )
    err = capsys.readouterr().err
    assert "8 clips prepared" in err and "2 failed" in err
    assert f"{missing}: missing" in err and str(corrupt) in err
    failed = json.loads((out / "prepare_errors.json").read_text())["failed"]
    assert set(failed) == {"1001_IEO_FEA_HI", "1001_IEO_HAP_HI"}
    assert str(missing) in failed["1001_IEO_FEA_HI"] and "corrupt" in failed["1001_IEO_HAP_HI"]
    listed = sum(
        ((out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")), []
    )
    assert len(listed) == 8 and not set(failed) & set(listed)
    assert not (
        out / "audio" / "1001_IEO_HAP_HI.npy"
    ).exists()  # a failed clip leaves no partial outputs
    assert verify(out) == []
    splits_before = {
        s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")
    }

    # a crash mid-clip: one frame never renamed into place, its temporary file left behind
    (out / "visual" / "1001_IEO_ANG_HI" / "2.jpg").rename(
        out / "visual" / "1001_IEO_ANG_HI" / ".2.jpg.tmp-99"
    )
    missing.write_bytes(kept_audio)
    corrupt.write_bytes(kept_video)
    report = prepare("cremad", raw, out, jobs=1, progress=False)
    assert report.ok and report.prepared == 3 and report.reused == 7
    assert not (out / "visual" / "1001_IEO_ANG_HI" / ".2.jpg.tmp-99").exists()
    assert verify(out, "checksum") == []
    assert sum(json.loads((out / "manifest.json").read_text())["counts"].values()) == 10
    after = {s: (out / "splits" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert all(
        set(splits_before[s]) <= set(after[s]) for s in after
    )  # fixing files moves no other clip


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
    assert (
        main(["prepare", "mvsa", "--raw", str(raw), "--out", str(tmp_path / "m"), "-q"]) == 2
    )  # no tokenizer


def test_mvsa_labelling_rule():
    assert tweet_label("positive", "positive") == "positive"
    assert tweet_label("neutral", "negative") == "negative"
    assert tweet_label("positive", "neutral") == "positive"
    assert tweet_label("positive", "negative") is None


def test_frame_times_at_fps_evenly_spaced():
    assert sample_times(0.0, 10.0, 1.0, 3) == [0.5, 5.5, 9.5]  # AVE: 10 frames at 1 fps, 3 kept
    assert sample_times(6.0, 8.0, 2.0, 3) == [6.25, 7.25, 7.75]  # IEMOCAP: a 2 s utterance at 2 fps
    assert sample_times(0.0, 2.5, 1.0, 3) == [0.5, 1.5, 1.5]  # CREMA-D: 2 slots for 3 frames
    assert sample_times(1.0, 1.4, 2.0, 3) == [1.2, 1.2, 1.2]  # shorter than one slot: its middle


def test_fbank_is_padded_and_cut_to_1024_frames():
    from mmhpc.data.prepare.audio import SAMPLE_RATE, filterbank

    tone = np.sin(np.arange(SAMPLE_RATE) * 0.1).astype(np.float32)
    short = filterbank(tone)
    assert short.shape == (1024, 128) and short.dtype == np.float32
    assert (short[100:] == 0).all() and (short[:90] != 0).any()
    assert filterbank(np.tile(tone, 12)).shape == (1024, 128)


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_torchaudio_and_pyav_stay_out_of_the_trainer():
    code = ("import sys, mmhpc.cli, mmhpc.train, mmhpc.data.loading; "
            "bad = {'torchaudio', 'av'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
