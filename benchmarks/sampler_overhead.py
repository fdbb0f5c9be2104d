"""Overhead of UtilSampler on a fixed CPU workload (prints figures; not a test, timings are
machine-dependent).

    python benchmarks/sampler_overhead.py [--reps 5] [--interval 0.5] [--seconds 4]

Runs a torch matmul loop, alternating without and with the sampler so that drift in machine load
hits both arms alike, and prints the per-sample cost and the overhead of the workload. Target: <= 1
% at 0.5 s. Two overheads are printed: wall-clock slowdown, which is what a job sees but is swamped
by other tenants on a shared node, and extra process CPU time (workload + sampler thread) relative
to the workload's, which other tenants barely move. One torch thread by default, since spinning
OpenMP threads on an oversubscribed node burn CPU time at random.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmhpc.system.sampler import UtilSampler  # noqa: E402


def calibrate(seconds: float, n: int = 256) -> int:
    # By CPU time, so the run length does not depend on how busy the node happens to be at
    # calibration.
    a = torch.randn(n, n)
    t, iters = time.process_time(), 0
    while time.process_time() - t < 0.5:
        a @ a
        iters += 1
    return max(1, int(iters * seconds / (time.process_time() - t)))


def workload(iters: int, n: int = 256) -> tuple[float, float]:
    """(wall s, process CPU s) of `iters` matmuls."""
    torch.manual_seed(0)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        torch.mm(a, b)
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--seconds", type=float, default=4.0, help="CPU seconds of workload per run")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    iters = calibrate(args.seconds)
    workload(iters // 10)  # warm-up: thread pool and allocator
    base, sampled, wall_us, cpu_us, n_samples = [], [], [], [], 0
    for _ in range(args.reps):
        base.append(workload(iters))
        with UtilSampler(args.interval) as s:
            sampled.append(workload(iters))
        c = s.sample_cost_us
        wall_us.append(c["wall_us"])
        cpu_us.append(c["cpu_us"])
        n_samples += c["n"]
    sd = statistics.stdev if args.reps > 1 else (lambda x: 0.0)
    wall_over = [100 * (w[0] - b[0]) / b[0] for b, w in zip(base, sampled)]
    cpu_over = [100 * (w[1] - b[1]) / b[1] for b, w in zip(base, sampled)]
    base_wall, base_cpu = [b[0] for b in base], [b[1] for b in base]
    samp_wall, samp_cpu = [w[0] for w in sampled], [w[1] for w in sampled]

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {iters} matmuls 256x256 "
        "per run, "
        f"{args.reps} pairs, interval {args.interval} s, {n_samples} samples"
    )
    print(
        f"workload without sampler: wall {statistics.mean(base_wall):.3f} s +- "
        f"{sd(base_wall):.3f}, "
        f"CPU {statistics.mean(base_cpu):.3f} s +- {sd(base_cpu):.3f}"
    )
    print(
        f"workload with sampler:    wall {statistics.mean(samp_wall):.3f} s +- "
        f"{sd(samp_wall):.3f}, "
        f"CPU {statistics.mean(samp_cpu):.3f} s +- {sd(samp_cpu):.3f}"
    )
    print(f"per-sample cost: wall {statistics.mean(wall_us):.0f} us +- {sd(wall_us):.0f}, "
          f"sampler-thread CPU {statistics.mean(cpu_us):.0f} us +- {sd(cpu_us):.0f}")
    print(
        f"sampler CPU per interval: {statistics.mean(cpu_us) / (args.interval * 1e4):.3f} % of one "
        "core"
    )
    for name, over in (("CPU-time overhead", cpu_over), ("wall-clock slowdown", wall_over)):
        print(f"{name}: {statistics.mean(over):+.2f} % +- {sd(over):.2f} (pairs: "
              + ", ".join(f"{o:+.2f}" for o in over) + ")")
    print(f"notes: {s.notes}")


if __name__ == "__main__":
    main()
