"""The project's local SLURM (env/slurm): real jobs through sbatch/sacct/scancel on this host, and a
second cluster started from a checkout whose path is too long for unix sockets (the state moves).

The session fixture (conftest) installs the packages and starts the cluster (both idempotent) and
leaves it running. Skipped only where it cannot be set up at all: no apt-get or not root.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SLURM_DIR, LocalSlurm, until

pytestmark = pytest.mark.slurm


def _sbatch(slurm: LocalSlurm, workdir: Path, *args: str) -> str:
    out = slurm.run(
        "sbatch",
        "--parsable",
        "-D",
        str(workdir),
        "-o",
        str(workdir / "slurm-%A_%a.out"),
        "-J",
        "mmhpc-test",
        *args,
    )
    return out.strip().split(";")[0]


def _run_script(
    path: Path, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def test_single_job_completes(local_slurm, tmp_path):
    job = _sbatch(
        local_slurm, tmp_path, "-n", "1", "--wrap", "echo hello from $SLURM_JOB_ID > hello.txt"
    )
    assert local_slurm.wait_terminal(job) == {job: "COMPLETED"}
    assert (tmp_path / "hello.txt").read_text().strip() == f"hello from {job}"


def test_job_array_runs_every_task(local_slurm, tmp_path):
    job = _sbatch(
        local_slurm,
        tmp_path,
        "--array=0-3",
        "-n",
        "1",
        "--wrap",
        'touch "task_$SLURM_ARRAY_TASK_ID"',
    )
    assert local_slurm.wait_terminal(job, n_tasks=4) == {
        f"{job}_{i}": "COMPLETED" for i in range(4)
    }
    assert sorted(p.name for p in tmp_path.glob("task_*")) == [f"task_{i}" for i in range(4)]


def test_scancel_running_job(local_slurm, tmp_path):
    job = _sbatch(local_slurm, tmp_path, "-n", "1", "--wrap", "sleep 300")
    try:
        until(
            lambda: local_slurm.squeue(job).split()[:1] == ["RUNNING"],
            f"job {job} to start running",
            180,
        )
    finally:
        local_slurm.run("scancel", job, check=False)
    assert local_slurm.wait_terminal(job) == {job: "CANCELLED"}


def test_start_again_is_fast_noop(local_slurm):
    t0 = time.monotonic()
    res = _run_script(SLURM_DIR / "start.sh", timeout=120)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stderr
    assert "already running" in res.stderr, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={local_slurm.conf}"
    assert elapsed < 10, f"second start.sh took {elapsed:.1f}s"


@pytest.mark.slow
def test_a_checkout_too_long_for_sockets_moves_its_state_and_its_env_file_follows(
    local_slurm, tmp_path
):
    # a copy of env/slurm under a path whose socket paths would pass 107 bytes; a second cluster on
    # other ports
    long_dir = tmp_path / ("a-checkout-with-a-long-directory-name-" * 3) / "env" / "slurm"
    shutil.copytree(SLURM_DIR, long_dir, ignore=shutil.ignore_patterns("state"))
    env = {k: v for k, v in local_slurm.env.items() if k not in ("SLURM_CONF", "MMHPC_SLURM_STATE")}
    env["MMHPC_SLURM_PORT_BASE"] = "26817"
    clash_state = Path(f"/tmp/mmhpc-test-clash-{os.getpid()}")
    started = _run_script(long_dir / "start.sh", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        conf = started.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=")
        state = Path(conf).parent
        assert not state.is_relative_to(long_dir) and len(str(state)) < 40, state
        assert (state / "run" / "munge.socket").is_socket()
        # the checkout's env file and location follow the state; status.sh and stop.sh find it too
        assert (long_dir / "state" / "env.sh").read_text().strip() == f"export SLURM_CONF={conf}"
        assert (long_dir / "state" / "location").read_text().strip() == str(state)
        status = _run_script(long_dir / "status.sh", env, timeout=60)
        assert status.returncode == 0 and str(state) in status.stdout, status.stdout + status.stderr
        job = subprocess.run(
            [
                "bash",
                "-c",
                f"source {long_dir}/state/env.sh && sbatch --parsable -D {tmp_path} "
                "-o /dev/null --wrap 'echo $SLURM_CLUSTER_NAME > "
                "from-long-checkout.txt'",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
        other = LocalSlurm(conf)
        assert other.wait_terminal(job) == {job: "COMPLETED"}
        assert (tmp_path / "from-long-checkout.txt").read_text().strip() == "mmhpc"
        # the first cluster's ports are taken: a clear refusal, not a half-started second cluster
        taken = re.search(r"^SlurmctldPort=(\d+)$", Path(local_slurm.conf).read_text(), re.M)
        clash = _run_script(
            long_dir / "start.sh",
            dict(env, MMHPC_SLURM_PORT_BASE=taken[1], MMHPC_SLURM_STATE=str(clash_state)),
            timeout=120,
        )
        assert clash.returncode == 1 and "is taken by another process" in clash.stderr, clash.stderr
    finally:
        _run_script(long_dir / "stop.sh", env, timeout=300)
        if clash_state.exists():  # a clash that started after all: no daemons left behind
            _run_script(long_dir / "stop.sh", dict(env, MMHPC_SLURM_STATE=str(clash_state)), 300)
        location = long_dir / "state" / "location"
        for path in ([Path(location.read_text().strip())] if location.exists() else []) + [
            clash_state
        ]:
            shutil.rmtree(path, ignore_errors=True)
