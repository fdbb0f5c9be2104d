"""The results store of a sweep, and the state of each of its runs.

    <results_root>/<sweep>/
      sweep.yaml       the sweep file as submitted
      manifest.json    runs (index, name, config, resources, job ids); written only by the submitter
      runs/<run>.json  one record per run, written atomically by the trainer (rank 0) on the node
      logs/            submitit: generated sbatch scripts, pickles, stdout/stderr per task

A run's state comes from its record first (a finished record is final) and from SLURM for the rest:
squeue says whether its job is alive (`-t all` also lists jobs that ended in the last minutes),
sacct how an older one ended. States: done | running | pending | held | failed | unsubmitted |
unknown | n/a.

`unknown` means the scheduler did not answer (squeue or sacct failed or timed out, after
$MMHPC_SCHEDULER_TIMEOUT seconds, default 60): the run may be queued or running, so `resume` refuses
to submit anything while a state is unknown. Never a guess of `failed`.

A submission records its intent in the manifest before it calls sbatch: each run's job entry gets
the array's unique job name (`mmhpc-<sweep>-<shape>-<tag>`) and the run's task in the array, with no
job id yet. If the submitter dies before it saves the job ids (or sbatch dies after queueing), the
job is found again by its name (`find_by_name`), so it is adopted, never submitted a second time.
`submit --hold` writes such entries for the sbatch lines it prints (state `held` until a job of that
name shows up).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pickle
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NotRequired

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from mmhpc.atomic import atomic_write_text
from mmhpc.bulk import gc_paused
from mmhpc.errors import ConfigError
from mmhpc.results import RunRecord, read_record, record_file

if TYPE_CHECKING:  # status and resume need neither the config schema nor the sweep file's
    from mmhpc.sweep import SweepPlan

MANIFEST_SCHEMA = 1
PENDING = {
    "PENDING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "CONFIGURING",
    "RESIZING",
    "SUSPENDED",
}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
STATES = ("done", "running", "pending", "held", "failed", "unsubmitted", "unknown", "n/a")


# ---- the manifest's schema: checked on every load and save --------------------------------------
# The code reads and updates the manifest as the plain JSON mapping it is (job entries gain fields
# as a submission proceeds); these TypedDicts are its schema, so a hand-edited or torn manifest is
# refused with its file and field named before `status` or `resume` acts on it, and the submitter
# never writes a bad one. (TypedDicts, not models: pydantic checks a 10,000-run manifest in about a
# third of the time a model instance per run and per job takes.)
_OPEN = ConfigDict(extra="allow")


@with_config(_OPEN)
class ManifestJob(TypedDict, total=False):
    """One submission of a run: the job name is its intent, the job id is filled once sbatch
    answered."""
    job_id: str | None
    job_name: str | None
    task: int | None


@with_config(_OPEN)
class ManifestRun(TypedDict):
    index: Annotated[int, Field(ge=0)]
    name: Annotated[str, Field(min_length=1)]
    axes: NotRequired[dict[str, Any]]
    config: dict[str, Any]
    request: NotRequired[dict[str, Any] | None]
    resources: NotRequired[dict[str, Any] | None]
    not_applicable: NotRequired[str | None]
    jobs: list[ManifestJob]


@with_config(_OPEN)
class ManifestArray(TypedDict):
    job_name: NotRequired[str | None]  # absent in manifests written before submissions were tagged
    runs: list[int]
    job_id: NotRequired[str | None]


# functional form: the manifest's key `schema`
SweepManifest = with_config(_OPEN)(TypedDict("SweepManifest", {
    "schema": int,
    "sweep": str,
    "source": NotRequired[str | None],
    "cluster": str,
    "size": NotRequired[str | None],
    "created": NotRequired[float | None],
    "runs_dir": NotRequired[str | None],
    "runs": list[ManifestRun],
    "arrays": NotRequired[list[ManifestArray]],
}))


@functools.cache
def _manifest_schema() -> TypeAdapter:
    return TypeAdapter(SweepManifest)


def check_manifest(manifest: dict, path: Path) -> dict:
    """`manifest` itself when it has the manifest's shape, else a ConfigError naming the file and
    fields."""
    try:
        _manifest_schema().validate_python(manifest)
    except ValidationError as err:
        raise ConfigError.from_validation(err, file=str(path)) from None
    return manifest


class SweepDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self._lines: dict[
            int, tuple[dict, str]
        ] = {}  # run index -> (the run, its JSON line) as last saved

    manifest_path = property(lambda self: self.path / "manifest.json")
    runs_dir = property(lambda self: self.path / "runs")
    logs_dir = property(lambda self: self.path / "logs")

    def exists(self) -> bool:
        return self.manifest_path.exists()

    @gc_paused()
    def load(self) -> dict:
        """The manifest; a missing one is an error and creates nothing (a mistyped path stays
        absent)."""
        if not self.exists():
            raise FileNotFoundError(f"{self.path}: not a sweep directory (no manifest.json); "
                                    "create one with `mmhpc sweep submit FILE`")
        try:
            raw = json.loads(self.manifest_path.read_text())
        except (
            ValueError
        ) as err:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not text
            raise ConfigError(
                f"{self.manifest_path}: not JSON ({err}); the sweep's records under runs/ are "
                "intact"
            ) from None
        return check_manifest(raw, self.manifest_path)

    @gc_paused()
    def save(self, manifest: dict, changed: list[dict] | None = None) -> None:
        """Write the manifest atomically, checked first. `changed`: the only runs modified since
        this manifest was last saved here (a submission saves a 10,000-run manifest twice per job
        array): only they and the top level are checked and encoded again, the others are written as
        saved before."""
        check_manifest(
            manifest if changed is None else {**manifest, "runs": changed}, self.manifest_path
        )
        fresh = None if changed is None else {id(run) for run in changed}
        lines = []
        for run in manifest["runs"]:
            saved = self._lines.get(run["index"])
            if saved is None or saved[0] is not run or fresh is None or id(run) in fresh:
                saved = self._lines[run["index"]] = (run, json.dumps(run, separators=(",", ":")))
            lines.append(saved[1])
        atomic_write_text(self.manifest_path, manifest_json(manifest, lines))

    @contextlib.contextmanager
    def lock(self, create: bool = False):
        """One submitter at a time, so that two `resume`s cannot submit the same run twice. Only
        `submit` creates the directory; elsewhere a missing sweep directory is an error, and nothing
        is created."""
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.exists():
            self.load()  # raises, naming the path
        with open(self.path / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record_path(self, name: str) -> Path:
        return record_file(self.runs_dir, name)

    def record_names(self) -> set[str]:
        """The run names that have a record file (one directory listing instead of a look-up per
        run)."""
        suffix = record_file(".", "").name  # a record is `<run><suffix>`
        try:
            return {
                e.name[: -len(suffix)] for e in os.scandir(self.runs_dir) if e.name.endswith(suffix)
            }
        except FileNotFoundError:
            return set()

    def record(self, name: str) -> RunRecord | None:
        try:
            return read_record(self.record_path(name))
        except (OSError, ValueError):
            return (
                None  # missing, or not a record (torn by a crash mid-write of a non-atomic writer)
            )


def manifest_json(manifest: dict, run_lines: list[str] | None = None) -> str:
    """The manifest as JSON with one line per run (`run_lines`: those lines, already encoded):
    greppable, and written by json's C encoder (indented JSON takes its pure-Python one: seconds for
    10,000 runs)."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "runs"}, separators=(",", ":"))[
        1:-1
    ]
    if run_lines is None:
        run_lines = [json.dumps(run, separators=(",", ":")) for run in manifest["runs"]]
    return "{" + head + ("," if head else "") + '"runs":[\n' + ",\n".join(run_lines) + "\n]}\n"


@gc_paused()
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
            from mmhpc.sweep import SweepError

            changed = sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
            raise SweepError(
                [
                    f"{sweep_dir.path}: holds a different expansion of sweep {manifest['sweep']} "
                    f"({len(changed)} run(s) differ, e.g. {changed[0]}); resume it with "
                    "`mmhpc sweep "
                    "resume`, or submit this one under another --name"
                ],
                "sweep",
            )
        return manifest
    sweep_dir.path.mkdir(parents=True, exist_ok=True)
    if source is not None:
        shutil.copyfile(source, sweep_dir.path / "sweep.yaml")
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "sweep": plan.name,
        "source": str(source) if source else None,
        "cluster": plan.cluster,
        "size": plan.size,
        "created": time.time(),
        "runs_dir": str(sweep_dir.runs_dir),
        "runs": runs,
        "arrays": [],
    }
    sweep_dir.save(manifest)
    return manifest


@dataclass
class RunState:
    index: int
    name: str
    state: str
    reason: str = ""
    job_id: str | None = None


# ---- what the scheduler says
# -------------------------------------------------------------------------------

def scheduler_timeout_s() -> float:
    return float(os.environ.get("MMHPC_SCHEDULER_TIMEOUT") or 60)


@dataclass
class SchedulerView:
    """squeue's and sacct's answers about some jobs: {job id (array tasks `123_4`): (state, reason,
    name)}. An error is why a command gave no answer (it failed or timed out); None when it
    answered."""
    squeue: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    sacct: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    squeue_error: str | None = None
    sacct_error: str | None = None

    def lookup(self, job_id: str) -> tuple[str, str] | str:
        """(state, reason) of a job, or the reason it cannot be told (a str): never a guess."""
        if job_id in self.squeue:
            return self.squeue[job_id][:2]
        if self.squeue_error:
            return f"squeue failed ({self.squeue_error}): job {job_id} may be queued or running"
        if job_id in self.sacct:
            return self.sacct[job_id][:2]
        if self.sacct_error:
            return (f"job {job_id} has left the queue and sacct failed ({self.sacct_error}): "
                    "how it ended is unknown")
        return "", ""

    def find_by_name(self, job_name: str, task: int) -> str | None:
        """The id of task `task` of the job named `job_name` (a plain job is task 0), from squeue or
        sacct."""
        found = None
        for jobs in (self.squeue, self.sacct):
            for jid, (_, _, name) in jobs.items():
                if name != job_name:
                    continue
                main, _, index = jid.partition("_")
                if (int(index) if index else 0) == task and (
                    found is None or _id_key(jid) > _id_key(found)
                ):
                    found = jid  # the latest, should a name have been submitted twice by hand
        return found

    def name_unanswered(self) -> str | None:
        """Why a job name that was not found may still exist (None when both commands answered)."""
        errors = [
            f"{cmd} failed ({e})"
            for cmd, e in (("squeue", self.squeue_error), ("sacct", self.sacct_error))
            if e
        ]
        return "; ".join(errors) or None


def _id_key(job_id: str) -> tuple[int, int]:
    main, _, index = job_id.partition("_")
    return int(main) if main.isdigit() else 0, int(index) if index.isdigit() else 0


def query_scheduler(
    job_ids: list[str], names: list[str], since: float | None = None
) -> SchedulerView:
    """Ask squeue for this user's jobs (alive or recently ended) and sacct for the given ids and
    names that squeue no longer lists. A command that fails or times out leaves its error in the
    view."""
    from submitit.slurm.slurm import (
        SlurmInfoWatcher,
    )  # parses squeue/sacct ids, array ranges included

    parse = SlurmInfoWatcher().read_info
    view = SchedulerView()

    def table(text: str) -> dict[str, tuple[str, str, str]]:
        rows = parse("JobID|State|Reason|Name\n" + text)
        return {
            jid: (
                r["State"].split(" ")[0],
                "" if r.get("Reason") in (None, "None") else r["Reason"],
                r.get("Name", ""),
            )
            for jid, r in rows.items()
        }

    out, view.squeue_error = _call(["squeue", "--me", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%j"])
    if out is not None:
        view.squeue = table(out)
    ids = sorted({j.split("_")[0] for j in job_ids if j not in view.squeue})
    missing_names = sorted(set(names) - {n for _, _, n in view.squeue.values()})
    for flags in ([["-j", ",".join(ids)]] if ids else []) + (
        [["--name", ",".join(missing_names), "-S", _sacct_time(since)]] if missing_names else []
    ):
        out, error = _call(
            ["sacct", "-X", "-n", "--parsable2", "-o", "JobID,State,Reason,JobName", *flags]
        )
        if out is not None:
            view.sacct.update(table(out))
        elif error and "accounting storage is disabled" in error:
            continue  # a cluster without accounting: squeue is all there is
        else:
            view.sacct_error = error
    return view


def _sacct_time(since: float | None) -> str:
    """sacct's -S (a search by name covers jobs that started since then; an hour's margin for
    clocks)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((since or time.time()) - 3600))


def _call(cmd: list[str]) -> tuple[str | None, str | None]:
    """(stdout, None), or (None, why it failed): not installed, an error exit, or a timeout."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=scheduler_timeout_s(),
                             stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return None, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return None, f"{cmd[0]}: no answer in {scheduler_timeout_s():g} s"
    except OSError as e:
        return None, f"{cmd[0]}: {e}"
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        return None, f"{cmd[0]} exit {res.returncode}" + (f": {why[-1][:200]}" if why else "")
    return res.stdout, None


# ---- the state of each run
# ---------------------------------------------------------------------------------

@gc_paused()
def run_states(sweep_dir: SweepDir, manifest: dict, query_slurm: bool = True) -> list[RunState]:
    """Each run's state; `query_slurm=False`: records only (runs that need the scheduler are
    unknown)."""
    present = sweep_dir.record_names()
    records = {
        r["name"]: sweep_dir.record(r["name"]) if r["name"] in present else None
        for r in manifest["runs"]
    }
    jobs = {r["name"]: _last_job(r, records[r["name"]]) for r in manifest["runs"]}
    open_jobs = [
        j
        for r in manifest["runs"]
        for j in [jobs[r["name"]]]
        if j
        and j.get("scheduler") == "slurm"
        and not r.get("not_applicable")
        and getattr(records[r["name"]], "status", None) != "done"
    ]
    view = None
    if query_slurm and open_jobs:
        view = query_scheduler([j["job_id"] for j in open_jobs if j.get("job_id")],
                               sorted({j["job_name"] for j in open_jobs if not j.get("job_id")}),
                               min((j.get("submitted") or time.time()) for j in open_jobs))
    return [
        _state(sweep_dir, run, records[run["name"]], jobs[run["name"]], view)
        for run in manifest["runs"]
    ]


def _last_job(run: dict, rec: RunRecord | None) -> dict | None:
    """The run's latest job: from the manifest, or, for a run submitted by hand
    (jobs/sweep_array.sbatch)
    with no job name the manifest knows, the SLURM job its record was written from."""
    if run["jobs"] and (run["jobs"][-1].get("job_id") or not run["jobs"][-1].get("hand")):
        return run["jobs"][-1]
    slurm = rec.env.slurm if rec else {}
    if "SLURM_ARRAY_JOB_ID" in slurm:
        return {
            "job_id": f"{slurm['SLURM_ARRAY_JOB_ID']}_{slurm['SLURM_ARRAY_TASK_ID']}",
            "scheduler": "slurm",
        }
    if "SLURM_JOB_ID" in slurm:
        return {"job_id": slurm["SLURM_JOB_ID"], "scheduler": "slurm"}
    return run["jobs"][-1] if run["jobs"] else None


def _state(sweep_dir: SweepDir, run: dict, rec: RunRecord | None, job: dict | None,
           view: SchedulerView | None) -> RunState:
    index, name = run["index"], run["name"]
    if run.get("not_applicable"):
        return RunState(index, name, "n/a", run["not_applicable"])
    job_id = job.get("job_id") if job else None
    if rec and rec.status == "done":
        return RunState(index, name, "done", job_id=job_id)
    error = (rec.error or "") if rec and rec.status in ("failed", "interrupted") else ""
    if job is None:
        return RunState(index, name, "failed" if rec else "unsubmitted", error or (
            "interrupted: the record was never finished" if rec else ""))
    if (
        job.get("scheduler") != "slurm"
    ):  # in-process or local executor: nothing left alive once the command ended
        return RunState(
            index, name, "failed", error or "interrupted: the record was never finished", job_id
        )
    if view is None:
        return RunState(index, name, "unknown", "the scheduler was not asked (--no-slurm)", job_id)
    if (
        not job_id
    ):  # an intent: sbatch was called (or the sbatch line printed) but no job id was saved
        job_id = view.find_by_name(job["job_name"], job["task"])
        if job_id is None:
            why = view.name_unanswered()
            if why:
                return RunState(
                    index, name, "unknown", f"{why}: job {job['job_name']} may be queued"
                )
            if job.get("hand"):
                return RunState(
                    index,
                    name,
                    "held",
                    f"submit it by hand with the sbatch line of `submit --hold` "
                    f"(job name {job['job_name']})",
                )
            return RunState(index, name, "unsubmitted", f"sbatch did not queue {job['job_name']}")
    found = view.lookup(job_id)
    if isinstance(found, str):
        return RunState(index, name, "unknown", found, job_id)
    state, reason = found
    if state in PENDING:
        return RunState(index, name, "pending", reason, job_id)
    if state in RUNNING:
        return RunState(index, name, "running", "", job_id)
    if not state:
        return RunState(
            index, name, "failed", error or f"job {job_id} is unknown to squeue and sacct", job_id
        )
    detail = error or _submitit_error(sweep_dir, job_id) or (
        "the job ended without a finished record" if state == "COMPLETED" else "")
    what = "" if state == "COMPLETED" else f"SLURM {state}"
    return RunState(index, name, "failed", "; ".join(x for x in (what, detail) if x), job_id)


def adopt(manifest: dict, states: list[RunState]) -> list[tuple[dict, dict]]:
    """Write the job ids found by name into the intents of the manifest; returns (run, adopted job
    entry) pairs."""
    adopted = []
    for s in states:
        run = manifest["runs"][s.index]
        entry = run["jobs"][-1] if run["jobs"] else None
        if entry is not None and not entry.get("job_id") and s.job_id and entry.get("job_name"):
            entry["job_id"] = s.job_id
            adopted.append((run, entry))
    for array in manifest.get("arrays", []):
        if not array.get("job_id"):
            ids = {
                manifest["runs"][i]["jobs"][-1].get("job_id")
                for i in array["runs"]
                if manifest["runs"][i]["jobs"]
            }
            mains = {j.split("_")[0] for j in ids if j}
            if len(mains) == 1:
                array["job_id"] = mains.pop()
    return adopted


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


def format_states(states: list[RunState]) -> str:
    rows = [("#", "run", "state", "job", "reason")] + [
        (str(s.index), s.name, s.state, s.job_id or "-", s.reason) for s in states]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    counts = {k: sum(s.state == k for s in states) for k in STATES}
    lines.append(", ".join(f"{n} {k}" for k, n in counts.items() if n))
    return "\n".join(lines)
