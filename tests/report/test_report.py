"""Reports from hand-made records: speedups (Eq. 4.1) and standard errors against hand-computed
values, missing / failed / not-applicable runs shown as such, and a PDF that renders (pdftoppm)."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmhpc.report import build_report
from mmhpc.report.load import load_results
from mmhpc.report.tables import build_tables, detect_kinds

A100 = {
    "device": "cuda:0",
    "host": "alvis-n1",
    "gpu": {"name": "NVIDIA A100-SXM4-40GB", "capability": "8.0"},
    "versions": {"torch": "2.4.0"},
    "python": "3.11.7",
}


def record(
    run,
    times,
    *,
    dataset="cremad",
    modalities=None,
    precision="fp32",
    parallelism="single",
    preinit=False,
    batch=64,
    strategy="naive",
    seed=0,
    util=None,
    status="done",
    test=None,
    val_acc=None,
    optimised=None,
    env=A100,
    cosine=False,
    loader=None,
    waits=None,
    estimated=False,
    preset="full",
    warmup=True,
):
    """A minimal run record: one epoch per entry of `times` (its epoch_s), optional GPU utilisation
    per epoch, loader knobs and per-epoch data waits; after a warm-up epoch (99 s, 1 % util: any
    mean that takes it in is visibly off), unless warmup=False."""
    if warmup and times:
        times = [99.0, *times]
        util = None if util is None else [1.0, *util]
        waits = None if waits is None else [9.9, *waits]
        val_acc = None if val_acc is None else {h: [v[0], *v] for h, v in val_acc.items()}
    epochs = []
    for i, t in enumerate(times):
        e = {"epoch": i, "time": {"epoch_s": t, "train_loader_init_s": 0.1 * t, "train_s": 0.7 * t,
                                  "val_loader_init_s": 0.0, "val_s": 0.2 * t}}
        if waits is not None:
            e["time"].update(train_data_wait_s=waits[i], train_data_wait_estimated=estimated)
        if util is not None:
            e["util"] = {"gpu0_util_pct_mean": util[i]}
        if val_acc is not None:
            e["val"] = {f"acc/{h}": v[i] for h, v in val_acc.items()}
        epochs.append(e)
    rec = {
        "schema": 1,
        "run": run,
        "status": status,
        "env": env,
        "epochs": epochs,
        "config": {
            "data": {
                "dataset": dataset,
                "modalities": modalities,
                **({"preset": preset} if preset else {}),
            },
            "loader": {"preinit": preinit, "persistent_workers": not preinit, **(loader or {})},
            "strategy": {"name": strategy},
            "train": {"batch_size": batch, "seed": seed},
            "model": {"cosine": cosine},
            "system": {"precision": precision, "parallelism": parallelism},
            "output": {"name": run},
        },
    }
    if status == "done":
        rec["summary"] = {"test": test or {}, "optimised_epochs": optimised or {}}
    else:
        rec["error"] = "RuntimeError: CUDA out of memory"
    return rec


def write(directory: Path, rec: dict, timeseries: list[float] | None = None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if timeseries is not None:
        rec["system"] = {"timeseries": f"{rec['run']}.util.csv"}
    (directory / f"{rec['run']}.json").write_text(json.dumps(rec))
    if timeseries is not None:
        t = np.arange(len(timeseries)) * 0.5
        rows = "\n".join(f"{a},{b},100.0" for a, b in zip(t, timeseries))
        (directory / f"{rec['run']}.util.csv").write_text("t,gpu0_util_pct,rss_mb\n" + rows + "\n")
        markers = {
            "markers": [
                {"t": 0.0, "label": "epoch 0 start"},
                {"t": 1.0, "label": "epoch 0 end"},
                {"t": 1.5, "label": "epoch 1 start"},
                {"t": 2.5, "label": "epoch 1 end"},
            ]
        }
        (directory / f"{rec['run']}.util.markers.json").write_text(json.dumps(markers))


def sweep_dir(
    root: Path, name: str, planned: list[dict], records: list[dict], series: dict | None = None
) -> Path:
    """A sweep directory as `mmhpc sweep` leaves it: sweep.yaml, manifest.json (planned runs),
    runs/."""
    path = root / name
    path.mkdir(parents=True)
    (path / "sweep.yaml").write_text(f"name: {name}\ndescription: hand-made {name} sweep\n")
    manifest = {
        "schema": 1,
        "sweep": name,
        "cluster": "alvis",
        "runs": [
            {
                "index": i,
                "name": p["name"],
                "config": p.get("config", {}),
                "resources": {"gpu": "A100"},
                "request": {"gpu": "A100"},
                "not_applicable": p.get("na"),
                "jobs": [],
            }
            for i, p in enumerate(planned)
        ],
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    for rec in records:
        write(path / "runs", rec, (series or {}).get(rec["run"]))
    return path


def row(table, source="measured", **keys):
    """The one row of `table` with these key values; in a table with thesis rows, its `source`
    row."""
    frame = table.frame
    if "Source" in frame:
        frame = frame[frame["Source"] == source]
    mask = np.ones(len(frame), bool)
    for k, v in keys.items():
        mask &= frame[k] == v
    assert mask.sum() == 1, f"{keys}: {mask.sum()} rows in\n{frame}"
    return frame[mask].iloc[0]


def precision_sweep(tmp_path: Path) -> Path:
    recs = [
        record("fp32-s0", [10.0, 10.0], seed=0, val_acc={"fused": [0.3, 0.5], "audio": [0.3, 0.4]}),
        record("fp32-s1", [12.0, 12.0], seed=1, val_acc={"fused": [0.3, 0.6], "audio": [0.2, 0.4]}),
        record(
            "bf16-s0",
            [5.0, 5.0],
            precision="bf16",
            seed=0,
            val_acc={"fused": [0.3, 0.5], "audio": [0.3, 0.4]},
        ),
        record(
            "bf16-s1",
            [6.0, 6.0],
            precision="bf16",
            seed=1,
            val_acc={"fused": [0.4, 0.5], "audio": [0.3, 0.5]},
        ),
        record("fp32-mvsa", [8.0], dataset="mvsa", seed=0),
        record("bf16-mvsa", [4.0], dataset="mvsa", precision="bf16", status="failed"),
    ]
    planned = [{"name": r["run"], "config": r["config"]} for r in recs] + [
        {"name": "tf32-s0", "config": record("tf32-s0", [], precision="tf32")["config"],
         "na": "system.precision: tf32 needs compute capability 8.0"},
        {"name": "bf16-s2", "config": record("bf16-s2", [], precision="bf16", seed=2)["config"]}]
    series = {"fp32-s0": [50, 90, 95, 20, 90, 92], "bf16-s0": [60, 95, 97, 30, 96, 97]}
    return sweep_dir(tmp_path, "precision", planned, recs, series)


def test_precision_speedup_and_standard_error(tmp_path):
    results = load_results(precision_sweep(tmp_path))
    assert detect_kinds(results.runs) == ["precision"]
    tables, messages = build_tables(results.runs)
    assert [t.name for t in tables] == ["precision", "runs"] and not messages
    precision = tables[0]
    cremad = row(precision, Dataset="cremad")
    # fp32 over seeds: 10, 12 -> mean 11, sd = sqrt(2), SE = sqrt(2)/sqrt(2) = 1.00
    assert cremad["FP32 (s)"] == "11.00 ± 1.00"
    # bf16: 5, 6 -> mean 5.5, SE = 0.5; seed 2 planned but unsubmitted: 2 of 3 seeds
    assert cremad["BF16 (s)"].startswith("5.50 ± 0.50 (2 of 3 seeds")
    assert cremad["BF16 speedup"] == "2.00×"   # Eq. 4.1: 11 / 5.5
    # every TF32 run is not applicable here: no column, and neither the title nor the table promises
    # one; the caption says why
    assert "TF32 (s)" not in precision.frame and "TF32" not in precision.title
    assert precision.title.startswith("Precision: time per epoch, FP32 vs BF16")
    assert (
        "Not applicable here, so no column: TF32 (system.precision: tf32 needs compute capability "
        "8.0)"
        in precision.caption
    )
    assert "against the FP32 column" in precision.caption  # the named baseline
    mvsa = row(precision, Dataset="mvsa")
    assert mvsa["FP32 (s)"] == "8.00"
    assert mvsa["BF16 (s)"].startswith("failed [") and mvsa["BF16 speedup"] == "–"
    assert any("CUDA out of memory" in n for n in precision.notes)
    runs = tables[1].frame.set_index("Run")
    assert runs.loc["tf32-s0", "State"] == "n/a" and runs.loc["bf16-s2", "State"] == "unsubmitted"
    assert runs.loc["bf16-mvsa", "State"] == "failed"
    assert runs.loc["fp32-s0", "Device"] == "A100"


def test_loader_speedup_and_utilisation_gain(tmp_path):
    d = tmp_path / "records"  # a plain directory of records: no manifest
    for seed, (std, opt) in enumerate([(20.0, 16.0), (22.0, 18.0)]):
        write(d, record(f"std-{seed}", [std], seed=seed, util=[70.0 + 4 * seed]))
        write(d, record(f"opt-{seed}", [opt], seed=seed, preinit=True, util=[90.0 + 2 * seed]))
    write(
        d, record("std-b128", [30.0], batch=128, util=[60.0])
    )  # its pre-initialised run never wrote a record
    write(d, record("opt-b128", [30.0], batch=128, preinit=True, status="failed"))
    runs = load_results(d).runs
    assert detect_kinds(runs) == ["loader"]
    (loader, _), _ = build_tables(runs)
    b64 = row(loader, **{"Batch size": "64"})
    # time: std 20, 22 -> 21 ± 1.00; opt 16, 18 -> 17 ± 1.00; speedup 21 / 17 = 1.235
    assert (b64["Standard (s)"], b64["Pre-initialised (s)"], b64["Pre-initialised speedup"]) == \
        ("21.00 ± 1.00", "17.00 ± 1.00", "1.24×")
    # util: std 70, 74 -> 72 ± 2.0; opt 90, 92 -> 91 ± 1.0; gain 91 - 72 = +19.0 percentage points
    assert (
        b64["Standard util (%)"],
        b64["Pre-initialised util (%)"],
        b64["Pre-initialised util gain"],
    ) == ("72.0 ± 2.0", "91.0 ± 1.0", "+19.0")
    b128 = row(loader, **{"Batch size": "128"})
    assert b128["Standard (s)"] == "30.00" and b128["Pre-initialised (s)"].startswith("failed [")
    assert b128["Pre-initialised speedup"] == "–"
    assert "GPU" in loader.title


def test_parallelism_and_overall(tmp_path):
    recs = [
        record("single", [12.0]),
        record("ddp", [6.0], parallelism="ddp"),
        record("blp", [8.0], parallelism="blp"),
        record("opt", [4.0], parallelism="blp", precision="tf32", preinit=True),
    ]
    planned = [{"name": r["run"], "config": r["config"]} for r in recs] + [
        {
            "name": "dp",
            "config": record("dp", [], parallelism="dp")["config"],
            "na": "DP needs 2 GPUs",
        }
    ]
    runs = load_results(sweep_dir(tmp_path, "par", planned, recs)).runs
    assert set(detect_kinds(runs)) == {"precision", "loader", "parallelism", "overall"}
    tables, _ = build_tables(runs, ["parallelism", "overall"])
    par, overall = tables[0], tables[1]
    r = row(par, Precision="FP32")  # the loader column is left out: precision determines it here
    assert (r["DDP speedup"], r["BLP speedup"]) == ("2.00×", "1.50×")  # 12/6, 12/8
    assert "DP (s)" not in r and "DP needs 2 GPUs" in par.caption and " DP" not in par.title
    o = row(overall, Optimisations="TF32 + Pre-initialised + BLP")
    assert (o["Default (s)"], o["Optimised (s)"], o["Speedup"]) == (
        "12.00",
        "4.00",
        "3.00×",
    )  # 12/4


def test_directory_of_sweeps_keeps_them_apart(tmp_path):
    """Equal configs from two sweeps are two rows, not two seeds of one; loose records count too."""
    for name, t in (("a", 10.0), ("b", 20.0)):
        recs = [record(f"{name}-fp32", [t]), record(f"{name}-bf16", [t / 2], precision="bf16")]
        sweep_dir(tmp_path, name, [{"name": r["run"], "config": r["config"]} for r in recs], recs)
    write(tmp_path / "loose", record("loose-fp32", [8.0]))
    results = load_results(tmp_path)
    assert results.sweeps == ["a", "b", "loose"]
    (precision, runs_table), _ = build_tables(results.runs)
    assert (
        row(precision, Sweep="a")["FP32 (s)"] == "10.00"
        and row(precision, Sweep="b")["FP32 (s)"] == "20.00"
    )
    # the loose record (a sweep of its own in which precision does not vary): in the runs table only
    assert set(precision.frame["Sweep"]) == {"a", "b"}
    assert "loose-fp32" in set(runs_table.frame["Run"])


def test_algorithm_mean_se_and_ibf(tmp_path):
    d = tmp_path / "records"
    for seed, (fused, vis) in enumerate([(0.60, 0.20), (0.62, 0.25), (0.64, 0.30)]):
        write(d, record(f"naive-{seed}", [10.0], seed=seed, optimised={"audio": 100, "visual": 100},
                        test={"acc/fused": fused, "acc/audio": 0.6, "acc/visual": vis,
                              "bias/audio": 0.7, "bias/visual": 0.3}))
        write(d, record(f"alt-{seed}", [8.0], seed=seed, strategy="alternating",
                        test={"acc/fused": 0.7, "acc/audio": 0.6, "acc/visual": 0.5}))
    write(d, record("entropy", [5.0], strategy="entropy", cosine=True, test={"acc/fused": 0.7}))
    write(
        d,
        record(
            "single-audio", [5.0], modalities=["audio"], test={"acc/fused": 0.6, "acc/audio": 0.6}
        ),
    )
    write(
        d,
        record(
            "single-visual",
            [5.0],
            modalities=["visual"],
            test={"acc/fused": 0.5, "acc/visual": 0.5},
        ),
    )
    runs = load_results(d).runs
    assert detect_kinds(runs) == ["algorithm"]
    (acc, training, _), _ = build_tables(runs)
    naive = row(acc, Method="naive", Encoder="audio+visual")
    # fused 60, 62, 64 % -> mean 62.0, sd 2.0, SE 2/sqrt(3) = 1.15
    assert naive["Fused acc (%)"] == "62.0 ± 1.15"
    # visual 20, 25, 30 -> 25.0 ± 2.89 (5/sqrt(3))
    assert naive["Visual acc (%)"] == "25.0 ± 2.89"
    # IBF (Eq. 3.1) from the means: 1 - (min(0.6/0.6, 1) + min(0.25/0.5, 1)) / 2 = 0.25
    assert naive["IBF"] == "0.250"
    assert (
        row(acc, Encoder="audio")["IBF"] == "0"
        and row(acc, Encoder="audio")["Visual acc (%)"] == "–"
    )
    alt = row(training, Method="alternating")
    assert alt["Time/epoch (s)"] == "8.00 ± 0.00" and alt["Speedup vs naive"] == "1.25×"  # 10 / 8
    assert row(training, Method="naive", Encoder="audio+visual")["Epochs audio"] == "100 ± 0"
    # Entropy training comes with the cosine classifier: still compared with naive (10 / 5)
    assert row(training, Method="entropy")["Speedup vs naive"] == "2.00×"


def test_ibf_baselines_come_from_runs_on_the_same_data(tmp_path):
    """A report folder holding tiny and full runs of one dataset: each IBF is computed against the
    single- modality runs of its own preset, and a preset without baselines gets none (not the other
    preset's)."""
    d = tmp_path / "records"
    for preset, (a, v) in {"tiny": (0.9, 0.8), "full": (0.6, 0.5)}.items():
        write(
            d,
            record(
                f"{preset}-audio", [5.0], preset=preset, modalities=["audio"], test={"acc/fused": a}
            ),
        )
        write(
            d,
            record(
                f"{preset}-visual",
                [5.0],
                preset=preset,
                modalities=["visual"],
                test={"acc/fused": v},
            ),
        )
        write(d, record(f"{preset}-naive", [10.0], preset=preset,
                        test={"acc/fused": 0.7, "acc/audio": 0.45, "acc/visual": 0.25}))
    (acc, *_), _ = build_tables(load_results(d).runs)
    # tiny: 1 - (0.45/0.9 + 0.25/0.8) / 2 = 0.59375; full: 1 - (0.45/0.6 + 0.25/0.5) / 2 = 0.375
    assert row(acc, Encoder="audio+visual", preset="tiny")["IBF"] == "0.594"
    assert row(acc, Encoder="audio+visual", preset="full")["IBF"] == "0.375"

    only_tiny = tmp_path / "only-tiny"
    only_tiny.mkdir()
    for f in d.glob("*.json"):
        if not f.name.startswith("full-") or f.name == "full-naive.json":
            shutil.copy(f, only_tiny)
    (acc, *_), _ = build_tables(load_results(only_tiny).runs)
    full = row(acc, Encoder="audio+visual", preset="full")["IBF"]
    assert full.startswith("–") and "0.375" not in full and "0.594" not in full


def test_damaged_records_are_named_and_other_json_files_passed_over(tmp_path, caplog):
    d = tmp_path / "records"
    write(d, record("good", [4.0]))
    (d / "binary.json").write_bytes(b"\xff\xfe\x00")
    (d / "torn.json").write_text(json.dumps(record("torn", [4.0]))[:-40])
    (d / "invalid.json").write_text(json.dumps({**record("invalid", [4.0]), "status": "exploded"}))
    (d / "notes.json").write_text(json.dumps({"who": "someone else's file"}))
    with caplog.at_level("WARNING"):
        runs = load_results(d).runs
    assert list(runs["run"]) == ["good"]
    warned = caplog.text
    assert all(f"{d / n}.json" in warned for n in ("binary", "torn", "invalid")), warned
    assert "notes.json" not in warned


def nonwhite_fraction(png: Path) -> float:
    import matplotlib.image

    img = matplotlib.image.imread(png)[..., :3]
    return float((img.mean(axis=2) < 0.9).mean())


def test_report_pdf_renders(tmp_path):
    written = build_report(precision_sweep(tmp_path))
    out = tmp_path / "precision" / "report"
    assert written["pdf"] == out / "report.pdf"
    for name in ("precision", "runs"):
        assert "|" in (out / "tables" / f"{name}.md").read_text()
        assert r"\begin{tabular}" in (out / "tables" / f"{name}.tex").read_text()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["accuracy-1.png", "speedups-1.png", "utilisation-1.png"]
    # title, the Reproduction page (3 pages: a row per thesis claim), precision table, 3 figures,
    # runs table
    assert written["pages"] == 9
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm not installed (apt-get install poppler-utils): PDF not rendered")
    subprocess.run(
        ["pdftoppm", "-r", "50", "-png", str(out / "report.pdf"), str(tmp_path / "page")],
        check=True,
    )
    pages = sorted(tmp_path.glob("page-*.png"))
    assert len(pages) == 9
    for p in pages:
        assert nonwhite_fraction(p) > 0.005, f"{p.name} is blank"


def test_cli_report_on_a_plain_directory(tmp_path, capsys):
    from mmhpc.cli import main

    write(tmp_path / "r", record("a", [1.0]))
    assert (
        main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "out"), "--kind", "algorithm"])
        == 0
    )
    assert (tmp_path / "out" / "report.pdf").exists()
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


def test_a_long_table_continues_on_new_pages_without_running_into_the_notes():
    import pandas as pd

    from mmhpc.report.pdf import TABLE_BOX, table_pages
    from mmhpc.report.tables import Table

    frame = pd.DataFrame(
        {
            "Dataset": ["cremad"] * 30 + ["iemocap"] * 30,
            "Method": [f"m{i}" for i in range(60)],
            "Wrapped": ["a long cell " * (6 if i % 7 == 0 else 1) for i in range(60)],
        }
    )
    table = Table(
        "long", "A long table", "caption", frame, notes=["[1] a note at the foot of the last page"]
    )
    pages = table_pages(table, 1)
    assert len(pages) >= 3
    shown = 0
    for fig in pages:
        renderer = fig.canvas.get_renderer()
        (tbl,) = fig.axes[0].tables
        box = tbl.get_window_extent(renderer)
        assert box.y0 >= TABLE_BOX[1] * fig.bbox.height - 1, (
            "rows drawn below the table's box, over the notes"
        )
        shown += max(i for i, _ in tbl.get_celld())  # body rows on this page
    assert shown == len(frame)


def test_an_epoch_shorter_than_the_sampler_interval_has_no_utilisation_and_is_left_out(tmp_path):
    rec = record("short", [0.3, 2.0, 2.0], util=[None, 50.0, 70.0])
    rec["epochs"][0]["util"] = {
        "gpu0_util_pct_mean": None,
        "cpu_proc_pct_mean": None,
    }  # no sample in 0.3 s
    write(tmp_path / "runs", rec)
    (run,) = load_results(tmp_path / "runs").runs.to_dict("records")
    assert run["util_pct"] == 60.0 and run["util_kind"] == "GPU"


def test_gpu_utilisation_unavailable_is_said_where_the_utilisation_would_be(tmp_path):
    """A ROCm run without an AMD sampler (host figures only) and a MIG slice: the sampler's note
    stands in the utilisation's place, never the CPU's figure, never a bare dash."""
    from mmhpc.system.sampler import NO_GPU_SAMPLING, NO_GPU_UTIL

    d = tmp_path / "records"
    rocm_note = f"{NO_GPU_SAMPLING}: a ROCm build on AMD GPUs (NVML is NVIDIA's): host metrics only"
    mig_note = f"gpu0 {NO_GPU_UTIL}, a MIG slice (NVML has no utilisation for MIG devices)"
    for run, note, util in (
        ("rocm", rocm_note, {"cpu_proc_pct_mean": 97.0}),
        ("mig", mig_note, {"gpu0_util_pct_mean": None, "cpu_proc_pct_mean": 95.0}),
    ):
        for preinit in (False, True):
            rec = record(
                f"{run}-{int(preinit)}",
                [20.0 - 4 * preinit],
                preinit=preinit,
                util=[0.0],
                dataset=run,
            )
            for e in rec["epochs"]:
                e["util"] = dict(util)
            rec["system"] = {"notes": ["nvml unavailable: not found", note]}
            write(d, rec)
    runs = load_results(d).runs.set_index("run")
    assert (
        pd.isna(runs.loc["rocm-0", "util_pct"]) and runs.loc["rocm-0", "util_kind"] == "GPU"
    )  # not 97 CPU
    assert (
        runs.loc["rocm-0", "util_pct_na"] == rocm_note
        and runs.loc["mig-1", "util_pct_na"] == mig_note
    )
    (loader, runs_table), _ = build_tables(load_results(d).runs)
    rocm = row(loader, Dataset="rocm")
    assert rocm["Standard (s)"] == "20.00" and rocm["Standard util (%)"].startswith("n/a [")
    assert any(rocm_note in n for n in loader.notes) and any(mig_note in n for n in loader.notes)
    shown = runs_table.frame.set_index("Run")
    assert shown.loc["rocm-0", "Util (%)"] == "n/a" and rocm_note in shown.loc["rocm-0", "Reason"]
    assert shown.loc["mig-1", "Util (%)"] == "n/a" and mig_note in shown.loc["mig-1", "Reason"]


# ---- warm-up epochs, loader knobs (Tables 2.4, 2.5) and the overall sweep (Table 4.16)
# -------------------------


def test_warmup_epoch_left_out_of_every_mean(tmp_path):
    d = tmp_path / "records"
    # epoch 0 is the warm-up (30 s, util 10 %): left out -> time (10 + 12) / 2 = 11, util (80 + 90)
    # / 2 = 85
    write(
        d,
        record(
            "fp32", [30.0, 10.0, 12.0], util=[10.0, 80.0, 90.0], waits=[9.0, 0.5, 0.7], warmup=False
        ),
    )
    write(
        d, record("bf16", [7.0], precision="bf16", warmup=False)
    )  # one epoch, all warm-up: no time
    runs = load_results(d).runs.set_index("run")
    assert runs.loc["fp32", "time_epoch_s"] == 11.0 and runs.loc["fp32", "util_pct"] == 85.0
    assert (
        runs.loc["fp32", "idle_s"] == pytest.approx(0.6) and runs.loc["fp32", "warmup_epochs"] == 1
    )
    # one epoch: it is the warm-up, so no time (never a time over the warm-up) and the reason why
    assert pd.isna(runs.loc["bf16", "time_epoch_s"]) and runs.loc["bf16", "warmup_epochs"] == 1
    assert "all warm-up" in runs.loc["bf16", "na_reason"]
    (precision, _), _ = build_tables(load_results(d).runs)
    assert "mean over the epochs after the warm-up" in precision.caption
    cremad = row(precision, Dataset="cremad")
    assert cremad["BF16 (s)"].startswith("n/a [") and cremad["BF16 speedup"].startswith("n/a [")
    assert any("all warm-up" in n for n in precision.notes)


def _loader_records(d: Path) -> None:
    # Table 2.4: time per epoch by workers (after a 99 s warm-up epoch); Table 2.5: the thesis' idle
    # times
    for w, t in ((1, 40.0), (2, 20.0), (4, 10.3), (8, 10.0)):
        write(d, record(f"workers-{w}", [99.0, t], loader={"num_workers": w}, warmup=False))
    for p, idle in ((0, 4.6), (1, 0.76), (2, 0.72), (4, 0.74), (8, 0.68)):
        write(
            d,
            record(
                f"prefetch-{p}",
                [99.0, 9.0],
                loader={"num_workers": 16, "prefetch_factor": p},
                waits=[5.0, idle],
                estimated=p == 0,
                warmup=False,
            ),
        )


def test_loader_knob_tables_and_their_recommendation(tmp_path):
    _loader_records(tmp_path / "records")
    runs = load_results(tmp_path / "records").runs
    assert detect_kinds(runs) == ["loader"]
    tables, _ = build_tables(runs)
    workers, prefetch = (t for t in tables if t.name in ("loader-workers", "loader-prefetch"))
    w = workers.frame.set_index("Workers")
    assert list(w["Time (s)"]) == ["40.00", "20.00", "10.30", "10.00"]  # warm-up epoch left out
    # 4 workers: 10.3 <= 1.05 x 10.0 (the fastest, 8 workers) and fewer workers than 8
    assert w.loc["4", "Recommended"] == "✓" and (w["Recommended"] == "✓").sum() == 1
    assert "Recommended" in workers.caption and ": 4" in workers.caption
    assert set(workers.frame["Prefetch factor"]) == {"default"}  # the workers block leaves it unset
    p = prefetch.frame[prefetch.frame["Workers"] == "16"].set_index("Prefetch factor")
    assert (
        p.loc["0 (estimated)", "Idle time (s)"] == "4.600"
        and p.loc["8", "Idle time (s)"] == "0.680"
    )
    # least idle 0.68 (factor 8); 0.72 <= 0.68 x 1.05 + 0.01 = 0.724: factor 2 is as good, and
    # smaller
    assert p.loc["2", "Recommended"] == "✓" and (p["Recommended"] == "✓").sum() == 1
    assert "Alg. 7" in prefetch.caption and "estimated" in prefetch.caption


def test_overall_sweep_lists_the_table_4_16_runs():
    from mmhpc.launch.clusters import load_profile
    from mmhpc.sweep import expand, load_sweep

    plan = expand(
        load_sweep(Path(__file__).resolve().parents[2] / "sweeps" / "overall.yaml"),
        load_profile("alvis", "NAISS1"),
    ).check()
    combos = {
        (r.config.system.precision, r.config.loader.preinit, r.config.system.parallelism)
        for r in plan.runs
    }
    assert combos == {("fp32", False, "single"), ("tf32", True, "blp"), ("tf32", True, "ddp")}
    # 5 datasets x 2 GPU types: one default and two optimised runs each
    assert len(plan.runs) == 30
    assert {r.resources.gpu for r in plan.runs} == {"A100", "A40"}
    assert {r.config.data.dataset for r in plan.runs} == {
        "cremad",
        "ave",
        "mvsa",
        "iemocap",
        "urfunny",
    }
