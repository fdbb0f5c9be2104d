"""Ctrl-C: a command ends with one line and exit 130, the run's record says `interrupted` (with the
epoch), and the next start resumes it from its checkpoint. A real process gets a real SIGINT, as a
terminal sends it: to the whole process group, loader workers included."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import until

from mmhpc.results import read_record


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a shell's background job would have it ignored


@pytest.mark.slow
def test_ctrl_c_ends_training_with_one_line_exit_130_and_the_next_start_resumes(
    synth_dir, tmp_path
):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "mmhpc.cli",
        "train",
        f"data.root={synth_dir('cremad')}",
        f"output.runs_dir={runs}",
        "output.name=ctrl-c",
        "output.checkpoint=true",
        "train.epochs=4",
        "train.max_batches=2",
        "train.batch_size=16",
        "loader.num_workers=2",
        "system.threads=1",
    ]
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            process_group=0,
            preexec_fn=_default_sigint,
        )
        try:
            until(
                lambda: (runs / "ctrl-c.ckpt.pt").exists() or proc.poll() is not None,
                "the first checkpoint",
                timeout=600,
                poll_s=0.2,
            )
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    lines = err.read_text().splitlines()
    assert proc.returncode == 130, lines
    after = lines[max(i for i, ln in enumerate(lines) if ln.startswith("epoch ")) + 1:]
    assert after == ["mmhpc: interrupted"], lines
    rec = read_record(runs / "ctrl-c.json")
    assert rec.status == "interrupted" and rec.error.startswith(
        "KeyboardInterrupt: interrupted (Ctrl-C) in epoch "
    )
    assert 1 <= len(rec.epochs) < 4 and not rec.traceback

    again = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
    )
    assert again.returncode == 0, again.stderr
    rec = read_record(runs / "ctrl-c.json")
    assert rec.status == "done" and len(rec.epochs) == 4 and rec.resumed and rec.error is None
