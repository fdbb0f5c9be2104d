"""Jobs and schedulers that fail the way real ones do, without the local SLURM: the pre-timeout signal
(the trainer stops at a step boundary, the job requeues, the run resumes exactly), and fake `sbatch`,
`squeue`, `sacct` and `scontrol` scripts on PATH that fail, hang, or die right after printing a job id.

The fake scheduler keeps its queue in a directory ($FAKE_SLURM): `queue` lines `jobid|state|reason|name`
that the fake squeue prints and the fake sacct answers from, and `calls` (one line per invocation).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mmhpc.config import load_config
from mmhpc.launch.store import SweepDir
from mmhpc.launch.submit import submit_sweep
from mmhpc.train import STOP_REQUESTED, Preempted, Trainer, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in ("MMHPC_CLUSTERS", "MMHPC_RESULTS", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                "SLURM_RESTART_COUNT", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMHPC_CLUSTERS", str(tmp_path / "no-user-clusters.yaml"))
    STOP_REQUESTED.clear()
    yield
    STOP_REQUESTED.clear()


def _metrics(rec: dict) -> list:
    return [{k: e[k] for k in ("epoch", "train", "val")} for e in rec["epochs"]]


# ---- item 7: the pre-timeout signal ---------------------------------------------------------------------

@pytest.mark.slow
def test_the_trainer_stops_at_a_step_boundary_and_the_rerun_resumes_exactly(synth_dir, tmp_path):
    args = [f"data.root={synth_dir('cremad')}", "data.modalities=[audio]", "train.epochs=2", "train.max_batches=3",
            "train.batch_size=16", "system.threads=1", "output.checkpoint=true", "output.name=r"]
    cfg = load_config(None, args + [f"output.runs_dir={tmp_path / 'a'}"])
    trainer = Trainer(cfg, progress=False)
    calls = []

    def signal_at_epoch_1_step_2():  # what the USR2 handler does, at a known step
        calls.append(1)
        if len(calls) == 3 + 2:
            STOP_REQUESTED.set()

    trainer.step_hooks.append(signal_at_epoch_1_step_2)
    with pytest.raises(Preempted) as stopped:
        trainer.fit()
    assert (stopped.value.epoch, stopped.value.step) == (1, 2) and len(calls) == 5  # no step after the signal
    record = json.loads((tmp_path / "a" / "r.json").read_text())
    assert record["status"] == "running" and [e["epoch"] for e in record["epochs"]] == [0]  # not "failed"
    assert (tmp_path / "a" / "r.ckpt.pt").exists()
    assert not list((tmp_path / "a").glob(".*.tmp"))

    STOP_REQUESTED.clear()
    resumed = train(cfg, progress=False)
    assert resumed["status"] == "done" and resumed["resumed"][0]["at_epoch"] == 1
    straight = train(load_config(None, args + [f"output.runs_dir={tmp_path / 'b'}"]), progress=False)
    assert _metrics(resumed) == _metrics(straight)  # the interrupted epoch was trained again from its start
    assert resumed["summary"]["test"] == straight["summary"]["test"]


def _fake_bin(tmp_path: Path, scripts: dict[str, str]) -> Path:
    """Executable shell scripts on a directory for PATH: each logs `name args` to $FAKE_SLURM/calls first."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bindir / name
        path.write_text(f'#!/bin/bash\necho "{name} $*" >> "$FAKE_SLURM/calls"\n{body}\n')
        path.chmod(0o755)
    return bindir


def _sweep(tmp_path: Path, name: str, cluster: str = "none", **spec) -> Path:
    path = tmp_path / f"{name}.yaml"
    base = {"data.dataset": "cremad", "data.modalities": ["audio"], "train.batch_size": 16, "loader.num_workers": 0,
            "system.sample_interval": 0, **spec.pop("base", {})}
    path.write_text(yaml.safe_dump({"name": name, "base": base, **spec}))
    return path


@pytest.mark.slow
def test_usr2_in_a_hand_submitted_job_requeues_it_and_the_requeued_job_finishes_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MMHPC_DATA", str(tmp_path / "data"))
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    bindir = _fake_bin(tmp_path, {"scontrol": "exit 0"})
    spec = _sweep(tmp_path, "sig", tiny={"base": {"train.epochs": 5, "train.max_batches": 4}})
    sweep_dir, _ = submit_sweep(spec, "none", results=tmp_path / "results", progress=False, hold=True)
    run = sweep_dir.load()["runs"][0]
    ckpt = sweep_dir.runs_dir / f"{run['name']}.ckpt.pt"
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", FAKE_SLURM=str(fake), SLURM_JOB_ID="108",
               SLURM_ARRAY_JOB_ID="107", SLURM_ARRAY_TASK_ID="0", SLURM_NTASKS="1", SLURM_PROCID="0",
               SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_NODELIST="node1")
    cmd = [sys.executable, "-m", "mmhpc.cli", "sweep", "run-index", str(sweep_dir.path), "0"]
    job = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR2)  # what --signal=USR2@120 sends to the job step
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    assert (fake / "calls").read_text().split("\n")[0] == "scontrol requeue 107_0", out
    record = sweep_dir.record(run["name"])
    assert record["status"] == "running" and 1 <= len(record["epochs"]) < 5, out  # stopped early, not failed
    assert "preempted" in out and "epoch 1/5" in out  # the job's output has one line per epoch

    # the requeued job: same ids, SLURM_RESTART_COUNT=1; it resumes from the epoch checkpoint and finishes
    again = subprocess.run(cmd, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    done = sweep_dir.record(run["name"])
    assert done["status"] == "done" and [e["epoch"] for e in done["epochs"]] == list(range(5))
    assert done["resumed"][0]["at_epoch"] == len(record["epochs"])
    assert not ckpt.exists()
