"""`mmhpc sweep ...` and `mmhpc clusters`: the command-line face of mmhpc.sweep and mmhpc.launch.

Their errors (bad input, a failed scheduler) end the command in `mmhpc.cli.main`: one message, the
exit code of `mmhpc.errors`."""
from __future__ import annotations

import os
import sys

# Only the parsers are built for every command: what a command needs (the schema, pydantic,
# submitit) is imported when it runs, and nothing here imports torch (tests/test_imports.py).
SIZES = ("tiny", "full")  # mmhpc.launch.clusters.SIZES, checked equal by tests/test_imports.py


def _size(args) -> str | None:
    return "tiny" if args.tiny else args.size


def cmd_expand(args) -> int:
    from mmhpc.launch.clusters import load_profile
    from mmhpc.launch.submit import prepare_sweep
    from mmhpc.sweep import format_table, plan_sweep

    profile = load_profile(args.cluster, args.account)
    plan = plan_sweep(args.file, profile, _size(args), overrides=args.set)
    if not plan.file_problems:  # the runs of a malformed file are only what could be expanded of it
        print(format_table(plan))
    if plan.errors:
        plan.check()
    if args.sbatch:
        from mmhpc.launch.submit import hand_sbatch_lines

        profile, plan, sweep_dir = prepare_sweep(
            args.file, args.cluster, _size(args), args.account, dry_run=True, overrides=args.set
        )
        print("\n".join(hand_sbatch_lines(sweep_dir, profile, _plan_runs(plan))))
    return 0


def _plan_runs(plan) -> list[dict]:
    return [
        {"index": r.index, "name": r.name, "resources": r.resources.to_dict()}
        for r in plan.runnable()
    ]


def cmd_submit(args) -> int:
    from mmhpc.launch import submit

    if args.dry_run:
        profile, plan, sweep_dir = submit.prepare_sweep(
            args.file,
            args.cluster,
            _size(args),
            args.account,
            args.results,
            args.name,
            dry_run=True,
            overrides=args.set,
        )
        print(submit.render_scripts(sweep_dir, profile, plan.name, _plan_runs(plan)))
        na = [r for r in plan.runs if r.not_applicable]
        for r in na:
            print(
                f"# not applicable on {profile.name}: run {r.index} ({r.name}): {r.not_applicable}"
            )
        return 0
    if args.hold:
        sweep_dir, lines = submit.hold_sweep(
            args.file,
            args.cluster,
            _size(args),
            args.account,
            args.results,
            args.name,
            overrides=args.set,
        )
        print(
            f"sweep directory {sweep_dir.path}: {len(lines)} array(s) held; submit them by hand "
            "with:"
            if lines
            else f"sweep directory {sweep_dir.path}: nothing left to do"
        )
        print("\n".join(lines))
        return 0
    sweep_dir, todo = submit.submit_sweep(
        args.file,
        args.cluster,
        _size(args),
        args.account,
        args.results,
        args.name,
        progress=not args.quiet,
        overrides=args.set,
    )
    print(f"sweep {sweep_dir.path}: {len(todo)} run(s) submitted on {args.cluster}"
          + ("" if todo else " (nothing left to do)"))
    return _after_submit(sweep_dir, args)


def _after_submit(sweep_dir, args) -> int:
    from mmhpc.launch.store import format_states, run_states
    from mmhpc.launch.submit import wait

    if args.wait:
        states = wait(sweep_dir, args.poll, progress=not args.quiet)
        print(format_states(states))
        return 1 if any(s.state == "failed" for s in states) else 0
    print(f"follow it with: mmhpc sweep status {sweep_dir.path}")
    if not args.quiet:
        print(format_states(run_states(sweep_dir, sweep_dir.load())))
    return 0


def cmd_resume(args) -> int:
    from mmhpc.launch.submit import resume_sweep

    sweep_dir, todo, script = resume_sweep(
        args.dir, args.cluster, args.account, progress=not args.quiet, dry_run=args.dry_run
    )
    if args.dry_run:
        print(script or f"# nothing to resubmit in {sweep_dir.path}")
        return 0
    print(f"sweep {sweep_dir.path}: resubmitted {len(todo)} run(s)" + (f": {todo}" if todo else ""))
    return _after_submit(sweep_dir, args)


def cmd_status(args) -> int:
    from mmhpc.launch.store import SweepDir, format_states, run_states

    sweep_dir = SweepDir(args.dir)
    states = run_states(sweep_dir, sweep_dir.load(), query_slurm=not args.no_slurm)
    print(format_states(states))
    if not args.no_slurm and any(s.state == "unknown" for s in states):
        print(
            "mmhpc: the scheduler did not answer (see the reasons): states it alone knows are "
            "unknown",
            file=sys.stderr,
        )
        return 3
    return 0


def cmd_wait(args) -> int:
    from mmhpc.launch.store import SweepDir, format_states
    from mmhpc.launch.submit import wait

    states = wait(SweepDir(args.dir), args.poll, progress=not args.quiet)
    print(format_states(states))
    return 1 if any(s.state == "failed" for s in states) else 0


def cmd_run_index(args) -> int:
    from mmhpc.launch.submit import run_index

    print(run_index(args.dir, args.index))
    return 0


def cmd_clusters(args) -> int:
    import yaml

    from mmhpc.launch.clusters import cluster_names, load_profile, user_clusters_file

    if args.name == "discover":
        return cmd_discover(args)
    if args.partition or args.output or args.probe:
        from mmhpc.errors import ConfigError

        raise ConfigError("--partition, -o and --probe go with `mmhpc clusters discover`")
    if args.name:
        profile = load_profile(args.name)
        shown = profile.model_dump(exclude={"gpus"})
        shown["gpus"] = {g: spec.model_dump(exclude={"name"}) for g, spec in profile.gpus.items()}
        shown["source"] = profile.source
        print(yaml.safe_dump(shown, sort_keys=False), end="")
        return 0
    for name in cluster_names():
        p = load_profile(name)
        devices = ", ".join(p.gpus) or "CPU"
        print(f"{name:10s} {p.scheduler:6s} {p.size:5s} {devices:32s} {p.description}")
    print(f"(user profiles: {user_clusters_file()})")
    return 0


def cmd_discover(args) -> int:
    """Draft a profile from this cluster's SLURM; validated before it is printed or written."""
    from pathlib import Path

    from mmhpc.atomic import atomic_write_text
    from mmhpc.errors import ConfigError, problem
    from mmhpc.launch.discover import discover_here, validate

    out = Path(args.output).expanduser().absolute() if args.output else None
    if out is not None and out.exists():  # a profile someone edited is never overwritten
        raise ConfigError(problem("-o", f"{out} exists",
                                  ["a new file (remove it first to discover again)"]))
    text = discover_here(args.partition, args.probe)
    validate(text, str(out or "<discovered>"))
    if out is None:
        print(text, end="")
        return 0
    atomic_write_text(out, text)
    print(
        f"wrote {out}: check its `assumed` values, then: make sweep-parallelism CLUSTER={out} "
        "DRY_RUN=1",
        file=sys.stderr,
    )
    return 0


def add_parsers(sub) -> None:
    """Add `sweep` and `clusters` to the `mmhpc` subcommands."""
    sweep = sub.add_parser(
        "sweep", help="expand, submit, follow and resume YAML sweeps (see sweeps/README.md)"
    )
    ss = sweep.add_subparsers(dest="sweep_command", required=True)
    for add in (_add_expand, _add_submit, _add_status, _add_resume, _add_wait, _add_run_index):
        add(ss)
    _add_clusters(sub)


def _cluster_args(p, default: str | None = "") -> None:
    """--cluster (default: $MMHPC_CLUSTER or none; None: no default) and --account."""
    if default == "":
        default = os.environ.get("MMHPC_CLUSTER", "none")
    p.add_argument(
        "--cluster",
        default=default,
        help=f"cluster profile (default {default}; see `mmhpc clusters`)",
    )
    p.add_argument(
        "--account",
        default=None,
        help="SLURM account, sbatch -A (default: the profile's, e.g. $MMHPC_ACCOUNT on alvis)",
    )


def _size_args(p) -> None:
    p.add_argument("--size", choices=SIZES, default=None,
                   help="tiny: the synthetic tiny smoke version; full: as written (default: "
                   "the cluster's)")
    p.add_argument("--tiny", action="store_true", help="same as --size tiny")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="RunConfig override of every run (repeatable); {dataset} in data.root "
                   "is the run's dataset, e.g. --set data.source=prepared --set "
                   "data.root=/data/prepared/{dataset}")


def _wait_args(p) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="block until every run has finished, with a progress bar",
    )
    p.add_argument(
        "--poll", type=float, default=5.0, help="seconds between status polls with --wait"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")


def _add_expand(ss) -> None:
    p = ss.add_parser("expand", help="list and validate the runs of a sweep file for a cluster")
    p.add_argument("file")
    _cluster_args(p)
    _size_args(p)
    p.add_argument(
        "--sbatch", action="store_true", help="also print sbatch lines for jobs/sweep_array.sbatch"
    )
    p.set_defaults(func=cmd_expand)


def _add_submit(ss) -> None:
    p = ss.add_parser(
        "submit", help="validate every run, then submit one job array per resource shape"
    )
    p.add_argument("file")
    _cluster_args(p)
    _size_args(p)
    p.add_argument(
        "--results",
        default=None,
        help="results root (default: the profile's; sweep dir = ROOT/NAME)",
    )
    p.add_argument("--name", default=None, help="sweep directory name (default: the sweep's name)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the sbatch scripts; submit and write nothing"
    )
    p.add_argument(
        "--hold",
        action="store_true",
        help="submit nothing: write the sweep directory and print "
        "sbatch lines for jobs/sweep_array.sbatch (its runs show as held until those "
        "jobs are queued)",
    )
    _wait_args(p)
    p.set_defaults(func=cmd_submit)


def _add_status(ss) -> None:
    p = ss.add_parser(
        "status", help="pending / running / done / failed (with the reason) of every run"
    )
    p.add_argument("dir")
    p.add_argument("--no-slurm", action="store_true", help="records only; do not ask squeue/sacct")
    p.set_defaults(func=cmd_status)


def _add_resume(ss) -> None:
    p = ss.add_parser("resume", help="resubmit what is neither done, pending nor running")
    p.add_argument("dir")
    _cluster_args(p, default=None)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the sbatch scripts of what would be resubmitted",
    )
    _wait_args(p)
    p.set_defaults(func=cmd_resume)


def _add_wait(ss) -> None:
    p = ss.add_parser("wait", help="block until no run of the sweep is pending or running")
    p.add_argument("dir")
    p.add_argument("--poll", type=float, default=5.0)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_wait)


def _add_run_index(ss) -> None:
    p = ss.add_parser(
        "run-index", help="run number INDEX of a sweep here (jobs/sweep_array.sbatch)"
    )
    p.add_argument("dir")
    p.add_argument("index", type=int)
    p.set_defaults(func=cmd_run_index)


def _add_clusters(sub) -> None:
    p = sub.add_parser(
        "clusters",
        help="list the cluster profiles, show one, or `discover` this cluster's",
        description="mmhpc clusters [NAME]: the profiles, or one. mmhpc clusters discover "
        "[--partition P] [-o FILE] [--probe]: a draft profile from scontrol/sacctmgr",
    )
    p.add_argument("name", nargs="?", help="a profile name or file, or `discover`")
    p.add_argument(
        "--partition", default=None, help="discover: the partition (default: SLURM's default)"
    )
    p.add_argument(
        "-o", "--output", default=None, help="discover: write the profile here (default: stdout)"
    )
    p.add_argument(
        "--probe",
        action="store_true",
        help="discover: also submit a 2-minute 1-GPU job that "
        "records the GPU's capability, uname -m, scratch variables, interconnect and "
        "PyTorch modules",
    )
    p.set_defaults(func=cmd_clusters)
