"""End-to-end training on tiny synthetic data: every fusion under every strategy of the
foundation."""
import json
import shutil
from pathlib import Path

import pytest

from mmhpc.checkpoint import Checkpointer
from mmhpc.config import ConfigError
from mmhpc.data.manifest import ManifestError
from mmhpc.models.fusion import FUSION_CLASSES
from mmhpc.results import RunRecord, Summary, read_record, run_ibf, single_accuracies, write_record
from mmhpc.train import RecordExistsError, Trainer, train


def _check_record(rec, cfg):
    assert rec.status == "done"
    assert rec.config == cfg.to_dict()
    assert len(rec.epochs) == cfg.train.epochs
    # max_batches holds with progress bars off, as in batch jobs
    assert rec.epochs[0].time.train_samples == cfg.train.max_batches * cfg.train.batch_size
    ep = rec.epochs[0]
    for key in ("train_loader_init_s", "train_s", "val_loader_init_s", "val_s", "epoch_s"):
        assert getattr(ep.time, key) >= 0
    for m in cfg.modalities:
        assert 0 <= rec.summary.test[f"acc/{m}"] <= 1
        assert f"bias/{m}" in ep.val and f"reliability/{m}" in ep.val
    assert abs(sum(ep.val[f"bias/{m}"] for m in cfg.modalities) - 1) < 1e-6
    assert 0 <= rec.summary.test["ece/fused"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["naive", "alternating"])
@pytest.mark.parametrize("fusion", list(FUSION_CLASSES))
def test_every_fusion_trains_under_every_strategy(tiny_config, fusion, strategy):
    cfg = tiny_config("cremad", f"model.fusion={fusion}", f"strategy.name={strategy}")
    rec = train(cfg, progress=False)
    _check_record(rec, cfg)
    assert read_record(cfg.record_path()) == rec  # what was written reads back as the same record


@pytest.mark.slow
@pytest.mark.parametrize("fusion", ["early_sum", "concat"])
def test_three_modalities_with_text_and_cosine(tiny_config, fusion):
    cfg = tiny_config(
        "iemocap", f"model.fusion={fusion}", "model.cosine=true", "strategy.name=alternating"
    )
    rec = train(cfg, progress=False)
    _check_record(rec, cfg)
    assert rec.summary.optimised_epochs == {"audio": 1, "visual": 1, "text": 1}


@pytest.mark.slow
def test_same_seed_same_metrics(tiny_config):
    recs = [train(tiny_config("cremad", "train.epochs=2", "output.overwrite=true"), progress=False)
            for _ in range(2)]
    strip = lambda r: [(e.train, e.val) for e in r.epochs]  # noqa: E731
    assert strip(recs[0]) == strip(recs[1])
    assert recs[0].summary.test == recs[1].summary.test


@pytest.mark.slow
def test_finished_record_is_never_overwritten(tiny_config, synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir("mvsa"), data)
    cfg = tiny_config("mvsa", f"data.root={data}")
    first = train(cfg, progress=False)
    path = cfg.record_path()
    before = path.read_text()
    with pytest.raises(RecordExistsError, match="output.overwrite=true"):
        train(cfg, progress=False)
    # a rerun that is allowed to overwrite but fails midway keeps the finished record intact
    trainer = Trainer(
        tiny_config("mvsa", f"data.root={data}", "output.overwrite=true"), progress=False
    )
    for frames in (data / "visual").iterdir():
        shutil.rmtree(frames)
    with pytest.raises(Exception):
        trainer.fit()
    assert path.read_text() == before
    assert json.loads(before)["summary"]["test"] == first.summary.test
    failed = read_record(path.parent / f".{path.stem}.rerun.json")
    assert failed.status == "failed" and "Error" in failed.error


def _single_record(
    runs: Path, modality: str, acc: float, seed: int, dataset: str = "cremad"
) -> None:
    config = {
        "data": {"dataset": dataset, "preset": "tiny", "modalities": [modality]},
        "train": {"seed": seed},
    }
    write_record(runs / f"{dataset}-{modality}-{seed}.json",
                 RunRecord(run=f"{dataset}-{modality}-{seed}", status="done", config=config,
                           summary=Summary(test={"acc/fused": acc})))


def test_single_accuracies_and_ibf_from_records(tmp_path):
    _single_record(tmp_path, "audio", 0.8, 0)
    _single_record(tmp_path, "audio", 0.6, 1)
    _single_record(tmp_path, "visual", 0.5, 0)
    _single_record(
        tmp_path, "visual", 0.1, 0, dataset="ave"
    )  # another dataset: not a baseline of cremad
    singles = single_accuracies(tmp_path, "cremad", "tiny")
    assert singles == pytest.approx({"audio": 0.7, "visual": 0.5})  # mean over the two audio seeds
    # 1 - (min(0.35 / 0.7, 1) + min(0.6 / 0.5, 1)) / 2 = 1 - (0.5 + 1) / 2
    assert run_ibf(
        {"acc/audio": 0.35, "acc/visual": 0.6}, ["audio", "visual"], singles
    ) == pytest.approx(0.25)
    assert run_ibf({"acc/audio": 0.35}, ["audio"], singles) == 0.0
    assert run_ibf({"acc/audio": 0.35}, ["audio"], None) is None


@pytest.mark.parametrize(
    "content", [b"\xff\xfe", b'{"audio": 0.5', b'["audio", 0.5]', b'{"audio": "high"}']
)
def test_an_unusable_single_acc_file_is_a_config_error_naming_file_and_field(tmp_path, content):
    from mmhpc.errors import ConfigError

    bad = tmp_path / "singles.json"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^{bad}: train.single_acc: not a JSON map"):
        single_accuracies(bad, "cremad", "tiny")


@pytest.mark.slow
def test_trainer_summary_takes_ibf_from_single_records(tiny_config, tmp_path):
    # baselines far below anything a trained modality reaches: every ratio is capped at 1, so IBF =
    # 0
    _single_record(tmp_path, "audio", 1e-9, 0)
    _single_record(tmp_path, "visual", 1e-9, 0)
    rec = train(tiny_config("cremad", f"train.single_acc={tmp_path}"), progress=False)
    assert all(rec.summary.test[f"acc/{m}"] > 0 for m in ("audio", "visual"))
    assert rec.summary.ibf == 0.0
    assert (
        train(tiny_config("cremad", "output.name=no-baselines"), progress=False).summary.ibf is None
    )


def test_failure_before_the_trainer_leaves_a_failed_record(tiny_config, tmp_path):
    cfg = tiny_config("cremad", "data.source=prepared", f"data.root={tmp_path / 'absent'}")
    with pytest.raises(ManifestError, match="no manifest.json"):
        train(cfg, progress=False)
    rec = read_record(cfg.record_path())
    assert (
        rec.status == "failed" and rec.error.startswith("ManifestError") and "absent" in rec.error
    )
    assert rec.config == cfg.to_dict() and not rec.epochs


@pytest.mark.parametrize("content", [b"\xff\x00", b'{"format": 1, "files"', b"[1, 2]"])
def test_a_damaged_dataset_manifest_is_named(tmp_path, content):
    from mmhpc.data.manifest import read_manifest

    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError, match=rf"^{tmp_path / 'manifest.json'}: "):
        read_manifest(tmp_path)


def test_parallelism_not_available_fails_before_work(tiny_config):
    with pytest.raises(ConfigError, match="system.parallelism"):
        train(tiny_config("cremad", "system.parallelism=dp"), progress=False)


@pytest.mark.parametrize(
    "refused", ["system.precision=tf32", "system.parallelism=dp", "system.device=cuda"]
)
def test_a_config_this_machine_cannot_run_is_refused_before_any_record(
    synth_dir, tmp_path, capsys, refused
):
    """Exit 2, one line naming the field, and nothing in runs/ (a CPU machine: no tensor cores, no
    GPU)."""
    from mmhpc.cli import main

    runs = tmp_path / "runs"
    argv = [
        "train",
        f"data.root={synth_dir('cremad')}",
        f"output.runs_dir={runs}",
        "train.epochs=1",
        "system.device=cpu",
        refused,
    ]
    assert main(argv) == 2
    assert refused.split("=")[0] in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.slow
def test_checkpoint_resume_continues_exactly(tiny_config, tmp_path, monkeypatch):
    reference = train(
        tiny_config("cremad", "train.epochs=3", f"output.runs_dir={tmp_path / 'ref'}"),
        progress=False,
    )
    cfg = tiny_config(
        "cremad", "train.epochs=3", "output.checkpoint=true", f"output.runs_dir={tmp_path / 'ck'}"
    )
    trainer = Trainer(cfg, progress=False)
    ckpt = next(c.path for c in trainer.components if isinstance(c, Checkpointer))
    real_epoch = Trainer._epoch

    def preempted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("preempted")  # as SLURM's signal would, mid-run
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_epoch", preempted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert ckpt.exists()
    monkeypatch.setattr(Trainer, "_epoch", real_epoch)
    resumed = Trainer(cfg, progress=False).fit()
    assert [e.epoch for e in resumed.epochs] == [0, 1, 2]
    assert resumed.resumed[0]["at_epoch"] == 2
    for a, b in zip(reference.epochs, resumed.epochs):
        assert a.train == b.train and a.val == b.val
    assert reference.summary.test == resumed.summary.test
    assert not ckpt.exists()  # removed once the run is done
