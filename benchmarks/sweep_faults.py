"""Never lose a run, never run one twice: a tiny sweep on the local SLURM, with faults.

    .venv/bin/python benchmarks/sweep_faults.py [--runs 120] [--cancels 12] [--preempts 6] [--seed
    0]

Submits RUNS tiny runs (audio only, one epoch of one batch: most of a run is Python starting) to the
local SLURM (env/slurm, started if needed) as three job arrays, through a PATH shim around the real
commands that makes `sbatch` die right after printing the job id of the second array, SIGINTs the
submitter right after a later sbatch, and fails `squeue` at random (SQUEUE_FAIL of the calls).
Meanwhile it `scancel`s random running tasks and sends others USR2 (what SLURM sends before a time
limit), then resumes (`mmhpc sweep resume`, a separate process, which refuses while a state is
unknown) until every run is done.

Prints done / lost / run-twice: runs with a finished record; runs without one at the end; runs that
more than one job trained to the end (submitit's result of the job: a success that is not "already
done"), or that two jobs ran at once (overlapping attempts in `sacct -D`). `--count DIR` counts an
existing sweep.
"""
from __future__ import annotations

import argparse
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mmhpc.launch.store import SweepDir, run_states  # noqa: E402

SQUEUE_FAIL = 0.15

SHIM = r"""#!/bin/bash
# {name} shim: the real one, with faults (benchmarks/sweep_faults.py)
real=$(PATH=${{PATH#*:}} command -v {name})
case {name} in
  squeue)
    if (( RANDOM % 1000 < {fail} )); then
      echo "squeue: error: Socket timed out on send/recv operation" >&2; exit 1
    fi
    exec "$real" "$@" ;;
  sbatch)
    out=$("$real" "$@"); rc=$?
    echo "$out"
    n=$(( $(cat "$SHIM_STATE/sbatch-count" 2>/dev/null || echo 0) + 1 ))
    echo $n > "$SHIM_STATE/sbatch-count"
    if [[ $rc == 0 && $n == 2 ]]; then
      echo "die after printing" >> "$SHIM_STATE/faults"; kill -9 $$
    fi
    if [[ $rc == 0 && $n == 4 ]]; then
      echo "sigint to the submitter" >> "$SHIM_STATE/faults"; kill -INT $PPID
    fi
    exit $rc ;;
esac
"""


def sh(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a command; one that does not answer in time counts as failed (rc 124), as `timeout` would
    say."""
    try:
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(args), 124, "", f"no answer in {timeout:g} s")


def start_slurm() -> None:
    for script in ("install.sh", "start.sh"):
        res = sh("bash", str(REPO / "env" / "slurm" / script), timeout=900)
        if res.returncode:
            sys.exit(f"env/slurm/{script} failed:\n{res.stderr}")
    conf = [ln for ln in res.stdout.splitlines() if ln.startswith("export SLURM_CONF=")][-1]
    os.environ["SLURM_CONF"] = conf.split("=", 1)[1]


def install_shims(work: Path) -> None:
    bindir = work / "shims"
    bindir.mkdir()
    for name in ("sbatch", "squeue"):
        path = bindir / name
        path.write_text(SHIM.format(name=name, fail=int(SQUEUE_FAIL * 1000)))
        path.chmod(0o755)
    os.environ["PATH"] = f"{bindir}:{os.environ['PATH']}"
    os.environ["SHIM_STATE"] = str(work)


def write_sweep(work: Path, runs: int) -> Path:
    seeds = max(1, runs // 10)
    lrs = [round(0.001 * (k + 1), 4) for k in range(runs // seeds)]
    spec = {
        "name": "faults",
        "base": {
            "data.dataset": "cremad",
            "data.modalities": ["audio"],
            "train.batch_size": 8,
            "loader.num_workers": 0,
            "system.sample_interval": 0,
        },
        "grid": {"train.lr": lrs},
        "seeds": list(range(seeds)),
        "tiny": {"base": {"train.epochs": 1, "train.max_batches": 1}},
    }
    path = work / "faults.yaml"
    path.write_text(yaml.safe_dump(spec))
    clusters = (
        work / "clusters.yaml"
    )  # the local profile, with arrays of at most 50 runs: three sbatch calls
    clusters.write_text(
        yaml.safe_dump({"local-bench": {"extends": "local", "max_array_size": -(-runs // 3)}})
    )
    os.environ["MMHPC_CLUSTERS"] = str(clusters)
    return path


def mmhpc(*args: str) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "mmhpc.cli", "sweep", *args, timeout=900)


def squeue_real(*args: str) -> str:
    """squeue without the shim (the benchmark's own view must not fail)."""
    path = os.environ["PATH"].split(":", 1)[1]
    return subprocess.run(["squeue", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PATH=path)).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=120)
    ap.add_argument("--cancels", type=int, default=12)
    ap.add_argument("--preempts", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=3600, help="give up after this many seconds")
    ap.add_argument("--count", metavar="DIR", help="only count the runs of this sweep directory")
    args = ap.parse_args()
    if args.count:
        start_slurm()  # sacct of its jobs
        sweep_dir = SweepDir(args.count)
        print(
            "done / lost / run-twice: "
            f"{' / '.join(map(str, count(sweep_dir, len(sweep_dir.load()['runs']))))}"
        )
        return
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    start_slurm()
    work = Path(tempfile.mkdtemp(prefix="mmhpc-sweep-faults-"))
    os.environ["MMHPC_DATA"] = str(work / "data")
    os.environ["MMHPC_SCHEDULER_TIMEOUT"] = "20"
    spec = write_sweep(work, args.runs)
    install_shims(work)
    sweep_dir = SweepDir(work / "results" / "faults")
    faults = {
        "submitter exits with an error": 0,
        "resumes refused (state unknown)": 0,
        "cancelled": 0,
        "preempted": 0,
    }

    first = mmhpc(
        "submit", str(spec), "--cluster", "local-bench", "--results", str(work / "results"), "-q"
    )
    faults["submitter exits with an error"] += first.returncode != 0
    cancels, preempts = args.cancels, args.preempts
    last_resume = time.monotonic()
    while time.monotonic() - t0 < args.timeout:
        lines = [
            ln.split() for ln in squeue_real("--me", "-h", "-r", "-o", "%i %T %r %j").splitlines()
        ]
        ours = [ln for ln in lines if len(ln) >= 4 and ln[3].startswith("mmhpc-faults-")]
        running = [ln[0] for ln in ours if ln[1] == "RUNNING"]
        for jid in [ln[0] for ln in ours if ln[2] == "BeginTime"]:  # requeued: may start at once
            sh("scontrol", "update", f"JobId={jid}", "StartTime=now", timeout=10)
        if running and (cancels or preempts) and rng.random() < 0.5:
            victim = rng.choice(running)
            if cancels and (not preempts or rng.random() < 0.6):
                sh("scancel", victim, timeout=10)
                cancels -= 1
                faults["cancelled"] += 1
            else:
                sh(
                    "scancel", "--signal=USR2", victim, timeout=10
                )  # a task that just ended: refused
                preempts -= 1
                faults["preempted"] += 1
        if (
            not ours or time.monotonic() - last_resume > 60
        ):  # resume is safe at any time: never a second copy
            states = (
                run_states(sweep_dir, sweep_dir.load()) if sweep_dir.exists() and not ours else []
            )
            if states and all(s.state == "done" for s in states):
                break
            last_resume = time.monotonic()
            res = mmhpc("resume", str(sweep_dir.path), "-q")
            faults["resumes refused (state unknown)"] += (
                res.returncode == 3 and "is unknown" in res.stderr
            )
            faults["submitter exits with an error"] += res.returncode not in (0, 3)
        time.sleep(1)
    wall = time.monotonic() - t0
    done, lost, twice = count(sweep_dir, args.runs)
    shim_faults = (work / "faults").read_text().splitlines() if (work / "faults").exists() else []
    print(f"{args.runs} tiny runs on the local SLURM in {wall:.0f} s; faults: "
          + ", ".join(f"{k} {v}" for k, v in faults.items())
          + f"; sbatch: {', '.join(shim_faults) or 'none'}; squeue failing {SQUEUE_FAIL:.0%} of "
          "calls")
    print(f"done / lost / run-twice: {done} / {lost} / {twice}")
    print(f"(sweep directory: {sweep_dir.path})")


def count(sweep_dir: SweepDir, runs: int) -> tuple[int, int, int]:
    manifest = sweep_dir.load()
    done = sum(
        1 for r in manifest["runs"] if (sweep_dir.record(r["name"]) or {}).get("status") == "done"
    )
    twice = sum(1 for run in manifest["runs"]
                if len(trained_to_the_end(sweep_dir, run)) > 1 or overlapping(job_ids(run)))
    return done, runs - done, twice


def job_ids(run: dict) -> set[str]:
    return {j["job_id"] for j in run["jobs"] if j.get("job_id")}


def trained_to_the_end(sweep_dir: SweepDir, run: dict) -> list[str]:
    """The jobs of a run that trained it and returned: submitit's result of the job is a success
    that is neither "already done" (a job that found the run finished) nor a preemption. (A job
    killed after its last epoch line but before it finished does not count: it did not complete the
    run.)"""
    finished = []
    for jid in job_ids(run):
        try:
            with open(sweep_dir.logs_dir / f"{jid}_0_result.pkl", "rb") as f:
                kind, value = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            continue
        if kind == "success" and not str(value).endswith(
            ("already done", "preempted, job requeued")
        ):
            finished.append(jid)
    return finished


def overlapping(job_ids: set[str]) -> bool:
    """Did two different jobs of one run run at the same time (every attempt of each, from sacct
    -D)?"""
    spans = []
    for jid in job_ids:
        out = sh("sacct", "-n", "-X", "-P", "-D", "-j", jid, "-o", "Start,End").stdout
        for ln in out.splitlines():
            start, _, end = ln.partition("|")
            if start not in ("", "Unknown", "None"):
                spans.append((jid, start, end if end not in ("", "Unknown") else "9999"))
    return any(a[0] != b[0] and a[1] < b[2] and b[1] < a[2] for a in spans for b in spans)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    main()
