"""The project's local SLURM (env/slurm): real jobs through sbatch/sacct/scancel on this host.

The module fixture installs the packages and starts the cluster (both idempotent) and leaves it
running for other modules. Skipped only where it cannot be set up at all: no apt-get or not root.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

SLURM_DIR = Path(__file__).resolve().parents[1] / "env" / "slurm"
JOB_TIMEOUT_S = 180   # generous: other modules may share the 2-CPU node
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def _run_script(name: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SLURM_DIR / name)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    """Environment with SLURM_CONF pointing at the running local cluster."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("local SLURM needs root and apt-get (env/slurm/install.sh) to be set up")
    for script in ("install.sh", "start.sh"):
        res = _run_script(script)
        if res.returncode != 0:
            pytest.fail(f"env/slurm/{script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    exports = [ln for ln in res.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
    assert exports, f"start.sh printed no `export SLURM_CONF=` line:\n{res.stdout}"
    env = dict(os.environ, SLURM_CONF=exports[-1].split("=", 1)[1])
    return env


def _cmd(env: dict[str, str], *args: str, check: bool = True) -> str:
    res = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _sbatch(env: dict[str, str], workdir: Path, *args: str) -> str:
    out = _cmd(env, "sbatch", "--parsable", "-D", str(workdir), "-o", str(workdir / "slurm-%A_%a.out"),
               "-J", "mmhpc-test", *args)
    return out.strip().split(";")[0]


def _sacct_states(env: dict[str, str], job_id: str) -> dict[str, str]:
    """{JobID: State} of the job's allocations (array tasks one by one once they started)."""
    out = _cmd(env, "sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State", check=False)
    states = {}
    for line in out.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid] = state.split()[0] if state else ""   # "CANCELLED by 0" -> "CANCELLED"
    return states


def _wait(predicate, what: str, timeout: float = JOB_TIMEOUT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def _wait_terminal(env, job_id: str, n_tasks: int = 1) -> dict[str, str]:
    def done():
        states = _sacct_states(env, job_id)
        if len(states) == n_tasks and all(s in TERMINAL for s in states.values()):
            return states
        return None

    try:
        return _wait(done, f"job {job_id} to finish")
    except AssertionError as err:
        raise AssertionError(f"{err}; sacct: {_sacct_states(env, job_id)}; "
                             f"squeue: {_cmd(env, 'squeue', '-j', job_id, check=False)}") from None


def test_single_job_completes(slurm_env, tmp_path):
    job = _sbatch(slurm_env, tmp_path, "-n", "1", "--wrap", "echo hello from $SLURM_JOB_ID > hello.txt")
    states = _wait_terminal(slurm_env, job)
    assert states == {job: "COMPLETED"}
    assert (tmp_path / "hello.txt").read_text().strip() == f"hello from {job}"


def test_job_array_runs_every_task(slurm_env, tmp_path):
    job = _sbatch(slurm_env, tmp_path, "--array=0-3", "-n", "1", "--wrap", 'touch "task_$SLURM_ARRAY_TASK_ID"')
    states = _wait_terminal(slurm_env, job, n_tasks=4)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    assert sorted(p.name for p in tmp_path.glob("task_*")) == [f"task_{i}" for i in range(4)]


def test_scancel_running_job(slurm_env, tmp_path):
    job = _sbatch(slurm_env, tmp_path, "-n", "1", "--wrap", "sleep 300")
    try:
        _wait(lambda: _cmd(slurm_env, "squeue", "-h", "-j", job, "-o", "%T", check=False).strip() == "RUNNING",
              f"job {job} to start running")
    finally:
        _cmd(slurm_env, "scancel", job, check=False)
    states = _wait_terminal(slurm_env, job)
    assert states == {job: "CANCELLED"}


def test_start_again_is_fast_noop(slurm_env):
    t0 = time.monotonic()
    res = _run_script("start.sh", timeout=120)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stderr, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={slurm_env['SLURM_CONF']}"
    assert elapsed < 10, f"second start.sh took {elapsed:.1f}s"
