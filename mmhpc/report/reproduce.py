"""Measured beside published: the thesis' value of each report cell, and a verdict per thesis claim.

`ThesisRows` gives a mirrored table, under each measured row, a `thesis` row (the value the thesis
prints for the same dataset, modalities, compared setting, batch size and GPU, from
`mmhpc.report.thesis`) and a `measured/thesis` row. Times and utilisation are set against the thesis
only on the GPU type the thesis measured them on ("other GPU" otherwise); speedups and accuracies on
any GPU, the GPU named. Every pairing is kept as a `Match`, and `verdicts` turns them into one
verdict per claim of the thesis (`CLAIMS`): reproduced (every measured cell within the claim's
tolerance), not reproduced (the cells outside it, both values shown), or not measured (and why).
Smoke tests (CPU runs, tiny data, capped batches) are shown beside the thesis but never compared: no
ratio, no verdict.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from mmhpc.report.thesis import thesis_values

GPU_BOUND = (
    "time_epoch_s",
    "util_pct",
    "util_gain",
    "idle_s",
)  # compared on the thesis' GPU type only
RATIO = ("speedup", "acc", "time_epoch_s", "util_pct", "idle_s")  # shown as measured/thesis
SOURCE = "Source"
SMOKE = "smoke test"
RATIO_LABEL = "ratio"  # measured/thesis


def smoke_reason(row) -> str:
    """Why a run is a smoke test, or "": it ran on the CPU, on tiny data, or with capped batches."""
    why = []
    if str(row.get("device")) == "CPU":
        why.append("CPU")
    if row.get("data.preset") == "tiny":
        why.append("tiny data")
    if pd.notna(row.get("train.max_batches")) and row.get("train.max_batches") not in (None, ""):
        why.append(f"{int(row['train.max_batches'])} batches per epoch")
    return ", ".join(why)


@dataclass
class Match:
    """One measured cell and the thesis cell it is set against."""

    report_table: str
    context: str  # the measured row's keys, e.g. "cremad · audio+visual · A100 · 64"
    metric: str
    setting: str
    measured: float | None
    thesis: float | None
    thesis_table: str = ""
    thesis_row: str = ""
    thesis_column: str = ""
    dataset: str = ""
    modalities: str = ""
    device: str = ""
    thesis_gpu: str = ""
    smoke: str = ""  # why the measured cell is a smoke test ("" when it is not)
    comparable: bool = (
        True  # False: another GPU for a GPU-bound metric, another batch size, or a smoke test
    )
    why_not: str = ""
    thesis_batch: int | None = None


def _num(text: str, metric: str, value: float) -> str:
    if metric == "speedup":
        return f"{value:.2f}×"
    if metric in ("acc", "util_pct"):
        return f"{value:.1f}"
    if metric == "util_gain":
        return f"{value:+.1f}"
    if metric in ("ibf", "bias"):
        return f"{value:.3f}" if metric == "ibf" else f"{value:.2f}"
    if metric == "epochs":
        return f"{value:.0f}"
    return f"{value:.2f}"


def lookup(
    tables: tuple[str, ...],
    metric: str,
    dataset: str,
    modalities: str,
    setting: str | None = None,
    baseline: str | None = None,
    gpu: str = "",
    batch=None,
    head: str | None = None,
    strategy: str | None = None,
    fusion: str | None = None,
) -> tuple[dict | None, str]:
    """The thesis cell for these keys and why it is not comparable ("" when it is): the first of
    `tables` that has it; on the run's GPU type when the thesis has it there, else on the A100."""
    v = thesis_values()
    sel = v[
        v["table"].isin(tables)
        & (v["metric"] == metric)
        & (v["dataset"] == dataset)
        & (v["modset"] == frozenset(str(modalities).split("+")))
    ]
    for col, want in (
        ("setting", setting),
        ("baseline", baseline),
        ("head", head),
        ("strategy", strategy),
        ("fusion", fusion),
    ):
        if want is not None:
            sel = sel[sel[col] == want]
    if sel.empty:
        return None, ""
    why = ""
    try:
        b = int(batch)
    except (TypeError, ValueError):
        b = None
    if sel["batch_size"].notna().any():
        same = sel[sel["batch_size"] == b]
        if same.empty:
            if 64 not in set(sel["batch_size"]):
                return None, ""
            same, why = sel[sel["batch_size"] == 64], f"thesis at batch size 64, this run {b}"
        sel = same
    same_gpu = sel[sel["gpu"] == gpu]
    if same_gpu.empty:
        other = sel[sel["gpu"] == "A100"] if (sel["gpu"] == "A100").any() else sel
        sel = other
        if metric in GPU_BOUND and (sel["gpu"] != "").any():
            why = f"other GPU (thesis {sel['gpu'].iloc[0]}, this run {gpu or '?'})" + (
                f"; {why}" if why else ""
            )
    else:
        sel = same_gpu
    order = {t: i for i, t in enumerate(tables)}
    row = sel.assign(_o=sel["table"].map(order)).sort_values("_o", kind="stable").iloc[0]
    return row.drop(labels=["_o"]).to_dict(), why


@dataclass
class Col:
    """One measured cell of a table row and the thesis keys it mirrors."""

    name: str
    text: str
    value: float | None
    metric: str
    setting: str | None = None
    baseline: str | None = None
    head: str | None = None
    strategy: str | None = None
    fusion: str | None = None


@dataclass
class ThesisRows:
    """Builds the thesis and measured/thesis rows under each measured row of one mirrored table."""

    report_table: str
    tables: tuple[str, ...]
    notes: object  # the table's Notes (tables.Notes)
    matches: list[Match] = field(default_factory=list)

    def rows(
        self, measured: dict, keys: list[str], cols: list[Col], group: pd.DataFrame
    ) -> list[dict]:
        """The measured row (its keys, then the source, then its values), the thesis row and the
        measured/thesis row; each column set against the thesis is kept as a Match."""
        device, smoke = _device_and_smoke(group)
        keys = [k for k in keys if k != SOURCE]
        context = " · ".join(str(measured[k]) for k in keys if measured.get(k) not in ("", None))
        values = {k: v for k, v in measured.items() if k not in keys}
        key_cells = {k: measured[k] for k in keys}
        measured = {**key_cells, SOURCE: "measured", **values}
        thesis_row = {**key_cells, SOURCE: "thesis"}
        ratio_row = {**key_cells, SOURCE: RATIO_LABEL if not smoke else SMOKE}
        first = group.iloc[0]
        for c in cols:
            thesis_row[c.name], ratio_row[c.name] = self._cell(c, first, device, smoke, context)
        return [measured, thesis_row, ratio_row]

    def _cell(self, c: Col, first: pd.Series, device: str, smoke: str, context: str):
        """The thesis and the ratio text of one column (the Match kept where the thesis has it)."""
        hit, why = lookup(self.tables, c.metric, str(first["dataset"]), str(first["modalities"]),
                          c.setting, c.baseline, device, first.get("batch_size"), c.head,
                          c.strategy, c.fusion)
        if hit is None or hit["value"] is None or pd.isna(hit["value"]):
            return "–", "–"
        t = float(hit["value"])
        text = _num("", c.metric, t)
        if c.metric not in ("speedup",) and hit.get("se") is not None and pd.notna(hit.get("se")):
            text += f" ± {hit['se']:g}"
        comparable = not smoke and not why
        if c.metric in GPU_BOUND and why.startswith("other GPU"):
            thesis = "other GPU" + self.notes.cite(f"{why}: {text} in thesis Table {hit['table']}")
        else:
            thesis = text + (self.notes.cite(why) if why else "")
        ratio = "–"
        if c.value is not None and comparable and c.metric in RATIO and t:
            ratio = f"{c.value / t:.2f}"
        why_not = SMOKE + f" ({smoke})" if smoke else (
            why or ("no measured value" if c.value is None else ""))
        self.matches.append(Match(
            self.report_table, context, c.metric, c.setting or "", c.value, t, hit["table"],
            hit["row"], hit["column"], str(first["dataset"]), str(first["modalities"]), device,
            hit["gpu"], smoke, comparable and c.value is not None, why_not,
            None if pd.isna(hit["batch_size"]) else int(hit["batch_size"])))
        return thesis, ratio


def _device_and_smoke(group: pd.DataFrame) -> tuple[str, str]:
    """The device(s) a row's runs ran on (its finished ones where there are any) and why they are
    smoke tests ("" when they are not)."""
    done = group[group["state"] == "done"]
    devices = sorted(set(done["device"].astype(str))) or sorted(set(group["device"].astype(str)))
    device = devices[0] if len(devices) == 1 else "/".join(devices)
    reasons = (done if len(done) else group).apply(smoke_reason, axis=1)
    return device, "; ".join(dict.fromkeys(r for r in reasons if r))


# ---- claims and verdicts ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    tables: tuple[str, ...]
    metric: str
    settings: tuple[str, ...] = ()  # thesis settings the claim is about (empty: all)
    gpu: str = ""  # thesis GPU of the claim ("": any)
    batch: tuple[int, ...] = ()  # thesis batch sizes of the claim (empty: any)
    kind: str = "within"  # within (each cell within tolerance) | lower (IBF below naive's)


TOLERANCE = {
    "speedup": ("rel", 0.15),
    "time_epoch_s": ("rel", 0.15),
    "acc": ("abs", 3.0),
    "util_gain": ("abs", 5.0),
    "util_pct": ("abs", 5.0),
    "ibf": ("abs", 0.05),
}
TOLERANCE_TEXT = (
    "Tolerance: speedups within ±15 % of the thesis' value; accuracies within ±3 points; "
    "utilisation gains within ±5 points. Each measured cell is set against the thesis cell of the "
    "same dataset, modalities, setting and batch size; speedups on any GPU type (named), times and "
    "utilisation only on the thesis' GPU type. Smoke tests (CPU, tiny data, capped batches) never "
    "get a verdict."
)

CLAIMS = (
    Claim(
        "tf32-a100",
        "TF32 over FP32 on A100: text encoder 2.61-3.33×, CNN encoders 0.99-1.02×",
        ("4.6",),
        "speedup",
        ("tf32",),
        "A100",
    ),
    Claim(
        "tf32-a40",
        "TF32 over FP32 on A40: text encoder 1.29-1.65×",
        ("4.7",),
        "speedup",
        ("tf32",),
        "A40",
    ),
    Claim(
        "bf16-tf32",
        "BF16 about as fast as TF32 on A100: 0.92-1.19×",
        ("4.8", "4.9"),
        "speedup",
        ("bf16",),
        "A100",
    ),
    Claim(
        "preinit-a100",
        "pre-initialised loader 1.12-1.37× over the standard loader (A100, batch 64)",
        ("4.10",),
        "speedup",
        ("preinit",),
        "A100",
        (64,),
    ),
    Claim(
        "preinit-util",
        "pre-initialised loader raises GPU utilisation by 10.1-23.4 points (A100, batch 64)",
        ("4.10",),
        "util_gain",
        ("preinit",),
        "A100",
        (64,),
    ),
    Claim(
        "preinit-batch",
        "pre-initialised loader 1.09-1.39× at batch sizes 32 and 128, more at 128",
        ("4.11",),
        "speedup",
        ("preinit",),
        "A100",
        (32, 128),
    ),
    Claim(
        "preinit-a40",
        "pre-initialised loader 1.06-1.23× on A40",
        ("4.12",),
        "speedup",
        ("preinit",),
        "A40",
    ),
    Claim(
        "dp-a100",
        "DP 1.01-1.22× over single on A100 (batch 64)",
        ("4.13",),
        "speedup",
        ("dp",),
        "A100",
    ),
    Claim(
        "ddp-a100",
        "DDP 1.67-2.12× over single on A100 (batch 64)",
        ("4.13",),
        "speedup",
        ("ddp",),
        "A100",
    ),
    Claim(
        "blp-a100",
        "BLP 1.16-1.68× over single on A100 (batch 64)",
        ("4.13",),
        "speedup",
        ("blp",),
        "A100",
    ),
    Claim(
        "parallel-batch",
        "at batch 32 / 128: DP 0.63-1.52×, DDP 1.56-2.43×, BLP 1.41-1.90× (A100)",
        ("4.14",),
        "speedup",
        ("dp", "ddp", "blp"),
        "A100",
        (32, 128),
    ),
    Claim(
        "parallel-a40",
        "on A40: DP 1.32-1.42×, DDP 1.61-2.24×, BLP 1.17-2.04× over single",
        ("4.15",),
        "speedup",
        ("dp", "ddp", "blp"),
        "A40",
    ),
    Claim(
        "overall",
        "overall 1.86-3.51× (TF32 + pre-initialised loader + BLP vs default, A100)",
        ("4.16",),
        "speedup",
        ("tf32+preinit+blp",),
        "A100",
    ),
    Claim("amst-ibf", "AMST lowers IBF vs naive", ("4.1",), "ibf", ("amst",), kind="lower"),
    Claim(
        "alt-ibf",
        "Alternating, Entropy and Reliability training lower IBF vs naive",
        ("4.1",),
        "ibf",
        ("alternating", "entropy", "reliability"),
        kind="lower",
    ),
    Claim(
        "fused-acc", "fused test accuracies of the methods and fusions", ("4.3", "4.2"), "acc", ()
    ),
    Claim(
        "algo-speedup",
        "AMST 1.2-1.6×, Entropy and Reliability 0.9-1.4× faster per epoch than naive",
        ("4.5",),
        "speedup",
        ("amst", "entropy", "reliability"),
    ),
)


def _in_claim(m: Match, claim: Claim) -> bool:
    if m.thesis_table not in claim.tables or m.metric != claim.metric:
        return False
    if claim.settings and m.setting not in claim.settings:
        return False
    return not claim.gpu or m.thesis_gpu == claim.gpu


def _within(metric: str, measured: float, thesis: float) -> bool:
    kind, tol = TOLERANCE.get(metric, ("rel", 0.15))
    return abs(measured - thesis) <= (tol * abs(thesis) if kind == "rel" else tol)


def _thesis_range(claim: Claim) -> str:
    v = thesis_values()
    if claim.kind == "lower":
        ibf = v[(v["table"].isin(claim.tables)) & (v["metric"] == "ibf") & v["value"].notna()]
        naive = {r.dataset: r.value for r in ibf[ibf["setting"] == "naive"].itertuples()}
        pairs = [
            (r.value, naive[r.dataset])
            for r in ibf[ibf["setting"].isin(claim.settings)].itertuples()
            if r.dataset in naive
        ]
        return f"lower in {sum(a < n for a, n in pairs)} of {len(pairs)}"
    sel = v[v["table"].isin(claim.tables) & (v["metric"] == claim.metric) & v["value"].notna()]
    if claim.settings:
        sel = sel[sel["setting"].isin(claim.settings)]
    if claim.gpu:
        sel = sel[sel["gpu"] == claim.gpu]
    if claim.batch:
        sel = sel[sel["batch_size"].isin(claim.batch)]
    if sel.empty:
        return "–"
    lo, hi = sel["value"].min(), sel["value"].max()
    unit = "×" if claim.metric == "speedup" else ""
    return (
        f"{_num('', claim.metric, lo)}" + (f"-{_num('', claim.metric, hi)}" if hi != lo else "")
        if unit == ""
        else f"{lo:.2f}-{hi:.2f}×"
    )


def verdicts(matches: list[Match]) -> list[dict]:
    """One verdict per claim: reproduced / not reproduced / not measured, with its cells."""
    out = []
    for claim in CLAIMS:
        rows = [m for m in matches if _in_claim(m, claim)]
        if claim.batch:
            rows = [m for m in rows if m.thesis_batch in claim.batch]
        comparable = [m for m in rows if m.comparable and m.measured is not None]
        entry = {
            "claim": claim.id,
            "text": claim.text,
            "thesis_tables": list(claim.tables),
            "thesis": _thesis_range(claim),
            "cells": [asdict(m) for m in comparable],
        }
        if claim.kind == "lower":
            entry.update(_lower_verdict(claim, matches))
        elif not comparable:
            entry.update(verdict="not measured", measured="–", why=_why_not(rows, claim))
        else:
            off = [m for m in comparable if not _within(claim.metric, m.measured, m.thesis)]
            vals = [m.measured for m in comparable]
            entry["measured"] = (
                f"{min(vals):.2f}-{max(vals):.2f}×"
                if claim.metric == "speedup"
                else f"{_num('', claim.metric, min(vals))}-{_num('', claim.metric, max(vals))}"
            )
            devices = sorted({m.device for m in comparable})
            on = f" on {', '.join(devices)}" if devices != [claim.gpu] else ""
            if off:
                entry.update(
                    verdict="not reproduced",
                    why=f"{len(off)} of {len(comparable)} cells outside the "
                    f"tolerance{on}: "
                    + "; ".join(
                        f"{m.context}: {_num('', m.metric, m.measured)} vs "
                        f"{_num('', m.metric, m.thesis)}"
                        f" (Table {m.thesis_table})"
                        for m in off[:6]
                    )
                    + (f"; ... {len(off) - 6} more" if len(off) > 6 else ""),
                )
            else:
                entry.update(
                    verdict="reproduced",
                    why=f"{len(comparable)} of {len(comparable)} cells within the tolerance{on}",
                )
        out.append(entry)
    return out


def _why_not(rows: list[Match], claim: Claim) -> str:
    if not rows:
        return "no run of this setting in the report"
    smoke = [m for m in rows if m.smoke]
    if smoke and len(smoke) == len(rows):
        return f"only smoke tests ({smoke[0].smoke}): no verdict"
    reasons = sorted({m.why_not for m in rows if m.why_not})
    return "; ".join(reasons) or "no comparable measured value"


def _lower_verdict(claim: Claim, matches: list[Match]) -> dict:
    """IBF of each named method below naive's on the same data (no smoke tests)."""
    ibf = {}
    for m in matches:
        if m.metric == "ibf" and m.measured is not None and m.thesis_table in claim.tables:
            ibf.setdefault((m.dataset, m.modalities), {}).setdefault(m.setting, []).append(m)
    pairs, smoke_only = [], False
    for (dataset, mods), by in ibf.items():
        if "naive" not in by:
            continue
        for s in claim.settings:
            for m in by.get(s, []):
                naive = [n for n in by["naive"] if not n.smoke]
                if m.smoke or not naive:
                    smoke_only = True
                    continue
                pairs.append(
                    (dataset, mods, s, m.measured, naive[0].measured, m.thesis, naive[0].thesis)
                )
    if not pairs:
        why = (
            "only smoke tests: no verdict"
            if smoke_only
            else "no finished naive and "
            + "/".join(claim.settings)
            + " runs with IBF on the same data"
        )
        return {"verdict": "not measured", "measured": "–", "why": why}
    bad = [p for p in pairs if not p[3] < p[4]]
    shown = "; ".join(
        f"{d} {s}: {a:.3f} vs naive {n:.3f} (thesis {ta:.3f} vs {tn:.3f})"
        for d, _, s, a, n, ta, tn in (bad or pairs)[:6]
    )
    return {
        "verdict": "not reproduced" if bad else "reproduced",
        "measured": f"lower in {len(pairs) - len(bad)} of {len(pairs)}",
        "why": shown,
    }


def write_verdicts(entries: list[dict], out: Path) -> list[Path]:
    """reproduction.json (for scripts) and reproduction.md beside the report."""
    out.mkdir(parents=True, exist_ok=True)
    js = out / "reproduction.json"
    js.write_text(
        json.dumps({"tolerance": TOLERANCE_TEXT, "claims": entries}, indent=1, default=str) + "\n"
    )
    lines = [
        "# Reproduction of the thesis' claims",
        "",
        TOLERANCE_TEXT,
        "",
        "| claim | thesis | measured | verdict | why |",
        "|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['text']} (Table {', '.join(e['thesis_tables'])}) | {e['thesis']} | "
            f"{e['measured']} | "
            f"{e['verdict']} | {e['why']} |".replace("\n", " ")
        )
    md = out / "reproduction.md"
    md.write_text("\n".join(lines) + "\n")
    return [js, md]
