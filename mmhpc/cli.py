"""The `mmhpc` command: train, bench, config, data synth, prepare, demo, sweep, clusters, report.

Exit codes, the same for every command (`mmhpc.errors`): 0 done, 1 a run or job failed, 2 bad input
(config, sweep file, cluster profile, argument; nothing was started), 3 the scheduler failed, 130
interrupted (Ctrl-C). `-v` logs debug messages and the traceback of a failure, `-q` only warnings
and errors; progress bars are for an interactive terminal (`-q` after a command turns them off).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from mmhpc.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_RUN_FAILED,
    EXIT_SCHEDULER,
    ConfigError,
    MmhpcError,
    exit_code,
    problem,
)

# Heavy modules (torch, pandas, matplotlib, transformers; even the config schema) are imported by
# the command that uses them, never here: `--help`, `config`, `clusters` and `sweep ...` start in
# well under a second (tests/test_imports.py, benchmarks/cli_scale.py).
log = logging.getLogger("mmhpc")


class _Parser(argparse.ArgumentParser):
    """An epilog may be a function, called only when the help is shown (the knob list reads the
    schema)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _knob_help() -> str:
    from mmhpc.config import describe_fields

    lines = [
        "configuration knobs (key=value; a leaf name alone works when unique, e.g. fusion=concat):",
        "",
    ]
    section = None
    for name, tname, default, help_ in describe_fields():
        sec = name.split(".")[0]
        if sec != section:
            lines.append(f"  [{sec}]")
            section = sec
        lines.append(f"    {name} ({tname}, default {default})")
        lines.extend(textwrap.wrap(help_, 96, initial_indent=" " * 8, subsequent_indent=" " * 8))
    return "\n".join(lines)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="[CONFIG.yaml] key=value",
                   help="an optional YAML/JSON config file, then key=value overrides")


def _bars(args) -> bool:
    """Progress bars for an interactive terminal only: batch jobs and pipes get the log lines
    instead."""
    return not args.quiet and sys.stderr.isatty()


def _config_from(args):
    from mmhpc.config import load_config

    items = list(args.overrides)
    path = items.pop(0) if items and "=" not in items[0] else None
    return load_config(path, items)


def cmd_train(args) -> int:
    cfg = _config_from(args)  # validated before the heavy imports and any work
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    from mmhpc.train import train

    record = train(cfg, progress=_bars(args))
    s = record.summary
    heads = ["fused", *cfg.modalities]
    print(f"run {record.run}: best epoch {s.best_epoch + 1}, "
          + ", ".join(f"test acc {h} {s.test[f'acc/{h}']:.3f}" for h in heads)
          + (f", IBF {s.ibf:.3f}" if s.ibf is not None else ""))
    print(f"record: {cfg.record_path()}")
    return 0


def cmd_bench(args) -> int:
    cfg = _config_from(args)
    from mmhpc.bench import bench

    record = bench(
        cfg, epochs=args.epochs, warmup=args.warmup, profile=args.profile, progress=_bars(args)
    )
    b = record.bench
    print(f"run {record.run}: {b['measured_epochs']} epochs after {b['warmup_epochs']} warm-up")
    for key in (
        "epoch_s",
        "train_loader_init_s",
        "train_s",
        "val_loader_init_s",
        "val_s",
        "train_samples_per_s",
    ):
        print(f"  {key:<22}{b[key + '_mean']:10.3f} +- {b[key + '_se']:.3f}")
    for key in sorted(
        k for k in b if k.startswith(("util/", "memory/")) and ("gpu" in k or "cpu_proc" in k)
    ):
        print(f"  {key:<40}{b[key]:10.1f}")
    path = cfg.replace({'output.name': record.run}).record_path()
    print(f"record: {path}")
    if args.profile:
        trace = path.with_name(b["trace"]) if b.get("trace") else None
        print(
            f"trace: {trace} ({trace.stat().st_size / 2**20:.1f} MB; open in chrome://tracing or "
            "Perfetto)"
            if trace
            else "trace: none (the profiler records training steps 3-5: run more batches)"
        )
    return 0


def cmd_config(args) -> int:
    print(_config_from(args).to_yaml(), end="")
    return 0


def cmd_synth(args) -> int:
    from mmhpc.data.specs import DATASETS
    from mmhpc.data.synthetic import ensure_synthetic

    names = sorted(DATASETS) if args.dataset == "all" else [args.dataset]
    for name in names:
        if name not in DATASETS:
            raise ConfigError(problem("dataset", f"invalid value {name!r}",
                                      ["all", *sorted(DATASETS)]))
        root = ensure_synthetic(
            name, args.preset, args.seed, root=args.out if len(names) == 1 else None
        )
        print(root)
    return 0


def cmd_prepare(args) -> int:
    """Exit 0 when every clip was prepared, 1 when some failed (the rest is prepared), 2 when none
    could be."""
    from mmhpc.data.prepare import PrepareError, prepare

    try:
        options = dict(o.partition("=")[::2] for o in args.option)
        report = prepare(args.dataset, args.raw, args.out, jobs=args.jobs, seed=args.seed,
                         tokenizer=args.tokenizer, progress=_bars(args), options=options)
    except PrepareError as e:
        print(f"mmhpc prepare: {e}", file=sys.stderr)
        return 2
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def cmd_demo(args) -> int:
    if args.which == "algorithms":
        from mmhpc.experiments import run_algorithms

        return run_algorithms(
            args.runs_dir or "runs/algorithms", epochs=args.epochs, quiet=not _bars(args)
        )
    from mmhpc.demo import run_demo

    return run_demo(args.runs_dir or "runs/demo", epochs=args.epochs, quiet=not _bars(args))


def cmd_strategies(args) -> int:
    from mmhpc.rules.catalog import describe

    print(describe())
    return 0


def cmd_doctor(args) -> int:
    """Exit 0 when every check passes, 1 when one fails (each failure is one sentence)."""
    from mmhpc.doctor import format_checks, run_checks
    from mmhpc.launch.clusters import load_profile

    profile = load_profile(args.cluster) if args.cluster else None
    cfg = _config_from(args)
    checks = run_checks(cfg, profile, args.results)
    print(format_checks(checks))
    if any(c.name == "arch" and not c.ok for c in checks):
        return 2  # an interpreter or image for another architecture: nothing can run, fix the setup
    return 0 if all(c.ok for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mmhpc", description="Multimodal late-fusion training benchmarks.",
                     epilog="exit codes: 0 done, 1 a run or job failed, 2 bad input, 3 the "
                     "scheduler failed, 130 interrupted (Ctrl-C)")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug messages, tracebacks of failures"
    )
    parser.add_argument(
        "-q", "--quiet", dest="log_quiet", action="store_true", help="only warnings and errors"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_train, _add_bench, _add_config, _add_data, _add_prepare, _add_demo,
                _add_strategies, _add_doctor, _add_sweep_parser, _add_report, _add_gpu_check):
        add(sub)
    return parser


def _quiet(p, help_="no progress bars") -> None:
    p.add_argument("-q", "--quiet", action="store_true", help=help_)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train one configuration", epilog=_knob_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train one run config: `mmhpc train [CONFIG.yaml] key=value "
                       "...`.")
    _add_config_args(p)
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _quiet(p)
    p.set_defaults(func=cmd_train)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time a config: N epochs after warm-up, with utilisation",
                       epilog=_knob_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--epochs", type=int, default=3, help="measured epochs (default 3)")
    p.add_argument(
        "--warmup", type=int, default=1, help="warm-up epochs left out of the figures (default 1)"
    )
    p.add_argument(
        "--profile", action="store_true", help="write a torch.profiler trace beside the record"
    )
    _quiet(p)
    p.set_defaults(func=cmd_bench)


def _add_config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config of a file plus overrides",
                       epilog=_knob_help, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.set_defaults(func=cmd_config)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets")
    p = data.add_subparsers(dest="data_command", required=True).add_parser(
        "synth", help="write a synthetic dataset in the prepared layout"
    )
    p.add_argument("dataset", help="dataset name or 'all'")
    p.add_argument("--preset", default="tiny", choices=("tiny", "full"))
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--out", default=None,
                   help="output directory (default data/synthetic/<name>-<preset>-d<seed>)")
    p.set_defaults(func=cmd_synth)


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="prepare a real dataset from its local raw copy",
                       description="Convert a dataset's distributed raw layout (see "
                       "mmhpc/data/prepare/README.md) to the prepared layout: filterbanks, "
                       "frames, token ids, splits, manifest. Resumable; failed raw files are "
                       "reported per file.")
    p.add_argument("dataset", choices=("ave", "cremad", "iemocap", "mvsa", "urfunny"))
    p.add_argument("--raw", required=True, help="the dataset's top directory, as distributed")
    p.add_argument("--out", required=True,
                   help="the prepared dataset's directory (then: data.root=OUT "
                   "data.source=prepared)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="worker processes (default: the cores this process may use, e.g. its SLURM "
                   "allocation)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random 80/10/10 split (not AVE)")
    p.add_argument("--tokenizer", default=None,
                   help="local RoBERTa tokenizer directory (MVSA, IEMOCAP, UR-FUNNY)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a choice beside the thesis recipe: iemocap classes=six (keep hap), "
                   "urfunny text=context (context sentences before the punchline)")
    _quiet(p, "no progress bar")
    p.set_defaults(func=cmd_prepare)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="naive vs alternating training on synthetic CREMA-D (tiny), "
                       "with IBF; `demo algorithms`: five strategies in the shape of thesis "
                       "Tables 4.1/4.4/4.5")
    p.add_argument("which", nargs="?", default="imbalance", choices=("imbalance", "algorithms"),
                   help="imbalance (default): naive vs alternating; algorithms: Naive, OGM-GE, "
                   "Alternating, AMST, Reliability")
    p.add_argument("--runs-dir", default=None, help="default runs/demo or runs/algorithms")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the demo's)")
    _quiet(p)
    p.set_defaults(func=cmd_demo)


def _add_strategies(sub) -> None:
    p = sub.add_parser(
        "strategies", help="the training strategies: source, parameters and defaults, fusions"
    )
    p.set_defaults(func=cmd_strategies)


def _add_doctor(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="can this machine run mmhpc? Python, torch, driver, GPUs, data, results",
        description="Check Python, torch and its CUDA build, the NVIDIA driver, GPUs visible to "
        "torch vs allocated by SLURM (and a GPU cluster's need of one), compute capability vs "
        "system.precision, the dataset and its manifest, and a writable results directory. "
        "Every sweep job runs these checks first.",
    )
    _add_config_args(p)
    p.add_argument(
        "--cluster", default=None, help="check for this cluster profile (e.g. alvis: needs a GPU)"
    )
    p.add_argument("--results", default=None,
                   help="results directory to check (default: the profile's, or output.runs_dir)")
    p.set_defaults(func=cmd_doctor)


def _add_report(sub) -> None:
    from mmhpc.report import _add_report_parser  # `report` lives with the report layer

    _add_report_parser(sub)


def _add_gpu_check(sub) -> None:
    # options are parsed by mmhpc.gpucheck itself (`mmhpc gpu-check --help`); importing it imports
    # torch
    p = sub.add_parser("gpu-check", add_help=False,
                       help="check a GPU node: environment, precision, host syncs, BLP streams, "
                       "sampler, NCCL, bench, loader; records under reports/results/<gpu>/")
    p.set_defaults(func=lambda args: cmd_gpu_check([]))


def cmd_gpu_check(options: list[str]) -> int:
    from mmhpc.gpucheck import main as gpu_check

    return gpu_check(options, prog="mmhpc gpu-check")


def _add_sweep_parser(sub) -> None:
    """`sweep` and `clusters` live in mmhpc.launch.cli_sweep (SLURM orchestration)."""
    from mmhpc.launch.cli_sweep import add_parsers

    add_parsers(sub)


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """The CLI's handler: messages of the library's loggers on stderr (the library itself adds
    none)."""
    from mmhpc.progress import RUN, RunPrefix

    level = (
        logging.DEBUG if verbose else RUN if quiet else logging.INFO
    )  # -q: one line per run, warnings
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RunPrefix())  # "[3/4 naive] " in a multi-run command
    handler.setFormatter(logging.Formatter("%(run)s%(message)s" if not verbose
                                           else "%(levelname)s %(name)s: %(run)s%(message)s"))
    root = logging.getLogger("mmhpc")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Run one command; map its failure to the exit-code policy (module docstring)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [
        "gpu-check"
    ]:  # its options are its own (argparse cannot forward them from a subparser)
        return cmd_gpu_check(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.log_quiet or getattr(args, "quiet", False))
    try:
        return args.func(args)
    except (
        KeyboardInterrupt
    ):  # Ctrl-C: one line (a run's record says `interrupted`), the shell's code 130
        log.error("mmhpc: interrupted")
        return EXIT_INTERRUPTED
    except (
        FileExistsError,
        FileNotFoundError,
    ) as e:  # a finished record in the way, a missing file given
        log.error("mmhpc: %s", e)
        return EXIT_BAD_INPUT
    except (
        MmhpcError
    ) as e:  # ConfigError (SweepError, ClusterError): 2; SchedulerError: 3; RunError: 1
        log.error("mmhpc: %s", e)
        return exit_code(e)
    except Exception as e:
        if type(e).__name__ in (
            "FailedJobError",
            "FailedSubmissionError",
        ):  # submitit: sbatch refused
            log.error("mmhpc: the scheduler failed: %s", e)
            return EXIT_SCHEDULER
        log.error("mmhpc: failed: %s: %s", type(e).__name__, e, exc_info=args.verbose)
        return EXIT_RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
