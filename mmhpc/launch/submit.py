"""Submission with submitit: one job array per resource shape, DDP as one SLURM task per GPU,
requeue on preemption or timeout, and the same runs without a scheduler.

Submission returns as soon as SLURM has the jobs; `wait` follows them with a progress bar. Every run
is a `SweepRun` (a submitit `Checkpointable`). On SLURM's signal before the time limit or before
preemption (USR2, `--signal=USR2@<signal_delay_s>`) the trainer stops at the next step boundary
(`mmhpc.train.Preempted`), then the job requeues itself: through submitit's handler in a submitit
job (which also counts timeouts against `max_requeues`), with `scontrol requeue` in a job of
jobs/sweep_array.sbatch. The requeued job resumes from the run's last epoch checkpoint
(`output.checkpoint=true`, set for every sweep run), so a timeout ends REQUEUED, never FAILED. The
sbatch scripts of `--dry-run` come from submitit's own executor, so they are the ones a real
submission would write.
"""
from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import submitit
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.slurm.slurm import SlurmExecutor
from tqdm.auto import tqdm

from mmhpc.bulk import gc_paused
from mmhpc.config import RunConfig
from mmhpc.errors import RunError, SchedulerError
from mmhpc.launch.clusters import ClusterError, ClusterProfile, Resources, resolve_resources
from mmhpc.launch.store import SweepDir, adopt, query_scheduler, run_states
from mmhpc.preempt import PREEMPT_SIGNAL, STOP_REQUESTED, note_stop
from mmhpc.progress import bars, run_label
from mmhpc.results import read_record
from mmhpc.sweep import SweepError

RESUBMIT = (
    "unsubmitted",
    "failed",
    "held",
)  # never done (final), pending/running (alive), unknown or n/a
log = logging.getLogger(__name__)


# ---- what runs on the node
# ---------------------------------------------------------------------------

class SweepRun(submitit.helpers.Checkpointable):
    """One run of a sweep. Checkpointable: submitit requeues it as is; the trainer resumes from
    disk."""

    def __init__(self, config: dict, stage_data: bool = False, data_home: str | None = None,
                 scratch: str = "TMPDIR"):
        self.config, self.stage_data, self.data_home, self.scratch = (
            config,
            stage_data,
            data_home,
            scratch,
        )

    def __call__(self) -> str:
        if self.data_home:  # the synthetic cache of the submitting machine, wherever the job starts
            os.environ.setdefault("MMHPC_DATA", self.data_home)
        job_logging()
        return execute_run(self.config, self.stage_data, scratch=getattr(self, "scratch", "TMPDIR"))


def job_logging() -> None:
    """Log lines (one per epoch) to the job's output file, unless the command configured logging
    already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def execute_run(config: dict, stage_data: bool = False, max_requeues: int | None = None,
                scratch: str = "TMPDIR") -> str:
    """Train one run config here; a finished record is never rerun. Returns what happened.

    In a SLURM job the pre-timeout signal stops training at a step boundary and requeues the job
    (`max_requeues`: the limit of jobs/sweep_array.sbatch jobs; submitit counts its own)."""
    cfg = RunConfig.from_dict(config)
    rank = _join_distributed(cfg)
    if rank is None:
        return "extra task of a single-process run: nothing to do"
    record_path = cfg.record_path()
    if _finished(record_path):
        return f"{record_path}: already done"
    if stage_data and cfg.data.source == "prepared":
        if os.environ.get(scratch):
            cfg = cfg.replace(
                {"data.root": stage_dataset(cfg.data.root, Path(os.environ[scratch]))}
            )
        else:
            log.warning(
                "stage_data: $%s (the profile's node-local scratch) is unset on %s: reading %s "
                "from "
                "the shared file system",
                scratch,
                os.uname().nodename,
                cfg.data.root,
            )
    from mmhpc.doctor import check_job
    from mmhpc.train import Preempted, train, write_failed_record

    try:
        check_job(
            cfg
        )  # first: a node that cannot run it (driver, GPUs, data) fails the job in one sentence
        with _signal_stops_training() as previous:
            try:
                train(cfg, progress=False)
            except Preempted:
                if rank == 0:
                    _requeue(previous, max_requeues)
                return f"{cfg.run_name()}: preempted, job requeued"
    except BaseException as e:
        # train() records failures, also those before its trainer starts; this covers the node
        # check's
        write_failed_record(cfg, e)
        raise
    return str(record_path)


@contextlib.contextmanager
def _signal_stops_training():
    """While training, PREEMPT_SIGNAL asks the trainer to stop at its next step boundary. Yields the
    handler it replaces when that is someone else's (submitit's checkpoint-and-requeue in a submitit
    job). A signal noted since the job's start (mmhpc.preempt) stays noted: the run stops at its
    first step. Afterwards the signal is ignored and the note cleared: the run's work is over, and a
    signal that lands while the process ends (Python then restores the default action, which kills
    it) would turn a finished job into a FAILED one."""
    try:
        previous = signal.signal(PREEMPT_SIGNAL, note_stop)
    except (
        ValueError
    ):  # not the main thread (an in-process run from a thread): nothing can signal it
        yield None
        return
    try:
        yield None if previous is note_stop else previous
    finally:
        signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)
        STOP_REQUESTED.clear()


def _requeue(previous, max_requeues: int | None) -> None:
    """Requeue this SLURM job after the trainer stopped: submitit's handler when submitit installed
    one (it checkpoints the job's callable, counts timeouts, calls `scontrol requeue` and exits),
    else `scontrol requeue` here, up to `max_requeues` restarts."""
    if callable(previous):
        previous(PREEMPT_SIGNAL, None)
        return
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        raise RunError(
            "preempted outside a SLURM job: nothing to requeue; rerun it to resume from its "
            "checkpoint"
        )
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if max_requeues is not None and restarts >= max_requeues:
        raise RunError(
            f"job {job}: stopped by the pre-timeout signal after {restarts} requeue(s), the "
            "profile's "
            "max_requeues; `mmhpc sweep resume` continues it from its checkpoint"
        )
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60, capture_output=True)
    log.warning(
        "job %s requeued (restart %d): it resumes from the run's last epoch checkpoint",
        job,
        restarts + 1,
    )


def _finished(path: Path) -> bool:
    try:
        return read_record(path).status == "done"
    except (OSError, ValueError):
        return False


def _join_distributed(cfg: RunConfig) -> int | None:
    """Rank of this task; exports the torch.distributed variables for a multi-task (DDP) job.

    None for the extra tasks of a non-DDP run in a multi-task allocation (e.g. a hand-written sbatch
    line): only one process may train it, or two would write one record.
    """
    if "SLURM_JOB_ID" in os.environ and "SUBMITIT_EXECUTOR" not in os.environ:
        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # `sweep run-index` under srun, outside submitit
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return 0
    env = submitit.JobEnvironment()
    if cfg.system.parallelism != "ddp":
        return 0 if env.global_rank == 0 else None
    # also for one task (a 1-GPU DDP run): the trainer reads RANK/WORLD_SIZE. Not
    # CUDA_VISIBLE_DEVICES: the
    # trainer picks the GPU of its LOCAL_RANK among all the node's GPUs
    submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    return env.global_rank


def stage_dataset(root: str, tmpdir: Path) -> str:
    """Copy a prepared dataset to node-local storage once per node (the tasks of a job race
    safely)."""
    src = Path(root)
    dest = tmpdir / "mmhpc-data" / src.name
    if not (dest / "manifest.json").exists():
        part = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        shutil.copytree(src, part)
        try:
            os.rename(part, dest)
        except OSError:  # another task of this job got there first
            shutil.rmtree(part, ignore_errors=True)
    return str(dest)


# ---- executors
# -----------------------------------------------------------------------------------------

class _RenderOnlyExecutor(SlurmExecutor):
    """submitit's SlurmExecutor without its check for `srun`: renders sbatch scripts where SLURM is
    absent."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def slurm_parameters(
    profile: ClusterProfile,
    res: Resources,
    job_name: str,
    parallelism: int | None = None,
    after: str | None = None,
) -> dict:
    """submitit's parameters for one job array: the resource lines of its sbatch script.

    `--cpus-per-task` also goes to `srun` (since SLURM 22.05 srun no longer inherits it from
    sbatch), `--mem` carries its unit (a bare number would be megabytes), GPUs are asked for as the
    profile says (`--gpus-per-node=TYPE:N` with the GPU type's gres name, untyped, or `--gpus=N`),
    with the GPU type's partition and constraint; the account is the job account
    (`account_suffix`)."""
    params = {"job_name": job_name, "time": res.time_min, "nodes": res.nodes,
              "ntasks_per_node": res.tasks_per_node, "signal_delay_s": profile.signal_delay_s,
              "array_parallelism": parallelism or profile.array_parallelism}
    spec = profile.gpus.get(res.gpu) if res.gpu else None
    optional = {
        "partition": profile.gpu_partition(res.gpu),
        "account": profile.job_account,
        "qos": profile.qos,
        "constraint": spec.constraint if spec is not None else None,
        "exclusive": True if profile.exclusive else None,
        "cpus_per_task": res.cpus_per_task,
        "mem": res.mem_arg(),
        "setup": profile.setup_lines(res.nodes) or None,
        "dependency": f"afterany:{after}" if after else None,
        "srun_args": [f"--cpus-per-task={res.cpus_per_task}"] if res.cpus_per_task else None,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    # requeue: allowed even where the site's JobRequeue default is 0 (USR2 before the limit requeues
    # the job)
    params["additional_parameters"] = {"requeue": True}
    if res.gpu:  # submitit's gpus_per_node is a count; a typed request (A100:4) goes in verbatim
        flag, value = gpu_request(profile, res)
        params["additional_parameters"][flag.replace("-", "_")] = value
    return params


def gpu_request(profile: ClusterProfile, res: Resources) -> tuple[str, str]:
    """The sbatch option and value that ask for a run's GPUs: `gpus-per-node`, `A100:4` (typed with
    the GPU type's gres name), `4` (untyped), or `gpus`, `8` (all GPUs of the job, Berzelius)."""
    gres = profile.gpus[res.gpu].gres_type
    if profile.gpu_request == "gpus":
        count = res.gpus_per_node * res.nodes
        return "gpus", f"{gres}:{count}" if gres else str(count)
    return "gpus-per-node", f"{gres}:{res.gpus_per_node}" if gres else str(res.gpus_per_node)


def make_executor(
    profile: ClusterProfile,
    res: Resources,
    folder: Path,
    job_name: str,
    render_only: bool = False,
    parallelism: int | None = None,
    after: str | None = None,
) -> SlurmExecutor:
    cls = _RenderOnlyExecutor if render_only else SlurmExecutor
    try:
        executor = cls(folder, max_num_timeout=profile.max_requeues, python=profile.interpreter())
    except RuntimeError as e:  # no srun on PATH
        raise ClusterError(
            f"cluster {profile.name}: {e} For the local SLURM: env/slurm/install.sh && "
            'eval "$(env/slurm/start.sh)"'
        ) from None
    executor.update_parameters(**slurm_parameters(profile, res, job_name, parallelism, after))
    return executor


def group_by_shape(runs: list[dict]) -> dict[Resources, list[dict]]:
    groups: dict[Resources, list[dict]] = defaultdict(list)
    for run in runs:
        groups[Resources(**run["resources"])].append(run)
    return dict(groups)


@dataclass
class ArrayPlan:
    """One job array of a submission: its runs, its own concurrency cap, and the array it waits
    for."""
    res: Resources
    runs: list[dict]
    parallelism: int
    after: (
        int | None
    )  # position of the earlier array in the same lane (sbatch --dependency=afterany)


def plan_arrays(profile: ClusterProfile, runs: list[dict]) -> list[ArrayPlan]:
    """Job arrays for these runs: one per resource shape, split at the profile's `max_array_size`.

    `array_parallelism` caps the whole submission, not each array: the arrays are dealt into at most
    `array_parallelism` lanes, each lane gets a share of the cap (the shares add up to it), and an
    array waits for the previous array of its lane to end, so at most the cap runs at once."""
    chunks = [
        (res, group[i : i + profile.max_array_size])
        for res, group in group_by_shape(runs).items()
        for i in range(0, len(group), profile.max_array_size)
    ]
    cap = profile.array_parallelism
    lanes = min(cap, len(chunks)) or 1
    shares = [cap // lanes + (lane < cap % lanes) for lane in range(lanes)]
    return [
        ArrayPlan(res, group, min(shares[k % lanes], len(group)), k - lanes if k >= lanes else None)
        for k, (res, group) in enumerate(chunks)
    ]


def render_scripts(
    sweep_dir: SweepDir, profile: ClusterProfile, sweep: str, runs: list[dict]
) -> str:
    """The sbatch script of each job array a submission would make (nothing written, nothing
    submitted)."""
    out = []
    for k, plan in enumerate(plan_arrays(profile, runs)):
        after = f"JOBID_OF_ARRAY_{plan.after}" if plan.after is not None else None
        ex = make_executor(
            profile,
            plan.res,
            sweep_dir.logs_dir,
            f"mmhpc-{sweep}-{plan.res.label()}",
            render_only=True,
            parallelism=plan.parallelism,
            after=after,
        )
        if len(plan.runs) > 1:
            ex.parameters["map_count"] = len(plan.runs)  # what submitit sets for a job array
        names = ", ".join(f"{r['index']}:{r['name']}" for r in plan.runs)
        out.append(f"# ---- array {k}: {plan.res.label()}: {len(plan.runs)} run(s): {names}\n"
                   + ex._make_submission_file_text(ex._submitit_command_str, "dry-run"))
    return "\n".join(out)


def hand_sbatch_lines(sweep_dir: SweepDir, profile: ClusterProfile, runs: list[dict]) -> list[str]:
    """`sbatch` command lines for jobs/sweep_array.sbatch, one per job array (for submitting by
    hand)."""
    return [sbatch_line(sweep_dir, profile, plan) for plan in plan_arrays(profile, runs)]


def sbatch_line(
    sweep_dir: SweepDir, profile: ClusterProfile, plan: ArrayPlan, job_name: str | None = None
) -> str:
    """The `sbatch` command line of one job array for jobs/sweep_array.sbatch; `job_name`: the name
    `submit --hold` recorded, so that status finds the job."""
    res = plan.res
    params = slurm_parameters(profile, res, job_name or "", plan.parallelism)
    flags = [f"--array={','.join(str(r['index']) for r in plan.runs)}%{plan.parallelism}"]
    flags += [f"--partition={params['partition']}"] if params.get("partition") else []
    flags += [
        f"--time={res.time_min}",
        f"--nodes={res.nodes}",
        f"--ntasks-per-node={res.tasks_per_node}",
    ]
    flags += [f"--job-name={job_name}"] if job_name else []
    flags += [
        f"--{k.replace('_', '-')}={params[k]}"
        for k in ("account", "qos", "constraint")
        if params.get(k)
    ]
    flags += ["--exclusive"] if params.get("exclusive") else []
    flags += [f"--cpus-per-task={res.cpus_per_task}"] if res.cpus_per_task else []
    flags += [f"--mem={res.mem_arg()}"] if res.mem_gb else []
    flags += [f"--{flag}={value}" for flag, value in [gpu_request(profile, res)]] if res.gpu else []
    return f"sbatch {' '.join(flags)} jobs/sweep_array.sbatch {sweep_dir.path}"


def one_gpu_flags(profile: ClusterProfile, minutes: int = 30) -> list[str]:
    """`srun` flags for one task with one GPU of the profile's default type (a venv built on a node:
    env/install-cluster.sh --cluster NAME)."""
    res = Resources(
        gpu=profile.default_gpu,
        gpus_per_node=1 if profile.is_gpu else 0,
        nodes=1,
        tasks_per_node=1,
        time_min=min(minutes, profile.max_time_min),
        cpus_per_task=profile.gpus[profile.default_gpu].cores_per_gpu(1)
        if profile.is_gpu
        else None,
    )
    params = slurm_parameters(profile, res, "mmhpc-install")
    flags = [f"--time={res.time_min}", "--nodes=1", "--ntasks=1"]
    flags += [
        f"--{k}={params[k]}" for k in ("partition", "account", "qos", "constraint") if params.get(k)
    ]
    flags += [f"--cpus-per-task={res.cpus_per_task}"] if res.cpus_per_task else []
    flags += [f"--{flag}={value}" for flag, value in [gpu_request(profile, res)]] if res.gpu else []
    return flags


# ---- submitting
# ----------------------------------------------------------------------------------------

HELD_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)


@contextlib.contextmanager
def signals_held(signums=HELD_SIGNALS):
    """Hold Ctrl-C, hang-up and TERM until the block ends, then act on one that came meanwhile.
    Python's handlers are deferred (a signal may reach any thread of the process); the main thread
    also blocks them, so the sbatch child, which inherits that mask, cannot be killed mid-way by a
    Ctrl-C at the terminal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, frame: arrived.append(signum)) for sig in signums
    }
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signums)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(arrived):
            log.warning("%s arrived during submission: acting on it now that the job ids are saved",
                        signal.Signals(sig).name)
            signal.raise_signal(sig)


def job_name(sweep: str, res: Resources) -> str:
    """A name no other submission has: how a job is found again when its id was never saved."""
    return f"mmhpc-{sweep}-{res.label()}-{secrets.token_hex(4)}"


def submit_runs(sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile, indices: list[int],
                progress: bool = True) -> list[str]:
    """Submit these runs of the manifest (slurm: returns at once; none: runs them here, one by
    one)."""
    runs = [manifest["runs"][i] for i in indices]
    _pregenerate_tiny_data(runs)
    if profile.scheduler == "none":
        return _run_here(sweep_dir, manifest, profile, runs, progress)
    job_ids: list[str] = []
    array_ids: list[str] = []
    for plan in plan_arrays(profile, runs):
        ids = _submit_array(sweep_dir, manifest, profile, plan,
                            array_ids[plan.after] if plan.after is not None else None)
        array_ids.append(ids[0].split("_")[0])
        job_ids += ids
    return job_ids


@gc_paused()  # the array's job entries, submitit's tasks: mmhpc.bulk
def _submit_array(sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile, plan: ArrayPlan,
                  after: str | None) -> list[str]:
    """One sbatch: the intent is saved first, the job ids right after; signals wait until both are
    saved."""
    res, group = plan.res, plan.runs
    name = job_name(manifest["sweep"], res)
    ex = make_executor(
        profile, res, sweep_dir.logs_dir, name, parallelism=plan.parallelism, after=after
    )
    now = time.time()
    for task, run in enumerate(group):
        run["jobs"].append({"job_id": None, "job_name": name, "task": task, "scheduler": "slurm",
                            "cluster": profile.name, "submitted": now})
    array = {
        "job_id": None,
        "job_name": name,
        "shape": res.label(),
        "runs": [r["index"] for r in group],
        "script": None,
        "submitted": now,
    }
    manifest["arrays"].append(array)
    with signals_held():
        sweep_dir.save(
            manifest, group
        )  # the intent: whatever happens next, this array is found again by its name
        try:
            with ex.batch():  # one sbatch --array (a plain job when there is one run)
                jobs = [ex.submit(_sweep_run(profile, run)) for run in group]
            ids = [job.job_id for job in jobs]
            array["script"] = str(jobs[0].paths.submission_file)
        except (FailedJobError, FailedSubmissionError, OSError, subprocess.SubprocessError) as e:
            ids = _after_failed_sbatch(sweep_dir, manifest, profile, name, group, e)
        for run, jid in zip(group, ids):
            run["jobs"][-1]["job_id"] = jid
        array["job_id"] = ids[0].split("_")[0]
        sweep_dir.save(manifest, group)
    log.info("submitted %s: job %s, %d run(s)", name, array["job_id"], len(group))
    return ids


def _after_failed_sbatch(sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile, name: str,
                         group: list[dict], error: Exception) -> list[str]:
    """sbatch failed, or died after queueing: ask the queue for the array by its name. Found: its
    ids (adopted, with the task files submitit did not get to write). Not found: SchedulerError."""
    first = str(error).strip().splitlines()
    why = f"sbatch failed ({type(error).__name__}: {first[-1][:300] if first else ''})"
    view = query_scheduler([], [name], time.time())
    ids = [view.find_by_name(name, task) for task in range(len(group))]
    if all(ids):
        log.warning("%s, but it had queued %s as job %s: adopted", why, name, ids[0].split("_")[0])
        _write_task_files(sweep_dir, profile, list(zip(group, ids)))
        return ids
    unanswered = view.name_unanswered()
    if unanswered:
        raise SchedulerError(
            f"{why}; and {unanswered}, so whether it queued {name} is unknown. `mmhpc sweep "
            f"status {sweep_dir.path}` finds it by that name once the scheduler "
            "answers; "
            "`resume` submits nothing while that is unknown"
        )
    raise SchedulerError(
        f"{why}; no job named {name} is queued. Arrays submitted before it are in the "
        f"manifest; `mmhpc sweep resume {sweep_dir.path}` submits the rest"
    )


def _write_task_files(
    sweep_dir: SweepDir, profile: ClusterProfile, runs_ids: list[tuple[dict, str]]
) -> None:
    """The pickled callable each task of an adopted job loads at start (submitit's
    `<id>_submitted.pkl`),
    where the interrupted submission did not write it."""
    for run, jid in runs_ids:
        path = submitit.core.utils.JobPaths(sweep_dir.logs_dir, job_id=jid).submitted_pickle
        if not path.exists():
            delayed = submitit.core.utils.DelayedSubmission(_sweep_run(profile, run))
            delayed.set_timeout(Resources(**run["resources"]).time_min, profile.max_requeues)
            path.parent.mkdir(parents=True, exist_ok=True)
            delayed.dump(path)


def hold_runs(
    sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile, indices: list[int]
) -> list[str]:
    """`submit --hold`: record the job names of the sbatch lines for jobs/sweep_array.sbatch (state
    `held` until a job of that name is queued) and return the lines."""
    runs = [manifest["runs"][i] for i in indices]
    plans = plan_arrays(profile, runs)
    names = [job_name(manifest["sweep"], plan.res) for plan in plans]
    now = time.time()
    for plan, name in zip(plans, names):
        for run in plan.runs:  # jobs/sweep_array.sbatch runs array task N as run N
            run["jobs"].append(
                {
                    "job_id": None,
                    "job_name": name,
                    "task": run["index"],
                    "hand": True,
                    "scheduler": "slurm",
                    "cluster": profile.name,
                    "submitted": now,
                }
            )
    sweep_dir.save(manifest)
    return [sbatch_line(sweep_dir, profile, plan, name) for plan, name in zip(plans, names)]


def _sweep_run(profile: ClusterProfile, run: dict) -> SweepRun:
    home = os.environ.get("MMHPC_DATA", "data")
    return SweepRun(run["config"], profile.stage_data, str(Path(home).absolute()), profile.scratch)


def _pregenerate_tiny_data(runs: list[dict]) -> None:
    """Make the tiny synthetic datasets once here rather than in every array task at the same
    time."""
    datasets = {
        (c["dataset"], c["preset"], c["data_seed"], c["root"])
        for c in (r["config"]["data"] for r in runs)
        if c["source"] == "synthetic" and c["preset"] == "tiny"
    }
    if not datasets:
        return
    from mmhpc.data.synthetic import (
        ensure_synthetic,
    )  # imports torch: only when there is data to make

    for d in datasets:
        ensure_synthetic(*d, progress=False)


def _run_here(sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile, runs: list[dict],
              progress: bool) -> list[str]:
    done = []
    for k, run in enumerate(
        tqdm(runs, desc=f"sweep {manifest['sweep']}", disable=not bars(progress)), 1
    ):
        res = Resources(**run["resources"])
        entry = {
            "job_id": "in-process",
            "scheduler": "none",
            "cluster": profile.name,
            "submitted": time.time(),
        }
        try:
            if (
                res.tasks_per_node > 1
            ):  # DDP: separate processes with the torch.distributed variables
                ex = submitit.LocalExecutor(sweep_dir.logs_dir)
                ex.update_parameters(tasks_per_node=res.tasks_per_node, timeout_min=res.time_min)
                job = ex.submit(_sweep_run(profile, run))
                entry.update(job_id=job.job_id, scheduler="local")
                run["jobs"].append(entry)
                sweep_dir.save(manifest)
                job.results()  # one result per task
            else:
                run["jobs"].append(entry)
                sweep_dir.save(manifest)
                with run_label(f"{k}/{len(runs)} {run['name']}"):  # in every log line of the run
                    _sweep_run(profile, run)()
            done.append(run["name"])
        except Exception as e:  # one failed run does not stop the others; `sweep status` shows why
            log.error(
                "run %d (%s) failed: %s: %s",
                run["index"],
                run["name"],
                type(e).__name__,
                str(e).strip()[-500:],
            )
    return done


def to_resubmit(sweep_dir: SweepDir, manifest: dict, profile: ClusterProfile | None = None,
                dry_run: bool = False) -> list[int]:
    """The runs to submit again: neither done, alive nor not applicable. Jobs found by the name of
    an interrupted submission are adopted first (saved in the manifest; `dry_run`: adopts and saves
    nothing). Raises SchedulerError, submitting nothing, while the scheduler cannot tell whether
    some run is still queued or running."""
    states = run_states(sweep_dir, manifest)
    adopted = [] if dry_run else adopt(manifest, states)
    if adopted:
        sweep_dir.save(manifest)
        if profile is not None:
            _write_task_files(sweep_dir, profile, [(run, entry["job_id"]) for run, entry in adopted
                                                   if not entry.get("hand")])
        log.warning("adopted %d job(s) of an interrupted submission: %s", len(adopted),
                    ", ".join(sorted({entry["job_id"] for _, entry in adopted})))
    _refuse_unknown(sweep_dir, states)
    return [s.index for s in states if s.state in RESUBMIT]


def _refuse_unknown(sweep_dir: SweepDir, states) -> None:
    unknown = [s for s in states if s.state == "unknown"]
    if unknown:
        raise SchedulerError(
            f"{sweep_dir.path}: the state of {len(unknown)} run(s) is unknown, e.g. run "
            f"{unknown[0].index} ({unknown[0].name}): {unknown[0].reason}. "
            "Nothing submitted: a "
            "run still queued or running would run twice. Retry when squeue/sacct "
            "answer "
            f"(`mmhpc sweep status {sweep_dir.path}`)"
        )


def reresolve(manifest: dict, profile: ClusterProfile) -> None:
    """Recompute each run's allocation for `profile` (resume on another cluster); all errors at
    once."""
    errors = []
    for run in manifest["runs"]:
        if run.get("not_applicable"):
            continue
        res, errs, na = resolve_resources(
            profile, RunConfig.from_dict(run["config"]), run.get("request") or {}
        )
        errors += [f"run {run['index']} ({run['name']}): {e}" for e in errs]
        if na:
            errors.append(f"run {run['index']} ({run['name']}): {na}")
        elif res:
            run["resources"] = res.to_dict()
    if errors:
        raise SweepError(errors, f"sweep {manifest['sweep']} on {profile.name}")


def wait(sweep_dir: SweepDir, poll_s: float = 5.0, progress: bool = True):
    """Block until no run is pending or running; a progress bar counts the settled runs."""
    manifest = sweep_dir.load()
    quiet_polls = 0
    with tqdm(
        total=len(manifest["runs"]), desc=f"sweep {manifest['sweep']}", disable=not bars(progress)
    ) as bar:
        while True:
            states = run_states(sweep_dir, manifest)
            counts = {
                k: sum(s.state == k for s in states)
                for k in ("done", "failed", "running", "pending", "unknown")
            }
            alive = (
                counts["running"] + counts["pending"] + counts["unknown"]
            )  # unknown: the scheduler may answer
            bar.n = len(states) - alive
            bar.set_postfix({k: n for k, n in counts.items() if n}, refresh=True)
            # two quiet polls in a row: a job that just left squeue may not be in sacct yet
            quiet_polls = quiet_polls + 1 if alive == 0 else 0
            if quiet_polls >= 2:
                return states
            time.sleep(poll_s)


# ---- the two entry points: a sweep file, or a sweep directory to resume
# --------------------------------

def prepare_sweep(
    path: str | Path,
    cluster: str,
    size: str | None = None,
    account: str | None = None,
    results: str | Path | None = None,
    name: str | None = None,
    dry_run: bool = False,
    overrides: list[str] | None = None,
):
    """Load the profile, expand and validate every run: (profile, plan, sweep dir). Raises listing
    all errors."""
    from mmhpc.errors import problem
    from mmhpc.launch.clusters import load_profile
    from mmhpc.sweep import _dir_name, plan_sweep, read_sweep

    if name is not None:
        try:
            _dir_name(name)
        except ValueError as e:
            raise SweepError([problem("--name", str(e))], "sweep") from None
    profile = load_profile(cluster, account)
    profile.check_account(dry_run)
    profile.check_interpreter(dry_run)
    spec = read_sweep(path)
    root = Path(results).expanduser().absolute() if results else profile.results_dir()
    sweep_dir = SweepDir(root / (name or str(spec["name"])))
    plan = plan_sweep(path, profile, size, runs_dir=sweep_dir.runs_dir, overrides=overrides).check()
    return profile, plan, sweep_dir


def submit_sweep(
    path: str | Path,
    cluster: str,
    size: str | None = None,
    account: str | None = None,
    results: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    overrides: list[str] | None = None,
) -> tuple[SweepDir, list[int]]:
    """Validate, create the sweep directory and submit what is not done yet (all of it, the first
    time). Returns (dir, submitted run indices); `hold_sweep` submits nothing."""
    with _opened_sweep(path, cluster, size, account, results, name, overrides) as (
        sweep_dir,
        manifest,
        profile,
        todo,
    ):
        submit_runs(sweep_dir, manifest, profile, todo, progress)
    return sweep_dir, todo


@contextlib.contextmanager
def _opened_sweep(path, cluster, size, account, results, name, overrides):
    """Validate, create (or reopen) the sweep directory, and hold its lock: (dir, manifest, profile,
    runs to submit)."""
    from mmhpc.launch.store import create

    profile, plan, sweep_dir = prepare_sweep(
        path, cluster, size, account, results, name, overrides=overrides
    )
    with sweep_dir.lock(create=True):
        manifest = create(sweep_dir, plan, Path(path))
        if manifest["cluster"] != profile.ref:
            reresolve(manifest, profile)
        yield sweep_dir, manifest, profile, to_resubmit(sweep_dir, manifest, profile)


def hold_sweep(path: str | Path, cluster: str, size: str | None = None, account: str | None = None,
               results: str | Path | None = None, name: str | None = None,
               overrides: list[str] | None = None) -> tuple[SweepDir, list[str]]:
    """`submit --hold`: the sweep directory, and sbatch lines for jobs/sweep_array.sbatch for what
    is not done; the runs show as held until jobs of those lines' names are queued."""
    with _opened_sweep(path, cluster, size, account, results, name, overrides) as (
        sweep_dir,
        manifest,
        profile,
        todo,
    ):
        return sweep_dir, hold_runs(sweep_dir, manifest, profile, todo) if todo else []


def resume_sweep(path: str | Path, cluster: str | None = None, account: str | None = None,
                 progress: bool = True, dry_run: bool = False) -> tuple[SweepDir, list[int], str]:
    """Submit the runs of a sweep directory that are neither done, alive nor not applicable."""
    from mmhpc.launch.clusters import load_profile

    sweep_dir = SweepDir(path)
    with sweep_dir.lock():  # a mistyped path: an error, nothing created
        manifest = sweep_dir.load()
        profile = load_profile(cluster or manifest["cluster"], account)
        profile.check_account(dry_run)
        profile.check_interpreter(dry_run)
        if profile.ref != manifest["cluster"]:
            reresolve(manifest, profile)
        todo = to_resubmit(sweep_dir, manifest, profile, dry_run)
        if dry_run:  # what would be submitted
            return sweep_dir, todo, render_scripts(sweep_dir, profile, manifest["sweep"],
                                                   [manifest["runs"][i] for i in todo])
        submit_runs(sweep_dir, manifest, profile, todo, progress)
    return sweep_dir, todo, ""


def run_index(path: str | Path, index: int) -> str:
    """Run number `index` of a sweep directory here (the body of jobs/sweep_array.sbatch)."""
    manifest = SweepDir(path).load()
    runs = manifest["runs"]
    if not 0 <= index < len(runs):
        raise SweepError(
            [f"index: {index} out of range; valid: 0..{len(runs) - 1}"],
            f"sweep {manifest['sweep']}",
        )
    run = runs[index]
    if run.get("not_applicable"):
        return f"run {index} ({run['name']}) not applicable: {run['not_applicable']}"
    from mmhpc.launch.clusters import load_profile

    profile = load_profile(manifest["cluster"])
    return execute_run(run["config"], profile.stage_data, profile.max_requeues, profile.scratch)
