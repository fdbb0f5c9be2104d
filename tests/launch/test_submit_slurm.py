"""Sweeps through the real local SLURM (env/slurm): a job array of tiny runs, the CPU parallelism
sweep with a 2-task DDP (gloo) job, scancel of a running array task then `resume`, preemption and a
real time limit (the job requeues itself and the run resumes, never FAILED), and the hand-written
jobs/sweep_array.sbatch.

The `slurm` fixture (conftest) installs and starts the cluster (both idempotent) and leaves it
running. Skipped only where it cannot be set up at all (not root, or no apt-get).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import until

from mmhpc.launch.store import SweepDir, run_states
from mmhpc.launch.submit import resume_sweep, submit_sweep, wait
from mmhpc.results import RunRecord, iter_records

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SETTLE_TIMEOUT_S = 900  # the 2-core node is shared with whatever else runs
# of the runs that are cancelled or preempted mid-run: tiny epochs take 0.3 s (idle) to 1 s (loaded)
EPOCHS = 30
# the run of the time-limit test: 0.3-1 s an epoch, so 90-300 s against attempts of at most 40 s of
# training; on a machine under a CPU hog an epoch takes 3 s and an attempt's start-up most of its
# minute, so 30 and more attempts: the profile allows 100 requeues, the test's deadline bounds it
LIMIT_EPOCHS = 300


def write_sweep(path: Path, name: str, **spec) -> Path:
    # audio only and small batches: the CPU time of a run is mostly its ResNet-18 forward/backward
    base = {"data.dataset": "cremad", "data.modalities": ["audio"], "train.batch_size": 32,
            "loader.num_workers": 0, **spec.pop("base", {})}
    path.write_text(yaml.safe_dump({"name": name, "base": base, **spec}))
    return path


def records(sweep_dir: SweepDir) -> dict[str, RunRecord]:
    """{run name: record} of every run record in the sweep (not the sampler's side files)."""
    found = {}
    for p, rec in iter_records(sweep_dir.runs_dir):
        assert p == sweep_dir.record_path(rec.run)
        found[rec.run] = rec
    return found


def sacct(*args: str) -> str:
    return subprocess.run(
        ["sacct", "-n", "-X", "-P", *args], capture_output=True, text=True, timeout=60
    ).stdout


def release_requeued(slurm, job: str) -> None:
    """SLURM holds a requeued job back for a while (reason BeginTime); let it start in 2 s. Not at
    once:
    slurmd refuses to launch a job in the same second as its kill ("Job N already killed, do not
    launch
    batch job": the revoked credential is compared in whole seconds), and the task then ends
    FAILED."""
    until(
        lambda: "BeginTime" in slurm.squeue(job), f"job {job} to be requeued", SETTLE_TIMEOUT_S, 0.5
    )
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now+2")


def release_if_held(slurm, job: str) -> None:
    """A requeued job held back (BeginTime) for more than a few seconds: let it start in 2 s, once
    per requeue. Never `StartTime=now` (within the second of the kill the attempt ends FAILED, see
    release_requeued), and never again while the 2 s run (that would keep pushing its start
    away)."""
    reason, _, start = (
        slurm.run("squeue", "-h", "-j", job, "-o", "%r|%S", check=False).strip().partition("|")
    )
    try:
        held_for = (datetime.fromisoformat(start) - datetime.now()).total_seconds()
    except ValueError:  # N/A: not held
        return
    if reason == "BeginTime" and held_for > 5:
        slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now+2", check=False)


def test_a_sweep_runs_as_one_job_array(slurm, tmp_path):
    spec = write_sweep(
        tmp_path / "array.yaml", "array", grid={"train.lr": [0.001, 0.002, 0.003, 0.004]}
    )
    t0 = time.monotonic()
    sweep_dir, submitted = submit_sweep(spec, "local", results=tmp_path / "results", progress=False)
    assert time.monotonic() - t0 < 60, "submission must not wait for the runs"
    assert submitted == [0, 1, 2, 3]
    manifest = sweep_dir.load()
    (array,) = manifest["arrays"]  # one resource shape: one array
    assert array["runs"] == [0, 1, 2, 3]
    assert [r["jobs"][0]["job_id"] for r in manifest["runs"]] == [
        f"{array['job_id']}_{i}" for i in range(4)
    ]
    script = Path(
        array["script"]
    ).read_text()  # the generated sbatch script is kept beside the results
    assert "#SBATCH --array=0-3%2" in script and "#SBATCH --partition=debug" in script

    states = wait(sweep_dir, poll_s=2, progress=False)
    assert [s.state for s in states] == ["done"] * 4, states
    recs = records(sweep_dir)
    assert sorted(recs) == sorted(r["name"] for r in manifest["runs"])
    tasks = {rec.env.slurm["SLURM_ARRAY_TASK_ID"] for rec in recs.values()}
    assert tasks == {"0", "1", "2", "3"}
    assert {rec.env.slurm["SLURM_ARRAY_JOB_ID"] for rec in recs.values()} == {array["job_id"]}
    assert all(
        rec.status == "done" and rec.config["data"]["preset"] == "tiny" for rec in recs.values()
    )
    # accounting (slurmdbd) may lag the records by a moment
    until(lambda: sacct("-j", array["job_id"], "-o", "State").split() == ["COMPLETED"] * 4,
           f"sacct to show the 4 tasks of {array['job_id']} COMPLETED", timeout=120)
    assert list(sweep_dir.logs_dir.glob(f"{array['job_id']}_*_0_log.out"))
    # submitting the same sweep again submits nothing: a finished run is never rerun
    mtimes = {p: p.stat().st_mtime_ns for p in sweep_dir.runs_dir.iterdir()}
    _, again = submit_sweep(spec, "local", results=tmp_path / "results", progress=False)
    assert again == [] and mtimes == {p: p.stat().st_mtime_ns for p in sweep_dir.runs_dir.iterdir()}


def test_parallelism_sweep_runs_single_ddp_and_blp_through_slurm(slurm, tmp_path):
    pytest.importorskip("mmhpc.system.parallel", reason="DDP/BLP need mmhpc/system/parallel.py")
    sweep_dir, submitted = submit_sweep(REPO / "sweeps" / "parallelism.yaml", "local",
                                        results=tmp_path / "results", progress=False)
    manifest = sweep_dir.load()
    runs = {r["config"]["system"]["parallelism"]: r for r in manifest["runs"]}
    assert "needs >= 2 CUDA GPUs" in runs["dp"]["not_applicable"]
    assert sorted(submitted) == sorted(runs[p]["index"] for p in ("single", "ddp", "blp"))
    assert runs["ddp"]["resources"]["tasks_per_node"] == 2
    states = {s.name: s for s in wait(sweep_dir, poll_s=2, progress=False)}
    assert states[runs["dp"]["name"]].state == "n/a"
    for par in ("single", "ddp", "blp"):
        assert states[runs[par]["name"]].state == "done", (par, states[runs[par]["name"]])
    ddp = records(sweep_dir)[runs["ddp"]["name"]]
    assert ddp.env.slurm["SLURM_NTASKS"] == "2"  # one SLURM task per process, gloo on the CPU
    ddp_job = runs["ddp"]["jobs"][0]["job_id"]
    for task in (0, 1):
        log = (sweep_dir.logs_dir / f"{ddp_job}_{task}_log.out").read_text()
        assert (
            "Job completed successfully" in log or "Exiting after successful completion" in log
        ), log[-2000:]
    assert not any(sweep_dir.runs_dir.glob(".*.json"))


def test_scancel_of_a_running_task_then_resume_completes_the_sweep(slurm, tmp_path):
    # A tiny epoch takes about a second, so the runs are long (EPOCHS) and the victim is taken
    # within its first epochs: scancel then always reaches a run that is still training, with an
    # epoch checkpoint.
    spec = write_sweep(
        tmp_path / "cancel.yaml",
        "cancel",
        grid={"train.lr": [0.001, 0.002, 0.003, 0.004]},
        tiny={"base": {"train.epochs": EPOCHS}},
    )
    sweep_dir, _ = submit_sweep(spec, "local", results=tmp_path / "results", progress=False)
    manifest = sweep_dir.load()

    def running_with_checkpoint():
        for s in run_states(sweep_dir, manifest):
            rec = sweep_dir.record(s.name)
            if (
                s.state == "running"
                and rec
                and rec.status == "running"
                and 1 <= len(rec.epochs) <= EPOCHS // 2
                and (sweep_dir.runs_dir / f"{s.name}.ckpt.pt").exists()
            ):
                return s
        return None

    victim = until(
        running_with_checkpoint, "a running array task with an epoch checkpoint", poll_s=0.3
    )
    subprocess.run(["scancel", victim.job_id], check=True, timeout=60)
    states = {s.name: s for s in wait(sweep_dir, poll_s=2, progress=False)}
    assert states[victim.name].state == "failed" and "CANCELLED" in states[victim.name].reason
    others = [n for n in states if n != victim.name]
    assert all(states[n].state == "done" for n in others), states
    finished = {n: (p.stat().st_mtime_ns, p.read_bytes()) for n in others
                for p in [sweep_dir.runs_dir / f"{n}.json"]}

    _, resubmitted, _ = resume_sweep(sweep_dir.path, progress=False)
    assert resubmitted == [states[victim.name].index]  # only what is not done
    final = wait(sweep_dir, poll_s=2, progress=False)
    assert [s.state for s in final] == ["done"] * 4, final
    # nothing lost: four finished records; nothing duplicated: no second record, finished ones
    # untouched
    recs = records(sweep_dir)
    assert sorted(recs) == sorted(states) and all(r.status == "done" for r in recs.values())
    assert {n: (p.stat().st_mtime_ns, p.read_bytes()) for n in others
            for p in [sweep_dir.runs_dir / f"{n}.json"]} == finished
    resumed = recs[victim.name]
    assert resumed.resumed[0]["at_epoch"] >= 1, "the rerun continues from its epoch checkpoint"
    assert [e.epoch for e in resumed.epochs] == list(range(EPOCHS))
    assert not list(sweep_dir.runs_dir.glob("*.ckpt.pt")) and not list(
        sweep_dir.runs_dir.glob(".*.json")
    )
    jobs = {r["name"]: len(r["jobs"]) for r in sweep_dir.load()["runs"]}
    assert jobs == {**{n: 1 for n in others}, victim.name: 2}


def attempts(slurm, job: str) -> list[str]:
    """The state of every attempt of a job, requeued ones included (sacct -D), oldest first."""
    out = slurm.run("sacct", "-n", "-X", "-P", "-D", "-j", job, "-o", "JobID,State", check=False)
    return [ln.split("|")[1].split()[0] for ln in out.splitlines() if "|" in ln]


def test_a_time_limit_ends_requeued_and_the_run_resumes_never_failed(slurm, tmp_path, monkeypatch):
    # one minute of time limit, the signal 20 s before it (SLURM sends it up to 30 s earlier still),
    # and a run that needs longer than a minute: every attempt ends REQUEUED at a step boundary and
    # the next one resumes
    users = tmp_path / "clusters.yaml"
    users.write_text(
        yaml.safe_dump(
            {"local-short": {"extends": "local", "signal_delay_s": 20, "max_requeues": 100}}
        )
    )
    monkeypatch.setenv("MMHPC_CLUSTERS", str(users))
    spec = write_sweep(tmp_path / "limit.yaml", "limit", resources={"default": {"time_min": 1}},
                       tiny={"base": {"train.epochs": LIMIT_EPOCHS}})
    sweep_dir, _ = submit_sweep(spec, "local-short", results=tmp_path / "results", progress=False)
    (run,) = sweep_dir.load()["runs"]
    job = run["jobs"][0]["job_id"]
    release_requeued(slurm, job)
    deadline = time.monotonic() + 3 * SETTLE_TIMEOUT_S
    while True:  # later attempts may be requeued as well: let each start at once
        states = run_states(sweep_dir, sweep_dir.load())
        if states[0].state not in ("pending", "running"):
            break
        assert time.monotonic() < deadline, (
            f"job {job} still {states[0].state} after {3 * SETTLE_TIMEOUT_S} s"
        )
        release_if_held(slurm, job)
        time.sleep(2)
    assert states[0].state == "done", states
    until(
        lambda: attempts(slurm, job)[-1:] == ["COMPLETED"],
        f"sacct to show job {job} COMPLETED",
        120,
    )
    tries = attempts(slurm, job)
    assert tries[0] == "REQUEUED" and set(tries[:-1]) == {"REQUEUED"}, (
        tries
    )  # never FAILED, never TIMEOUT
    rec = records(sweep_dir)[run["name"]]
    assert len(rec.resumed) == len(tries) - 1 and [e.epoch for e in rec.epochs] == list(
        range(LIMIT_EPOCHS)
    )
    assert all(
        r["env"]["slurm"]["SLURM_JOB_ID"] == job for r in rec.resumed
    )  # the same job, requeued
    assert len(sweep_dir.load()["runs"][0]["jobs"]) == 1  # no resubmission
    log = (sweep_dir.logs_dir / f"{job}_0_log.out").read_text()
    assert (
        f"epoch 1/{LIMIT_EPOCHS}" in log
        and f"epoch {LIMIT_EPOCHS}/{LIMIT_EPOCHS}" in log
        and "samples/s" in log
    )  # one line per epoch
    assert "on the pre-timeout/preemption signal" in log and not list(
        sweep_dir.runs_dir.glob(".*.tmp")
    )


def test_hold_then_the_printed_sbatch_line_runs_the_sweep_and_usr2_requeues_a_task(slurm, tmp_path):
    from mmhpc.launch.submit import hold_sweep

    # with loader workers (a pre-initialised loader's forkserver and its workers): the signal
    # reaches every process of the job step, and none of them may die of it
    spec = write_sweep(
        tmp_path / "hand.yaml",
        "hand",
        grid={"train.lr": [0.001, 0.002]},
        base={"loader.num_workers": 1, "loader.preinit": True},
        tiny={"base": {"train.epochs": EPOCHS}},
    )
    sweep_dir, lines = hold_sweep(spec, "local", results=tmp_path / "results")
    assert [s.state for s in run_states(sweep_dir, sweep_dir.load())] == ["held", "held"]
    (line,) = lines
    # the printed line, run from the checkout, with the job's working directory set aside
    argv = line.split()
    argv[1:1] = ["--parsable", "-D", str(tmp_path)]
    out = subprocess.run(
        argv,
        cwd=REPO,
        env=dict(os.environ, MMHPC_PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    job = out.strip().split(";")[0]
    assert {s.job_id for s in run_states(sweep_dir, sweep_dir.load())} == {
        f"{job}_0",
        f"{job}_1",
    }  # by name
    runs = sweep_dir.load()["runs"]
    until(
        lambda: (sweep_dir.runs_dir / f"{runs[0]['name']}.ckpt.pt").exists(),
        "task 0's first checkpoint",
        poll_s=0.2,
    )
    assert len(sweep_dir.record(runs[0]["name"]).epochs) < EPOCHS - 2, (
        "the signal must reach a run still training"
    )
    slurm.run(
        "scancel", "--signal=USR2", f"{job}_0"
    )  # to the srun step: the trainer stops, the task requeues
    release_requeued(slurm, f"{job}_0")

    def finished():
        states = sacct("-j", job, "-o", "JobID,State").split()
        return len(states) == 2 and all(s.split("|")[1] == "COMPLETED" for s in states)

    until(finished, f"array job {job} to finish")
    recs = records(sweep_dir)
    assert len(recs) == 2 and all(r.status == "done" for r in recs.values()), \
        [p.read_text()[-2000:] for p in tmp_path.glob("mmhpc-sweep-*.out")]
    assert attempts(slurm, f"{job}_0") == ["REQUEUED", "COMPLETED"]
    resumed = recs[runs[0]["name"]]
    assert resumed.resumed[0]["at_epoch"] >= 1 and [e.epoch for e in resumed.epochs] == list(
        range(EPOCHS)
    )
    assert "resumed" not in recs[runs[1]["name"]]
    states = run_states(sweep_dir, sweep_dir.load())
    assert [(s.state, s.job_id) for s in states] == [("done", f"{job}_0"), ("done", f"{job}_1")]
    assert "epoch 1/" in (tmp_path / f"mmhpc-sweep-{job}_1.out").read_text()
