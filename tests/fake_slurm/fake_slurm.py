#!/usr/bin/env python3
"""A fake SLURM client for tests: `sbatch`, `squeue`, `sacct`, `scontrol`, `srun` are links to this
file.

State lives in $FAKE_SLURM: `queue` (lines `jobid|state|reason|name`, what squeue lists),
`accounting` (the same shape, what sacct answers for jobs that left the queue), `next_id`, and
`calls` (one line per call). $FAKE_<COMMAND> picks a behaviour: ok (default) | fail (an error exit)
| hang (no answer for 600 s) | die (sbatch: queue the job, print its id, then get killed) | sigint
(sbatch: queue, print, then SIGINT the submitter, as a Ctrl-C at that moment would) | disabled
(sacct: a cluster without accounting).
"""
import os
import re
import signal
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM"])
cmd, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(STATE / "calls", "a") as f:
    f.write(" ".join([cmd, *args]) + "\n")
mode = os.environ.get(f"FAKE_{cmd.upper()}", "ok")
if mode == "fail":
    sys.exit(f"{cmd}: error: Socket timed out on send/recv operation")
if mode == "hang":
    time.sleep(600)


def lines(name: str) -> list[str]:
    path = STATE / name
    return path.read_text().splitlines() if path.exists() else []


def option(name: str, script: str) -> str | None:
    """--name=value from the command line, else `#SBATCH --name=value` from the script."""
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    found = re.search(rf"^#SBATCH --{name}=(\S+)", script, re.M)
    return found.group(1) if found else None


if cmd == "sbatch":
    script = Path([a for a in args if not a.startswith("-")][0]).read_text()
    job_id = int((STATE / "next_id").read_text()) if (STATE / "next_id").exists() else 100
    (STATE / "next_id").write_text(str(job_id + 1))
    name, array = option("job-name", script) or "sbatch", option("array", script)
    tasks = []
    for part in (array.split("%")[0].split(",") if array else []):
        first, _, last = part.partition("-")
        tasks += range(int(first), int(last or first) + 1)
    ids = [f"{job_id}_{t}" for t in tasks] or [str(job_id)]
    with open(STATE / "queue", "a") as f:
        f.writelines(f"{jid}|PENDING|None|{name}\n" for jid in ids)
    print(f"Submitted batch job {job_id}", flush=True)
    if mode == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "sigint":
        os.kill(os.getppid(), signal.SIGINT)
elif cmd == "squeue":
    print("\n".join(lines("queue")))
elif cmd == "sacct":
    if mode == "disabled":
        sys.exit("sacct: error: Slurm accounting storage is disabled")
    print("\n".join(lines("accounting")))
