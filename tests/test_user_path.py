"""The user's path through the command line: `mmhpc strategies`, and the common slips answered with what
was meant."""
from __future__ import annotations

import dataclasses

import pytest

from mmhpc.cli import main
from mmhpc.config import ConfigError, load_config


def test_mmhpc_strategies_lists_every_strategy_with_its_source_parameters_and_defaults(capsys):
    from mmhpc.strategies import STRATEGIES
    from mmhpc.strategies.catalog import SOURCES

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert set(SOURCES) == set(STRATEGIES)  # a new strategy needs its source here
    for name, cls in STRATEGIES.items():
        block = out.split(f"\n{name}: ", 1)[1].split("\n\n", 1)[0]
        assert block.startswith(SOURCES[name])
        for field in dataclasses.fields(cls.Params):
            assert f"params.{field.name} = " in block
    assert "params.alpha = 0.1" in out.split("\nogm_ge: ", 1)[1].split("\n\n", 1)[0]


def test_train_help_names_the_strategies_command_that_exists(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "mmhpc strategies" in capsys.readouterr().out


@pytest.mark.parametrize("override, meant", [
    ("strategy=alternating", "did you mean strategy.name=alternating"),
    ("model=concat", "did you mean model.fusion=concat"),
    ("system=cuda", "did you mean system.device=cuda"),
    ("fusoin=concat", "did you mean model.fusion"),
    ("precison=bf16", "did you mean system.precision"),
])
def test_common_slips_get_a_did_you_mean(override, meant):
    with pytest.raises(ConfigError, match=meant):
        load_config(None, [override])


@pytest.mark.slow
def test_bench_profile_says_where_its_trace_went_without_profiler_noise_on_the_cpu(synth_dir, tmp_path, capfd):
    runs = tmp_path / "runs"
    argv = ["bench", f"data.root={synth_dir('cremad')}", f"output.runs_dir={runs}", "output.name=prof",
            "train.max_batches=3", "train.batch_size=16", "system.threads=1", "system.device=cpu",
            "--epochs", "1", "--warmup", "1", "--profile"]
    assert main(argv) == 0
    out, err = capfd.readouterr()  # the file descriptors: kineto writes from C++
    trace = runs / "prof.trace.json"
    assert trace.exists() and f"trace: {trace} (" in out
    assert "gpuGetDeviceCount" not in err and "profiler_start" not in err, err
