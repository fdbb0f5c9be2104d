"""SLURM's pre-timeout / preemption signal (USR2, `--signal=USR2@<s>`), noted from a job's first moment.

The signal's default action kills a process. The trainer's handler (mmhpc.launch.submit) is installed once a
run starts, after the imports of torch and the trainer (one to two seconds into a job): a signal before that
killed the attempt, which SLURM then reports FAILED instead of requeueing it. `catch_early`, called when the
package is imported, notes the signal instead, in a SLURM job only; a run that starts with it noted stops at
its first step boundary and requeues like any other. Outside a SLURM job nothing changes.
"""
from __future__ import annotations

import os
import signal
import threading

PREEMPT_SIGNAL = signal.SIGUSR2  # what `--signal` sends (submitit's default too)
# Set by the signal: the trainer stops at the next training-step boundary and raises Preempted,
# and the job requeues itself (mmhpc.launch.submit).
STOP_REQUESTED = threading.Event()


def note_stop(signum=None, frame=None) -> None:
    STOP_REQUESTED.set()


def catch_early() -> None:
    """In a SLURM job's main thread, note PREEMPT_SIGNAL instead of dying of it, unless someone handles it."""
    if "SLURM_JOB_ID" not in os.environ or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(PREEMPT_SIGNAL) is signal.SIG_DFL:
            signal.signal(PREEMPT_SIGNAL, note_stop)
    except (ValueError, OSError):  # no signals here (an embedded interpreter): keep the default
        pass
