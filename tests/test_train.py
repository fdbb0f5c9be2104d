"""End-to-end training on tiny synthetic data: every fusion under every strategy of the foundation."""
import json
import shutil
from pathlib import Path

import pytest

from mmhpc.config import ConfigError
from mmhpc.models.fusion import FUSION_CLASSES
from mmhpc.train import RecordExistsError, Trainer, train


def _check_record(rec, cfg):
    assert rec["status"] == "done"
    assert rec["config"] == cfg.to_dict()
    assert len(rec["epochs"]) == cfg.train.epochs
    # max_batches holds with progress bars off, as in batch jobs
    assert rec["epochs"][0]["time"]["train_samples"] == cfg.train.max_batches * cfg.train.batch_size
    ep = rec["epochs"][0]
    for key in ("train_loader_init_s", "train_s", "val_loader_init_s", "val_s", "epoch_s"):
        assert ep["time"][key] >= 0
    for m in cfg.modalities:
        assert 0 <= rec["summary"]["test"][f"acc/{m}"] <= 1
        assert f"bias/{m}" in ep["val"] and f"reliability/{m}" in ep["val"]
    assert abs(sum(ep["val"][f"bias/{m}"] for m in cfg.modalities) - 1) < 1e-6
    assert 0 <= rec["summary"]["test"]["ece/fused"] <= 1


@pytest.mark.parametrize("strategy", ["naive", "alternating"])
@pytest.mark.parametrize("fusion", list(FUSION_CLASSES))
def test_every_fusion_trains_under_every_strategy(tiny_config, fusion, strategy):
    cfg = tiny_config("cremad", f"model.fusion={fusion}", f"strategy.name={strategy}")
    rec = train(cfg, progress=False)
    _check_record(rec, cfg)
    on_disk = json.loads((Path(cfg.output.runs_dir) / f"{cfg.run_name()}.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(rec["summary"]))


@pytest.mark.parametrize("fusion", ["early_sum", "concat"])
def test_three_modalities_with_text_and_cosine(tiny_config, fusion):
    cfg = tiny_config("iemocap", f"model.fusion={fusion}", "model.cosine=true", "strategy.name=alternating")
    rec = train(cfg, progress=False)
    _check_record(rec, cfg)
    assert rec["summary"]["optimised_epochs"] == {"audio": 1, "visual": 1, "text": 1}


def test_same_seed_same_metrics(tiny_config):
    recs = [train(tiny_config("cremad", "train.epochs=2", "output.overwrite=true"), progress=False)
            for _ in range(2)]
    strip = lambda r: [{k: e[k] for k in ("train", "val")} for e in r["epochs"]]  # noqa: E731
    assert strip(recs[0]) == strip(recs[1])
    assert recs[0]["summary"]["test"] == recs[1]["summary"]["test"]


def test_finished_record_is_never_overwritten(tiny_config, synth_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_dir("mvsa"), data)
    cfg = tiny_config("mvsa", f"data.root={data}")
    first = train(cfg, progress=False)
    path = Path(cfg.output.runs_dir) / f"{cfg.run_name()}.json"
    before = path.read_text()
    with pytest.raises(RecordExistsError, match="output.overwrite=true"):
        train(cfg, progress=False)
    # a rerun that is allowed to overwrite but fails midway keeps the finished record intact
    trainer = Trainer(tiny_config("mvsa", f"data.root={data}", "output.overwrite=true"), progress=False)
    for frames in (data / "visual").iterdir():
        shutil.rmtree(frames)
    with pytest.raises(Exception):
        trainer.fit()
    assert path.read_text() == before
    assert json.loads(before)["summary"]["test"] == first["summary"]["test"]
    failed = json.loads((path.parent / f".{path.stem}.rerun.json").read_text())
    assert failed["status"] == "failed" and "Error" in failed["error"]


def test_ibf_from_single_modality_records(tiny_config):
    singles = [train(tiny_config("cremad", f"data.modalities=[{m}]"), progress=False) for m in ("audio", "visual")]
    runs_dir = singles[0]["config"]["output"]["runs_dir"]
    rec = train(tiny_config("cremad", f"train.single_acc={runs_dir}"), progress=False)
    sacc = {r["config"]["data"]["modalities"][0]: r["summary"]["test"]["acc/fused"] for r in singles}
    test = rec["summary"]["test"]
    expected = 1 - sum(min(test[f"acc/{m}"] / sacc[m], 1) for m in sacc) / 2
    assert rec["summary"]["ibf"] == pytest.approx(expected)


def test_parallelism_not_available_fails_before_work(tiny_config):
    with pytest.raises(ConfigError, match="system.parallelism"):
        train(tiny_config("cremad", "system.parallelism=dp"), progress=False)


def test_checkpoint_resume_continues_exactly(tiny_config, tmp_path, monkeypatch):
    reference = train(tiny_config("cremad", "train.epochs=3", f"output.runs_dir={tmp_path / 'ref'}"),
                      progress=False)
    cfg = tiny_config("cremad", "train.epochs=3", "output.checkpoint=true", f"output.runs_dir={tmp_path / 'ck'}")
    trainer = Trainer(cfg, progress=False)
    real_epoch = Trainer._epoch

    def preempted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt("preempted")  # as SLURM's signal would, mid-run
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_epoch", preempted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.ckpt_path.exists()
    monkeypatch.setattr(Trainer, "_epoch", real_epoch)
    resumed = Trainer(cfg, progress=False).fit()
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1, 2]
    assert resumed["resumed"][0]["at_epoch"] == 2
    for a, b in zip(reference["epochs"], resumed["epochs"]):
        assert a["train"] == b["train"] and a["val"] == b["val"]
    assert reference["summary"]["test"] == resumed["summary"]["test"]
    assert not trainer.ckpt_path.exists()  # removed once the run is done
