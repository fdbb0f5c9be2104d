"""The report as files: report.pdf (matplotlib PdfPages), tables/*.md and *.tex, figures/*.png.

PDF: a title page (sweep, description, clusters, devices, software versions, date, contents), one
section per table (a table longer than a page continues on the next), the figures, and the runs
table last. Markdown and LaTeX are written here rather than with pandas' `to_markdown`/`to_latex`,
which need the optional `tabulate` and `jinja2` packages.
"""
from __future__ import annotations

import datetime as dt
import re
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.backends.backend_pdf import PdfPages

from mmhpc.report.figures import PAGE, Figure, new_figure
from mmhpc.report.load import Results
from mmhpc.report.tables import Table

# ---- markdown and LaTeX
# ----------------------------------------------------------------------------------

def to_markdown(table: Table) -> str:
    def row(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    lines = [f"### {table.title}", "", table.caption, "", row(table.frame.columns),
             "|" + "|".join("---" for _ in table.frame.columns) + "|"]
    lines += [row(r) for r in table.frame.itertuples(index=False)]
    if table.notes:
        lines += [""] + [f"{n}  " for n in table.notes]
    return "\n".join(lines) + "\n"


_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "×": r"$\times$",
    "±": r"$\pm$",
    "–": "--",
    "·": r"$\cdot$",
    ">": r"$>$",
    "<": r"$<$",
}


def tex_escape(text) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs}); key columns left-aligned, numbers
    right-aligned."""
    cols = list(table.frame.columns)
    spec = "l" * table.keys + "r" * (len(cols) - table.keys)
    lines = [r"\begin{table}[htbp]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(table.title)}. {tex_escape(table.caption)}}}",
             rf"\label{{tab:{table.name}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(tex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [
        " & ".join(tex_escape(c) for c in r) + r" \\" for r in table.frame.itertuples(index=False)
    ]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        lines += [r"\par\footnotesize"] + [tex_escape(n) + r"\\" for n in table.notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---- PDF pages
# -------------------------------------------------------------------------------------------

FONT = 10.0
CHARS_PER_LINE = 135          # what fits across the page at FONT, for wrapping cells
TABLE_BOX = (
    0.04,
    0.15,
    0.92,
    0.66,
)  # left, bottom, width, height of the table on a page (figure fraction)
CAPTION_LINE = (
    8.5 * 1.25 / 72 / 8.27
)  # one caption line (8.5 pt) as a fraction of the page's height
LINE_IN = FONT * 1.55 / 72    # height of one text line in a cell, inches
ROW_PAD = 0.6                 # a cell is its wrapped lines plus this many lines high


def _column_widths(frame: pd.DataFrame, fixed: list[int] | None = None) -> list[int]:
    """Characters per column: `fixed` (0: the rest of the line), else each as wide as its longest
    cell, the widest shrunk until the row fits."""
    if fixed:
        rest = max(CHARS_PER_LINE - sum(fixed), 12)
        return [w or rest for w in fixed]
    widths = [
        max([len(str(c)) for c in frame[col]] + [min(len(str(col)), 14), 4])
        for col in frame.columns
    ]
    while sum(widths) > CHARS_PER_LINE and max(widths) > 10:
        widths[widths.index(max(widths))] -= 1
    return widths


def wrap_cell(text: str, width: int) -> str:
    """Greedy line breaks after spaces, `_` and `-`, so run names split between their parts."""
    lines, line = [], ""
    for token in re.split(r"(?<=[ _-])", str(text)):
        while len(token) > width:  # a part longer than a line: split it hard
            if line:
                lines.append(line)
                line = ""
            lines.append(token[:width])
            token = token[width:]
        if len(line) + len(token.rstrip()) > width and line:
            lines.append(line)
            line = ""
        line += token
    lines.append(line)
    return "\n".join(ln.rstrip() for ln in lines if ln.strip()) or " "


def _wrapped(frame: pd.DataFrame, keys: int, fixed: list[int] | None = None):
    """Header, body (cells wrapped; a key repeated from the row above blanked), each row's line
    count and the column widths in characters."""
    widths = _column_widths(frame, fixed)
    header = [
        "\n".join(textwrap.wrap(str(c), max(w, 8))) or " " for c, w in zip(frame.columns, widths)
    ]
    body, prev = [], None
    for r in frame.itertuples(index=False):
        cells = [wrap_cell(c, w) for c, w in zip(r, widths)]
        if prev is not None:
            for j in range(keys):  # blank the leading keys the row shares with the one above
                if str(r[j]) != str(prev[j]):
                    break
                cells[j] = ""
        body.append(cells)
        prev = r
    return header, body, [max(c.count("\n") + 1 for c in row) for row in body], widths


def _pages_of_rows(
    lines: list[int], header_lines: int, height: float = TABLE_BOX[3]
) -> list[tuple[int, int]]:
    """Split rows into pages by their drawn heights (wrapped lines + ROW_PAD each): [(start, stop),
    ...]."""
    capacity = height * PAGE[1] / LINE_IN - (header_lines + ROW_PAD)
    spans, start, used = [], 0, 0.0
    for i, n in enumerate(lines):
        if used + n + ROW_PAD > capacity and i > start:
            spans.append((start, i))
            start, used = i, 0.0
        used += n + ROW_PAD
    spans.append((start, len(lines)))
    return spans


def table_pages(table: Table, number: int) -> list[plt.Figure]:
    header, body, lines, widths = _wrapped(table.frame, table.keys, table.widths)
    header_lines = max(h.count("\n") + 1 for h in header)
    caption = textwrap.wrap(table.caption, 175)
    # the table starts below its caption, however long (a smoke test's or a report's with many
    # notes)
    height = min(TABLE_BOX[3], 0.905 - CAPTION_LINE * len(caption) - 0.015 - TABLE_BOX[1])
    box = (TABLE_BOX[0], TABLE_BOX[1], TABLE_BOX[2], height)
    spans = _pages_of_rows(lines, header_lines, height)
    pages = []
    for i, (a, b) in enumerate(spans):
        cont = f" (continued, {i + 1}/{len(spans)})" if i else ""
        fig = new_figure(figsize=PAGE)
        fig.text(
            0.05,
            0.95,
            f"Table {number}. {table.title}{cont}",
            fontsize=14,
            fontweight="bold",
            va="top",
        )
        fig.text(0.05, 0.905, "\n".join(caption), fontsize=8.5, va="top", style="italic")
        ax = fig.add_axes(box)
        ax.axis("off")
        rows = body[a:b]
        if a and table.keys:  # a continued page repeats the keys it starts in
            rows[0] = [wrap_cell(table.frame.iloc[a, j], widths[j]) if j < table.keys else c
                       for j, c in enumerate(rows[0])]
        sources = list(table.frame["Source"].iloc[a:b]) if "Source" in table.frame else None
        _draw_table(fig, ax, header, rows, lines[a:b], header_lines, table.keys, shade_from=a,
                    widths=widths if table.widths else None, sources=sources, height=height)
        if i == len(spans) - 1 and table.notes:
            fig.text(0.05, 0.02, _notes_text(table.notes), fontsize=7.5, va="bottom")
        pages.append(fig)
    return pages


def _notes_text(notes: list[str], max_lines: int = 9) -> str:
    lines = [ln for n in notes for ln in textwrap.wrap(n, 200, subsequent_indent="     ")]
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [
            f"... ({len(lines) - max_lines + 1} more lines in the .md/.tex table)"
        ]
    return "\n".join(lines)


def _draw_table(
    fig,
    ax,
    header,
    body,
    lines,
    header_lines,
    keys,
    shade_from=0,
    widths=None,
    sources=None,
    height: float = TABLE_BOX[3],
) -> None:
    """A matplotlib table with row heights from their wrapped lines, bold header, alternate shading;
    `widths`: fixed column widths in characters (the same on every page); `sources`: each row's
    Source (measured, thesis, ratio), the thesis rows in grey italics and each measured row's group
    shaded alike."""
    if not body:
        ax.text(0.5, 0.9, "(no rows)", ha="center", fontsize=10)
        return
    tbl = ax.table(cellText=body, colLabels=header, loc="upper center", cellLoc="center")
    tbl.auto_set_font_size(False)
    tbl.set_fontsize(FONT)
    if not widths:
        tbl.auto_set_column_width(list(range(len(header))))
    line = LINE_IN / (height * PAGE[1])  # one text line in axes coordinates
    prose = {
        j for j in range(len(header)) if any("\n" in row[j] for row in body)
    }  # wrapped text reads left
    for (i, j), c in tbl.get_celld().items():
        c.set_edgecolor("#bbbbbb")
        c.set_linewidth(0.5)
        if i == 0:
            c.set_facecolor("#dde4ee")
            c.set_text_props(fontweight="bold")
            c.set_height(line * (header_lines + ROW_PAD))
        else:
            c.set_height(line * (lines[i - 1] + ROW_PAD))
            if sources is None:
                c.set_facecolor(
                    "#f3f5f9" if (i + shade_from) % 2 == 0 else "white"
                )  # zebra: rows are wide
            else:
                group = sum(
                    1 for s in sources[:i] if s == "measured"
                )  # the measured row its group starts with
                c.set_facecolor("#f3f5f9" if group % 2 == 0 else "white")
                if sources[i - 1] != "measured":
                    c.get_text().set_color("#555555")
                    c.get_text().set_fontstyle("italic")
            if j < keys or j in prose or widths:
                c.get_text().set_ha("left")
                c.PAD = 0.04
    if widths:
        total = sum(widths)
        for (i, j), c in tbl.get_celld().items():
            c.set_width(widths[j] / total)
        return
    _fit_width(fig, ax, tbl, len(header))


def _fit_width(fig, ax, tbl, ncols: int) -> None:
    """Shrink the font until the table fits the page's width (a safety net behind the wrapping)."""
    renderer = fig.canvas.get_renderer()
    for _ in range(4):
        width = tbl.get_window_extent(renderer).width
        avail = ax.get_window_extent(renderer).width
        if width <= avail * 1.001:
            return
        size = max(5.0, tbl.get_celld()[0, 0].get_text().get_fontsize() * avail / width * 0.98)
        tbl.set_fontsize(size)
        tbl.auto_set_column_width(list(range(ncols)))


def title_page(results: Results, contents: list[tuple[str, int]]) -> plt.Figure:
    runs = results.runs
    done = results.done
    fig = new_figure(figsize=PAGE)
    fig.text(0.06, 0.9, f"mmhpc report: {results.name}", fontsize=24, fontweight="bold", va="top")
    if results.description:
        fig.text(
            0.06, 0.83, "\n".join(textwrap.wrap(results.description, 110)), fontsize=12, va="top"
        )
    states = ", ".join(f"{n} {s}" for s, n in runs["state"].value_counts().items() if n)
    devices = (
        ", ".join(f"{d} ({n} runs)" for d, n in done["device"].value_counts().items())
        or "none finished"
    )
    gpus = sorted({(r.env.gpu or {}).get("name") for r in done["record"]} - {None})
    info = [("Source", str(results.path)), ("Sweeps", ", ".join(results.sweeps)),
            ("Cluster", ", ".join(results.clusters) or "unknown (plain records)"),
            ("Hosts", ", ".join(sorted(set(done["host"].dropna()))) or "–"),
            ("Devices", devices + (f"; {', '.join(gpus)}" if gpus else "")),
            ("Runs", f"{len(runs)}: {states}"),
            ("Software", _versions(done)),
            ("Runs dated", _run_dates(done)),
            ("Report made", dt.datetime.now().strftime("%Y-%m-%d %H:%M"))]
    y = 0.74
    for label, text in info:
        wrapped = textwrap.wrap(text, 115) or ["–"]
        fig.text(0.06, y, label, fontsize=10.5, fontweight="bold", va="top")
        fig.text(0.2, y, "\n".join(wrapped), fontsize=10.5, va="top")
        y -= 0.035 * len(wrapped) + 0.01
    fig.text(0.06, y - 0.02, "Contents", fontsize=12, fontweight="bold", va="top")
    y -= 0.06
    for title, page_no in contents[:24]:
        fig.text(0.08, y, title, fontsize=9.5, va="top")
        fig.text(0.8, y, f"page {page_no}", fontsize=9.5, va="top")
        y -= 0.022
    return fig


def _versions(done: pd.DataFrame) -> str:
    found: dict[str, set] = {}
    for rec in done["record"]:
        env = rec.env
        for k, v in {"python": env.python, "cuda": env.cuda, **env.versions}.items():
            if v:
                found.setdefault(k, set()).add(str(v))
    return ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in found.items()) or "not recorded"


def _run_dates(done: pd.DataFrame) -> str:
    stamps = [t for rec in done["record"] for t in (rec.started, rec.finished) if t]
    if not stamps:
        return "not recorded"
    fmt = "%Y-%m-%d %H:%M"
    return (f"{dt.datetime.fromtimestamp(min(stamps)).strftime(fmt)} to "
            f"{dt.datetime.fromtimestamp(max(stamps)).strftime(fmt)}")


def write_report(results: Results, tables: list[Table], figures: list[Figure], out: Path) -> dict:
    """Write everything under `out`; returns {pdf, pages, tables: [paths], figures: [paths]}."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    written = {"tables": [], "figures": []}
    for t in tables:
        for suffix, text in ((".md", to_markdown(t)), (".tex", to_latex(t))):
            path = out / "tables" / f"{t.name}{suffix}"
            path.write_text(text)
            written["tables"].append(path)
    for f in figures:
        path = out / "figures" / f"{f.name}.png"
        f.figure.savefig(path, dpi=110)
        written["figures"].append(path)
    # sections in page order: comparison tables, figures, the runs table as an appendix
    main, appendix = (
        [t for t in tables if t.name != "runs"],
        [t for t in tables if t.name == "runs"],
    )
    sections: list[tuple[str, list]] = []
    for i, t in enumerate(main + appendix, 1):
        sections.append((f"Table {i}. {t.title}", table_pages(t, i)))
    sections = (
        sections[: len(main)]
        + [(f"Figure: {_fig_title(f)}", [f.figure]) for f in figures]
        + sections[len(main) :]
    )
    contents, page_no = [], 2
    for title, pages in sections:
        contents.append((title, page_no))
        page_no += len(pages)
    pdf_path = out / "report.pdf"
    with PdfPages(pdf_path) as pdf:
        pages = [title_page(results, contents)] + [p for _, ps in sections for p in ps]
        for p in pages:
            pdf.savefig(p)
            plt.close(p)
        meta = pdf.infodict()
        meta["Title"] = f"mmhpc report: {results.name}"
        meta["Creator"] = "mmhpc report"
    written.update(pdf=pdf_path, pages=len(pages))
    return written


def _fig_title(f: Figure) -> str:
    return f.figure.get_suptitle() or f.name
