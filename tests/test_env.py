"""env/: the cluster venv script on top of a "module" (a Python whose torch comes from PYTHONPATH,
as an EasyBuild module provides it), and the Apptainer definition's shape."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_ok

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_install_cluster_keeps_the_site_torch_and_adds_only_mmhpc(tmp_path):
    base = shutil.which("python3.11") or shutil.which("python3")
    site_packages = site.getsitepackages()[0]  # torch & co of this venv play the module's part
    env = {**os.environ, "PYTHONPATH": site_packages, "PYTHON": base}
    env.pop("VIRTUAL_ENV", None)
    venv = tmp_path / "venv"
    run_ok([str(REPO / "env" / "install-cluster.sh"), str(venv)], env, 600)
    added = {p.name.split("-")[0] for p in (venv / "lib").glob("python3*/site-packages/*")}
    assert "mmhpc" in added and not added & {"torch", "torchvision", "numpy", "nvidia"}, added
    probe = (
        "import torch, mmhpc.launch.clusters as c; print(torch.__file__); print(c.__file__); "
        "print(c.load_profile('alvis').gpus['A100'].cores_per_gpu(1))"
    )
    out = run_ok([str(venv / "bin" / "python"), "-c", probe], env, 120, cwd=tmp_path).split()
    assert out[0].startswith(site_packages)  # the site's torch
    assert out[1].startswith(str(venv))  # a non-editable install, profiles as package data
    assert out[2] == "16"


def test_install_cluster_refuses_a_python_without_torch(tmp_path):
    env = {"PATH": os.environ["PATH"], "PYTHON": sys.executable, "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [str(REPO / "env" / "install-cluster.sh"), str(tmp_path / "v")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHON": shutil.which("python3")},
    )
    if proc.returncode == 0:
        pytest.skip("the system python3 has torch")
    assert proc.returncode == 2 and "load the site's PyTorch module first" in proc.stderr
    assert not (tmp_path / "v").exists()


def test_apptainer_definition_builds_on_ngc_pytorch_and_installs_only_mmhpc():
    text = (REPO / "env" / "apptainer" / "mmhpc.def").read_text()
    header = [ln for ln in text.splitlines() if ln and not ln.startswith("#")][:2]
    assert header[0] == "Bootstrap: docker" and header[1].startswith(
        "From: nvcr.io/nvidia/pytorch:"
    )
    assert "-c /tmp/pins.txt" in text and "mmhpc.cli doctor" in text
    for src in (
        "mmhpc",
        "setup.cfg",
        "pyproject.toml",
        "README.md",
    ):  # what pip needs to build the package
        assert f"    {src} /opt/mmhpc-src/" in text and (REPO / src).exists()


@pytest.mark.slow
def test_install_login_builds_a_venv_without_torch_that_validates_and_submits(tmp_path):
    """`make install-login`: the login node's venv (mmhpc --no-deps plus its pure-Python part) has
    no torch, and validates a GPU sweep for aarch64 nodes; `make sweep-*` submits with it when the
    jobs have their own interpreter, and with .venv on local/none."""
    venv = tmp_path / "login venv"  # users' paths have spaces too
    env = {
        k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MMHPC_VENV", "MAKEFLAGS")
    }
    env["PYTHON"] = shutil.which("python3.11") or shutil.which("python3")
    run_ok(["make", "-s", "install-login", f"LOGIN_VENV={tmp_path}/lv"], env, 600)
    (tmp_path / "lv").rename(
        venv
    )  # the make variable cannot hold a space; the venv's scripts must still run
    python = venv / "bin" / "python"
    assert (
        subprocess.run([str(python), "-c", "import torch"], capture_output=True, env=env).returncode
        != 0
    )
    for heavy in ("pandas", "matplotlib", "transformers", "numpy"):
        found = subprocess.run([str(python), "-c", f"import {heavy}"], capture_output=True, env=env)
        assert found.returncode != 0, heavy
    out = run_ok(
        [str(python), "-m", "mmhpc.cli", "sweep", "expand", "sweeps/parallelism.yaml", "--cluster",
         "arrhenius"],
        env,
    )
    assert "nvidia_gh200_120gb" in out or "GH200" in out
    assert "to submit" in out
    bad = subprocess.run(
        [str(python), "-m", "mmhpc.cli", "config", "strategy.name=mla", "model.fusion=concat"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "model.fusion" in bad.stderr, bad.stderr[-2000:]
    # make's choice of the submitting interpreter (-n: print, run nothing)
    lv = f"LOGIN_VENV={tmp_path}/lv"
    (tmp_path / "lv").symlink_to(venv)
    plan = run_ok(
        ["make", "-n", "sweep-parallelism", "CLUSTER=arrhenius", "DRY_RUN=1", lv,
         f"MMHPC_VENV={tmp_path}/aarch64-venv"],
        env,
        120,
    )
    assert f"{tmp_path}/lv/bin/python -m mmhpc.cli sweep submit" in plan, plan
    plan = run_ok(["make", "-n", "sweep-parallelism", "CLUSTER=none", "DRY_RUN=1", lv], env, 120)
    assert f"{tmp_path}/lv/bin/python" not in plan and ".venv/bin/python -m mmhpc.cli" in plan
