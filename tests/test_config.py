"""Config: exact round trips, overrides, and errors that name the field and the valid choices."""
import json
import subprocess
import sys
import time

import pytest

from mmhpc.config import ConfigError, RunConfig, load_config


def _custom() -> RunConfig:
    return load_config(
        None,
        [
            "model.fusion=film",
            "data.modalities=[visual,audio]",
            "train.lr=0.0125",
            "model.embedding_dropout={audio: 0.4}",
            "strategy.name=alternating",
            "loader.num_workers=2",
            "loader.prefetch_factor=4",
            "train.single_acc={audio: 0.5}",
            "system.precision=bf16",
            "output.name=x",
        ],
    )


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = _custom()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_json_round_trip_is_exact(tmp_path):
    cfg = _custom()
    path = tmp_path / "c.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert load_config(path) == cfg


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  fusion: gated\ntrain:\n  epochs: 3\n")
    cfg = load_config(path, ["train.epochs=7", "lr=0.5"])
    assert (cfg.model.fusion, cfg.train.epochs, cfg.train.lr) == ("gated", 7, 0.5)


def test_short_keys_resolve_when_unique():
    assert load_config(None, ["fusion=late_sum"]).model.fusion == "late_sum"
    with pytest.raises(ConfigError, match="name: ambiguous key; valid: strategy.name, output.name"):
        load_config(None, ["name=x"])


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "model.fusion=nonsense",
            "model.fusion: invalid value 'nonsense'; valid: early_sum, late_sum, concat, "
            "gated, film",
        ),
        ("model.fuson=concat", "model.fuson: unknown key; valid: fusion, embed_dim"),
        ("train.epochs=abc", "train.epochs: input should be a valid integer"),
        ("train.epochs=0", "train.epochs: 0 must be > 0"),
        (
            "system.precision=fp16",
            "system.precision: invalid value 'fp16'; valid: fp32, fp32_strict, tf32, bf16",
        ),
        (
            "data.dataset=mnist",
            "data.dataset: invalid value 'mnist'; valid: ave, cremad, iemocap, mvsa, urfunny",
        ),
        (
            "data.modalities=[text]",
            "data.modalities: invalid value 'text' for cremad; valid: audio, visual",
        ),
        ("strategy.name=magic", "strategy.name: invalid value 'magic'; valid: alternating, amst,"),
        ("strategy.params={k: 1}", "strategy.params.k: unknown parameter of naive; valid: none"),
        (
            "loader.prefetch_factor=2",
            "loader.prefetch_factor: only valid with loader.num_workers > 0",
        ),
        ("bogus=1", "bogus: unknown key"),
    ],
)
def test_bad_values_name_field_and_choices(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_every_problem_is_reported_once_per_line():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=0", "system.precision=fp16", "train.lr=-1"])
    assert sorted(err.value.problems) == [
        "system.precision: invalid value 'fp16'; valid: fp32, fp32_strict, tf32, bf16",
        "train.epochs: 0 must be > 0",
        "train.lr: -1 must be > 0",
    ]


def test_a_config_file_is_named_in_its_problems(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(
        ConfigError, match=rf"^{path}: train.epochs: input should be a valid integer"
    ):
        load_config(path)


def test_command_line_forms_of_values():
    cfg = load_config(
        None,
        [
            "data.modalities=visual,audio",
            "train.max_batches=none",
            "output.name=7",
            "system.deterministic=no",
            "model.embedding_dropout={audio: 0.25}",
        ],
    )
    assert cfg.data.modalities == ["visual", "audio"] and cfg.train.max_batches is None
    assert cfg.output.name == "7" and cfg.system.deterministic is False
    assert cfg.model.embedding_dropout == {"audio": 0.25}


def test_strategy_params_are_validated_against_the_params_dataclass():
    with pytest.raises(
        ConfigError, match="strategy.params.alpha: input should be a valid number, .*got 'x'"
    ):
        load_config(None, ["strategy.name=ogm_ge", "strategy.params={alpha: x}"])
    with pytest.raises(ConfigError, match=r"strategy.params.alpha: -1.0 must be >= 0"):
        load_config(None, ["strategy.name=ogm_ge", "strategy.params={alpha: -1}"])


def test_gated_with_three_modalities_is_refused():
    with pytest.raises(
        ConfigError, match="model.fusion: gated fuses exactly two modalities, got 3"
    ):
        load_config(None, ["data.dataset=iemocap", "model.fusion=gated"])
    # the two-modal IEMOCAP variant is fine
    assert load_config(
        None, ["data.dataset=iemocap", "model.fusion=gated", "data.modalities=[audio,visual]"]
    )


def test_cli_rejects_bad_fusion_at_once(tmp_path):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "mmhpc.cli", "train", "fusion=nonsense",
                          f"output.runs_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "valid: early_sum, late_sum, concat, gated, film" in out.stderr
    assert time.perf_counter() - t0 < 60  # no data generated, no model built
    assert not any(tmp_path.iterdir())


def test_train_help_explains_every_knob():
    out = subprocess.run(
        [sys.executable, "-m", "mmhpc.cli", "train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for knob in ("model.fusion", "loader.preinit", "system.precision", "train.lr", "strategy.name"):
        assert knob in out.stdout
    assert "early_sum|late_sum|concat|gated|film" in out.stdout
