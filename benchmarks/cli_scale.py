"""Start-up and scale of the light commands, with a fake scheduler.

    .venv/bin/python benchmarks/cli_scale.py [--runs 10000] [--repeat 3]

Times the installed `mmhpc` command as a user runs it (a new process each time, start-up included):
`mmhpc --help`, `mmhpc train --help`, `mmhpc clusters`, then for a sweep of RUNS runs (one resource
shape, so 10 job arrays of 1,000 on a profile with SLURM's default MaxArraySize) `sweep expand`,
`sweep submit`, `sweep status` and a `sweep resume` that has nothing to do. The scheduler is the
tests' fake (tests/fake_slurm: `sbatch`, `squeue`, `sacct`, `srun`, `scontrol` on PATH; squeue lists
every queued task), so the figures are mmhpc's own cost, not a scheduler's. Each command also
reports whether it imported torch (`MMHPC_BENCH_MODULES`: the command prints its loaded modules at
exit). Every command runs `--repeat` times (expand and submit too: each submission into a results
directory of its own) and the best run is shown, with all of them: on a machine shared with other
work the best is the one least disturbed.

Targets (issue 20, an idle machine): `--help` < 1 s; expand + submit < 10 s together; status < 1 s.
On a loaded machine the CPU time (user + system of the command and its children) is the steadier
figure.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "fake_slurm" / "fake_slurm.py"
MMHPC = Path(sys.executable).with_name("mmhpc")
HEAVY = ("torch", "pandas", "matplotlib", "transformers")
# prints the heavy modules a command loaded, at its exit (sitecustomize-free: a -c wrapper around
# main)
WRAPPER = ("import atexit, sys\n"
           f"atexit.register(lambda: print('HEAVY=' + ','.join(m for m in {HEAVY} if m in "
           "sys.modules), "
           "file=sys.stderr))\n"
           "from mmhpc.cli import main\n"
           "sys.exit(main(sys.argv[1:]))\n")


def fake_scheduler(root: Path) -> dict[str, str]:
    """The environment of a fake SLURM: its commands first on PATH, its state directory."""
    bindir, state = root / "bin", root / "fake-slurm"
    bindir.mkdir()
    state.mkdir()
    for cmd in ("sbatch", "squeue", "sacct", "scontrol", "srun"):
        (bindir / cmd).symlink_to(FAKE)
    return {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_SLURM": str(state),
        "MMHPC_SCHEDULER_TIMEOUT": "120",
        "MMHPC_CLUSTERS": str(root / "no-user-clusters.yaml"),
    }


def sweep_file(root: Path, runs: int) -> Path:
    """RUNS runs of one resource shape: learning rates x batch sizes x 10 seeds."""
    per_seed = runs // 10
    lrs = [round(1e-4 * (i + 1), 6) for i in range(per_seed // 10)]
    spec = {
        "name": "scale",
        "base": {
            "data.source": "prepared",
            "data.root": "/data/prepared/{dataset}",
            "train.epochs": 1,
        },
        "grid": {"train.lr": lrs, "train.batch_size": [16 * (i + 1) for i in range(10)]},
        "seeds": list(range(10)),
    }
    path = root / "scale.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(
    argv: list[str], env: dict[str, str], repeat: int = 1
) -> tuple[float, float, list[float], str, str]:
    """Best (least) wall time of `mmhpc ARGV` over `repeat` runs, the CPU time (user + system, the
    command and its children: the fake scheduler's Python too) of that run, all wall times, the
    heavy modules it loaded, its stdout. `argv` may be a function of the repeat's number."""
    times, cpus, heavy, out = [], [], "", ""
    for k in range(repeat):
        start, cpu = time.perf_counter(), _child_cpu()
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, *(argv(k) if callable(argv) else argv)],
            capture_output=True,
            text=True,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
        )
        times.append(time.perf_counter() - start)
        cpus.append(_child_cpu() - cpu)
        if proc.returncode != 0:
            sys.exit(f"mmhpc {argv}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        heavy = proc.stderr.rsplit("HEAVY=", 1)[-1].strip()
        out = proc.stdout
    best = times.index(min(times))
    return times[best], cpus[best], times, heavy or "-", out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10000, help="runs of the sweep (a multiple of 100)")
    p.add_argument(
        "--repeat", type=int, default=3, help="repeats of each command (the best shown)"
    )
    p.add_argument(
        "--dir",
        default=None,
        help="an empty directory for the sweep and the fake scheduler "
        "(default: a new temporary one)",
    )
    args = p.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="mmhpc-cli-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    env = fake_scheduler(root)
    path = sweep_file(root, args.runs)
    results = root / "results"
    cluster = ["--cluster", "local", "--size", "full"]
    load = os.getloadavg()
    print(
        f"{args.runs} runs on the local profile (fake SLURM), {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start"
    )

    def row(label, argv, repeat=1, target=None):
        best, cpu, times, heavy, out = timed(argv, env, repeat)
        shown = " ".join(f"{t:.2f}" for t in times)
        print(
            f"  {label:<31}{best:7.2f} s wall {cpu:6.2f} s CPU  (runs: {shown}; target "
            f"{target or '-'}; "
            f"heavy imports: {heavy})",
            flush=True,
        )
        return best, cpu, out

    row("mmhpc --help", ["--help"], args.repeat, "< 1 s")
    row("mmhpc train --help", ["train", "--help"], args.repeat)
    row("mmhpc clusters", ["clusters"], args.repeat)
    row("mmhpc config", ["config"], args.repeat)
    expand, expand_cpu, _ = row(
        f"sweep expand ({args.runs} runs)", ["sweep", "expand", str(path), *cluster], args.repeat
    )
    submit, submit_cpu, _ = row(
        f"sweep submit ({args.runs} runs)",
        lambda k: ["sweep", "submit", str(path), *cluster, "--results", f"{results}{k}", "-q"],
        args.repeat,
    )
    sweep_dir = Path(f"{results}0") / "scale"
    arrays = sum(1 for ln in (Path(env["FAKE_SLURM"]) / "calls").read_text().splitlines()
                 if ln.startswith("sbatch"))
    print(
        f"  {'expand + submit':<31}{expand + submit:7.2f} s wall {expand_cpu + submit_cpu:6.2f} s "
        "CPU  (target "
        f"< 10 s; {arrays // args.repeat} sbatch calls a submission)"
    )
    row("sweep status", ["sweep", "status", str(sweep_dir)], args.repeat, "< 1 s")
    row("sweep resume (nothing to do)", ["sweep", "resume", str(sweep_dir), "-q"], args.repeat)
    print(f"load average at end {os.getloadavg()[0]:.1f}; files under {root}")


if __name__ == "__main__":
    main()
