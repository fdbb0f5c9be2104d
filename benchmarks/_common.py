"""Shared bits of the benchmark scripts: run variants of a config through `mmhpc.bench` and
tabulate."""
from __future__ import annotations

import argparse
import resource
import tempfile

from mmhpc.bench import bench
from mmhpc.config import load_config


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "overrides", nargs="*", help="extra key=value config overrides for every variant"
    )
    p.add_argument("--epochs", type=int, default=3, help="measured epochs per variant")
    p.add_argument("--warmup", type=int, default=1, help="warm-up epochs per variant")
    p.add_argument(
        "--runs-dir", default=None, help="keep the records here (default: a temporary directory)"
    )
    return p


def run_variants(variants: dict[str, list[str]], args, base: list[str]) -> dict[str, dict]:
    """Bench each variant (label -> overrides) on the same base config; returns label -> bench
    summary."""
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="mmhpc-bench-")
    out = {}
    for label, extra in variants.items():
        # system benchmarks: fastest kernels and cuDNN autotuning, as the system sweeps run (a base
        # may differ)
        cfg = load_config(
            None,
            [
                "system.deterministic=false",
                *base,
                *args.overrides,
                *extra,
                f"output.runs_dir={runs_dir}",
                f"output.name={label}",
                "output.overwrite=true",
            ],
        )
        before = resource.getrusage(resource.RUSAGE_SELF)
        out[label] = bench(cfg, epochs=args.epochs, warmup=args.warmup, progress=False).bench
        after = resource.getrusage(resource.RUSAGE_SELF)
        # the main process's own kernel time and page faults over the whole bench (warm-up included)
        out[label]["main_sys_s"] = after.ru_stime - before.ru_stime
        out[label]["main_minor_faults"] = after.ru_minflt - before.ru_minflt
    print(f"records: {runs_dir}")
    return out


def table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(_fmt(v).rjust(w) for v, w in zip(r, widths)))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
