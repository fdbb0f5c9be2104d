"""The results store of a sweep, and the state of each of its runs.

    <results_root>/<sweep>/
      sweep.yaml       the sweep file as submitted
      manifest.json    runs (index, name, config, resources, job ids); written only by the submitter
      runs/<run>.json  one record per run, written atomically by the trainer (rank 0) on the node
      logs/            submitit: generated sbatch scripts, pickles, stdout/stderr per task

A run's state comes from its record first (a finished record is final) and from SLURM for the rest
(squeue for live jobs, sacct for finished ones): done | running | pending | failed | unsubmitted | n/a.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import pickle
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from mmhpc.config import record_file
from mmhpc.results import RunRecord, atomic_write_json, read_record
from mmhpc.sweep import SweepError, SweepPlan

MANIFEST_SCHEMA = 1
PENDING = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING", "RESIZING", "SUSPENDED"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
STATES = ("done", "running", "pending", "failed", "unsubmitted", "n/a")


class SweepDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()

    manifest_path = property(lambda self: self.path / "manifest.json")
    runs_dir = property(lambda self: self.path / "runs")
    logs_dir = property(lambda self: self.path / "logs")

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def load(self) -> dict:
        if not self.exists():
            raise FileNotFoundError(f"{self.path}: not a sweep directory (no manifest.json); "
                                    "create one with `mmhpc sweep submit FILE`")
        return json.loads(self.manifest_path.read_text())

    def save(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    @contextlib.contextmanager
    def lock(self):
        """One submitter at a time, so that two `resume`s cannot submit the same run twice."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record_path(self, name: str) -> Path:
        return record_file(self.runs_dir, name)

    def record(self, name: str) -> RunRecord | None:
        try:
            return read_record(self.record_path(name))
        except (OSError, ValueError):
            return None  # missing, or not a record (torn by a crash mid-write of a non-atomic writer)


def create(sweep_dir: SweepDir, plan: SweepPlan, source: Path | None) -> dict:
    """Write sweep.yaml and the manifest; an existing sweep directory must hold the same runs."""
    runs = [{"index": r.index, "name": r.name, "axes": r.axes, "config": r.config.to_dict(),
             "request": r.request, "resources": r.resources.to_dict() if r.resources else None,
             "not_applicable": r.not_applicable, "jobs": []} for r in plan.runs]
    if sweep_dir.exists():
        manifest = sweep_dir.load()
        old = {r["name"]: r["config"] for r in manifest["runs"]}
        new = {r["name"]: r["config"] for r in runs}
        if old != new:
            changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            raise SweepError([f"{sweep_dir.path}: holds a different expansion of sweep {manifest['sweep']} "
                              f"({len(changed)} run(s) differ, e.g. {changed[0]}); resume it with `mmhpc sweep "
                              "resume`, or submit this one under another --name"], "sweep")
        return manifest
    sweep_dir.path.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copyfile(source, sweep_dir.path / "sweep.yaml")
    manifest = {"schema": MANIFEST_SCHEMA, "sweep": plan.name, "source": str(source) if source else None,
                "cluster": plan.cluster, "size": plan.size, "created": time.time(),
                "runs_dir": str(sweep_dir.runs_dir), "runs": runs, "arrays": []}
    sweep_dir.save(manifest)
    return manifest


@dataclass
class RunState:
    index: int
    name: str
    state: str
    reason: str = ""
    job_id: str | None = None


def run_states(sweep_dir: SweepDir, manifest: dict, query_slurm: bool = True) -> list[RunState]:
    records = {r["name"]: sweep_dir.record(r["name"]) for r in manifest["runs"]}
    jobs = {r["name"]: _last_job(r, records[r["name"]]) for r in manifest["runs"]}
    slurm_ids = [j["job_id"] for j in jobs.values() if j and j.get("scheduler") == "slurm"]
    sched = slurm_states(slurm_ids) if (query_slurm and slurm_ids) else {}
    return [_state(sweep_dir, run, records[run["name"]], jobs[run["name"]], sched) for run in manifest["runs"]]


def _last_job(run: dict, rec: RunRecord | None) -> dict | None:
    """The run's latest job: from the manifest, or, for a run submitted by hand (jobs/sweep_array.sbatch),
    the SLURM job its record was written from."""
    if run["jobs"]:
        return run["jobs"][-1]
    slurm = rec.env.slurm if rec else {}
    if "SLURM_ARRAY_JOB_ID" in slurm:
        return {"job_id": f"{slurm['SLURM_ARRAY_JOB_ID']}_{slurm['SLURM_ARRAY_TASK_ID']}", "scheduler": "slurm"}
    if "SLURM_JOB_ID" in slurm:
        return {"job_id": slurm["SLURM_JOB_ID"], "scheduler": "slurm"}
    return None


def _state(sweep_dir: SweepDir, run: dict, rec: RunRecord | None, job: dict | None,
           sched: dict[str, tuple[str, str]]) -> RunState:
    index, name = run["index"], run["name"]
    if run.get("not_applicable"):
        return RunState(index, name, "n/a", run["not_applicable"])
    job_id = job["job_id"] if job else None
    if rec and rec.status == "done":
        return RunState(index, name, "done", job_id=job_id)
    error = (rec.error or "") if rec and rec.status == "failed" else ""
    if job is None:
        return RunState(index, name, "failed" if rec else "unsubmitted", error or (
            "interrupted: the record was never finished" if rec else ""))
    if job.get("scheduler") != "slurm":  # in-process or local executor: nothing left alive once the command ended
        return RunState(index, name, "failed", error or "interrupted: the record was never finished", job_id)
    state, reason = sched.get(job_id, ("", ""))
    if state in PENDING:
        return RunState(index, name, "pending", reason, job_id)
    if state in RUNNING:
        return RunState(index, name, "running", "", job_id)
    if not state:
        return RunState(index, name, "failed", error or f"job {job_id} is unknown to squeue and sacct", job_id)
    detail = error or _submitit_error(sweep_dir, job_id) or (
        "the job ended without a finished record" if state == "COMPLETED" else "")
    what = "" if state == "COMPLETED" else f"SLURM {state}"
    return RunState(index, name, "failed", "; ".join(x for x in (what, detail) if x), job_id)


def _submitit_error(sweep_dir: SweepDir, job_id: str) -> str:
    """The last line of the traceback submitit pickled for a task that raised (rank 0)."""
    path = sweep_dir.logs_dir / f"{job_id}_0_result.pkl"
    try:
        with open(path, "rb") as f:
            kind, payload = pickle.load(f)
    except Exception:  # absent (killed), or unreadable: no detail to add
        return ""
    if kind != "error":
        return ""
    lines = [ln for ln in str(payload).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def slurm_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """{job id (array tasks as `123_4`): (state, reason)}: sacct for every job, squeue over it for live ones."""
    from submitit.slurm.slurm import SlurmInfoWatcher  # parses sacct/squeue ids, array ranges included

    parse = SlurmInfoWatcher().read_info
    mains = sorted({j.split("_")[0] for j in job_ids})
    out: dict[str, tuple[str, str]] = {}
    sacct = _call(["sacct", "-X", "--parsable2", "-o", "JobID,State,ExitCode", "-j", ",".join(mains)])
    for jid, info in parse(sacct).items():
        out[jid] = (info.get("State", "").split(" ")[0], "")
    squeue = _call(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(mains)])
    for jid, info in parse("JobID|State|Reason\n" + squeue).items():
        reason = info.get("Reason", "")
        out[jid] = (info["State"], reason if info["State"] in PENDING and reason != "None" else "")
    return out


def _call(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # no SLURM here, or no accounting (sacct): the other source still answers


def format_states(states: list[RunState]) -> str:
    rows = [("#", "run", "state", "job", "reason")] + [
        (str(s.index), s.name, s.state, s.job_id or "-", s.reason) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    counts = {k: sum(s.state == k for s in states) for k in STATES}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)
