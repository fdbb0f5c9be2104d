"""SLURM's pre-timeout / preemption signal (USR2, `--signal=USR2@<s>`), noted from a job's first
moment.

The signal's default action kills a process. The trainer's handler (mmhpc.launch.submit) is
installed once a run starts, after the imports of torch and the trainer (one to two seconds into a
job): a signal before that killed the attempt, which SLURM then reports FAILED instead of requeueing
it. `catch_early`, called when the package is imported, notes the signal instead, in a SLURM job
only; a run that starts with it noted stops at its first step boundary and requeues like any other.
Outside a SLURM job nothing changes.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

PREEMPT_SIGNAL = signal.SIGUSR2  # what `--signal` sends (submitit's default too)
# Set by the signal: the trainer stops at the next training-step boundary and raises Preempted,
# and the job requeues itself (mmhpc.launch.submit).
STOP_REQUESTED = threading.Event()


class Preempted(Exception):
    """Training stopped at a step boundary on request (STOP_REQUESTED). The run resumes, in a
    requeued job, from its last epoch checkpoint: the interrupted epoch is trained again from its
    start, so the resumed run has the batches and metrics of an uninterrupted one."""

    def __init__(self, epoch: int, step: int):
        super().__init__(
            f"stopped after step {step} of epoch {epoch + 1} on the pre-timeout/preemption signal"
        )
        self.epoch, self.step = epoch, step


def note_stop(signum=None, frame=None) -> None:
    STOP_REQUESTED.set()


def catch_early() -> None:
    """In a SLURM job's main thread, note PREEMPT_SIGNAL instead of dying of it, unless someone
    handles it."""
    if (
        "SLURM_JOB_ID" not in os.environ
        or threading.current_thread() is not threading.main_thread()
    ):
        return
    try:
        if signal.getsignal(PREEMPT_SIGNAL) is signal.SIG_DFL:
            signal.signal(PREEMPT_SIGNAL, note_stop)
    except (ValueError, OSError):  # no signals here (an embedded interpreter): keep the default
        pass


@contextlib.contextmanager
def deaf_children():
    """Processes started inside (loader workers, a forkserver, multiprocessing's resource tracker)
    begin with PREEMPT_SIGNAL and SIGINT blocked. SLURM signals every process of the job step, and a
    process started from a fresh interpreter (forkserver, spawn) dies of it by default: the epoch
    then failed with "DataLoader worker exited unexpectedly" instead of stopping at a step and
    requeueing. Ctrl-C reaches the terminal's whole process group: the trainer ends its workers
    itself. Only the trainer acts on either signal; one arriving meanwhile is not lost. In the main
    thread Ctrl-C is noted inside and raised at the end: another thread may take the signal, and
    Python would then raise its KeyboardInterrupt inside os.fork's at-fork
    callbacks, where CPython prints and drops it (the run went on)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {PREEMPT_SIGNAL, signal.SIGINT})
    interrupted = []
    previous = None
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
            if interrupted:
                raise KeyboardInterrupt
