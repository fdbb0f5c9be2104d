"""env/: the cluster venv script on top of a "module" (a Python whose torch comes from PYTHONPATH,
as an
EasyBuild module provides it), and the Apptainer definition's shape."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_install_cluster_keeps_the_site_torch_and_adds_only_mmhpc(tmp_path):
    base = shutil.which("python3.11") or shutil.which("python3")
    site_packages = site.getsitepackages()[0]  # torch & co of this venv play the module's part
    env = {**os.environ, "PYTHONPATH": site_packages, "PYTHON": base}
    env.pop("VIRTUAL_ENV", None)
    venv = tmp_path / "venv"
    proc = subprocess.run(
        [str(REPO / "env" / "install-cluster.sh"), str(venv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    added = {p.name.split("-")[0] for p in (venv / "lib").glob("python3*/site-packages/*")}
    assert "mmhpc" in added and not added & {"torch", "torchvision", "numpy", "nvidia"}, added
    probe = ("import torch, mmhpc.launch.clusters as c; print(torch.__file__); print(c.__file__); "
             "print(c.load_profile('alvis').gpus['A100'].cores_per_gpu(1))")
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
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
