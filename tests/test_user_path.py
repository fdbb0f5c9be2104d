"""The user's path through the command line: `mmhpc strategies`, and the common slips answered with
what was meant."""
from __future__ import annotations

import dataclasses

import pytest

from mmhpc.cli import main
from mmhpc.config import ConfigError, load_config


def test_mmhpc_strategies_lists_every_strategy_with_its_source_parameters_and_defaults(capsys):
    from mmhpc.rules.catalog import SOURCES
    from mmhpc.strategies import STRATEGIES

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
def test_bench_profile_says_where_its_trace_went_without_profiler_noise_on_the_cpu(
    synth_dir, tmp_path
):
    # a process of its own, as a user runs it: kineto reads its log level once, at its first use,
    # so an earlier profiler in this test process (the fake-GPU BLP check) would have set it
    import subprocess
    import sys

    runs = tmp_path / "runs"
    argv = [
        "bench",
        f"data.root={synth_dir('cremad')}",
        f"output.runs_dir={runs}",
        "output.name=prof",
        "train.max_batches=3",
        "train.batch_size=16",
        "system.threads=1",
        "system.device=cpu",
        "--epochs",
        "1",
        "--warmup",
        "1",
        "--profile",
    ]
    res = subprocess.run([sys.executable, "-m", "mmhpc.cli", *argv], capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-2000:]
    trace = runs / "prof.trace.json"
    assert trace.exists() and f"trace: {trace} (" in res.stdout, res.stdout
    assert "gpuGetDeviceCount" not in res.stderr and "profiler_start" not in res.stderr, res.stderr


def test_data_synthesis_through_a_pipe_shows_no_progress_bar(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmhpc.cli",
            "data",
            "synth",
            "cremad",
            "--out",
            str(tmp_path / "d"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, res.stderr
    assert (
        "\r" not in res.stderr and "it/s" not in res.stderr and "synth cremad" not in res.stderr
    ), res.stderr


@pytest.mark.slow
def test_every_log_line_of_the_demo_names_its_run_and_quiet_keeps_one_line_per_run(
    synth_dir, tmp_path, capsys
):
    from mmhpc.cli import setup_logging
    from mmhpc.demo import run_demo

    over = {"data.root": str(synth_dir("cremad")), "train.max_batches": 2, "system.threads": 1}
    setup_logging()
    run_demo(str(tmp_path / "a"), epochs=2, quiet=True, overrides=over)
    lines = capsys.readouterr().err.splitlines()
    names = ["1/4 single-audio", "2/4 single-visual", "3/4 naive", "4/4 alternating"]
    assert all(ln.startswith(tuple(f"[{n}] " for n in names)) for ln in lines), lines
    for n in names:
        epochs = [
            ln.removeprefix(f"[{n}] epoch ").split(" ")[0]
            for ln in lines
            if ln.startswith(f"[{n}] epoch ")
        ]
        assert epochs == ["1/2", "2/2"], lines  # counted from 1
        assert any(ln.startswith(f"[{n}] done: 2 epochs") and "best epoch " in ln for ln in lines)
    setup_logging(quiet=True)
    run_demo(str(tmp_path / "b"), epochs=2, quiet=True, overrides=over)
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" done:")[0] for ln in lines] == [f"[{n}]" for n in names], lines
