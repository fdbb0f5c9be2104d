"""Jobs and schedulers that fail the way real ones do, without the local SLURM: the pre-timeout
signal (the trainer stops at a step boundary, the job requeues, the run resumes exactly), and fake
`sbatch`, `squeue`, `sacct` and `scontrol` scripts on PATH that fail, hang, or die right after
printing a job id.

The fake scheduler keeps its queue in a directory ($FAKE_SLURM): `queue` lines
`jobid|state|reason|name` that the fake squeue prints and the fake sacct answers from, and `calls`
(one line per invocation).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mmhpc.config import load_config
from mmhpc.launch.store import SweepDir
from mmhpc.launch.submit import hold_sweep, submit_sweep
from mmhpc.preempt import STOP_REQUESTED
from mmhpc.results import RunRecord, read_record, write_record
from mmhpc.train import Preempted, Trainer, train

REPO = Path(__file__).resolve().parents[2]
# a bound against hangs only: under a CPU hog (load 20 on 2 cores) a tiny epoch takes minutes
HANG_S = 1200


@pytest.fixture(autouse=True)
def clean_env(isolated_env):
    STOP_REQUESTED.clear()
    yield
    STOP_REQUESTED.clear()


def _metrics(rec: RunRecord) -> list:
    return [(e.epoch, e.train, e.val) for e in rec.epochs]


# ---- item 7: the pre-timeout signal
# ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_trainer_stops_at_a_step_boundary_and_the_rerun_resumes_exactly(synth_dir, tmp_path):
    args = [
        f"data.root={synth_dir('cremad')}",
        "data.modalities=[audio]",
        "train.epochs=2",
        "train.max_batches=3",
        "train.batch_size=16",
        "system.threads=1",
        "output.checkpoint=true",
        "output.name=r",
    ]
    cfg = load_config(None, args + [f"output.runs_dir={tmp_path / 'a'}"])
    trainer = Trainer(cfg, progress=False)
    calls = []

    def signal_at_epoch_1_step_2():  # what the USR2 handler does, at a known step
        calls.append(1)
        if len(calls) == 3 + 2:
            STOP_REQUESTED.set()

    trainer.components.append(SimpleNamespace(on_step_end=lambda _: signal_at_epoch_1_step_2()))
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert (stopped.value.epoch, stopped.value.step) == (1, 2) and len(
        calls
    ) == 5  # no step after the signal
    record = read_record(cfg.record_path())
    assert record.status == "running" and [e.epoch for e in record.epochs] == [0]  # not "failed"
    assert (tmp_path / "a" / "r.ckpt.pt").exists()
    assert not list((tmp_path / "a").glob(".*.tmp"))

    STOP_REQUESTED.clear()
    resumed = train(cfg, progress=False)
    assert resumed.status == "done" and resumed.resumed[0]["at_epoch"] == 1
    straight = train(
        load_config(None, args + [f"output.runs_dir={tmp_path / 'b'}"]), progress=False
    )
    assert _metrics(resumed) == _metrics(
        straight
    )  # the interrupted epoch was trained again from its start
    assert resumed.summary.test == straight.summary.test


def _sweep(tmp_path: Path, name: str, cluster: str = "none", **spec) -> Path:
    path = tmp_path / f"{name}.yaml"
    base = {
        "data.dataset": "cremad",
        "data.modalities": ["audio"],
        "train.batch_size": 16,
        "loader.num_workers": 0,
        "system.sample_interval": 0,
        **spec.pop("base", {}),
    }
    path.write_text(yaml.safe_dump({"name": name, "base": base, **spec}))
    return path


@pytest.fixture
def hand_job(fake, tmp_path):
    """`hand_job(name, job_id, epochs)` -> (sweep dir, its one run, the environment SLURM gives
    array task 0 of job `job_id` (its array job `job_id - 1`; the fake scontrol logs a requeue),
    the task's command line `mmhpc sweep run-index DIR 0`): a tiny one-run sweep submitted by
    hand (`submit --hold`), 4 batches an epoch."""

    def make(name: str, job_id: int, epochs: int):
        tiny = {"base": {"train.epochs": epochs, "train.max_batches": 4}}
        sweep_dir, _ = hold_sweep(_sweep(tmp_path, name, tiny=tiny), "none",
                                  results=tmp_path / "results")
        env = dict(
            os.environ,
            SLURM_JOB_ID=str(job_id),
            SLURM_ARRAY_JOB_ID=str(job_id - 1),
            SLURM_ARRAY_TASK_ID="0",
            SLURM_NTASKS="1",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
            SLURM_NODEID="0",
            SLURM_JOB_NODELIST="node1",
        )
        cmd = [sys.executable, "-m", "mmhpc.cli", "sweep", "run-index", str(sweep_dir.path), "0"]
        return sweep_dir, sweep_dir.load()["runs"][0], env, cmd

    return make


@pytest.mark.slow
def test_usr2_in_a_hand_submitted_job_requeues_it_and_the_requeued_job_finishes_the_run(
    fake, hand_job
):
    sweep_dir, run, env, cmd = hand_job("sig", 108, epochs=5)
    ckpt = sweep_dir.runs_dir / f"{run['name']}.ckpt.pt"
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + HANG_S
    while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR2)  # what --signal=USR2@120 sends to the job step
    out, _ = job.communicate(timeout=HANG_S)
    assert job.returncode == 0, out
    assert (fake / "calls").read_text().split("\n")[0] == "scontrol requeue 107_0", out
    record = sweep_dir.record(run["name"])
    assert record.status == "running" and 1 <= len(record.epochs) < 5, (
        out
    )  # stopped early, not failed
    assert "preempted" in out and "epoch 1/5" in out  # the job's output has one line per epoch

    # the requeued job: same ids, SLURM_RESTART_COUNT=1; it resumes from the epoch checkpoint and
    # finishes
    again = subprocess.run(
        cmd, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True, timeout=HANG_S
    )
    assert again.returncode == 0, again.stdout + again.stderr
    done = sweep_dir.record(run["name"])
    assert done.status == "done" and [e.epoch for e in done.epochs] == list(range(5))
    assert done.resumed[0]["at_epoch"] == len(record.epochs)
    assert not ckpt.exists()


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:")), 16)
    return bool(mask >> (sig - 1) & 1)


def test_in_a_slurm_job_the_signal_is_noted_from_the_package_import_on():
    probe = (
        "import os, signal, time; import mmhpc; from mmhpc.preempt import STOP_REQUESTED; "
        "os.kill(os.getpid(), signal.SIGUSR2); time.sleep(0.1); print(STOP_REQUESTED.is_set())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    outside = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60
    )
    assert outside.returncode == -signal.SIGUSR2  # not a SLURM job: the default action, as before
    job = subprocess.run(
        [sys.executable, "-c", probe],
        env={**env, "SLURM_JOB_ID": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (job.returncode, job.stdout.strip()) == (0, "True"), job.stderr
    # somebody else's handler (a submitit job's, a user's) is left in place
    mine = "import signal; signal.signal(signal.SIGUSR2, lambda *a: print('theirs')); " + probe
    theirs = subprocess.run(
        [sys.executable, "-c", mine],
        env={**env, "SLURM_JOB_ID": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert theirs.stdout.split() == ["theirs", "False"], theirs.stderr


@pytest.mark.slow
def test_usr2_while_a_job_starts_up_requeues_it_instead_of_failing_it(fake, hand_job):
    """The signal lands before torch and the trainer are imported (as soon as the process catches
    it, in mmhpc's import): the run stops at its first step and the job requeues, where it used to
    die of USR2."""
    sweep_dir, run, env, cmd = hand_job("early", 208, epochs=3)
    job = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 60
    while (
        not _catches(job.pid, signal.SIGUSR2) and job.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.001)
    torch_loaded = "libtorch" in Path(f"/proc/{job.pid}/maps").read_text()
    job.send_signal(signal.SIGUSR2)
    out, _ = job.communicate(timeout=HANG_S)
    assert (
        not torch_loaded
    )  # the signal came during start-up, long before the trainer's own handler
    assert job.returncode == 0, out
    assert (fake / "calls").read_text().split("\n")[0] == "scontrol requeue 207_0", out
    record = sweep_dir.record(run["name"])
    assert record.status == "running" and record.epochs == [], (
        out
    )  # stopped at its first step, not failed
    assert "stopped after step 1 of epoch 1" in out, out


# ---- a fake scheduler on PATH
# --------------------------------------------------------------------------

FAKE = Path(__file__).resolve().parents[1] / "fake_slurm" / "fake_slurm.py"
COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "srun")


@pytest.fixture(scope="module")
def data_home(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # the tiny synthetic dataset, made once for the module


@pytest.fixture
def fake(tmp_path, monkeypatch, data_home):
    """The fake SLURM client first on PATH; returns its state directory (see fake_slurm.py)."""
    bindir, state = tmp_path / "bin", tmp_path / "fake-slurm"
    bindir.mkdir()
    state.mkdir()
    for cmd in COMMANDS:
        (bindir / cmd).symlink_to(FAKE)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    monkeypatch.setenv("MMHPC_DATA", str(data_home))
    # long enough for the fake (a Python script) to answer on a loaded machine; the hang test
    # shortens it
    monkeypatch.setenv("MMHPC_SCHEDULER_TIMEOUT", "30")
    for cmd in COMMANDS:
        monkeypatch.delenv(f"FAKE_{cmd.upper()}", raising=False)
    return state


def calls(state: Path, cmd: str) -> list[str]:
    path = state / "calls"
    return (
        [ln for ln in path.read_text().splitlines() if ln.split()[0] == cmd]
        if path.exists()
        else []
    )


def queue(state: Path) -> dict[str, list[str]]:
    return {ln.split("|")[0]: ln.split("|") for ln in (state / "queue").read_text().splitlines()}


def set_queue(state: Path, rows: dict[str, list[str]], where: str = "queue") -> None:
    (state / where).write_text("".join("|".join(r) + "\n" for r in rows.values()))


def four_runs(tmp_path: Path) -> Path:
    return _sweep(tmp_path, "faults", grid={"train.lr": [0.001, 0.002, 0.003, 0.004]})


def submit_local(tmp_path: Path):
    return submit_sweep(four_runs(tmp_path), "local", results=tmp_path / "results", progress=False)


def cli(*argv: str) -> int:
    from mmhpc.cli import main

    return main(list(argv))


def states_of(sweep_dir: SweepDir) -> list[tuple[str, str]]:
    from mmhpc.launch.store import run_states

    return [(s.state, s.reason) for s in run_states(sweep_dir, sweep_dir.load())]


@pytest.mark.slow  # waits out squeue's timeout a few times
def test_a_failed_or_silent_squeue_makes_states_unknown_and_resume_refuses(
    fake, tmp_path, monkeypatch, capsys
):
    sweep_dir, submitted = submit_local(tmp_path)
    assert submitted == [0, 1, 2, 3] and len(calls(fake, "sbatch")) == 1
    assert [s for s, _ in states_of(sweep_dir)] == ["pending"] * 4
    for mode, said in (
        ("fail", "squeue exit 1: squeue: error: Socket timed out"),
        ("hang", "no answer in 2 s"),
    ):
        monkeypatch.setenv("FAKE_SQUEUE", mode)
        monkeypatch.setenv("MMHPC_SCHEDULER_TIMEOUT", "2" if mode == "hang" else "30")
        states = states_of(sweep_dir)
        assert [s for s, _ in states] == ["unknown"] * 4 and said in states[0][1], (
            states
        )  # never "failed"
        assert "may be queued or running" in states[0][1]
        assert cli("sweep", "status", str(sweep_dir.path)) == 3
        assert cli("sweep", "resume", str(sweep_dir.path), "-q") == 3
        err = capsys.readouterr().err
        assert "the state of 4 run(s) is unknown" in err and "Nothing submitted" in err, err
    assert len(calls(fake, "sbatch")) == 1  # resume submitted nothing while squeue could not tell
    monkeypatch.delenv("FAKE_SQUEUE")
    # the jobs left the queue; sacct fails: how they ended is unknown, not "failed"
    rows = queue(fake)
    set_queue(fake, {})
    monkeypatch.setenv("FAKE_SACCT", "fail")
    states = states_of(sweep_dir)
    assert [s for s, _ in states] == ["unknown"] * 4 and "sacct failed" in states[0][1]
    assert (
        cli("sweep", "resume", str(sweep_dir.path), "-q") == 3 and len(calls(fake, "sbatch")) == 1
    )
    # sacct answers: two failed, two completed with a finished record -> resume resubmits the two
    # failed only
    monkeypatch.delenv("FAKE_SACCT")
    ids = sorted(rows)
    for k, jid in enumerate(ids):
        rows[jid][1] = "FAILED" if k < 2 else "COMPLETED"
    set_queue(fake, rows, "accounting")
    sweep_dir.runs_dir.mkdir(exist_ok=True)
    for run in sweep_dir.load()["runs"][2:]:
        write_record(
            sweep_dir.record_path(run["name"]),
            RunRecord(run=run["name"], status="done", config=run["config"]),
        )
    assert [s for s, _ in states_of(sweep_dir)] == ["failed", "failed", "done", "done"]
    assert cli("sweep", "resume", str(sweep_dir.path), "-q") == 0
    assert len(calls(fake, "sbatch")) == 2
    assert [len(r["jobs"]) for r in sweep_dir.load()["runs"]] == [2, 2, 1, 1]


def test_a_cluster_without_accounting_still_answers_from_squeue(fake, tmp_path, monkeypatch):
    sweep_dir, _ = submit_local(tmp_path)
    set_queue(fake, {})  # the jobs ended and squeue forgot them
    monkeypatch.setenv("FAKE_SACCT", "disabled")
    states = states_of(sweep_dir)
    assert [s for s, _ in states] == ["failed"] * 4 and "unknown to squeue and sacct" in states[0][
        1
    ]


def test_sbatch_that_dies_after_printing_the_job_id_leaves_a_job_that_is_adopted_not_resubmitted(
        fake, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH", "die")
    sweep_dir, submitted = submit_local(
        tmp_path
    )  # sbatch was killed, but the array is in the queue: adopted
    assert submitted == [0, 1, 2, 3]
    manifest = sweep_dir.load()
    ids = [r["jobs"][-1]["job_id"] for r in manifest["runs"]]
    assert ids == [f"100_{k}" for k in range(4)] and manifest["arrays"][0]["job_id"] == "100"
    # the tasks find the pickled run that submitit did not get to move into place
    assert all((sweep_dir.logs_dir / f"{jid}_submitted.pkl").exists() for jid in ids)
    monkeypatch.delenv("FAKE_SBATCH")
    assert cli("sweep", "resume", str(sweep_dir.path), "-q") == 0
    assert len(calls(fake, "sbatch")) == 1 and len(queue(fake)) == 4  # no second copy


def test_an_interrupted_submission_is_found_by_its_job_name_once_the_scheduler_answers(
    fake, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_SBATCH", "die")
    monkeypatch.setenv("FAKE_SQUEUE", "fail")
    monkeypatch.setenv("FAKE_SACCT", "fail")
    with pytest.raises(Exception, match="whether it queued mmhpc-faults-.* is unknown") as err:
        submit_local(tmp_path)
    assert getattr(err.value, "exit_code", None) == 3
    sweep_dir = SweepDir(tmp_path / "results" / "faults")
    intents = [r["jobs"][-1] for r in sweep_dir.load()["runs"]]
    assert all(
        j["job_id"] is None and j["job_name"].startswith("mmhpc-faults-") for j in intents
    )  # saved first
    assert [s for s, _ in states_of(sweep_dir)] == ["unknown"] * 4
    monkeypatch.delenv("FAKE_SBATCH")
    assert (
        cli("sweep", "resume", str(sweep_dir.path), "-q") == 3 and len(calls(fake, "sbatch")) == 1
    )
    monkeypatch.delenv("FAKE_SQUEUE")
    monkeypatch.delenv("FAKE_SACCT")
    assert cli("sweep", "resume", str(sweep_dir.path), "-q") == 0
    assert len(calls(fake, "sbatch")) == 1  # adopted by name, not submitted again
    assert [r["jobs"][-1]["job_id"] for r in sweep_dir.load()["runs"]] == [
        f"100_{k}" for k in range(4)
    ]
    assert all((sweep_dir.logs_dir / f"100_{k}_submitted.pkl").exists() for k in range(4))


def test_sbatch_that_fails_without_queueing_leaves_the_runs_unsubmitted(
    fake, tmp_path, monkeypatch
):
    monkeypatch.setenv("FAKE_SBATCH", "fail")
    with pytest.raises(Exception, match="no job named mmhpc-faults-.* is queued"):
        submit_local(tmp_path)
    sweep_dir = SweepDir(tmp_path / "results" / "faults")
    assert [s for s, _ in states_of(sweep_dir)] == ["unsubmitted"] * 4
    monkeypatch.delenv("FAKE_SBATCH")
    assert cli("sweep", "resume", str(sweep_dir.path), "-q") == 0
    assert len(calls(fake, "sbatch")) == 2 and len(queue(fake)) == 4


def test_ctrl_c_during_sbatch_waits_until_the_job_ids_are_saved(fake, tmp_path, monkeypatch):
    monkeypatch.setenv(
        "FAKE_SBATCH", "sigint"
    )  # SIGINT to the submitter right after the job id is printed
    with pytest.raises(KeyboardInterrupt):
        submit_local(tmp_path)
    sweep_dir = SweepDir(tmp_path / "results" / "faults")
    assert [r["jobs"][-1]["job_id"] for r in sweep_dir.load()["runs"]] == [
        f"100_{k}" for k in range(4)
    ]
    monkeypatch.delenv("FAKE_SBATCH")
    assert (
        cli("sweep", "resume", str(sweep_dir.path), "-q") == 0 and len(calls(fake, "sbatch")) == 1
    )


def test_hold_runs_show_as_held_until_their_sbatch_line_is_run(fake, tmp_path, capsys):
    assert cli("sweep", "submit", str(four_runs(tmp_path)), "--cluster", "local", "--hold",
               "--results", str(tmp_path / "results")) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("sbatch ")]
    sweep_dir = SweepDir(tmp_path / "results" / "faults")
    assert len(lines) == 1 and "--job-name=mmhpc-faults-" in lines[0] and not calls(fake, "sbatch")
    assert [s for s, _ in states_of(sweep_dir)] == ["held"] * 4
    subprocess.run(lines[0].split(), check=True, cwd=REPO)  # the user runs the printed line
    assert [s for s, _ in states_of(sweep_dir)] == ["pending"] * 4
    assert (
        cli("sweep", "resume", str(sweep_dir.path), "-q") == 0 and len(calls(fake, "sbatch")) == 1
    )


# ---- items 10, 11: a finished record is never touched; files follow the umask; no stray
# directories -------

def test_a_run_that_finds_its_record_done_exits_without_touching_it(tmp_path, monkeypatch):
    from mmhpc.launch.submit import execute_run

    cfg = load_config(
        None,
        [
            "data.modalities=[audio]",
            f"output.runs_dir={tmp_path / 'runs'}",
            "output.name=r",
            "output.checkpoint=true",
        ],
    )
    record = write_record(cfg.record_path(), RunRecord(run="r", status="done", config=cfg.to_dict(),
                                                       summary={"test": {"acc/fused": 0.5}}))
    before = (record.stat().st_mtime_ns, record.read_bytes())
    monkeypatch.setenv(
        "SLURM_JOB_ID", "77"
    )  # a requeued or duplicated job starting after the run finished
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert execute_run(cfg.to_dict()) == f"{record}: already done"
    assert (record.stat().st_mtime_ns, record.read_bytes()) == before
    assert sorted(p.name for p in record.parent.iterdir()) == ["r.json"]


def test_written_files_follow_the_umask(tmp_path):
    from mmhpc.results import atomic_write_json

    for umask, mode in ((0o027, 0o640), (0o077, 0o600), (0o022, 0o644)):
        old = os.umask(umask)
        try:
            path = atomic_write_json(tmp_path / f"{umask:o}" / "r.json", {"status": "done"})
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == mode, (oct(umask), oct(path.stat().st_mode))
        assert [p.name for p in path.parent.iterdir()] == ["r.json"]


@pytest.mark.slow
def test_a_sweep_is_readable_by_the_group_under_a_group_umask(tmp_path, monkeypatch, data_home):
    monkeypatch.setenv("MMHPC_DATA", str(data_home))
    spec = _sweep(tmp_path, "umask", base={"system.sample_interval": 0.2})
    old = os.umask(0o027)
    try:
        sweep_dir, _ = submit_sweep(spec, "none", results=tmp_path / "results", progress=False)
    finally:
        os.umask(old)
    files = [p for p in sweep_dir.path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"manifest.json", "sweep.yaml"} <= names and any(
        n.endswith(".util.csv") for n in names
    ), names
    assert sweep_dir.record(sweep_dir.load()["runs"][0]["name"]).status == "done"
    for p in files + [p for p in sweep_dir.path.rglob("*") if p.is_dir()]:
        mode = p.stat().st_mode
        assert mode & 0o040 and not mode & 0o007, (p, oct(mode))  # group reads, others nothing


def test_status_resume_and_wait_on_a_mistyped_path_create_nothing(tmp_path, capsys):
    missing = tmp_path / "results" / "parallelsim"
    for argv in (["status"], ["resume", "-q"], ["wait", "-q"]):
        assert cli("sweep", *argv, str(missing)) == 2
        assert "not a sweep directory" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_a_damaged_manifest_is_refused_naming_its_file_and_field(fake, tmp_path, capsys):
    sweep_dir, _ = submit_local(tmp_path)
    manifest = json.loads(sweep_dir.manifest_path.read_text())
    manifest["runs"][2]["index"] = "two"  # a hand edit gone wrong
    del manifest["runs"][3]["jobs"]
    sweep_dir.manifest_path.write_text(json.dumps(manifest))
    for argv in (["status"], ["resume", "-q"]):
        assert cli("sweep", *argv, str(sweep_dir.path)) == 2
        err = capsys.readouterr().err
        assert f"{sweep_dir.manifest_path}: runs[2].index:" in err and "runs[3].jobs:" in err, err
    sweep_dir.manifest_path.write_text("{\"schema\": 1, \"runs\": [")  # torn
    assert (
        cli("sweep", "status", str(sweep_dir.path)) == 2 and "not JSON" in capsys.readouterr().err
    )
    sweep_dir.manifest_path.write_bytes(b"\x00\xff" * 64)  # overwritten by something else
    assert cli("sweep", "resume", "-q", str(sweep_dir.path)) == 2
    err = capsys.readouterr().err
    assert f"{sweep_dir.manifest_path}: not JSON" in err and "Traceback" not in err, err
    assert len(calls(fake, "sbatch")) == 1  # nothing resubmitted
