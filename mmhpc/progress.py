"""Progress for people: which run a log line belongs to, one line per run under `-q`, bars on a
terminal only.

A multi-run command (`mmhpc demo`, `demo algorithms`, a sweep run here) names each run in every log
line (`[3/4 naive] epoch 2/5 ...`) through `run_label`; the CLI's handler adds the prefix
(`RunPrefix`). `RUN` is the level of a run's one closing line: `-q` shows it and hides the per-epoch
lines. Progress bars only go to an interactive terminal: redirected output and SLURM job logs get
the log lines instead.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys

RUN = 25  # between INFO (per-epoch lines) and WARNING: the one line per run that `-q` keeps
logging.addLevelName(RUN, "RUN")
_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("mmhpc_run_label", default="")


@contextlib.contextmanager
def run_label(label: str):
    """Log lines inside (this thread) start with `[label] `."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


class RunPrefix(logging.Filter):
    """A handler filter giving each record `run`: "[label] " inside `run_label`, else ""."""

    def filter(self, record: logging.LogRecord) -> bool:
        label = _LABEL.get()
        record.run = f"[{label}] " if label else ""
        return True


def bars(wanted: bool = True) -> bool:
    """Whether to show a progress bar: wanted, and stderr is an interactive terminal."""
    return wanted and sys.stderr.isatty()
