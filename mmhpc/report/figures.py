"""The report's figures (matplotlib, Agg): utilisation over time (thesis Fig. 4.1/4.2), standard vs
pre-initialised loader overlays, speedup bars, per-modality accuracy over epochs.

Every figure is an A4-landscape page with its title and caption drawn on it, so the PNG and the PDF
page read the same. On a run without GPU samples (a CPU sweep) the CPU utilisation of the training
process is plotted instead, and the caption says so.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd

from mmhpc.report.tables import NAMES, Table, context_columns, row_groups, sort_key

PAGE = (11.69, 8.27)  # A4 landscape, inches
PANELS = 6            # small multiples per page
WIDE = 8              # a speedup panel of more settings than this gets a page of its own
STD, OPT = "#8c8c8c", "#1f77b4"


@dataclass
class Figure:
    name: str       # file stem of figures/<name>.png
    figure: plt.Figure


def new_figure(**kw) -> plt.Figure:
    """Every report figure starts here: on the file backend (Agg), never a window, even on a login
    node with a display; chosen here rather than at import, so importing mmhpc leaves matplotlib
    alone."""
    plt.switch_backend("Agg")
    return plt.figure(**kw)


def page(title: str, caption: str, n: int, cols: int = 2, sharey: bool = True):
    """An A4-landscape figure with n panels (one y-axis for all: panels of one figure read on one
    scale), its title at the top and its caption at the bottom."""
    rows = max(1, int(np.ceil(n / cols)))
    fig = new_figure(figsize=PAGE)
    axes = fig.subplots(rows, cols if n > 1 else 1, squeeze=False, sharey=sharey)
    fig.suptitle(title, fontsize=14, fontweight="bold", y=0.975)
    fig.text(0.06, 0.02, _wrap(caption, 150), fontsize=9, va="bottom", ha="left", style="italic")
    fig.subplots_adjust(left=0.07, right=0.97, top=0.89, bottom=0.17, hspace=0.55, wspace=0.18)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def run_label(row: pd.Series, cols: list[str], seed: bool = False) -> str:
    """A short name for a run from the knobs that vary: `FP32 · Single · Std` rather than its file
    name."""
    parts = [
        NAMES.get(str(row[c]), f"{c.split('.')[-1]}={row[c]}" if "." in c else str(row[c]))
        for c in cols
    ]
    if seed:
        parts.append(f"seed {row['seed']}")
    return " · ".join(parts) if parts else str(row["run"])


def _in_order(runs: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Runs in the tables' row order (FP32 before BF16, ...), then by seed."""
    keys = [
        sort_key(cols, tuple(str(r[c]) for c in cols)) + (r["seed"],) for _, r in runs.iterrows()
    ]
    return runs.iloc[sorted(range(len(runs)), key=lambda i: keys[i])]


# ---- utilisation over time
# -------------------------------------------------------------------------------

def timeseries(row: pd.Series) -> tuple[pd.DataFrame, list[dict], str] | None:
    """(samples, epoch markers, "GPU"|"CPU") of a finished run, from the `.util.csv` beside its
    record."""
    rec = row["record"]
    name = (rec.system or {}).get("timeseries") if rec is not None else None
    if not name or not row["path"]:
        return None
    csv = Path(row["path"]).parent / name
    if not csv.exists():
        return None
    data = pd.read_csv(csv)
    gpu = [c for c in data.columns if re.fullmatch(r"gpu\d+_util_pct", c)]
    if gpu and data[gpu].notna().any().any():
        data["util"], kind = data[gpu].mean(axis=1), "GPU"
    elif "cpu_proc_pct" in data:
        data["util"], kind = data["cpu_proc_pct"], "CPU"
    else:
        return None
    try:
        markers = json.loads(csv.with_name(csv.stem + ".markers.json").read_text()).get(
            "markers", []
        )
    except (OSError, ValueError):
        markers = []
    return data, markers, kind


def _shade_epochs(ax, markers: list[dict]) -> None:
    starts = {m["label"].split()[1]: m["t"] for m in markers if m["label"].endswith("start")}
    for m in markers:
        if m["label"].endswith("end") and m["label"].split()[1] in starts:
            ax.axvspan(starts[m["label"].split()[1]], m["t"], color="#2ca02c", alpha=0.07, lw=0)


def _kind_caption(kinds: set[str]) -> str:
    if kinds == {"CPU"}:
        return (
            "No GPU was sampled (a CPU sweep): the curves are the CPU utilisation of the training "
            "process "
            "and its loader workers, in % of one core (100 = one core busy), instead of GPU "
            "utilisation."
        )
    if "CPU" in kinds:
        return ("Runs without GPU samples show the CPU utilisation of the training process "
                "(% of one core) instead.")
    return "GPU utilisation from NVML (the mean over a run's GPUs)."


def utilisation_figures(runs: pd.DataFrame) -> list[Figure]:
    cols = context_columns(runs, (), always=())
    seeds = runs["seed"].nunique() > 1
    done = [(r, ts) for _, r in _in_order(runs[runs["state"] == "done"], cols).iterrows()
            if (ts := timeseries(r)) is not None]
    figures = []
    for start in range(0, len(done), PANELS):
        chunk = done[start:start + PANELS]
        kinds = {ts[2] for _, ts in chunk}
        kind = kinds.pop() if len(kinds) == 1 else "GPU/CPU"
        fig, axes = page(
            f"{kind} utilisation over time per run (cf. thesis Fig. 4.1/4.2)",
            _kind_caption({ts[2] for _, ts in chunk}) + " Shaded: epochs (training and validation);"
            " gaps between them are loader start-up, test and bookkeeping. The whole "
            "run is drawn; "
            "the tables' means leave its warm-up epoch out.",
            len(chunk),
        )
        for ax, (row, (data, markers, k)) in zip(axes, chunk):
            _shade_epochs(ax, markers)
            ax.plot(data["t"], data["util"], lw=1.0, color=OPT)
            ax.set_title(_wrap(run_label(row, cols, seeds), 70), fontsize=8)
            ax.set_xlabel("time (s)", fontsize=9)
            ax.set_ylabel(f"{k} util (%)", fontsize=9)
            ax.tick_params(labelsize=8, labelleft=True)
        top = max(100.0, max(float(ts[0]["util"].max()) for _, ts in chunk) * 1.05)
        axes[0].set_ylim(0, top)
        figures.append(Figure(f"utilisation-{start // PANELS + 1}", fig))
    return figures


def loader_overlays(runs: pd.DataFrame) -> list[Figure]:
    """Standard vs pre-initialised loader on one axis per setting (the two halves of Fig.
    4.1/4.2)."""
    ctx = context_columns(runs, ("loader", "loader.persistent_workers"))
    pairs = []
    for key, group in row_groups(runs[runs["state"] == "done"], ctx):
        std = [
            ts for _, r in group[group["loader"] == "standard"].iterrows() if (ts := timeseries(r))
        ]
        opt = [
            ts for _, r in group[group["loader"] == "preinit"].iterrows() if (ts := timeseries(r))
        ]
        if std and opt:  # the first seed of each: overlaying every seed would hide the gaps
            pairs.append(
                (" · ".join(NAMES.get(str(k), str(k)) for k in key) or "all", std[0], opt[0])
            )
    figures = []
    for start in range(0, len(pairs), 4):
        chunk = pairs[start:start + 4]
        kinds = {p[1][2] for p in chunk} | {p[2][2] for p in chunk}
        kind = kinds.pop() if len(kinds) == 1 else "GPU/CPU"
        fig, axes = page(
            f"{kind} utilisation: standard vs pre-initialised loader (thesis Fig. 4.1 vs 4.2)",
            _kind_caption({p[1][2] for p in chunk} | {p[2][2] for p in chunk})
            + " Grey: standard loader; blue: threaded pre-initialisation (Alg. 6), "
            "which builds the "
            "next epoch's loader while the current one trains, closing the gaps "
            "between epochs.",
            len(chunk),
        )
        for ax, (label, (sd, _, k), (od, _, _)) in zip(axes, chunk):
            ax.plot(sd["t"], sd["util"], lw=1.0, color=STD, label="standard")
            ax.plot(od["t"], od["util"], lw=1.0, color=OPT, label="pre-initialised")
            ax.set_title(label, fontsize=10)
            ax.set_xlabel("time (s)", fontsize=9)
            ax.set_ylabel(f"{k} util (%)", fontsize=9)
            ax.legend(fontsize=8, loc="lower right")
            ax.tick_params(labelsize=8, labelleft=True)
        axes[0].set_ylim(
            0,
            max(
                [100.0]
                + [float(max(p[1][0]["util"].max(), p[2][0]["util"].max())) * 1.05 for p in chunk]
            ),
        )
        figures.append(Figure(f"loader-overlay-{start // 4 + 1}", fig))
    return figures


# ---- speedups and accuracy
# -------------------------------------------------------------------------------

def _bars(table: Table) -> tuple[pd.DataFrame, pd.DataFrame | None] | None:
    if table.bars is None:
        return None
    bars = table.bars.astype(float)
    rows, cols = bars.notna().any(axis=1).to_numpy(), bars.notna().any(axis=0).to_numpy()
    bars = bars.iloc[rows, cols]  # row names may repeat (one per setting): keep by position
    if bars.empty:
        return None
    thesis = None
    if table.thesis_bars is not None and len(table.thesis_bars) == len(rows):
        thesis = table.thesis_bars.astype(float).iloc[rows].reindex(columns=bars.columns)
    return bars, thesis


SPEEDUP_CAPTION = (
    "Bars: measured speedup over the baseline of the same row (above 1 is faster), from times "
    "averaged without the warm-up epochs. Black diamonds: the thesis' speedup for the same cell "
    "(its dataset, modalities, setting and batch size). Settings without a finished pair of runs "
    "are left out here; the tables show why."
)


def speedup_figures(tables: list[Table]) -> list[Figure]:
    """The speedups of every comparison table, one panel each, up to four panels a page on one
    y-axis; the thesis' value of the same cell as a black diamond where it has one."""
    panels = [(t, b) for t in tables if (b := _bars(t)) is not None]
    # a table of many settings gets a page of its own; the others share pages, four panels each
    pages = [[p] for p in panels if len(p[1][0]) > WIDE]
    small = [p for p in panels if len(p[1][0]) <= WIDE]
    pages += [small[i:i + 4] for i in range(0, len(small), 4)]
    figures = []
    for start, chunk in enumerate(pages):
        wide = len(chunk) == 1 and len(chunk[0][1][0]) > WIDE
        smoke = [t.smoke for t, _ in chunk if t.smoke]
        fig, axes = page(
            "Speedups (Eq. 4.1) against each table's baseline, with the thesis' values"
            + (" [smoke test]" if smoke else ""),
            ("SMOKE TEST: not a result, never compared with the thesis. " if smoke else "")
            + SPEEDUP_CAPTION,
            1 if wide else 4,
        )
        for ax in axes[len(chunk):]:
            ax.set_visible(False)
        if wide:
            fig.subplots_adjust(bottom=0.3)
        top = max([1.0] + [_speedup_panel(ax, *panel) for ax, panel in zip(axes, chunk)])
        axes[0].set_ylim(0, top * 1.18)
        figures.append(Figure(f"speedups-{start + 1}", fig))
    return figures


def _speedup_panel(ax, table: Table, bars_thesis) -> float:
    """One table's speedup bars (and the thesis' diamonds) on `ax`; returns the highest value."""
    bars, thesis = bars_thesis
    n_rows, n_series = bars.shape
    width = 0.8 / max(n_series, 1)
    x = np.arange(n_rows)
    top = 1.0
    for i, col in enumerate(bars.columns):
        vals = bars[col].to_numpy()
        pos = x + (i - (n_series - 1) / 2) * width
        ax.bar(pos, np.nan_to_num(vals), width, label=str(col))
        for p, v in zip(pos, vals):
            if np.isfinite(v) and n_rows * n_series <= 12:  # more: the table has the numbers
                ax.text(p, v, f"{v:.2f}×", ha="center", va="bottom", fontsize=7)
        if thesis is not None and col in thesis:
            t = thesis[col].to_numpy()
            ok = np.isfinite(t)
            if ok.any():
                ax.plot(pos[ok], t[ok], "D", color="k", ms=5, label="thesis" if i == 0 else None)
                top = max(top, float(np.nanmax(t)))
        top = max(top, float(np.nanmax(np.nan_to_num(vals))))
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    spare = max(3 - n_rows, 0) / 2  # one or two settings: narrow bars, not a wall of colour
    ax.set_xlim(-0.5 - spare, n_rows - 0.5 + spare)
    few = n_rows <= 4
    ax.set_xticks(x, [_wrap(str(i), 22) if few else str(i) for i in bars.index], fontsize=7,
                  rotation=0 if few else 60, ha="center" if few else "right",
                  rotation_mode="anchor")
    base = NAMES.get(table.baseline, table.baseline)
    ax.set_title(f"{table.title.split(':')[0]} (against {base})", fontsize=10)
    ax.set_ylabel("speedup (×)", fontsize=9)
    ax.tick_params(labelsize=8, labelleft=True)
    handles, labels = ax.get_legend_handles_labels()
    if labels:
        ax.legend(fontsize=7, loc="upper left")
    return top


def accuracy_figures(runs: pd.DataFrame) -> list[Figure]:
    """Validation accuracy per head (fused and each modality) over epochs, mean over seeds."""
    ctx = context_columns(runs, (), always=())
    done = runs[(runs["state"] == "done") & runs["record"].notna()]
    curves = []
    for _, group in row_groups(done, ctx):
        per_seed = [pd.DataFrame([{k: v for k, v in e.val.items() if k.startswith("acc/")}
                                  for e in r.epochs]) for r in group["record"] if len(r.epochs) > 1]
        per_seed = [f for f in per_seed if not f.empty]
        if per_seed:
            curves.append(
                (run_label(group.iloc[0], ctx), pd.concat(per_seed).groupby(level=0).mean())
            )
    figures = []
    for start in range(0, len(curves), PANELS):
        chunk = curves[start:start + PANELS]
        fig, axes = page("Validation accuracy per modality over epochs",
                         "Accuracy of the fused prediction and of each modality inside the model "
                         "(masked fusion), "
                         "on the validation set after each epoch; mean over seeds.", len(chunk))
        for ax, (label, acc) in zip(axes, chunk):
            for col in [c for c in acc.columns if not c.startswith("acc/probe/")]:
                head = col.split("/", 1)[1]
                ax.plot(
                    acc.index,
                    100 * acc[col],
                    marker="o",
                    ms=3,
                    lw=1.5 if head == "fused" else 1.0,
                    color="k" if head == "fused" else None,
                    label=head,
                )
            ax.set_title(_wrap(label, 70), fontsize=8)
            ax.set_xlabel("epoch", fontsize=9)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel("val accuracy (%)", fontsize=9)
            ax.set_ylim(0, 100)
            ax.legend(fontsize=8)
            ax.tick_params(labelsize=8, labelleft=True)
        figures.append(Figure(f"accuracy-{start // PANELS + 1}", fig))
    return figures


def build_figures(runs: pd.DataFrame, tables: list[Table]) -> list[Figure]:
    figs = speedup_figures(tables)
    figs += loader_overlays(runs) if runs["loader"].nunique() > 1 else []
    return figs + utilisation_figures(runs) + accuracy_figures(runs)
