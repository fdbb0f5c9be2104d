"""The demonstrations the README quotes (`make demo`, `make demo-algorithms`) run end to end and
print their tables; the algorithm sweep covers every registered strategy and fusion."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmhpc.cli import build_parser, cmd_demo
from mmhpc.demo import run_demo
from mmhpc.experiments import STRATEGY_RUNS, run_algorithms
from mmhpc.launch.clusters import load_profile
from mmhpc.models.fusion import FUSIONS
from mmhpc.results import read_record
from mmhpc.strategies import STRATEGIES
from mmhpc.sweep import expand, load_sweep

REPO = Path(__file__).resolve().parents[1]


def _rows(out: str) -> dict[str, list[str]]:
    return {line[:14].strip(): line[14:].split() for line in out.splitlines()
            if line[:14].strip() and not line.startswith(("synthetic", "run ", "records"))}


@pytest.mark.slow
def test_demo_prints_naive_and_alternating_with_ibf(synth_dir, tmp_path, capsys):
    assert run_demo(str(tmp_path / "demo"), epochs=1, quiet=True,
                    overrides={"data.root": str(synth_dir("cremad")), "train.max_batches": 3}) == 0
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["single audio", "single visual", "naive", "alternating"]
    for name in ("naive", "alternating"):  # fused, audio, visual, IBF, s/epoch: all numbers
        fused, audio, visual, ibf, sec = map(float, rows[name])
        assert 0 <= fused <= 1 and ibf >= 0 and sec > 0
    naive = read_record(tmp_path / "demo" / "naive.json")
    assert abs(naive.summary.ibf - float(rows["naive"][3])) < 5e-4


@pytest.mark.slow
def test_algorithms_demonstration_prints_tables_4_1_4_4_4_5(synth_dir, tmp_path, capsys):
    assert (
        run_algorithms(
            str(tmp_path / "alg"),
            epochs=1,
            quiet=True,
            overrides={"data.root": str(synth_dir("cremad")), "train.max_batches": 3},
        )
        == 0
    )
    rows = _rows(capsys.readouterr().out)
    assert list(rows) == ["single audio", "single visual", *[name for name, _ in STRATEGY_RUNS]]
    for name, _ in STRATEGY_RUNS:
        fused, audio, visual, ibf, epochs, opt, sec, vs_alt = rows[name]
        record = read_record(tmp_path / "alg" / f"{name}.json")
        assert record.status == "done" and record.config["strategy"]["name"] == name
        assert abs(record.summary.ibf - float(ibf)) < 5e-4
        assert int(epochs) == record.summary.epochs_run and float(sec) > 0 and vs_alt.endswith("x")
    assert rows["alternating"][-1] == "1.00x"  # the speedup's reference row
    assert rows["amst"][5] == "1/1"  # epoch 0: every modality trains (0 mod skip == 0)
    assert read_record(tmp_path / "alg" / "reliability.json").config["model"]["cosine"]


def test_demo_command_chooses_the_demonstration():
    args = build_parser().parse_args(["demo", "algorithms", "--epochs", "2", "-q"])
    assert (args.func, args.which, args.epochs, args.quiet, args.runs_dir) == (
        cmd_demo,
        "algorithms",
        2,
        True,
        None,
    )
    assert build_parser().parse_args(["demo"]).which == "imbalance"


def test_algorithm_sweep_runs_every_strategy_and_fusion_on_the_cpu():
    plan = expand(
        load_sweep(REPO / "sweeps" / "algorithms.yaml"), load_profile("none"), size="tiny"
    ).check()
    configs = [r.config for r in plan.runs]
    assert {c.strategy.name for c in configs} == set(STRATEGIES)
    assert {c.model.fusion for c in configs} == set(FUSIONS)
    assert all(c.data.preset == "tiny" for c in configs)
    # three modalities too (IEMOCAP), and the cosine classifier wherever Entropy/Reliability train
    assert any(len(c.modalities) == 3 for c in configs)
    assert all(c.model.cosine for c in configs if c.strategy.name in ("entropy", "reliability"))
    full = expand(
        load_sweep(REPO / "sweeps" / "algorithms.yaml"), load_profile("none"), size="full"
    ).check()
    assert {r.config.train.seed for r in full.runs} == {0, 1, 2} and len(full.runs) > len(plan.runs)
