"""`mmhpc demo`: the thesis' modality-imbalance symptom and its fix on synthetic CREMA-D, on a
laptop CPU.

Four runs on the `tiny` preset: single-modality audio and visual baselines, then naive joint
training and alternating training with concat fusion; IBF (Eq. 3.1) of the multimodal runs is
measured against the baselines. The thesis trains 100 epochs at lr 1e-3; the demo trains 5 at lr
1e-2 to fit in CPU minutes.
"""
from __future__ import annotations

import time

from mmhpc.config import load_config
from mmhpc.progress import run_label
from mmhpc.results import RunRecord
from mmhpc.train import train

DEMO = {
    "data.dataset": "cremad",
    "data.preset": "tiny",
    "model.fusion": "concat",
    "train.epochs": 5,
    "train.lr": 0.01,
    "train.seed": 0,
    "output.overwrite": True,
}


def cell(value: float | None) -> str:
    """One 8-wide table cell: a metric to 3 decimals, or '-' where it does not apply."""
    return f"{value:8.3f}" if value is not None else f"{'-':>8}"


def train_single_modalities(base: dict, quiet: bool, runs: int = 2) -> dict[str, RunRecord]:
    """The IBF baselines (Eq. 3.1): each modality of synthetic CREMA-D trained alone; modality ->
    record. They are runs 1 and 2 of `runs` in the log lines."""
    out = {}
    for i, m in enumerate(("audio", "visual"), 1):
        with run_label(f"{i}/{runs} single-{m}"):
            out[m] = train(
                load_config(
                    None, dict(base, **{"data.modalities": [m], "output.name": f"single-{m}"})
                ),
                progress=not quiet,
            )
    return out


def run_demo(runs_dir: str = "runs/demo", epochs: int | None = None, quiet: bool = False,
             overrides: dict | None = None) -> int:
    """`overrides` (config key -> value) apply to every run, e.g. a data.root for the tests."""
    base = dict(DEMO, **{"output.runs_dir": runs_dir}, **(overrides or {}))
    if epochs:
        base["train.epochs"] = epochs
    t0 = time.perf_counter()
    single = train_single_modalities(base, quiet, runs=4)
    single_acc = {m: rec.test_acc("fused") for m, rec in single.items()}
    rows = [
        (
            f"single {m}",
            None,
            *(single_acc[m] if k == m else None for k in ("audio", "visual")),
            None,
            rec.summary.epoch_time_mean_s,
        )
        for m, rec in single.items()
    ]
    for i, name in enumerate(("naive", "alternating"), 3):
        with run_label(f"{i}/4 {name}"):
            rec = train(
                load_config(
                    None,
                    dict(
                        base,
                        **{
                            "strategy.name": name,
                            "output.name": name,
                            "train.single_acc": single_acc,
                        },
                    ),
                ),
                progress=not quiet,
            )
        s, test = rec.summary, rec.summary.test
        rows.append(
            (
                name,
                test["acc/fused"],
                test["acc/audio"],
                test["acc/visual"],
                s.ibf,
                s.epoch_time_mean_s,
            )
        )
    print()
    print(f"synthetic CREMA-D (tiny), concat fusion, {base['train.epochs']} epochs, test split "
          f"({time.perf_counter() - t0:.0f} s in all)")
    print(f"{'run':<14}{'fused':>8}{'audio':>8}{'visual':>8}{'IBF':>8}{'s/epoch':>9}")
    for label, fused, audio, visual, ibf, sec in rows:
        print(f"{label:<14}{cell(fused)}{cell(audio)}{cell(visual)}{cell(ibf)}{sec:9.1f}")
    print(f"records: {runs_dir}/")
    return 0
