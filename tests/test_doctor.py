"""`mmhpc doctor` on this (GPU-less) machine, and the job-start check that every sweep run goes
through."""
from __future__ import annotations

import platform

import pytest
import torch

from mmhpc.cli import main
from mmhpc.config import load_config
from mmhpc.doctor import MIN_DRIVER, check_job, driver_problem, run_checks, slurm_gpus
from mmhpc.errors import RunError
from mmhpc.launch.submit import execute_run
from mmhpc.results import read_record

pytestmark = pytest.mark.usefixtures("isolated_env")


def test_doctor_for_alvis_fails_here_naming_the_missing_gpu(capsys, monkeypatch, tmp_path):
    assert torch.cuda.device_count() == 0  # this machine: no GPU
    monkeypatch.setenv(
        "MMHPC_RESULTS", str(tmp_path / "r")
    )  # not the placeholder path (its own FAIL)
    assert main(["doctor", "--cluster", "alvis"]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("FAIL"))
    assert "gpus" in line and "cluster alvis runs on GPUs (A100, A100fat, A40, V100, T4)" in line
    assert (
        "torch sees no GPU" in line and sum(ln.startswith("FAIL") for ln in out.splitlines()) == 1
    )
    assert f"Python {platform.python_version()}" in out and f"torch {torch.__version__}" in out


def test_doctor_without_a_cluster_passes_on_a_cpu_machine(capsys, tmp_path):
    assert main(["doctor", "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "no GPU (CPU runs)" in out
    assert not (tmp_path / "r").exists()  # checked, not created


@pytest.mark.parametrize(
    "torch_cuda, driver, driver_cuda, bad",
    [
        ("13.0", "575.51.03", 12090, True),
        ("13.0", "580.65.06", 13000, False),
        ("12.1", "535.104.05", 12020, False),
        ("12.4", "525.60.13", 12000, False),  # minor-version compatibility within CUDA 12
        ("12.1", "470.82.01", 11040, True),
        (None, "575.51.03", 12090, False),
        ("12.1", None, None, False),
    ],
)
def test_driver_must_be_new_enough_for_the_cuda_torch_was_built_for(
    torch_cuda, driver, driver_cuda, bad
):
    problem = driver_problem(torch_cuda, driver, driver_cuda)
    assert (problem is not None) == bad
    if bad:
        major = int(torch_cuda.split(".")[0])
        assert problem.startswith(
            f"torch built for CUDA {torch_cuda} needs NVIDIA driver >= {MIN_DRIVER[major]}, "
            f"this node has {driver}"
        )


def test_slurm_allocation_is_read_from_the_job_environment():
    assert slurm_gpus({}) == 0
    assert slurm_gpus({"SLURM_GPUS_ON_NODE": "2"}) == 2
    assert slurm_gpus({"SLURM_GPUS_PER_NODE": "A100:4"}) == 4


def test_a_job_with_allocated_gpus_that_torch_cannot_see_fails_at_once():
    cfg = load_config(None, ["system.device=auto"])
    with pytest.raises(
        RunError, match=r"mmhpc doctor: SLURM allocated 2 GPU\(s\) on this node, torch sees 0"
    ):
        check_job(cfg, env={"SLURM_GPUS_ON_NODE": "2"})
    check_job(load_config(None, ["system.device=cpu"]), env={})  # a CPU job here: nothing to say


def test_missing_prepared_dataset_and_unwritable_results_are_named(tmp_path, synth_dir):
    cfg = load_config(None, ["data.source=prepared", f"data.root={tmp_path / 'nope'}"])
    checks = {c.name: c for c in run_checks(cfg, results=tmp_path / "file" / "sub")}
    assert not checks["data"].ok and checks["data"].detail.startswith(
        f"data.root: {tmp_path / 'nope'} is not a directory"
    )
    (tmp_path / "file").write_text("x")
    checks = {c.name: c for c in run_checks(cfg, results=tmp_path / "file" / "sub")}
    assert not checks["results"].ok and "is not a directory" in checks["results"].detail
    good = load_config(None, ["data.source=prepared", f"data.root={synth_dir('cremad')}"])
    checks = {c.name: c for c in run_checks(good, results=tmp_path / "r")}
    assert checks["data"].ok and "manifest with" in checks["data"].detail and checks["results"].ok


def test_execute_run_records_the_doctor_failure_before_training(tmp_path, monkeypatch, synth_dir):
    monkeypatch.setenv("SLURM_GPUS_ON_NODE", "1")  # what SLURM sets in a 1-GPU job
    cfg = load_config(
        None,
        [
            "data.dataset=cremad",
            f"data.root={synth_dir('cremad')}",
            "system.device=auto",
            f"output.runs_dir={tmp_path / 'runs'}",
            "output.name=r0",
            "train.epochs=1",
        ],
    )
    with pytest.raises(RunError):
        execute_run(cfg.to_dict())
    record = read_record(cfg.record_path())
    assert (
        record.status == "failed"
        and "SLURM allocated 1 GPU(s) on this node, torch sees 0" in record.error
    )
    assert not record.epochs  # nothing trained
