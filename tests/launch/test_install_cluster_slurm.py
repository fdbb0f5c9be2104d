"""`make install-cluster CLUSTER=...` without a site PyTorch module (issue 17, item 4), end to end
on the local SLURM: the login side reads the profile, one srun allocation builds the venv from the
pinned PyPI torch on the node, and the node's `mmhpc doctor` accepts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_ok

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slurm
@pytest.mark.slow
def test_install_cluster_builds_the_jobs_venv_inside_an_allocation_of_the_profile(slurm, tmp_path):
    env = {**slurm.env, "MMHPC_CLUSTERS": str(tmp_path / "none.yaml"), "LOGIN_PY": sys.executable}
    profile, venv = tmp_path / "local.yaml", tmp_path / "jobs-venv"
    mmhpc = [sys.executable, "-m", "mmhpc.cli"]
    run_ok(mmhpc + ["clusters", "discover", "-o", str(profile)], env, timeout=120)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    try:
        built = subprocess.run(
            [
                "make",
                "-s",
                "install-cluster",
                f"CLUSTER={profile}",
                f"MMHPC_VENV={venv}",
                f"PY={sys.executable}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
            stdin=subprocess.DEVNULL,
        )
        out = built.stdout + built.stderr
        assert built.returncode == 0, out[-3000:]
        srun = "srun --time=30 --nodes=1 --ntasks=1 --partition=debug"
        assert f"compute node of the profile: {srun}" in out, out[-3000:]
        # the node's doctor ran in the new venv, and the venv is the jobs' interpreter
        assert "ok    python   Python" in out and f"({venv}/bin/python)" in out
        assert f"done ({os.uname().machine}): export MMHPC_VENV={venv}" in out
        bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
        ran = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import mmhpc, torch; print(mmhpc.__file__)"],
            cwd=tmp_path,
            env=bare,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ran.returncode == 0 and str(venv) in ran.stdout, ran.stderr  # not the checkout
        sacct = ["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobName,State"]
        jobs = subprocess.run(sacct, env=env, capture_output=True, text=True, timeout=60).stdout
        assert "install-cluster.sh|COMPLETED" in jobs, jobs
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # ~6 GB
