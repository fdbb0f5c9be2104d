"""Measured beside published: the thesis rows under each measured row, the verdict per thesis claim,
smoke tests never compared, and the committed full-shape fixture sweep (tests/fixtures/gpu-sweep)
reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mmhpc.report import build_report
from mmhpc.report.load import load_results
from mmhpc.report.reproduce import Match, verdicts
from mmhpc.report.tables import build_tables
from tests.report.test_report import A100, nonwhite_fraction, record, row, write

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gpu-sweep"
A40 = {**A100, "gpu": {"name": "NVIDIA A40", "capability": "8.6"}}
H100 = {**A100, "gpu": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0"}}
CPU = {"device": "cpu", "host": "laptop"}


def by_verdict(entries):
    return {e["claim"]: e for e in entries}


def test_thesis_rows_under_measured_rows(tmp_path):
    d = tmp_path / "records"
    # A100, CREMA-D, batch 64: single 13.6 s, DDP 8.0 s -> 1.70x vs the thesis' 1.67x (Table 4.13)
    write(d, record("single", [13.6], preinit=True, precision="tf32"))
    write(d, record("ddp", [8.0], preinit=True, precision="tf32", parallelism="ddp"))
    # A40 runs of the same: against Table 4.15, the thesis' A40 table
    write(d, record("single-a40", [30.0], preinit=True, precision="tf32", env=A40))
    write(d, record("ddp-a40", [20.0], preinit=True, precision="tf32", parallelism="ddp", env=A40))
    # H100, which the thesis never ran: speedups against the A100's (GPU named), times not
    write(d, record("single-h100", [10.0], preinit=True, precision="tf32", env=H100))
    write(d, record("ddp-h100", [6.0], preinit=True, precision="tf32", parallelism="ddp", env=H100))
    (par, _), _ = build_tables(load_results(d).runs)
    assert list(par.frame.columns[:3]) == ["Dataset", "Device", "Source"]
    measured, thesis, ratio = (row(par, s, Device="A100") for s in ("measured", "thesis", "ratio"))
    assert (measured["DDP speedup"], thesis["DDP speedup"], ratio["DDP speedup"]) == (
        "1.70×",
        "1.67×",
        "1.02",
    )
    assert (thesis["Single (s)"], ratio["Single (s)"]) == (
        "13.60",
        "1.00",
    )  # the same GPU type: times too
    a40 = {s: row(par, s, Device="A40") for s in ("measured", "thesis", "ratio")}
    assert (
        a40["thesis"]["DDP speedup"] == "1.67×" and a40["ratio"]["DDP speedup"] == "0.90"
    )  # 1.5 / 1.67
    assert a40["thesis"]["Single (s)"] == "25.15"  # Table 4.15 is on the A40
    h100 = {s: row(par, s, Device="H100") for s in ("measured", "thesis", "ratio")}
    assert (
        h100["thesis"]["Single (s)"].startswith("other GPU [")
        and h100["ratio"]["Single (s)"] == "–"
    )
    # the thesis at batch 64 on the A100 (1.67x) against 10 / 6 = 1.67x measured on the H100
    assert (h100["thesis"]["DDP speedup"], h100["ratio"]["DDP speedup"]) == ("1.67×", "1.00")
    v = by_verdict(verdicts(par.matches))
    assert v["ddp-a100"]["verdict"] == "reproduced" and "2 of 2" in v["ddp-a100"]["why"]
    assert "on A100, H100" in v["ddp-a100"]["why"]
    assert v["parallel-a40"]["verdict"] == "reproduced"  # 30 / 20 = 1.5x vs 1.67x: within 15 %
    assert v["dp-a100"]["verdict"] == "not measured"


def test_a_claim_outside_its_tolerance_shows_both_values():
    cells = [
        Match(
            "parallelism",
            "cremad",
            "speedup",
            "ddp",
            1.70,
            1.67,
            "4.13",
            "CREMA-D",
            "DDP Speedup",
            "cremad",
            "audio+visual",
            "A100",
            "A100",
        ),
        Match(
            "parallelism",
            "ave",
            "speedup",
            "ddp",
            1.30,
            1.67,
            "4.13",
            "AVE",
            "DDP Speedup",
            "ave",
            "audio+visual",
            "A100",
            "A100",
        ),
    ]
    v = by_verdict(verdicts(cells))["ddp-a100"]
    # 1.30 is 22 % below 1.67: outside +-15 %
    assert (
        v["verdict"] == "not reproduced"
        and "ave: 1.30× vs 1.67×" in v["why"]
        and "1 of 2" in v["why"]
    )
    assert v["measured"] == "1.30-1.70×"
    ok = by_verdict(verdicts(cells[:1]))["ddp-a100"]
    assert ok["verdict"] == "reproduced"


def test_smoke_tests_are_shown_but_never_compared(tmp_path):
    """A tiny CPU sweep: thesis values beside it, no ratio, no verdict; one epoch: no speedup."""
    d = tmp_path / "records"
    write(d, record("single", [2.0], env=CPU, preset="tiny"))
    write(d, record("ddp", [1.0], env=CPU, preset="tiny", parallelism="ddp"))
    write(
        d, record("blp", [1.0], env=CPU, preset="tiny", parallelism="blp", warmup=False)
    )  # one epoch only
    (par, _), _ = build_tables(load_results(d).runs)
    assert "[smoke test]" in par.title and par.caption.startswith(
        "SMOKE TEST (all runs: CPU, tiny data)"
    )
    measured, thesis, ratio = (row(par, s) for s in ("measured", "thesis", "smoke test"))
    assert measured["DDP speedup"] == "2.00×" and thesis["DDP speedup"].startswith("1.67×")
    assert ratio["DDP speedup"] == "–" and ratio["Single (s)"] == "–"
    assert thesis["Single (s)"].startswith("other GPU")
    assert measured["BLP (s)"].startswith("n/a [") and measured["BLP speedup"].startswith("n/a [")
    assert not any(m.comparable for m in par.matches)
    v = by_verdict(verdicts(par.matches))
    assert v["ddp-a100"]["verdict"] == "not measured" and "smoke" in v["ddp-a100"]["why"]
    assert all(e["verdict"] == "not measured" for e in v.values())


@pytest.mark.slow
def test_fixture_gpu_sweep_report(tmp_path):
    """The committed full-shape fixture records: every mirrored table has thesis rows with values,
    the Reproduction page and reproduction.json/md list verdicts, the smoke runs get none; every
    page renders."""
    out = tmp_path / "report"
    written = build_report(FIXTURE, out, query_slurm=False)
    mirrored = ["precision", "loader", "parallelism", "overall", "algorithm-accuracy",
                "algorithm-training"]
    assert written["kinds"] == [*mirrored, "runs"]
    for name in mirrored:
        md = (out / "tables" / f"{name}.md").read_text()
        assert "| thesis |" in md and "| ratio |" in md, name
    claims = by_verdict(json.loads((out / "reproduction.json").read_text())["claims"])
    # the fixture's made-up deviations (make_gpu_sweep.py OFF), the rest within the tolerance
    assert (
        claims["overall"]["verdict"] == "reproduced"
        and claims["ddp-a100"]["verdict"] == "reproduced"
    )
    assert (
        claims["preinit-a100"]["verdict"] == "not reproduced"
        and "1.37×" in claims["preinit-a100"]["why"]
    )
    assert claims["dp-a100"]["verdict"] == "not reproduced"
    assert (
        claims["amst-ibf"]["verdict"] == "not reproduced"
        and claims["alt-ibf"]["verdict"] == "reproduced"
    )
    cells = [c for e in claims.values() for c in e["cells"]]
    assert cells and not any(c["smoke"] for c in cells)  # the smoke sweep's runs are in no verdict
    assert "smoke test" in (out / "tables" / "parallelism.md").read_text()
    assert "| not reproduced |" in (out / "reproduction.md").read_text()
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not installed (make system-deps): PDF not rendered")
    subprocess.run(
        ["pdftoppm", "-r", "30", "-png", str(out / "report.pdf"), str(tmp_path / "page")],
        check=True,
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == written["pages"]
    assert all(nonwhite_fraction(p) > 0.005 for p in pages)
