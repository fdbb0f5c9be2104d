"""The thesis' tables from the tidy run frame (`mmhpc.report.load`), as display strings with footnotes.

Every system table is one comparison: runs that share a *context* (every knob that varies in the sweep
except the compared one, and the seed) are set side by side by the compared knob's values, and each
value's speedup (thesis Eq. 4.1) is taken against a named baseline value, e.g. FP32. Times are means over
seeds, with the standard error (Appendix A) when there are several. A cell without a finished run says
why: `n/a [k]`, `failed [k]`, `running`, `pending`, `unsubmitted` or `missing`, the reason in footnote k.

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
from mmhpc.report.load import varying

KINDS = ("precision", "loader", "parallelism", "overall", "algorithm")
# Headers of the columns a row may be keyed on, in column order (other knobs: their leaf name), and the
# config knob behind each derived column
LABELS = {"sweep": "Sweep", "dataset": "Dataset", "encoder": "Encoder", "device": "Device",
          "batch_size": "Batch size", "fusion": "Fusion", "strategy": "Method", "precision": "Precision",
          "loader": "Loader", "parallelism": "Parallelism", "loader.num_workers": "Workers",
          "loader.prefetch_factor": "Prefetch factor"}
KNOB_OF = {"dataset": "data.dataset", "encoder": "data.modalities", "fusion": "model.fusion",
           "strategy": "strategy.name", "precision": "system.precision", "loader": "loader.preinit",
           "parallelism": "system.parallelism", "batch_size": "train.batch_size"}
NAMES = {"fp32": "FP32", "tf32": "TF32", "bf16": "BF16", "standard": "Std", "preinit": "Opt",
         "single": "Single", "dp": "DP", "ddp": "DDP", "blp": "BLP"}
TIME_NOTE = ("Time: seconds per epoch of training and validation, loader initialisation included, averaged "
             "over the measured epochs: warm-up epochs are left out (a bench record's own warm-up; a training "
             "record's first epoch, unless it has only one).")


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


@dataclass
class Cell:
    mean: float | None
    se: float | None
    n: int
    text: str


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


# ---- formatting ------------------------------------------------------------------------------------------

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
    """Mean and standard error over the finished runs (seeds) of one table cell; else why there is none."""
    done = runs[(runs["state"] == "done") & runs[column].notna()] if column in runs else runs.iloc[:0]
    if len(done):
        mean, se = mx.mean_se([float(v) for v in done[column]])
        rest = runs[runs["state"] != "done"]
        partial = f" ({len(done)} of {len(runs)} seeds{notes.cite(_reasons(rest))})" if len(rest) else ""
        twice = done[done["seed"].duplicated(keep=False)]
        if len(twice):  # e.g. a train and a bench record of one config: averaged, but never unnoticed
            partial += notes.cite(f"averaged over runs that share a seed: {', '.join(twice['run'])}")
        return Cell(mean, se, len(done), partial)
    if not len(runs):
        return Cell(None, None, 0, "missing")
    for state in ("n/a", "failed", "running", "pending", "unsubmitted", "missing", "done"):
        hit = runs[runs["state"] == state]
        if len(hit):
            reason = _reasons(hit) if state != "done" else f"finished, but the record has no {column}"
            return Cell(None, None, 0, (state if state != "done" else "–") + notes.cite(reason))
    return Cell(None, None, 0, "missing")


def _reasons(runs: pd.DataFrame) -> str:
    """The distinct reasons of some runs (which run has which: the runs table), so equal ones share a note."""
    return "; ".join(dict.fromkeys(str(r.reason) for r in runs.itertuples() if r.reason))


def speedup(base: Cell, other: Cell) -> float | None:
    if base.mean is None or other.mean is None or base.mean <= 0 or other.mean <= 0:
        return None
    return mx.speedup(base.mean, other.mean)


# ---- contexts --------------------------------------------------------------------------------------------

def context_columns(runs: pd.DataFrame, compared: tuple[str, ...], always: tuple[str, ...] = ("dataset",)) -> list[str]:
    """What a row is: the labelled knobs (dataset, ...) plus every other knob that varies, minus the compared
    ones and minus knobs that vary in lockstep with a column already there (e.g. persistent workers, zipped
    with the loader type): they would split nothing and only widen the table."""
    var = set(varying(runs))
    skip = {KNOB_OF.get(c, c) for c in compared} | set(compared)
    labelled = [c for c in LABELS if c not in skip and (c in always or KNOB_OF.get(c, c) in var)]
    knobs_shown = {KNOB_OF.get(c, c) for c in labelled}
    kept = list(labelled)
    for c in varying(runs):
        if c in skip or c in knobs_shown:
            continue
        if not any(_lockstep(runs, c, other) for other in kept + [x for x in compared if x in runs]):
            kept.append(c)
    return kept


def _lockstep(runs: pd.DataFrame, a: str, b: str) -> bool:
    """True when knobs a and b determine each other (one-to-one across the runs)."""
    pairs = runs[[a, b]].astype(str).drop_duplicates()
    return pairs[a].is_unique and pairs[b].is_unique


ORDER = {"precision": ("fp32", "tf32", "bf16"), "loader": ("standard", "preinit"),
         "parallelism": ("single", "dp", "ddp", "blp"), "dataset": ("cremad", "ave", "mvsa", "iemocap", "urfunny"),
         "strategy": ("naive",), "encoder": ("audio", "visual", "text")}


def sort_key(cols: list[str], key: tuple) -> tuple:
    """Rows in the thesis' order: known values first in their order (FP32, TF32, BF16), numbers by value."""
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
    """Column header of a key: `Batch size`, or an unlabelled knob's leaf (`model.cosine` -> `cosine`)."""
    return LABELS.get(col) or col.rsplit(".", 1)[-1].replace("_", " ")


def _name(value) -> str:
    return NAMES.get(str(value), str(value))


# how a knob's value reads in a row label (column headers of compared values use NAMES: Std, Opt, as the thesis)
SHOWN = {"fp32": "FP32", "tf32": "TF32", "bf16": "BF16", "dp": "DP", "ddp": "DDP", "blp": "BLP",
         "preinit": "pre-init"}


def _key_cells(ctx: list[str], key: tuple) -> dict:
    # a knob left unset (None; NaN once in the frame) runs at its default
    return {_label(c): "default" if str(v) in ("None", "nan") else SHOWN.get(str(v), str(v)) for c, v in zip(ctx, key)}


def row_groups(runs: pd.DataFrame, ctx: list[str]):
    if not ctx:
        yield (), runs
        return
    keyed = runs.assign(**{c: runs[c].astype(str) for c in ctx})  # None/NaN are values too
    groups = [((k if isinstance(k, tuple) else (k,)), g) for k, g in keyed.groupby(ctx, sort=False, dropna=False)]
    for key, group in sorted(groups, key=lambda kg: sort_key(ctx, kg[0])):
        yield key, runs.loc[group.index]


def _constants(runs: pd.DataFrame, ctx: list[str]) -> str:
    """The setting every row shares, for the caption (e.g. `batch size 64, device A100`)."""
    parts = []
    for col in ("device", "batch_size", "dataset", "encoder"):
        if col not in ctx and runs[col].astype(str).nunique() == 1:
            parts.append(f"{_label(col).lower()} {runs[col].iloc[0]}")
    return ", ".join(parts)


# ---- one comparison --------------------------------------------------------------------------------------

def comparison(runs: pd.DataFrame, axis: str, order: tuple, baseline, metric: str = "time_epoch_s",
               owned: tuple[str, ...] = (), util: bool = False, always: tuple[str, ...] = ("dataset",)):
    """Rows of one knob compared within each context: (rows, bars, notes, ctx, values, left_out)."""
    ctx = context_columns(runs, (axis, *owned), always)
    notes = Notes()
    values = [v for v in order if v in set(runs[axis])] + sorted(set(runs[axis]) - set(order), key=str)
    rows, bars, left_out = [], [], 0
    for key, group in row_groups(runs, ctx):
        if group[axis].nunique() < 2:  # nothing to compare it with: listed in the runs table
            left_out += len(group)
            continue
        cells = {v: cell(group[group[axis] == v], metric, notes) for v in values}
        row = _key_cells(ctx, key)
        for v in values:
            row[f"{_name(v)} (s)"] = fmt_mean_se(cells[v])
        speed = {v: speedup(cells[baseline], cells[v]) for v in values if v != baseline}
        for v, s in speed.items():
            row[f"{_name(v)} speedup"] = fmt_speedup(s)
        if util:
            u = {v: cell(group[group[axis] == v], "util_pct", notes) for v in values}
            for v in values:
                row[f"{_name(v)} util (%)"] = fmt_mean_se(u[v], lambda x: f"{x:.1f}")
            for v in values:
                if v != baseline:
                    gain = None if u[v].mean is None or u[baseline].mean is None else u[v].mean - u[baseline].mean
                    row[f"{_name(v)} util gain"] = "–" if gain is None else f"{gain:+.1f}"
        rows.append(row)
        bars.append(pd.Series(speed, name=" · ".join(_name(k) for k in key) or "all"))
    bar_frame = pd.DataFrame(bars).rename(columns=_name) if bars else None
    return rows, bar_frame, notes, ctx, values, left_out


def _table(name, title, caption, runs, axis, order, baseline, **kw) -> Table | None:
    rows, bars, notes, ctx, values, left_out = comparison(runs, axis, order, baseline, **kw)
    if not rows:
        return None
    setting = _constants(runs, ctx)
    caption = (f"{caption} Speedup (Eq. 4.1) against the {_name(baseline)} row ({baseline}) of the same "
               f"setting. {TIME_NOTE}" + (f" Setting: {setting}." if setting else ""))
    if left_out:
        caption += f" {left_out} run(s) with no counterpart to compare with are listed in the runs table only."
    return Table(name, title, caption, pd.DataFrame(rows).fillna("–"), notes.lines(), len(ctx), bars, baseline)


# ---- the tables ------------------------------------------------------------------------------------------

def precision_table(runs: pd.DataFrame) -> Table | None:
    return _table("precision", "Precision: time per epoch, FP32 vs TF32 vs BF16",
                  "Single-encoder (and multimodal) time per epoch at each precision, thesis Tables 4.6-4.9.",
                  runs, "precision", ("fp32", "tf32", "bf16"), "fp32", always=("dataset", "encoder"))


def loader_table(runs: pd.DataFrame) -> Table | None:
    kind = _util_kind(runs)
    t = _table("loader", f"Data loader: standard vs pre-initialised, time and {kind} utilisation",
               "Standard (Std) vs threaded pre-initialised (Opt, Alg. 6) loader, thesis Tables 4.10-4.12. "
               f"Util: mean {kind} utilisation over the measured epochs"
               + (" (CPU: % of one core, as in top)" if kind != "GPU" else "")
               + "; gain in percentage points.", runs, "loader", ("standard", "preinit"), "standard",
               owned=("loader.persistent_workers",), util=True)
    return t


# ---- loader knobs one at a time (thesis Tables 2.4, 2.5) and a recommendation for the node ---------------

NEAR_BEST = 0.05  # a setting within 5 % of the best measured one counts as good as the best


def _knob_rows(runs: pd.DataFrame, knob: str, metric: str, header: str, notes: Notes, fmt=fmt_time,
               value_name=str):
    """One row per value of `knob` within each setting where it varies: [(key cells, value, cell, row)]."""
    ctx = context_columns(runs, (knob,))
    rows = []
    for key, group in row_groups(runs, ctx):
        if group[knob].astype(str).nunique() < 2:
            continue
        values = sorted(group[knob].unique(), key=lambda v: (-1 if v is None or pd.isna(v) else float(v)))
        for v in values:
            hit = group[group[knob].isna()] if v is None or pd.isna(v) else group[group[knob] == v]
            c = cell(hit, metric, notes)
            row = {**_key_cells(ctx, key), _label(knob): value_name(v), header: fmt_mean_se(c, fmt)}
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


def _prefetch_name(v) -> str:
    if v is None or pd.isna(v):
        return "default (2)"
    return "0 (estimated)" if int(v) == 0 else str(int(v))


def loader_knob_tables(runs: pd.DataFrame) -> list[Table]:
    """Table 2.4 (time per epoch by worker count), Table 2.5 (idle time by prefetch factor), each with the
    recommended value for the node it ran on."""
    tables = []
    for knob, name, title, metric, header, fmt, value_name, thesis in (
            ("loader.num_workers", "loader-workers", "Data loader: worker processes", "time_epoch_s",
             "Time (s)", fmt_time, lambda v: str(int(v)), "Table 2.4"),
            ("loader.prefetch_factor", "loader-prefetch", "Data loader: prefetch factor and idle time", "idle_s",
             "Idle time (s)", lambda x: f"{x:.3f}", _prefetch_name, "Table 2.5")):
        if knob not in runs or knob not in varying(runs):
            continue
        notes = Notes()
        ctx, rows = _knob_rows(runs, knob, metric, header, notes, fmt, value_name)
        if not rows:
            continue
        # a setting's recommendation: the cheapest value as good as the best (idle: within 5 % or 10 ms)
        rec = _recommend(rows, 0.01 if metric == "idle_s" else 0.0)
        shown = []
        for key, v, _, row in rows:
            chosen = key in rec and v is not None and not pd.isna(v) and float(v) == rec[key]
            row["Recommended"] = "✓" if chosen else ""
        for key, v in rec.items():
            where = ", ".join(f"{k} {x}" for k, x in _key_cells(ctx, key).items())
            shown.append(f"{value_name(v)}" + (f" ({where})" if where else ""))
        if metric == "idle_s":
            what = ("Idle time: seconds per epoch the training step waited for a batch (the waits in the "
                    "loader's next(), first batch excluded: that is initialisation, Table 2.8), averaged over "
                    "the measured epochs. PyTorch cannot run prefetch factor 0 with workers: its row is "
                    "estimated as thesis Appendix A.2.1 (Alg. 7), from a pass over the epoch with prefetch "
                    "factor 1 and no work in the loop.")
            rule = (f"Recommended: the smallest prefetch factor whose idle time is within {NEAR_BEST:.0%} (or "
                    "10 ms) of the least measured")
        else:
            what = TIME_NOTE
            rule = f"Recommended: the fewest workers whose time per epoch is within {NEAR_BEST:.0%} of the fastest"
        setting = _constants(runs, ctx)
        caption = (f"{title}, thesis {thesis}. {what} {rule}, for the node the runs ran on: "
                   f"{'; '.join(shown)}." + (f" Setting: {setting}." if setting else ""))
        tables.append(Table(name, title, caption, pd.DataFrame([r for *_, r in rows]).fillna("–"),
                            notes.lines(), len(ctx) + 1))
    return tables


def parallelism_table(runs: pd.DataFrame) -> Table | None:
    return _table("parallelism", "Parallelism: single device vs DP, DDP and BLP",
                  "Single device, DataParallel, DistributedDataParallel and Branch-Level Parallelism, "
                  "thesis Tables 4.13-4.15.", runs, "parallelism", ("single", "dp", "ddp", "blp"), "single",
                  owned=("system.blp_devices",))


def _util_kind(runs: pd.DataFrame) -> str:
    kinds = set(runs["util_kind"].dropna())
    return kinds.pop() if len(kinds) == 1 else "GPU (CPU on CPU rows)" if kinds else "GPU"


DEFAULTS = {"precision": "fp32", "loader": "standard", "parallelism": "single"}


def overall_table(runs: pd.DataFrame) -> Table | None:
    """Default settings vs all optimisations at once (thesis Table 4.16): per setting, the default row
    against the runs that change the most of the three system knobs, among those applicable here."""
    knobs = tuple(DEFAULTS)
    n_changed = sum((runs[k] != d) for k, d in DEFAULTS.items())
    changed = n_changed.where(runs["state"] != "n/a", -1)  # a combination that cannot run here is no candidate
    if changed.max() < 2:
        return None
    ctx = context_columns(runs, knobs + ("loader.persistent_workers", "system.blp_devices"))
    notes, rows, bars = Notes(), [], []
    for key, group in row_groups(runs.assign(changed=changed, n_changed=n_changed), ctx):
        default = group[group["n_changed"] == 0]
        best = group[group["changed"] == group["changed"].max()] if group["changed"].max() >= 2 else group.iloc[:0]
        base = cell(default, "time_epoch_s", notes)
        for combo, opt in best.groupby(list(knobs), sort=False):
            c = cell(opt, "time_epoch_s", notes)
            label = " + ".join(_name(v) for v in combo if v not in DEFAULTS.values())  # e.g. TF32 + Opt + BLP
            row = _key_cells(ctx, key)
            row.update({"Optimisations": label, "Default (s)": fmt_mean_se(base), "Optimised (s)": fmt_mean_se(c),
                        "Speedup": fmt_speedup(speedup(base, c))})
            rows.append(row)
            bars.append(pd.Series({label: speedup(base, c)}, name=" · ".join(_name(k) for k in key) or "all"))
    if not rows:
        return None
    setting = _constants(runs, ctx)
    caption = ("Default settings (FP32, standard loader, single device) vs all optimisations of the sweep at "
               "once, thesis Table 4.16: the runs that change the most of precision, loader and parallelism "
               "(combinations not applicable on this cluster are left out here; the runs table lists them). "
               "Speedup (Eq. 4.1) against the default row. " + TIME_NOTE
               + (f" Setting: {setting}." if setting else ""))
    bar_frame = pd.DataFrame(bars)
    return Table("overall", "Overall: default vs all optimisations", caption, pd.DataFrame(rows).fillna("–"),
                 notes.lines(), len(ctx) + 1, bar_frame, "default")


# ---- algorithm level -------------------------------------------------------------------------------------

MODALITY_ORDER = ("audio", "visual", "text")


def _modalities(runs: pd.DataFrame) -> list[str]:
    found = {m for mods in runs["modalities"].dropna() for m in str(mods).split("+") if m}
    return [m for m in MODALITY_ORDER if m in found] + sorted(found - set(MODALITY_ORDER))


DATA_IDENTITY = ("dataset", "data.source", "data.preset", "data.data_seed")  # which data a baseline was trained on


def _data_key(runs: pd.DataFrame, row: pd.Series) -> tuple[str, ...]:
    return tuple(str(row[c]) for c in DATA_IDENTITY if c in runs)


def _single_baselines(runs: pd.DataFrame) -> dict[tuple, float]:
    """(data key, modality) -> mean test accuracy of the finished single-modality runs on the same data
    (dataset, source, preset, generator seed): a tiny run's baseline never serves a full run (the IBF reference)."""
    single = runs[(runs["n_modalities"] == 1) & (runs["state"] == "done")]
    if "acc/fused" not in single:
        return {}
    cols = [c for c in DATA_IDENTITY if c in runs]
    keyed = single.astype({c: str for c in cols})  # as _data_key spells them (an absent value: "nan")
    return {(tuple(k[:-1]), k[-1]): float(g.mean()) for k, g in keyed.groupby(cols + ["modalities"])["acc/fused"]}


def _ibf_text(group: pd.DataFrame, mods: list[str], singles: dict, notes: Notes) -> str:
    """IBF (Eq. 3.1) from the mean accuracies over seeds, as in Appendix A; else the records' own IBF."""
    if len(mods) == 1:
        return "0"
    dataset = group["dataset"].iloc[0]
    done = group[group["state"] == "done"]
    if not len(done):
        return cell(group, "acc/fused", notes).text  # why there is none: n/a, failed, ...
    data = _data_key(group, group.iloc[0])
    keys = mx.ibf_accuracy_keys(group["fusion"].iloc[0] if "fusion" in group else "", mods)
    if all((data, m) in singles for m in mods) and all(keys[m] in done for m in mods):
        return f"{mx.ibf({m: done[k].mean() for m, k in keys.items()}, {m: singles[data, m] for m in mods}):.3f}"
    c = cell(group, "ibf", notes)
    if c.mean is not None:
        return fmt_mean_se(c, lambda x: f"{x:.3f}")
    return "–" + notes.cite(f"{dataset}: no single-modality runs to compute IBF against (Eq. 3.1)")


def algorithm_tables(runs: pd.DataFrame) -> list[Table]:
    ctx = context_columns(runs, (), always=("dataset", "strategy"))
    mods_all = _modalities(runs)
    singles = _single_baselines(runs)
    acc_notes, train_notes = Notes(), Notes()
    acc_rows, train_rows = [], []
    pct = dict(scale=100.0, fmt=lambda x: f"{x:.1f}", se_fmt=lambda x: f"{x:.2f}")
    base_ctx = [c for c in ctx if c != "strategy"]
    for key, group in row_groups(runs, ctx):
        mods = [m for m in str(group["modalities"].iloc[0]).split("+") if m]
        label = _key_cells(ctx, key)
        row = {**label, "Fused acc (%)": fmt_mean_se(cell(group, "acc/fused", acc_notes), **pct)}
        for m in mods_all:
            row[f"{m.capitalize()} acc (%)"] = (fmt_mean_se(cell(group, f"acc/{m}", acc_notes), **pct)
                                                if m in mods else "–")
        row["IBF"] = _ibf_text(group, mods, singles, acc_notes)
        acc_rows.append(row)
        trow = dict(label)
        for m in mods_all:
            trow[f"Bias {m}"] = (fmt_mean_se(cell(group, f"bias/{m}", train_notes), lambda x: f"{x:.2f}")
                                 if m in mods and len(mods) > 1 else "–")
        for m in mods_all:
            trow[f"Epochs {m}"] = (fmt_mean_se(cell(group, f"epochs/{m}", train_notes), lambda x: f"{x:.3g}")
                                   if m in mods else "–")
        t = cell(group, "time_epoch_s", train_notes)
        trow["Time/epoch (s)"] = fmt_mean_se(t)
        naive = _naive_of(runs, group, base_ctx)
        if naive is not None and group["strategy"].iloc[0] != "naive":
            trow["Speedup vs naive"] = fmt_speedup(speedup(cell(naive, "time_epoch_s", Notes()), t))
        train_rows.append(trow)
    setting = _constants(runs, ctx)
    where = f" Setting: {setting}." if setting else ""
    se = " Mean ± standard error over seeds (Appendix A) where there are several."
    return [
        Table("algorithm-accuracy", "Algorithm: test accuracy per modality and fused, IBF",
              "Test accuracy of the fused model and of each modality inside it (masked fusion), thesis Tables "
              "4.1-4.3; IBF (Eq. 3.1) from the mean accuracies against the single-modality runs of the same "
              f"dataset (0 for those runs).{se}{where}", pd.DataFrame(acc_rows).fillna("–"),
              acc_notes.lines(), len(ctx)),
        Table("algorithm-training", "Algorithm: modality bias, optimisation epochs, time per epoch",
              "Relative modality bias on the test set (Eq. 3.5-3.6), epochs in which each modality was "
              "optimised, and time per epoch with its speedup (Eq. 4.1) against the naive row of the same "
              f"setting, thesis Tables 4.4-4.5.{se} {TIME_NOTE}{where}", pd.DataFrame(train_rows).fillna("–"),
              train_notes.lines(), len(ctx), baseline="naive"),
    ]


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


# ---- every run, and which tables apply -------------------------------------------------------------------

def runs_table(runs: pd.DataFrame) -> Table:
    """Every run of the sweep with its state and reason: nothing a comparison leaves out goes unseen."""
    many = runs["sweep"].nunique() > 1
    rows = []
    for r in runs.itertuples():
        reason = str(r.reason)
        row = {"Sweep": r.sweep} if many else {}
        row.update({"Run": r.run, "State": str(r.state), "Device": r.device,
                    "Time/epoch (s)": "–" if pd.isna(r.time_epoch_s) else fmt_time(r.time_epoch_s),
                    "Util (%)": "–" if pd.isna(r.util_pct) else f"{r.util_pct:.1f} {r.util_kind}",
                    "Reason": reason if len(reason) <= 160 else reason[:157] + "..."})
        rows.append(row)
    counts = runs["state"].value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return Table("runs", "All runs", f"Every run of the report with its state ({summary}); a run that is not "
                 "done shows why (not applicable on this cluster, its error, or its SLURM state).",
                 pd.DataFrame(rows), [], 1 + many)


def detect_kinds(runs: pd.DataFrame) -> list[str]:
    """The tables a set of runs supports: a knob that varies gets its table; algorithm when the training
    method or fusion varies, or when no system knob does."""
    var = set(varying(runs))
    kinds = [k for k in ("precision", "loader", "parallelism") if KNOB_OF[k] in var]
    if "loader" not in kinds and var & {"loader.num_workers", "loader.prefetch_factor"}:
        kinds.insert(1 if "precision" in kinds else 0, "loader")
    if sum(k in kinds for k in DEFAULTS) >= 2 and overall_table(runs) is not None:
        kinds.append("overall")
    if not kinds or var & {"strategy.name", "model.fusion"}:
        kinds.append("algorithm")
    return kinds


def build_tables(runs: pd.DataFrame, kinds: list[str] | None = None) -> tuple[list[Table], list[str]]:
    """The tables of `kinds` (default: detected), then the runs table; and a message per kind that gave none."""
    kinds = kinds or detect_kinds(runs)
    builders = {"precision": precision_table, "loader": loader_table, "parallelism": parallelism_table,
                "overall": overall_table}
    tables, messages = [], []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kind: invalid value {kind!r}; valid choices: auto, {', '.join(KINDS)}")
        if kind == "algorithm":
            made = algorithm_tables(runs)
        elif kind == "loader":
            made = loader_knob_tables(runs) + ([loader_table(runs)] if KNOB_OF["loader"] in varying(runs) else [])
        else:
            made = [builders[kind](runs)]
        made = [t for t in made if t is not None]
        if not made:
            messages.append(f"{kind}: no runs that differ in {KNOB_OF.get(kind, 'the system knobs')} "
                            "within the same setting; no table")
        tables += made
    return tables + [runs_table(runs)], messages
