"""Cluster profiles as resources: cores per GPU per node type, memory in SLURM's unit, the
interpreter of the jobs, job arrays split at max_array_size under one concurrency cap, InfiniBand
for multi-node DDP, and the profiles shipped as package data."""
from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import run_ok

from mmhpc.config import load_config
from mmhpc.launch.clusters import (
    PROFILE_DIR,
    Resources,
    load_profile,
    profile_from_dict,
    resolve_resources,
)
from mmhpc.launch.store import SweepDir
from mmhpc.launch.submit import hand_sbatch_lines, plan_arrays, render_scripts, slurm_parameters

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("isolated_env")


def resolve(cluster: str, request: dict | None = None, *overrides: str):
    return resolve_resources(
        load_profile(cluster, "NAISS1"), load_config(None, list(overrides)), request or {}
    )


def test_cores_come_with_the_gpus_of_each_node_type():
    alvis = load_profile("alvis")
    # A40/A100 nodes: 64 cores for 4 GPUs; T4: 32 for 8; V100: 4-GPU and 2-GPU nodes
    assert {g: s.cores_per_gpu(1) for g, s in alvis.gpus.items()} == {
        "A100": 16,
        "A100fat": 16,
        "A40": 16,
        "V100": 8,
        "T4": 4,
    }
    assert (
        sorted(n.gpus for n in alvis.gpus["V100"].nodes) == [2, 4]
        and alvis.gpus["V100"].per_node == 4
    )
    res, errors, _ = resolve("alvis", {"gpu": "A100"})
    assert (res.cpus_per_task, errors) == (16, [])
    res, _, _ = resolve("alvis", {"gpu": "A40"}, "system.parallelism=blp")  # 2 GPUs in one process
    assert (res.gpus_per_node, res.tasks_per_node, res.cpus_per_task) == (2, 1, 32)
    res, _, _ = resolve(
        "alvis", {"gpu": "A100", "gpus": 4}, "system.parallelism=ddp"
    )  # one task per GPU
    assert (res.tasks_per_node, res.cpus_per_task) == (4, 16)
    res, _, _ = resolve("alvis", {"gpu": "T4"}, "system.precision=fp32")
    assert res.cpus_per_task == 4
    res, _, _ = resolve("alvis", {"gpu": "A100", "cpus_per_task": 8})  # asked for: taken as given
    assert res.cpus_per_task == 8


def test_a_request_fits_the_smallest_node_type_that_can_hold_it():
    p = profile_from_dict({"name": "x", "scheduler": "none", "default_gpu": "G",
                           "gpus": {"G": {"capability": 8.0, "nodes": [{"gpus": 8, "cores": 32},
                                                                      {"gpus": 2, "cores": 32}]}}})
    assert p.gpus["G"].cores_per_gpu(2) == 4   # either node type may be picked: the smaller share
    assert p.gpus["G"].cores_per_gpu(4) == 4   # only the 8-GPU nodes hold 4
    p2 = profile_from_dict({"name": "x", "scheduler": "none", "default_gpu": "G",
                            "gpus": {"G": {"capability": 8.0, "nodes": [{"gpus": 4, "cores": 16},
                                                                       {"gpus": 2, "cores": 24}]}}})
    assert (p2.gpus["G"].cores_per_gpu(2), p2.gpus["G"].cores_per_gpu(3)) == (4, 4)
    assert p2.gpus["G"].cores_per_gpu(1) == 4 and p2.gpus["G"].per_node == 4


def test_loader_workers_above_the_cores_are_refused_before_submission():
    _, errors, _ = resolve("alvis", {"gpu": "A40"}, "loader.num_workers=17")
    assert errors == [
        "loader.num_workers: 17 workers exceed the 16 cores each process of this run gets on "
        "alvis; "
        "valid: 0..16, or resources.cpus_per_task"
    ]
    _, errors, _ = resolve("alvis", {"gpu": "A40"}, "loader.num_workers=16")
    assert errors == []
    _, errors, _ = resolve(
        "local", {}, "loader.num_workers=2"
    )  # one core per task on the local SLURM
    assert errors[0].startswith("loader.num_workers: 2 workers exceed the 1 cores")


def test_multi_node_ddp_needs_infiniband():
    _, errors, _ = resolve("alvis", {"gpu": "A40", "gpus": 4, "nodes": 2}, "system.parallelism=ddp")
    assert len(errors) == 1 and errors[0].startswith(
        "resources.nodes: 2 nodes of A40: A40 nodes have no InfiniBand"
    )
    assert "resources.gpu: A100, A100fat, V100, T4" in errors[0]
    _, errors, _ = resolve(
        "alvis", {"gpu": "A100", "gpus": 4, "nodes": 2}, "system.parallelism=ddp"
    )
    assert errors == []


@pytest.mark.parametrize("mem_gb, flag", [(32, "32G"), (32.0, "32G"), (1.5, "1536M"), (None, None)])
def test_memory_is_written_in_the_unit_slurm_reads(mem_gb, flag):
    res = Resources(
        gpu="A40",
        gpus_per_node=1,
        nodes=1,
        tasks_per_node=1,
        time_min=60,
        cpus_per_task=16,
        mem_gb=mem_gb,
    )
    params = slurm_parameters(load_profile("alvis", "NAISS1"), res, "job")
    assert params.get("mem") == flag
    assert params["cpus_per_task"] == 16 and params["srun_args"] == ["--cpus-per-task=16"]


def _render(tmp_path, spec: dict, **env) -> str:
    from mmhpc.launch.submit import prepare_sweep

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    profile, plan, sweep_dir = prepare_sweep(
        path, "alvis", account="NAISS1", results=tmp_path / "r", dry_run=True
    )
    runs = [
        {"index": r.index, "name": r.name, "resources": r.resources.to_dict()}
        for r in plan.runnable()
    ]
    return render_scripts(sweep_dir, profile, plan.name, runs)


def test_jobs_run_the_venv_or_image_python_not_the_submitting_one(tmp_path, monkeypatch):
    spec = {
        "name": "p",
        "grid": {"system.precision": ["fp32"]},
        "resources": {"alvis": {"mem_gb": 64}},
    }
    monkeypatch.setenv("MMHPC_VENV", "/some/venv")
    text = _render(tmp_path, spec)
    assert (
        "/some/venv/bin/python -u -m submitit.core._submit" in text and sys.executable not in text
    )
    assert "#SBATCH --mem=64G" in text and "#SBATCH --cpus-per-task=16" in text
    assert "--cpus-per-task=16 /some/venv/bin/python" in text  # srun gets it too
    assert "module load PyTorch-bundle/" in text and "source /some/venv/bin/activate" in text
    monkeypatch.setenv("MMHPC_APPTAINER", "/img/mmhpc.sif")
    text = _render(tmp_path, spec)
    assert (
        "apptainer exec --nv /img/mmhpc.sif python -u -m submitit" in text
        and "module load" not in text
    )
    monkeypatch.setenv("MMHPC_PYTHON", "/opt/py/bin/python3")
    assert "apptainer exec --nv /img/mmhpc.sif /opt/py/bin/python3 -u" in _render(tmp_path, spec)
    monkeypatch.delenv("MMHPC_APPTAINER")
    assert "/opt/py/bin/python3 -u -m submitit" in _render(tmp_path, spec)
    for var in ("MMHPC_PYTHON", "MMHPC_VENV"):
        monkeypatch.delenv(var)
    assert f"{sys.executable} -u -m submitit" in _render(
        tmp_path, spec
    )  # neither set: the submitting one


def _runs(n: int, **res) -> list[dict]:
    shape = {
        "gpu": "A40",
        "gpus_per_node": 1,
        "nodes": 1,
        "tasks_per_node": 1,
        "time_min": 60,
        "cpus_per_task": 16,
        **res,
    }
    return [{"index": i, "name": f"r{i}", "resources": shape} for i in range(n)]


@pytest.mark.parametrize(
    "n_a, n_b, size, cap",
    [
        (2500, 0, 1000, 32),
        (2500, 40, 1000, 32),
        (5, 3, 2, 4),
        (10, 10, 3, 2),
        (1, 0, 1000, 32),
        (7, 7, 1000, 5),
    ],
)
def test_arrays_split_at_max_array_size_and_the_cap_holds_for_the_whole_sweep(n_a, n_b, size, cap):
    profile = load_profile("alvis", "NAISS1").model_copy(
        update={"max_array_size": size, "array_parallelism": cap}
    )
    runs = _runs(n_a) + [{**r, "index": n_a + r["index"]} for r in _runs(n_b, gpu="A100")]
    plans = plan_arrays(profile, runs)
    assert all(1 <= len(p.runs) <= size for p in plans)
    assert sorted(r["index"] for p in plans for r in p.runs) == list(
        range(n_a + n_b)
    )  # each run once
    # at most one array of a lane runs at a time (each waits for the one before it in its lane): the
    # most that can run at once is the sum over lanes of the largest cap in the lane
    lanes: dict[int, list[int]] = {}
    for k, p in enumerate(plans):
        lane = k if p.after is None else next(ln for ln, ks in lanes.items() if ks[-1] == p.after)
        lanes.setdefault(lane, []).append(k)
    assert sum(max(plans[k].parallelism for k in ks) for ks in lanes.values()) <= cap
    assert all(p.parallelism >= 1 for p in plans)


def test_split_arrays_render_and_hand_lines_carry_their_own_caps(tmp_path):
    profile = load_profile("alvis", "NAISS1").model_copy(
        update={"max_array_size": 4, "array_parallelism": 3}
    )
    runs = _runs(10)
    text = render_scripts(SweepDir(tmp_path / "s"), profile, "s", runs)
    assert text.count("#!/bin/bash") == 3
    assert "#SBATCH --array=0-3%1" in text and "#SBATCH --array=0-1%1" in text
    lines = hand_sbatch_lines(SweepDir(tmp_path / "s"), profile, runs)
    assert [line.split()[1] for line in lines] == [
        "--array=0,1,2,3%1",
        "--array=4,5,6,7%1",
        "--array=8,9%1",
    ]
    assert all("--cpus-per-task=16" in line for line in lines)
    profile = profile.model_copy(update={"array_parallelism": 2})
    text = render_scripts(SweepDir(tmp_path / "s"), profile, "s", runs)
    assert (
        "#SBATCH --dependency=afterany:JOBID_OF_ARRAY_0" in text
    )  # the third array waits for the first


def test_profiles_are_package_data():
    assert PROFILE_DIR == REPO / "mmhpc" / "launch" / "profiles"
    assert {p.stem for p in PROFILE_DIR.glob("*.yaml")} == {
        "alvis",
        "arrhenius",
        "berzelius",
        "local",
        "none",
    }


@pytest.mark.slow
def test_a_built_wheel_carries_the_profiles(tmp_path):
    """A non-editable install finds the profiles: the wheel holds them beside the module that reads
    them."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("mmhpc-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {
        f"mmhpc/launch/profiles/{c}.yaml"
        for c in ("alvis", "arrhenius", "berzelius", "local", "none")
    } <= set(names)
    assert "mmhpc/launch/clusters.py" in names


@pytest.mark.slow
def test_make_dry_run_for_alvis_shows_the_job_as_submitted(make_sweep, tmp_path):
    """The acceptance line: `MMHPC_ACCOUNT=x MMHPC_VENV=/some/venv make sweep-parallelism
    CLUSTER=alvis DRY_RUN=1`."""
    out = make_sweep("sweep-parallelism", "alvis", MMHPC_ACCOUNT="x", MMHPC_VENV="/some/venv")
    assert "#SBATCH --gpus-per-node=A100:1" in out and "#SBATCH --gpus-per-node=A40:2" in out
    assert "#SBATCH --cpus-per-task=16" in out and "#SBATCH --signal=USR2@120" in out
    assert "#SBATCH --account=x" in out and "source /some/venv/bin/activate" in out
    scripts = out.split("#!/bin/bash")[1:]
    assert scripts and all("/some/venv/bin/python -u -m submitit" in s for s in scripts)
    assert all(re.search(r"srun .*--cpus-per-task=\d+ /some/venv/bin/python", s) for s in scripts)
    assert not (tmp_path / "r").exists()


def test_make_on_a_cluster_submits_with_the_cluster_venv_and_builds_nothing(tmp_path):
    import os

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    env = {**os.environ, "MMHPC_ACCOUNT": "x"}
    for extra, submit_py in (
        ({"MMHPC_VENV": str(venv)}, f"{venv}/bin/python"),
        ({}, ".venv/bin/python"),
    ):
        plan = run_ok(["make", "-n", "sweep-parallelism", "CLUSTER=alvis"], {**env, **extra}, 60)
        assert (
            f"{submit_py} -m mmhpc.cli sweep submit sweeps/parallelism.yaml --cluster alvis" in plan
        )
        assert "pip install" not in plan and "-m venv" not in plan
    plan = run_ok(["make", "-n", "sweep-parallelism", "CLUSTER=none"], env, 60)
    assert (
        ".venv/bin/python -m mmhpc.cli sweep submit" in plan
    )  # here: .venv, built first when needed
