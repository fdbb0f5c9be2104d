"""Reports of a sweep: the thesis' speedup, utilisation and accuracy tables, figures, and a PDF.

    from mmhpc.report import build_report
    build_report("results/parallelism")            # -> results/parallelism/report/report.pdf,
    tables/, figures/

The pipeline: `load` (records and the sweep's manifest -> one tidy DataFrame, a row per run, done or
not) -> `tables` (comparisons in the thesis' shapes, each measured row followed by the thesis'
values from `thesis`, set side by side in `reproduce`, which also gives each thesis claim a verdict)
-> `figures` -> `pdf` (PDF, Markdown, LaTeX, PNG; reproduction.md/json).
"""
from __future__ import annotations

import sys
from pathlib import Path

KIND_CHOICES = ("auto", "precision", "loader", "parallelism", "overall", "algorithm")


def build_report(path: str | Path, out: str | Path | None = None, kinds: list[str] | None = None,
                 query_slurm: bool = True) -> dict:
    """Load every run under `path`, build the tables of `kinds` (None or ["auto"]: from the runs),
    the figures and the PDF under `out` (default `<path>/report`). Returns what was written, plus
    `messages`."""
    from mmhpc.report.figures import build_figures
    from mmhpc.report.load import load_results
    from mmhpc.report.pdf import write_report
    from mmhpc.report.reproduce import write_verdicts
    from mmhpc.report.tables import build_tables, reproduction_table

    results = load_results(path, query_slurm=query_slurm)
    wanted = None if not kinds or "auto" in kinds else list(dict.fromkeys(kinds))
    tables, messages = build_tables(results.runs, wanted)
    reproduction, verdicts = reproduction_table(tables)
    figures = build_figures(results.runs, tables)
    out = Path(out) if out else results.path / "report"
    written = write_report(results, [reproduction] + tables, figures, out)
    written["verdicts"] = write_verdicts(verdicts, out)
    written["messages"] = messages
    written["kinds"] = [t.name for t in tables]
    return written


def cmd_report(args) -> int:
    try:
        written = build_report(args.sweep_dir, args.out, args.kind, query_slurm=not args.no_slurm)
    except (FileNotFoundError, ValueError) as e:
        print(f"mmhpc report: {e}", file=sys.stderr)
        return 2
    for m in written["messages"]:
        print(f"note: {m}", file=sys.stderr)
    print(
        f"{written['pdf']} ({written['pages']} pages): tables {', '.join(written['kinds'])}; "
        f"{len(written['figures'])} figures; Markdown/LaTeX in {written['pdf'].parent / 'tables'}"
    )
    return 0


def _add_report_parser(sub) -> None:
    """`mmhpc report SWEEP_DIR`: called from mmhpc.cli.build_parser."""
    p = sub.add_parser(
        "report",
        help="tables, figures and a PDF of a sweep directory or a directory of records",
        description="Load every run record under SWEEP_DIR (a sweep directory of "
        "`mmhpc sweep`, "
        "or any directory of records) and write report.pdf, "
        "tables/*.md|tex and "
        "figures/*.png in the shapes of the thesis' Tables 4.1-4.16.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR")
    p.add_argument("--out", default=None, help="output directory (default SWEEP_DIR/report)")
    p.add_argument("--kind", action="append", choices=KIND_CHOICES, default=None,
                   help="tables to build (repeatable; default auto: those the runs support)")
    p.add_argument(
        "--no-slurm",
        action="store_true",
        help="states from the records only; do not ask squeue/sacct",
    )
    p.set_defaults(func=cmd_report)
