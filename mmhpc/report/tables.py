"""The thesis' tables from the tidy run frame (`mmhpc.report.load`), as display strings with
footnotes.

Every system table is one comparison: runs that share a *context* (every knob that varies in the
sweep except the compared one, and the seed) are set side by side by the compared knob's values, and
each value's speedup (thesis Eq. 4.1) is taken against a named baseline value, e.g. FP32. Times are
means over seeds, with the standard error (Appendix A) when there are several. A cell without a
finished run says why: `n/a [k]`, `failed [k]`, `running`, `pending`, `unsubmitted` or `missing`,
the reason in footnote k.

    kind          thesis          compared knob         baseline
    precision     Tables 4.6-4.9  system.precision      fp32
    loader        Tables 4.10-12  loader.preinit        standard
    parallelism   Tables 4.13-15  system.parallelism    single
    overall       Table 4.16      all three at once     fp32 + standard + single
    algorithm     Tables 4.1-4.5  strategy.name         naive (time only)
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mmhpc import metrics as mx
from mmhpc.errors import problem
from mmhpc.names import PARALLELISMS, PRECISIONS, THESIS_PRECISIONS
from mmhpc.report.load import varying
from mmhpc.report.reproduce import (
    SOURCE,
    TOLERANCE_TEXT,
    Col,
    Match,
    ThesisRows,
    lookup,
    smoke_reason,
    verdicts,
)

KINDS = ("precision", "loader", "parallelism", "overall", "algorithm")
# Headers of the columns a row may be keyed on, in column order (other knobs: their leaf name), and
# the config knob behind each derived column
LABELS = {
    "sweep": "Sweep",
    "dataset": "Dataset",
    "encoder": "Encoder",
    "device": "Device",
    "batch_size": "Batch size",
    "fusion": "Fusion",
    "strategy": "Method",
    "precision": "Precision",
    "loader": "Loader",
    "parallelism": "Parallelism",
    "loader.num_workers": "Workers",
    "loader.prefetch_factor": "Prefetch factor",
}
KNOB_OF = {"dataset": "data.dataset", "encoder": "data.modalities", "fusion": "model.fusion",
           "strategy": "strategy.name", "precision": "system.precision", "loader": "loader.preinit",
           "parallelism": "system.parallelism", "batch_size": "train.batch_size"}
NAMES = {
    "fp32": "FP32",
    "tf32": "TF32",
    "bf16": "BF16",
    "standard": "Standard",
    "preinit": "Pre-initialised",
    "single": "Single",
    "dp": "DP",
    "ddp": "DDP",
    "blp": "BLP",
}
TIME_NOTE = (
    "Time: seconds per epoch (training and validation, loader start included), mean over the "
    "epochs "
    "after the warm-up (a training record's first epoch, a bench record's own warm-up); a "
    "run with "
    "none after it: n/a, never a figure over the warm-up."
)
THESIS_NOTE = (
    "Under each measured row: the thesis' value (Tables {tables}) and the ratio measured/thesis; "
    'times and utilisation only on the thesis\' GPU type (else "other GPU").'
)
# the thesis tables each report table mirrors, in the order a cell is looked up
THESIS_TABLES = {"precision": ("4.6", "4.7", "4.8", "4.9"), "loader": ("4.10", "4.11", "4.12"),
                 "parallelism": ("4.13", "4.14", "4.15"), "overall": ("4.16",),
                 "algorithm-accuracy": ("4.1", "4.3", "4.2"), "algorithm-training": ("4.4", "4.5"),
                 "loader-workers": ("2.4",), "loader-prefetch": ("2.5",)}


@dataclass
class Table:
    name: str                       # file stem of tables/<name>.md|tex
    title: str
    caption: str
    frame: pd.DataFrame             # display strings
    notes: list[str] = field(default_factory=list)
    keys: int = 1                   # leading label columns (repeated values are blanked in the PDF)
    bars: pd.DataFrame | None = None  # numeric speedups, rows x compared values, for the bar figure
    baseline: str = ""
    matches: list[Match] = field(default_factory=list)  # measured cells set against the thesis'
    thesis_bars: pd.DataFrame | None = None  # the thesis' speedups of the bars, for markers
    smoke: str = ""  # why (some of) its runs are smoke tests
    widths: list[int] | None = (
        None  # fixed characters per column in the PDF (0: the rest of the line)
    )


@dataclass
class Cell:
    mean: float | None
    se: float | None
    n: int
    text: str
    why: str = ""     # why there is no value (the cited reason)


class Notes:
    """Footnotes: each distinct reason once, cited as [k]."""

    def __init__(self):
        self.items: list[str] = []

    def cite(self, text: str) -> str:
        if not text:
            return ""
        if text not in self.items:
            self.items.append(text)
        return f" [{self.items.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{i}] {t}" for i, t in enumerate(self.items, 1)]


# ---- formatting
# ------------------------------------------------------------------------------------------

def fmt_time(x: float) -> str:
    return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3g}"


def fmt_mean_se(cell: Cell, fmt=fmt_time, scale: float = 1.0, se_fmt=None) -> str:
    if cell.mean is None:
        return cell.text
    text = fmt(cell.mean * scale)
    if cell.n > 1:
        text += f" ± {(se_fmt or fmt)(cell.se * scale)}"
    return text + cell.text


def fmt_speedup(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def cell(runs: pd.DataFrame, column: str, notes: Notes) -> Cell:
    """Mean and standard error over the finished runs (seeds) of one table cell; else why there is
    none."""
    done = (
        runs[(runs["state"] == "done") & runs[column].notna()] if column in runs else runs.iloc[:0]
    )
    if len(done):
        mean, se = mx.mean_se([float(v) for v in done[column]])
        rest = runs[runs["state"] != "done"]
        partial = (
            f" ({len(done)} of {len(runs)} seeds{notes.cite(_reasons(rest))})" if len(rest) else ""
        )
        twice = done[done["seed"].duplicated(keep=False)]
        if len(
            twice
        ):  # e.g. a train and a bench record of one config: averaged, but never unnoticed
            partial += notes.cite(
                f"averaged over runs that share a seed: {', '.join(twice['run'])}"
            )
        return Cell(mean, se, len(done), partial)
    if not len(runs):
        return Cell(None, None, 0, "missing")
    for state in ("n/a", "failed", "running", "pending", "unsubmitted", "missing", "done"):
        hit = runs[runs["state"] == state]
        if len(hit):
            if state == "done":
                why = "; ".join(
                    dict.fromkeys(
                        str(w)  # why the run has none: its record's own words
                        for c in ("na_reason", f"{column}_na")
                        for w in hit.get(c, pd.Series(dtype=str))
                        if isinstance(w, str) and w
                    )
                )
                if why:
                    return Cell(None, None, 0, "n/a" + notes.cite(why), why)
                reason = f"finished, but the record has no {column}"
                return Cell(None, None, 0, "–" + notes.cite(reason), reason)
            return Cell(None, None, 0, state + notes.cite(_reasons(hit)))
    return Cell(None, None, 0, "missing")


def _reasons(runs: pd.DataFrame) -> str:
    """The distinct reasons of some runs (which run has which: the runs table), so equal ones share
    a note."""
    return "; ".join(dict.fromkeys(str(r.reason) for r in runs.itertuples() if r.reason))


def speedup(base: Cell, other: Cell) -> float | None:
    if base.mean is None or other.mean is None or base.mean <= 0 or other.mean <= 0:
        return None
    return mx.speedup(base.mean, other.mean)


def speedup_text(base: Cell, other: Cell, notes: Notes) -> str:
    """A speedup, or n/a with the reason one of its times is missing (e.g. no epoch after
    warm-up)."""
    s = speedup(base, other)
    if s is not None:
        return fmt_speedup(s)
    why = other.why or base.why
    return "n/a" + notes.cite(why) if why else "–"


# ---- contexts
# --------------------------------------------------------------------------------------------

def context_columns(
    runs: pd.DataFrame, compared: tuple[str, ...], always: tuple[str, ...] = ("dataset",)
) -> list[str]:
    """What a row is: the labelled knobs (dataset, ...) plus every other knob that varies, minus the
    compared ones, minus knobs in lockstep (one-to-one) with a compared or shown one (e.g.
    persistent workers, zipped with the loader type), and minus knobs the shown ones determine (e.g.
    one constant within each sweep of a report of several sweeps): they would split nothing and only
    widen the table."""
    var = set(varying(runs))
    skip = {KNOB_OF.get(c, c) for c in compared} | set(compared)
    labelled = [c for c in LABELS if c not in skip and (c in always or KNOB_OF.get(c, c) in var)]
    knobs_shown = {KNOB_OF.get(c, c) for c in labelled}
    others = [c for c in varying(runs) if c not in skip and c not in knobs_shown]
    # every value as text, unset ones too (astype(str) keeps NaN as NaN in pandas' string dtype)
    shown_as_text = runs.assign(
        **{c: runs[c].map(str) for c in set(labelled + others + [x for x in compared if x in runs])}
    )
    kept: list[str] = []
    for c in labelled + others:
        if c in always:
            kept.append(c)
            continue
        determined = bool(kept) and shown_as_text.groupby(kept)[c].nunique().max() <= 1
        if not determined and not any(
            _lockstep(shown_as_text, c, x) for x in kept + [x for x in compared if x in runs]
        ):
            kept.append(c)
    return kept


def _lockstep(runs: pd.DataFrame, a: str, b: str) -> bool:
    """True when knobs a and b determine each other (one-to-one across the runs)."""
    pairs = runs[[a, b]].map(str).drop_duplicates()
    return pairs[a].is_unique and pairs[b].is_unique


def of_sweeps_varying(
    runs: pd.DataFrame, knobs: list[str], least: int = 1, alone: bool = False
) -> pd.DataFrame:
    """In a report of several sweeps, the runs of the sweeps in which at least `least` of `knobs`
    vary (a precision table of the precision sweep, not of every sweep that ran at some precision);
    `alone`: of those, the sweeps in which no other system knob varies, when there are any (not the
    overall sweep's)."""
    if runs["sweep"].nunique() < 2:
        return runs

    def n_varying(g, ks):
        return sum(g[k].map(str).nunique() > 1 for k in ks if k in g)

    keep = [name for name, g in runs.groupby("sweep") if n_varying(g, knobs) >= least]
    if alone:
        others = [k for k in DEFAULTS if k not in knobs]
        only = [name for name in keep if n_varying(runs[runs["sweep"] == name], others) == 0]
        keep = only or keep
    return runs[runs["sweep"].isin(keep)]


ORDER = {
    "precision": tuple(PRECISIONS),
    "loader": ("standard", "preinit"),
    "parallelism": tuple(PARALLELISMS),
    "dataset": ("cremad", "ave", "mvsa", "iemocap", "urfunny"),
    "strategy": ("naive",),
    "encoder": ("audio", "visual", "text"),
}


def sort_key(cols: list[str], key: tuple) -> tuple:
    """Rows in the thesis' order: known values first in their order (FP32, TF32, BF16), numbers by
    value."""
    out = []
    for c, v in zip(cols, key):
        order = ORDER.get(c, ())
        rank = order.index(v) if v in order else len(order)
        try:
            out.append((rank, 0, float(v), ""))
        except (TypeError, ValueError):
            out.append((rank, 1, 0.0, str(v)))
    return tuple(out)


def _label(col: str) -> str:
    """Column header of a key: `Batch size`, or an unlabelled knob's leaf (`model.cosine` ->
    `cosine`)."""
    return LABELS.get(col) or col.rsplit(".", 1)[-1].replace("_", " ")


def _name(value) -> str:
    return NAMES.get(str(value), str(value))


# how a knob's value reads in a row label (column headers of compared values use NAMES: Std, Opt, as
# the thesis)
SHOWN = {
    **{k: c.label for k, c in PRECISIONS.items()},
    **{k: v for k, v in PARALLELISMS.items() if k != "single"},
    "preinit": "pre-initialised loader",
    "standard": "standard loader",
}


def shown(value) -> str:
    """A knob's value as a row label reads it: unset -> default, booleans yes/no, `pre-initialised
    loader`."""
    v = str(value)
    if v in ("None", "nan"):  # a knob left unset (None; NaN once in the frame) runs at its default
        return "default"
    if v in ("True", "False"):
        return "yes" if v == "True" else "no"
    return SHOWN.get(v, v)


def _key_cells(ctx: list[str], key: tuple) -> dict:
    return {_label(c): shown(v) for c, v in zip(ctx, key)}


def row_groups(runs: pd.DataFrame, ctx: list[str]):
    if not ctx:
        yield (), runs
        return
    keyed = runs.assign(**{c: runs[c].astype(str) for c in ctx})  # None/NaN are values too
    groups = [
        ((k if isinstance(k, tuple) else (k,)), g)
        for k, g in keyed.groupby(ctx, sort=False, dropna=False)
    ]
    for key, group in sorted(groups, key=lambda kg: sort_key(ctx, kg[0])):
        yield key, runs.loc[group.index]


def _constants(runs: pd.DataFrame, ctx: list[str]) -> str:
    """The setting every row shares, for the caption (e.g. `batch size 64, device A100`)."""
    parts = []
    for col in ("device", "batch_size", "dataset", "encoder"):
        if col not in ctx and runs[col].astype(str).nunique() == 1:
            parts.append(f"{_label(col).lower()} {runs[col].iloc[0]}")
    return ", ".join(parts)


# ---- one comparison
# --------------------------------------------------------------------------------------

@dataclass
class Compared:
    rows: list[dict]
    bars: pd.DataFrame | None
    thesis_bars: pd.DataFrame | None
    notes: Notes
    ctx: list[str]
    values: list
    left_out: int
    not_here: dict          # value -> why every run of it is not applicable here (no column)
    matches: list[Match]


def _not_applicable_values(runs: pd.DataFrame, axis: str, values: list, baseline) -> dict:
    """Compared values whose every run is not applicable here (e.g. TF32 on a CPU): no column, a
    caption line."""
    out = {}
    for v in values:
        hit = runs[runs[axis] == v]
        if v != baseline and len(hit) and (hit["state"] == "n/a").all():
            out[v] = _reasons(hit)
    return out


def comparison(
    runs: pd.DataFrame,
    axis: str,
    order: tuple,
    baseline,
    name: str,
    owned: tuple[str, ...] = (),
    util: bool = False,
    always: tuple[str, ...] = ("dataset",),
    extra=None,
) -> Compared:
    """Rows of one knob compared within each context, each followed by its thesis and
    measured/thesis rows."""
    ctx = context_columns(runs, (axis, *owned), always)
    notes = Notes()
    thesis = ThesisRows(name, THESIS_TABLES[name], notes)
    values = [v for v in order if v in set(runs[axis])] + sorted(
        set(runs[axis]) - set(order), key=str
    )
    not_here = _not_applicable_values(runs, axis, values, baseline)
    values = [v for v in values if v not in not_here]
    rows, bars, tbars, left_out = [], [], [], 0
    for key, group in row_groups(runs, ctx):
        if (
            group[axis].nunique() < 2
            or not (group[axis] == baseline).any()
            or (group["state"] == "n/a").all()
        ):
            # nothing to compare it with (or none can run here): in the runs table
            left_out += len(group)
            continue
        cols, speed = _compared_cols(group, axis, values, baseline, notes, util, extra)
        row = _key_cells(ctx, key)
        keys = list(row) + [SOURCE]
        row.update({c.name: c.text for c in cols})
        n_before = len(thesis.matches)
        rows += thesis.rows(row, keys, cols, group)
        label = (" · ".join(shown(k) for k in key) or "all") + (
            " (smoke test)" if _smoke(group) else ""
        )
        bars.append(pd.Series(speed, name=label))
        published = {
            m.setting: m.thesis for m in thesis.matches[n_before:] if m.metric == "speedup"
        }
        tbars.append(pd.Series({v: published.get(str(v)) for v in speed}, name=label, dtype=float))
    bar_frame = pd.DataFrame(bars).rename(columns=_name) if bars else None
    thesis_frame = pd.DataFrame(tbars).rename(columns=_name) if tbars else None
    return Compared(
        rows, bar_frame, thesis_frame, notes, ctx, values, left_out, not_here, thesis.matches
    )


def _compared_cols(group: pd.DataFrame, axis: str, values: list, baseline, notes: Notes,
                   util: bool, extra) -> tuple[list[Col], dict]:
    """One setting's columns (time per value, speedups against the baseline, `extra`'s, and the
    utilisation and its gain when `util`) and the speedups by value."""
    cells = {v: cell(group[group[axis] == v], "time_epoch_s", notes) for v in values}
    cols = [
        Col(f"{_name(v)} (s)", fmt_mean_se(cells[v]), cells[v].mean, "time_epoch_s", str(v))
        for v in values
    ]
    speed = {v: speedup(cells[baseline], cells[v]) for v in values if v != baseline}
    cols += [
        Col(f"{_name(v)} speedup", speedup_text(cells[baseline], cells[v], notes), s, "speedup",
            str(v), str(baseline))
        for v, s in speed.items()
    ]
    if extra is not None:
        cols += extra(cells, notes)
    if util:
        cols += _util_cols(group, axis, values, baseline, notes)
    return cols, speed


def _util_cols(group: pd.DataFrame, axis: str, values: list, baseline, notes: Notes) -> list[Col]:
    """Mean utilisation per compared value, then each value's gain over the baseline (points)."""
    u = {v: cell(group[group[axis] == v], "util_pct", notes) for v in values}
    cols = [
        Col(f"{_name(v)} util (%)", fmt_mean_se(u[v], lambda x: f"{x:.1f}"), u[v].mean,
            "util_pct", str(v))
        for v in values
    ]
    for v in values:
        if v == baseline:
            continue
        gain = None if u[v].mean is None or u[baseline].mean is None else (
            u[v].mean - u[baseline].mean)
        cols.append(Col(f"{_name(v)} util gain", "–" if gain is None else f"{gain:+.1f}", gain,
                        "util_gain", str(v), str(baseline)))
    return cols


def _smoke(runs: pd.DataFrame) -> str:
    """Why the finished runs of a table are smoke tests ("" when none is), for its title and
    caption."""
    done = runs[runs["state"] == "done"]
    reasons = [r for r in (done.apply(smoke_reason, axis=1) if len(done) else []) if r]
    if not reasons:
        return ""
    kinds = ", ".join(dict.fromkeys(x for r in reasons for x in r.split(", ")))
    share = (
        "all runs" if len(reasons) == len(done) else f"{len(reasons)} of {len(done)} finished runs"
    )
    return f"{share}: {kinds}"


def smoke_caption(smoke: str) -> str:
    return f"SMOKE TEST ({smoke}): not a result, never compared with the thesis. " if smoke else ""


def _versus(values: list) -> str:
    return " vs ".join(_name(v) for v in values)


def _table(name, title, caption, runs, axis, order, baseline, **kw) -> Table | None:
    c = comparison(runs, axis, order, baseline, name, **kw)
    if (
        not c.rows or len(c.values) < 2
    ):  # e.g. TF32 not applicable anywhere here: nothing to compare
        return None
    setting = _constants(runs, c.ctx)
    smoke = _smoke(runs)
    caption = (
        smoke_caption(smoke)
        + f"{caption} Speedup (Eq. 4.1) against the {_name(baseline)} column of the "
        f"same setting. {TIME_NOTE} "
        + THESIS_NOTE.format(tables=", ".join(THESIS_TABLES[name]))
        + (f" Setting: {setting}." if setting else "")
    )
    if c.not_here:
        caption += " Not applicable here, so no column: " + "; ".join(
            f"{_name(v)} ({why})" for v, why in c.not_here.items()) + "."
    if c.left_out:
        caption += (f" {c.left_out} run(s) with no counterpart to compare with are listed in the "
                    "runs table only.")
    title = title.format(versus=_versus(c.values)) + (" [smoke test]" if smoke else "")
    return Table(
        name,
        title,
        caption,
        pd.DataFrame(c.rows).fillna("–"),
        c.notes.lines(),
        len(c.ctx) + 1,
        c.bars,
        baseline,
        c.matches,
        c.thesis_bars,
        smoke,
    )


# ---- the tables
# ------------------------------------------------------------------------------------------

def _bf16_vs_tf32(cells: dict, notes: Notes) -> list[Col]:
    """Tables 4.8 and 4.9 compare BF16 with TF32 (not FP32): that speedup too, when both ran."""
    if "bf16" not in cells or "tf32" not in cells:
        return []
    return [Col("BF16 vs TF32 speedup", speedup_text(cells["tf32"], cells["bf16"], notes),
                speedup(cells["tf32"], cells["bf16"]), "speedup", "bf16", "tf32")]


def precision_table(runs: pd.DataFrame) -> Table | None:
    return _table("precision", "Precision: time per epoch, {versus}",
                  "Single-encoder (and multimodal) time per epoch at each precision, thesis Tables "
                  "4.6-4.9.",
                  runs, "precision", THESIS_PRECISIONS, "fp32", always=("dataset", "encoder"),
                  extra=_bf16_vs_tf32)


def loader_table(runs: pd.DataFrame) -> Table | None:
    kind = _util_kind(runs)
    t = _table(
        "loader",
        f"Data loader: {{versus}} loader, time and {kind} utilisation",
        "Standard vs threaded pre-initialised loader (Alg. 6), thesis Tables 4.10-4.12. "
        f"Util: mean {kind} utilisation over the measured epochs"
        + (" (CPU: % of one core, as in top)" if kind != "GPU" else "")
        + "; gain in percentage points.",
        runs,
        "loader",
        ("standard", "preinit"),
        "standard",
        owned=("loader.persistent_workers",),
        util=True,
    )
    if t is not None:
        t.title = t.title.replace("Standard vs Pre-initialised", "standard vs pre-initialised")
    return t


# ---- loader knobs one at a time (thesis Tables 2.4, 2.5) and a recommendation for the node
# ---------------

NEAR_BEST = 0.05  # a setting within 5 % of the best measured one counts as good as the best


def _knob_rows(runs: pd.DataFrame, knob: str, metric: str, header: str, notes: Notes, fmt=fmt_time,
               value_name=str, beside: tuple = ()):
    """One row per value of `knob` within each setting where it varies: [(key cells, value, cell,
    row)]; `beside`: (metric, header) pairs shown next to it where any run has them."""
    ctx = context_columns(runs, (knob,))
    rows = []
    for key, group in row_groups(runs, ctx):
        if group[knob].astype(str).nunique() < 2:
            continue
        values = sorted(
            group[knob].unique(), key=lambda v: -1 if v is None or pd.isna(v) else float(v)
        )
        for v in values:
            hit = group[group[knob].isna()] if v is None or pd.isna(v) else group[group[knob] == v]
            c = cell(hit, metric, notes)
            row = {**_key_cells(ctx, key), _label(knob): value_name(v), header: fmt_mean_se(c, fmt)}
            row.update(
                {
                    h: fmt_mean_se(cell(hit, m, notes), fmt)
                    for m, h in beside
                    if m in runs and runs[m].notna().any()
                }
            )
            rows.append((key, v, c, row))
    return ctx, rows


def _recommend(rows, lower_is_better_floor: float = 0.0):
    """The smallest knob value whose mean is within NEAR_BEST of the best mean (per setting key)."""
    best: dict = {}
    for key, v, c, _ in rows:
        if c.mean is not None and v is not None and not pd.isna(v):
            best.setdefault(key, []).append((float(v), c.mean))
    out = {}
    for key, pairs in best.items():
        floor = min(m for _, m in pairs)
        out[key] = min(v for v, m in pairs if m <= floor * (1 + NEAR_BEST) + lower_is_better_floor)
    return out


def _knob_thesis(runs, ctx, key, name, metric, v, fmt, notes: Notes) -> str:
    """The thesis' Table 2.4/2.5 value for this worker count or prefetch factor, where it has
    one."""
    if v is None or pd.isna(v):
        return "–"
    where = dict(zip(ctx, key))
    sel = runs
    for c, k in where.items():
        sel = sel[sel[c].astype(str) == str(k)]
    first = sel.iloc[0] if len(sel) else runs.iloc[0]
    devices = set(sel[sel["state"] == "done"]["device"].astype(str)) or {str(first["device"])}
    hit, why = lookup(
        THESIS_TABLES[name],
        metric,
        str(first["dataset"]),
        str(first["modalities"]),
        str(int(v)),
        gpu=devices.pop() if len(devices) == 1 else "?",
        batch=first.get("batch_size"),
    )
    if hit is None or hit["value"] is None or pd.isna(hit["value"]):
        return "–"
    text = fmt(float(hit["value"]))
    return (
        ("other GPU" + notes.cite(f"{why}: {text} in thesis Table {hit['table']}")) if why else text
    )


def _prefetch_name(v) -> str:
    if v is None or pd.isna(v):
        return "default (2)"
    return "0 (estimated)" if int(v) == 0 else str(int(v))


IDLE_NOTE = (
    "Idle time: seconds per epoch the training step waited for a batch (the waits in the loader's "
    "next(), first batch excluded: that is initialisation, Table 2.8), averaged over the measured "
    "epochs. PyTorch cannot run prefetch factor 0 with workers: its row is estimated as thesis "
    "Appendix A.2.1 (Alg. 7), from a pass over the epoch with prefetch factor 1 and no work in the "
    "loop. GPU idle (GPU runs): the GPU's own idle time between training steps, from CUDA events "
    "(the host's wait overstates it by the work queued)."
)


@dataclass(frozen=True)
class KnobTable:
    """One loader knob measured a value at a time (thesis Table 2.4 or 2.5)."""

    knob: str
    name: str
    title: str
    metric: str
    header: str
    fmt: object
    value_name: object
    thesis: str
    what: str  # what the metric is, for the caption
    rule: str  # how the recommended value is chosen, for the caption
    floor: float = 0.0  # an absolute margin the recommendation allows beside NEAR_BEST
    beside: tuple = ()  # (metric, header) pairs shown next to it where any run has them


KNOB_TABLES = (
    KnobTable("loader.num_workers", "loader-workers", "Data loader: worker processes",
              "time_epoch_s", "Time (s)", fmt_time, lambda v: str(int(v)), "Table 2.4",
              TIME_NOTE, f"Recommended: the fewest workers whose time per epoch is within "
              f"{NEAR_BEST:.0%} of the fastest"),
    KnobTable("loader.prefetch_factor", "loader-prefetch",
              "Data loader: prefetch factor and idle time", "idle_s", "Idle time (s)",
              lambda x: f"{x:.3f}", _prefetch_name, "Table 2.5", IDLE_NOTE,
              "Recommended: the smallest prefetch factor whose idle time is within "
              f"{NEAR_BEST:.0%} (or 10 ms) of the least measured",
              floor=0.01, beside=(("gpu_idle_s", "GPU idle (s)"),)),
)


def loader_knob_tables(runs: pd.DataFrame) -> list[Table]:
    """Table 2.4 (time per epoch by worker count), Table 2.5 (idle time by prefetch factor), each
    with the recommended value for the node it ran on."""
    tables = []
    for spec in KNOB_TABLES:
        if spec.knob not in runs or spec.knob not in varying(runs):
            continue
        table = _knob_table(of_sweeps_varying(runs, [spec.knob]), spec)
        if table is not None:
            tables.append(table)
    return tables


def _knob_table(runs: pd.DataFrame, spec: KnobTable) -> Table | None:
    notes = Notes()
    ctx, rows = _knob_rows(runs, spec.knob, spec.metric, spec.header, notes, spec.fmt,
                           spec.value_name, spec.beside)
    if not rows:
        return None
    # a setting's recommendation: the cheapest value as good as the best (idle: within 5 % or 10 ms)
    rec = _recommend(rows, spec.floor)
    header = spec.header
    for key, v, _, row in rows:
        chosen = key in rec and v is not None and not pd.isna(v) and float(v) == rec[key]
        row["Recommended"] = "✓" if chosen else ""
        row[f"Thesis {header[0].lower()}{header[1:]}"] = _knob_thesis(
            runs, ctx, key, spec.name, spec.metric, v, spec.fmt, notes
        )
    shown = []
    for key, v in rec.items():
        where = ", ".join(f"{k} {x}" for k, x in _key_cells(ctx, key).items())
        shown.append(f"{spec.value_name(v)}" + (f" ({where})" if where else ""))
    setting = _constants(runs, ctx)
    smoke = _smoke(runs)
    caption = (
        smoke_caption(smoke)
        + f"{spec.title}, thesis {spec.thesis}. {spec.what} {spec.rule}, for the node the runs "
        f"ran on: {'; '.join(shown)}. Thesis: the value of {spec.thesis} (AVE, batch size 64, "
        "A100) beside each row; on another GPU type or dataset it is not comparable."
        + (f" Setting: {setting}." if setting else "")
    )
    return Table(spec.name, spec.title + (" [smoke test]" if smoke else ""), caption,
                 pd.DataFrame([r for *_, r in rows]).fillna("–"), notes.lines(), len(ctx) + 1,
                 smoke=smoke)


def parallelism_table(runs: pd.DataFrame) -> Table | None:
    return _table("parallelism", "Parallelism: time per epoch, {versus}",
                  "Single device, DataParallel, DistributedDataParallel and Branch-Level "
                  "Parallelism, "
                  "thesis Tables 4.13-4.15.", runs, "parallelism", tuple(PARALLELISMS), "single",
                  owned=("system.blp_devices",))


def _util_kind(runs: pd.DataFrame) -> str:
    kinds = set(runs["util_kind"].dropna())
    return kinds.pop() if len(kinds) == 1 else "GPU (CPU on CPU rows)" if kinds else "GPU"


DEFAULTS = {"precision": "fp32", "loader": "standard", "parallelism": "single"}


OVERALL_CAPTION = (
    "Default settings (FP32, standard loader, single device) vs all optimisations of the sweep at "
    "once, thesis Table 4.16: the runs that change the most of precision, loader and parallelism "
    "(combinations not applicable on this cluster are left out here; the runs table lists them). "
    "Speedup (Eq. 4.1) against the default column. "
)


def overall_table(runs: pd.DataFrame) -> Table | None:
    """Default settings vs all optimisations at once (thesis Table 4.16): per setting, the default
    row against the runs that change the most of the three system knobs, among those applicable
    here."""
    n_changed = sum((runs[k] != d) for k, d in DEFAULTS.items())
    # a combination that cannot run here is no candidate
    changed = n_changed.where(runs["state"] != "n/a", -1)
    if changed.max() < 2:
        return None
    ctx = context_columns(runs, tuple(DEFAULTS) + ("loader.persistent_workers",
                                                   "system.blp_devices"))
    notes, rows, bars, tbars = Notes(), [], [], []
    thesis = ThesisRows("overall", THESIS_TABLES["overall"], notes)
    for key, group in row_groups(runs.assign(changed=changed, n_changed=n_changed), ctx):
        for row_list, bar, tbar in _overall_rows(group, ctx, key, thesis, notes):
            rows += row_list
            bars.append(bar)
            tbars.append(tbar)
    if not rows:
        return None
    setting = _constants(runs, ctx)
    smoke = _smoke(runs)
    caption = (
        smoke_caption(smoke) + OVERALL_CAPTION + TIME_NOTE + " "
        + THESIS_NOTE.format(tables="4.16") + (f" Setting: {setting}." if setting else "")
    )
    return Table("overall", "Overall: default vs all optimisations" + (
        " [smoke test]" if smoke else ""), caption, pd.DataFrame(rows).fillna("–"), notes.lines(),
        len(ctx) + 2, pd.DataFrame(bars), "default", thesis.matches, pd.DataFrame(tbars), smoke)


def _overall_rows(group: pd.DataFrame, ctx: list[str], key: tuple, thesis: ThesisRows,
                  notes: Notes):
    """Per combination of one setting that changes the most knobs: its rows (measured, thesis,
    ratio), its speedup bar and the thesis' speedup."""
    default = group[group["n_changed"] == 0]
    top = group["changed"].max()
    best = group[group["changed"] == top] if top >= 2 else group.iloc[:0]
    base = cell(default, "time_epoch_s", notes)
    name = " · ".join(shown(k) for k in key) or "all"
    for combo, opt in best.groupby(list(DEFAULTS), sort=False):
        c = cell(opt, "time_epoch_s", notes)
        changed_values = [str(v) for v in combo if v not in DEFAULTS.values()]
        label = " + ".join(_name(v) for v in changed_values)  # e.g. TF32 + Pre-initialised + BLP
        setting = "+".join(changed_values)
        row = _key_cells(ctx, key)
        row["Optimisations"] = label
        s = speedup(base, c)
        cols = [Col("Default (s)", fmt_mean_se(base), base.mean, "time_epoch_s", "default"),
                Col("Optimised (s)", fmt_mean_se(c), c.mean, "time_epoch_s", setting),
                Col("Speedup", speedup_text(base, c, notes), s, "speedup", setting, "default")]
        row.update({col.name: col.text for col in cols})
        n_before = len(thesis.matches)
        rows = thesis.rows(row, [*_key_cells(ctx, key), "Optimisations", SOURCE], cols,
                           pd.concat([default, opt]))
        published = [m.thesis for m in thesis.matches[n_before:] if m.metric == "speedup"]
        yield (rows, pd.Series({label: s}, name=name),
               pd.Series({label: published[0] if published else None}, name=name, dtype=float))


# ---- algorithm level
# -------------------------------------------------------------------------------------

MODALITY_ORDER = ("audio", "visual", "text")


def _modalities(runs: pd.DataFrame) -> list[str]:
    found = {m for mods in runs["modalities"].dropna() for m in str(mods).split("+") if m}
    return [m for m in MODALITY_ORDER if m in found] + sorted(found - set(MODALITY_ORDER))


DATA_IDENTITY = (
    "dataset",
    "data.source",
    "data.preset",
    "data.data_seed",
)  # which data a baseline was trained on


def _data_key(runs: pd.DataFrame, row: pd.Series) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in DATA_IDENTITY if c in runs)


def _single_baselines(runs: pd.DataFrame) -> dict[tuple, float]:
    """(data key, modality) -> mean test accuracy of the finished single-modality runs on the same
    data (dataset, source, preset, generator seed): a tiny run's baseline never serves a full run
    (the IBF reference)."""
    single = runs[(runs["n_modalities"] == 1) & (runs["state"] == "done")]
    if "acc/fused" not in single:
        return {}
    cols = [c for c in DATA_IDENTITY if c in runs]
    keyed = single.astype(
        {c: str for c in cols}
    )  # as _data_key spells them (an absent value: "nan")
    return {
        (tuple(k[:-1]), k[-1]): float(g.mean())
        for k, g in keyed.groupby(cols + ["modalities"])["acc/fused"]
    }


def _ibf(
    group: pd.DataFrame, mods: list[str], singles: dict, notes: Notes
) -> tuple[str, float | None]:
    """IBF (Eq. 3.1) from the mean accuracies over seeds, as in Appendix A; else the records' own
    IBF."""
    if len(mods) == 1:
        return "0", 0.0
    dataset = group["dataset"].iloc[0]
    done = group[group["state"] == "done"]
    if not len(done):
        return cell(group, "acc/fused", notes).text, None  # why there is none: n/a, failed, ...
    data = _data_key(group, group.iloc[0])
    keys = mx.ibf_accuracy_keys(group["fusion"].iloc[0] if "fusion" in group else "", mods)
    if all((data, m) in singles for m in mods) and all(keys[m] in done for m in mods):
        value = mx.ibf(
            {m: done[k].mean() for m, k in keys.items()}, {m: singles[data, m] for m in mods}
        )
        return f"{value:.3f}", float(value)
    c = cell(group, "ibf", notes)
    if c.mean is not None:
        return fmt_mean_se(c, lambda x: f"{x:.3f}"), c.mean
    return "–" + notes.cite(
        f"{dataset}: no single-modality runs to compute IBF against (Eq. 3.1)"
    ), None


def _pct(c: Cell) -> float | None:
    return None if c.mean is None else 100.0 * c.mean


ACCURACY_CAPTION = (
    "Test accuracy of the fused model and of each modality inside it (masked fusion), thesis "
    "Tables 4.1-4.3; IBF (Eq. 3.1) from the mean accuracies against the single-modality runs of "
    "the same dataset (0 for those runs).{se} "
)
TRAINING_CAPTION = (
    "Relative modality bias on the test set (Eq. 3.5-3.6), epochs in which each modality was "
    "optimised, and time per epoch with its speedup (Eq. 4.1) against the naive row of the same "
    "setting, thesis Tables 4.4-4.5.{se} {time} "
)
SE_NOTE = " Mean ± standard error over seeds (Appendix A) where there are several."


def algorithm_tables(runs: pd.DataFrame) -> list[Table]:
    """Tables 4.1-4.3 (accuracy per head and IBF) and 4.4-4.5 (bias, optimisation epochs, time
    per epoch and its speedup against naive), a row per method and setting."""
    ctx = context_columns(runs, (), always=("dataset", "strategy"))
    mods_all = _modalities(runs)
    singles = _single_baselines(runs)
    acc_notes, train_notes = Notes(), Notes()
    acc_thesis = ThesisRows("algorithm-accuracy", THESIS_TABLES["algorithm-accuracy"], acc_notes)
    train_thesis = ThesisRows(
        "algorithm-training", THESIS_TABLES["algorithm-training"], train_notes
    )
    acc_rows, train_rows = [], []
    base_ctx = [c for c in ctx if c != "strategy"]
    for key, group in row_groups(runs, ctx):
        mods = [m for m in str(group["modalities"].iloc[0]).split("+") if m]
        label = _key_cells(ctx, key)
        keys = list(label) + [SOURCE]
        cols = _accuracy_cols(group, mods, mods_all, singles, acc_notes)
        row = {**label, **{c.name: c.text for c in cols}}
        acc_rows += acc_thesis.rows(
            row, keys, [c for c in cols if c.text != "–" or c.name == "IBF"], group
        )
        tcols = _training_cols(runs, group, mods, mods_all, base_ctx, train_notes)
        trow = {**label, **{c.name: c.text for c in tcols}}
        train_rows += train_thesis.rows(
            trow, keys, [c for c in tcols if c.text != "–" or c.metric == "speedup"], group
        )
    setting = _constants(runs, ctx)
    where = f" Setting: {setting}." if setting else ""
    smoke = _smoke(runs)
    tag = " [smoke test]" if smoke else ""
    accuracy = Table(
        "algorithm-accuracy", "Algorithm: test accuracy per modality and fused, IBF" + tag,
        smoke_caption(smoke) + ACCURACY_CAPTION.format(se=SE_NOTE)
        + THESIS_NOTE.format(tables="4.1, 4.2, 4.3; ± from A.1-A.10") + where,
        pd.DataFrame(acc_rows).fillna("–"), acc_notes.lines(), len(ctx) + 1,
        matches=acc_thesis.matches, smoke=smoke)
    training = Table(
        "algorithm-training", "Algorithm: modality bias, optimisation epochs, time per epoch" + tag,
        smoke_caption(smoke) + TRAINING_CAPTION.format(se=SE_NOTE, time=TIME_NOTE)
        + THESIS_NOTE.format(tables="4.4, 4.5") + where,
        pd.DataFrame(train_rows).fillna("–"), train_notes.lines(), len(ctx) + 1,
        baseline="naive", matches=train_thesis.matches, smoke=smoke)
    return [accuracy, training]


PCT = dict(scale=100.0, fmt=lambda x: f"{x:.1f}", se_fmt=lambda x: f"{x:.2f}")


def _method(group: pd.DataFrame) -> dict:
    """The thesis keys of a row's method: its strategy and fusion."""
    return {"strategy": str(group["strategy"].iloc[0]), "fusion": str(group["fusion"].iloc[0])}


def _accuracy_cols(group: pd.DataFrame, mods: list[str], mods_all: list[str], singles: dict,
                   notes: Notes) -> list[Col]:
    """Fused accuracy, each modality's (– for one the run does not have) and IBF, in %."""
    method = _method(group)
    strategy = method["strategy"]
    fused = cell(group, "acc/fused", notes)
    cols = [Col("Fused acc (%)", fmt_mean_se(fused, **PCT), _pct(fused), "acc", strategy,
                head="fused", **method)]
    for m in mods_all:
        c = cell(group, f"acc/{m}", notes) if m in mods else None
        cols.append(Col(f"{m.capitalize()} acc (%)", fmt_mean_se(c, **PCT) if c else "–",
                        _pct(c) if c else None, "acc", strategy, head=m, **method))
    ibf_text, ibf_value = _ibf(group, mods, singles, notes)
    cols.append(Col("IBF", ibf_text, ibf_value, "ibf", strategy, **method))
    return cols


def _training_cols(runs: pd.DataFrame, group: pd.DataFrame, mods: list[str],
                   mods_all: list[str], base_ctx: list[str], notes: Notes) -> list[Col]:
    """Bias (multimodal runs) and optimisation epochs per modality, time per epoch and its speedup
    against the naive runs of the same setting."""
    method = _method(group)
    strategy = method["strategy"]
    cols = []
    for metric, header, fmt, has in (
        ("bias", "Bias", lambda x: f"{x:.2f}", lambda m: m in mods and len(mods) > 1),
        ("epochs", "Epochs", lambda x: f"{x:.3g}", lambda m: m in mods),
    ):
        for m in mods_all:
            c = cell(group, f"{metric}/{m}", notes) if has(m) else None
            cols.append(Col(f"{header} {m}", fmt_mean_se(c, fmt) if c else "–",
                            c.mean if c else None, metric, strategy, head=m, **method))
    t = cell(group, "time_epoch_s", notes)
    cols.append(Col("Time/epoch (s)", fmt_mean_se(t), t.mean, "time_epoch_s", strategy, **method))
    naive = _naive_of(runs, group, base_ctx)
    if naive is not None and strategy != "naive":
        base = cell(naive, "time_epoch_s", Notes())
        cols.append(Col("Speedup vs naive", speedup_text(base, t, notes), speedup(base, t),
                        "speedup", strategy, "naive", **method))
    return cols


def _naive_of(runs: pd.DataFrame, group: pd.DataFrame, base_ctx: list[str]) -> pd.DataFrame | None:
    """The naive runs of the same setting; knobs that come with the method (the cosine classifier of
    Entropy and Reliability training) are not part of the setting."""
    first = group.iloc[0]
    mask = runs["strategy"] == "naive"
    for c in base_ctx:
        if "." in c and runs.groupby("strategy")[c].nunique(dropna=False).max() == 1:
            continue
        mask &= runs[c].astype(str) == str(first[c])
    return runs[mask] if mask.any() else None


# ---- every run, and which tables apply
# -------------------------------------------------------------------

def runs_table(runs: pd.DataFrame) -> Table:
    """Every run of the sweep with its state and reason: nothing a comparison leaves out goes
    unseen."""
    many = runs["sweep"].nunique() > 1
    rows = []
    for r in runs.to_dict("records"):
        said = (r["reason"], r.get("na_reason"), r.get("util_pct_na"))
        reason = "; ".join(str(w) for w in said if isinstance(w, str) and w)
        row = {"Sweep": r["sweep"]} if many else {}
        row.update(
            {
                "Run": r["run"],
                "State": str(r["state"]),
                "Device": r["device"],
                "Time per epoch (s)": "–"
                if pd.isna(r["time_epoch_s"])
                else fmt_time(r["time_epoch_s"]),
                "Util (%)": f"{r['util_pct']:.1f} {r['util_kind']}"
                if pd.notna(r["util_pct"])
                else "n/a"
                if isinstance(r.get("util_pct_na"), str)
                else "–",
                "Smoke test": smoke_reason(r) or "no",
                "Reason": reason or "–",
            }
        )
        rows.append(row)
    counts = runs["state"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    widths = ([14] if many else []) + [
        30,
        8,
        8,
        10,
        10,
        14,
        0,
    ]  # fixed on every page; Reason takes the rest
    return Table(
        "runs",
        "All runs",
        f"Every run of the report with its state ({summary}); a run that is not "
        "done shows why (not applicable on this cluster, its error, or its SLURM state); "
        "a done run "
        "without time or utilisation says why. Smoke test: a run on the CPU, on tiny data "
        "or with capped "
        "batches, never compared with the thesis.",
        pd.DataFrame(rows),
        [],
        1 + many,
        widths=widths,
    )


def detect_kinds(runs: pd.DataFrame) -> list[str]:
    """The tables a set of runs supports: a knob that varies gets its table; algorithm when the
    training method or fusion varies, or when no system knob does."""
    var = set(varying(runs))
    kinds = [k for k in ("precision", "loader", "parallelism") if KNOB_OF[k] in var]
    if "loader" not in kinds and var & {"loader.num_workers", "loader.prefetch_factor"}:
        kinds.insert(1 if "precision" in kinds else 0, "loader")
    if sum(k in kinds for k in DEFAULTS) >= 2 and overall_table(runs) is not None:
        kinds.append("overall")
    if not kinds or var & {"strategy.name", "model.fusion"}:
        kinds.append("algorithm")
    return kinds


def build_tables(
    runs: pd.DataFrame, kinds: list[str] | None = None
) -> tuple[list[Table], list[str]]:
    """The tables of `kinds` (default: detected), then the runs table; and a message per kind that
    gave none."""
    kinds = kinds or detect_kinds(runs)
    builders = {
        "precision": precision_table,
        "loader": loader_table,
        "parallelism": parallelism_table,
        "overall": overall_table,
    }
    tables, messages = [], []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(problem("kind", f"invalid value {kind!r}", ["auto", *KINDS]))
        if kind == "algorithm":
            made = algorithm_tables(of_sweeps_varying(runs, ["strategy", "fusion"]))
        elif kind == "loader":
            made = loader_knob_tables(runs)
            if KNOB_OF["loader"] in varying(runs):
                made.append(loader_table(of_sweeps_varying(runs, ["loader"], alone=True)))
        elif kind == "overall":
            made = [overall_table(of_sweeps_varying(runs, list(DEFAULTS), least=2))]
        else:
            made = [builders[kind](of_sweeps_varying(runs, [kind], alone=True))]
        made = [t for t in made if t is not None]
        if not made:
            messages.append(
                f"{kind}: no runs that differ in {KNOB_OF.get(kind, 'the system knobs')} "
                "within the same setting; no table"
            )
        tables += made
    return tables + [runs_table(runs)], messages


def reproduction_table(tables: list[Table]) -> tuple[Table, list[dict]]:
    """The Reproduction page: each thesis claim the report's runs cover, with its verdict (and the
    entries, for reproduction.json/md)."""
    entries = verdicts([m for t in tables for m in t.matches])
    frame = pd.DataFrame(
        [
            {
                "Thesis claim": e["text"],
                "Table": ", ".join(e["thesis_tables"]),
                "Thesis": e["thesis"],
                "Measured": e["measured"],
                "Verdict": e["verdict"],
                "Why": e["why"],
            }
            for e in entries
        ]
    )
    smoke = "; ".join(
        f"{t.title.replace(' [smoke test]', '')}: {t.smoke}" for t in tables if t.smoke
    )
    counts = pd.Series([e["verdict"] for e in entries]).value_counts()
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    caption = (
        f"Every claim of the thesis' result tables that a sweep can test ({summary}). "
        f"{TOLERANCE_TEXT}"
        + (
            f" Smoke tests in this report, shown beside the thesis but never compared: {smoke}."
            if smoke
            else ""
        )
        + " The same verdicts: reproduction.md and reproduction.json beside report.pdf."
    )
    return Table(
        "reproduction",
        "Reproduction: the thesis' claims and this report's verdicts",
        caption,
        frame,
        [],
        1,
        widths=[36, 9, 12, 12, 14, 0],
    ), entries
