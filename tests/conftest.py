"""Shared fixtures: synthetic datasets generated once per session into a temporary directory, and
the project's local SLURM (env/slurm) with helpers for the tests marked `slurm`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmhpc.config import load_config
from mmhpc.data.synthetic import ensure_synthetic

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config):
    # A shell's background job (`cmd &` without job control, as CI runners and nohup start it)
    # begins with SIGINT ignored; Python then never raises KeyboardInterrupt, and an ignored signal
    # stays ignored in every child it starts. The Ctrl-C tests need a terminal's SIGINT: restore it
    # (children then start with the default again, since a handled signal is reset by exec).
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_ok(cmd: list[str], env: dict[str, str], timeout: float = 300, cwd: Path = REPO) -> str:
    """Run a command as a user does (from the checkout unless `cwd` says otherwise): it must exit
    0; returns its stdout (the tails of its output when it failed)."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture
def make_sweep(tmp_path):
    """`make_sweep(target, cluster, *make_args, **env)` -> stdout of `make -s TARGET CLUSTER=...
    DRY_RUN=1 ...` from the checkout (exit 0 asserted), with results under tmp_path/r and no user
    cluster file; `env` adds to the caller's environment (MMHPC_ACCOUNT, MMHPC_VENV, ...)."""

    def run(target: str, cluster: str, *make_args: str, **env: str) -> str:
        full = {
            **os.environ,
            "MMHPC_RESULTS": str(tmp_path / "r"),
            "MMHPC_CLUSTERS": str(tmp_path / "none.yaml"),
            **env,
        }
        return run_ok(["make", "-s", target, f"CLUSTER={cluster}", "DRY_RUN=1", *make_args], full)

    return run


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """`synth_dir(name)` -> directory of the tiny synthetic dataset `name` (made once per
    session)."""
    base = tmp_path_factory.mktemp("synthetic")
    made = {}

    def get(name: str):
        if name not in made:
            made[name] = ensure_synthetic(name, "tiny", 0, root=base / name, progress=False)
        return made[name]

    return get


@pytest.fixture
def tiny_config(synth_dir, tmp_path):
    """`tiny_config(dataset, **overrides)` -> a validated RunConfig for a short CPU run."""

    def make(dataset: str = "cremad", *overrides: str, **kw):
        base = [
            f"data.dataset={dataset}",
            f"data.root={synth_dir(dataset)}",
            f"output.runs_dir={tmp_path / 'runs'}",
            "train.epochs=1",
            "train.max_batches=2",
            "train.batch_size=16",
            "system.threads=2",
        ]
        return load_config(None, base + list(overrides) + [f"{k}={v}" for k, v in kw.items()])

    return make


# ---- the local SLURM (env/slurm): shared by every test marked `slurm`
# -------------------------------------

SLURM_DIR = Path(__file__).resolve().parents[1] / "env" / "slurm"
SLURM_TERMINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)


class LocalSlurm:
    """The running local cluster: its SLURM_CONF, and helpers that call its commands with a
    timeout."""

    def __init__(self, conf: str):
        self.conf = conf
        self.env = dict(os.environ, SLURM_CONF=conf)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        res = subprocess.run(
            list(args),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res.stdout

    def sacct_states(self, job_id: str, *flags: str) -> dict[str, str]:
        """{JobID: State} of the job's allocations (array tasks one by one once they started); `-D`
        in `flags` lists every attempt of a requeued job (then the last one per id wins)."""
        out = self.run(
            "sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State", *flags, check=False
        )
        return {
            jid: state.split()[0] if state else ""
            for jid, _, state in (ln.partition("|") for ln in out.splitlines() if "|" in ln)
        }  # "CANCELLED by 0" -> CANCELLED

    def squeue(self, job_id: str) -> str:
        return self.run("squeue", "-h", "-j", job_id, "-o", "%T %r", check=False)

    def wait_terminal(self, job_id: str, n_tasks: int = 1, timeout: float = 180) -> dict[str, str]:
        def done():
            states = self.sacct_states(job_id)
            return (
                states
                if len(states) == n_tasks and all(s in SLURM_TERMINAL for s in states.values())
                else None
            )

        try:
            return until(done, f"job {job_id} to finish", timeout)
        except AssertionError as err:
            raise AssertionError(
                f"{err}; sacct: {self.sacct_states(job_id)}; squeue: {self.squeue(job_id)}"
            ) from None


def until(predicate, what: str, timeout: float = 900, poll_s: float = 1.0):
    """Poll `predicate` until it returns something true (returned), or fail naming `what` after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll_s)


def start_local_slurm() -> str:
    """Install and start env/slurm (both idempotent); returns SLURM_CONF. Skips where it cannot be
    set up at all (not root, or no apt-get); fails when it can but does not come up."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("local SLURM needs root and apt-get (env/slurm/install.sh) to be set up")
    for script in ("install.sh", "start.sh"):
        res = subprocess.run(
            ["bash", str(SLURM_DIR / script)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        if res.returncode != 0:
            pytest.fail(
                f"env/slurm/{script} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
    exports = [ln for ln in res.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
    assert exports, f"start.sh printed no `export SLURM_CONF=` line:\n{res.stdout}"
    return exports[-1].split("=", 1)[1]


@pytest.fixture(scope="session")
def local_slurm() -> LocalSlurm:
    """The project's local SLURM, started once per session and left running."""
    return LocalSlurm(start_local_slurm())


@pytest.fixture(scope="session")
def slurm_data(tmp_path_factory) -> Path:
    """The synthetic-data cache ($MMHPC_DATA) of the SLURM tests, shared by their jobs."""
    return tmp_path_factory.mktemp("slurm-data")


@pytest.fixture
def slurm(local_slurm, slurm_data, monkeypatch) -> LocalSlurm:
    """`local_slurm` with SLURM_CONF in this process' environment (for mmhpc's own
    sbatch/squeue/sacct
    calls), the shared data cache, and no user cluster file or results root."""
    monkeypatch.setenv("SLURM_CONF", local_slurm.conf)
    monkeypatch.setenv("MMHPC_DATA", str(slurm_data))
    for var in ("MMHPC_CLUSTERS", "MMHPC_RESULTS", "SIZE"):
        monkeypatch.delenv(var, raising=False)
    return local_slurm


# what a user's shell or a SLURM job could set that changes how mmhpc resolves clusters, results and
# jobs
JOB_ENV = (
    "MMHPC_ACCOUNT",
    "MMHPC_PROJECT",
    "MMHPC_RESULTS",
    "MMHPC_APPTAINER",
    "MMHPC_VENV",
    "MMHPC_PYTHON",
    "MMHPC_CLUSTERS",
    "SIZE",
    "SUBMITIT_EXECUTOR",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_RESTART_COUNT",
    "SLURM_GPUS_ON_NODE",
    "SLURM_GPUS_PER_NODE",
)


@pytest.fixture
def isolated_env(monkeypatch, tmp_path):
    """None of JOB_ENV from the caller's shell, and no user cluster file (MMHPC_CLUSTERS names a
    missing one)."""
    for var in JOB_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MMHPC_CLUSTERS", str(tmp_path / "no-user-clusters.yaml"))
