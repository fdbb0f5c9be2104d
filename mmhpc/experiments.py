"""CPU demonstration of the strategies: `mmhpc demo algorithms` (`make demo-algorithms`).

`algorithms`: the shape of thesis Tables 4.1, 4.4 and 4.5 on synthetic CREMA-D (tiny), with the
settings of `mmhpc demo` (concat fusion, 5 epochs at lr 1e-2; see `mmhpc.demo.DEMO`).
Single-modality audio and visual runs give the baselines of IBF (Eq. 3.1); then Naive, OGM-GE,
Alternating, AMST (audio skip 5) and Reliability training (cosine classifier; T = 5 optimisation
epochs per modality). The table reports test accuracies, IBF, optimisation epochs per modality
(Table 4.4) and the training time per epoch with its speedup over Alternating (Eq. 4.1). Every run
uses one thread, so that the timings compare the algorithms rather than the machine's load.
"""
from __future__ import annotations

import time

from mmhpc.config import load_config
from mmhpc.demo import DEMO, cell, train_single_modalities
from mmhpc.metrics import speedup
from mmhpc.progress import run_label
from mmhpc.results import RunRecord
from mmhpc.train import train

STRATEGY_RUNS = [("naive", {}), ("ogm_ge", {}), ("alternating", {}), ("amst", {}),
                 ("reliability", {"model.cosine": True})]


def _mean_train_s(record: RunRecord) -> float:
    """Training time per epoch (Table 4.5 times training; validation is the same for every
    strategy)."""
    times = [e.time.train_s for e in record.epochs]
    return sum(times) / len(times)


def run_algorithms(
    runs_dir: str = "runs/algorithms",
    epochs: int | None = None,
    quiet: bool = False,
    overrides: dict | None = None,
) -> int:
    """`overrides` (config key -> value) apply to every run, e.g. a data.root for the tests."""
    base = dict(DEMO, **{"output.runs_dir": runs_dir, "system.threads": 1}, **(overrides or {}))
    if epochs:
        base["train.epochs"] = epochs
    t0 = time.perf_counter()
    n = 2 + len(STRATEGY_RUNS)
    single = {
        m: rec.test_acc("fused") for m, rec in train_single_modalities(base, quiet, runs=n).items()
    }
    records = {}
    for i, (name, extra) in enumerate(STRATEGY_RUNS, 3):
        overrides = dict(
            base,
            **extra,
            **{"strategy.name": name, "output.name": name, "train.single_acc": single},
        )
        with run_label(f"{i}/{n} {name}"):
            records[name] = train(load_config(None, overrides), progress=not quiet)
    print(format_table(records, single, base["train.epochs"], time.perf_counter() - t0))
    print(f"records: {runs_dir}/")
    return 0


def format_table(
    records: dict[str, RunRecord], single: dict[str, float], epochs: int, seconds: float
) -> str:
    reference = _mean_train_s(records["alternating"])
    lines = [
        f"synthetic CREMA-D (tiny), concat fusion, {epochs} epochs (Reliability: T = {epochs} per "
        "modality), "
        f"test split ({seconds:.0f} s in all)",
        f"{'run':<14}{'fused':>8}{'audio':>8}{'visual':>8}{'IBF':>8}{'epochs':>8}{'opt A/V':>9}"
        f"{'train s/ep':>11}{'vs Alt':>8}",
    ]
    for m in ("audio", "visual"):
        lines.append(f"{'single ' + m:<14}{cell(None)}{cell(single[m] if m == 'audio' else None)}"
                     f"{cell(single[m] if m == 'visual' else None)}{cell(None)}")
    for name, rec in records.items():
        s, test = rec.summary, rec.summary.test
        opt = s.optimised_epochs
        sec = _mean_train_s(rec)
        accs = "".join(cell(test[f"acc/{k}"]) for k in ("fused", "audio", "visual"))
        lines.append(f"{name:<14}{accs}{cell(s.ibf)}{s.epochs_run:>8}"
                     f"{opt['audio']:>5}/{opt['visual']:<3}{sec:>11.1f}"
                     f"{speedup(reference, sec):>7.2f}x")
    return "\n".join(lines)

