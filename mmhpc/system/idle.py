"""Time spent waiting for data (thesis Sec. 2.7.3.2, Table 2.5, Appendix A.2.1).

`TimedBatches` wraps an epoch's batch iterator and sums the time spent blocked in `next()`: the
first batch is the loader's initialisation (Table 2.8 keeps it apart), every later wait is idle time
of the training step (the consumer had nothing to work on). The trainer records it per epoch; that
is the thesis' Alg. 8 with the run's real workload in place of a simulated one.

PyTorch refuses `prefetch_factor=0` with workers, so the idle time without prefetching is estimated
as Appendix A.2.1 (Alg. 7) does: build the loader with prefetch factor 1 and iterate an epoch with
no work in the loop; every batch is then waited for in full, which is what an un-prefetched loader
would make the step wait. `epoch_idle` runs either algorithm: without a workload it is Alg. 7, with
one Alg. 8.

The host's wait is not the GPU's: the host runs ahead of the GPU by the work it has queued, so a
host that waits for a batch may leave the GPU busy all along. `StepGaps` measures the GPU's own idle
time between training steps from CUDA events on the device's timeline (end of step i to start of
step i+1).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

import torch

_END = object()


class TimedBatches:
    """An iterator over batches that records how long each `next()` blocked."""

    def __init__(self, batches: Iterable):
        t0 = time.perf_counter()
        self._it = iter(batches)
        self._created_s = time.perf_counter() - t0
        self.first_s: float | None = None  # iterator creation to first batch: loader initialisation
        self.wait_s = 0.0                   # sum of the waits for every later batch: idle time
        self.batches = 0

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        t0 = time.perf_counter()
        batch = next(self._it, _END)
        waited = time.perf_counter() - t0
        if self.first_s is None:
            self.first_s = self._created_s + waited
        elif batch is not _END:
            self.wait_s += waited
        if batch is _END:
            raise StopIteration
        self.batches += 1
        return batch


class StepGaps:
    """GPU idle time between training steps, on the GPU's timeline (CUDA devices; None elsewhere).

    `start()` before a step's first GPU work (its input copies) and `end()` after its last is queued
    record CUDA events on the device's current stream; an event completes when the stream reaches
    it. The gap from end of step i to start of step i + 1 is ~0 when step i's work was still queued
    when the host began step i + 1, and the time the GPU sat idle otherwise (waiting for data, or
    for the host). `idle_s()` reads the events: call it after the device was synchronised (the
    epoch's end).
    """

    def __init__(self, device: torch.device):
        self.device = device if device.type == "cuda" else None
        self._gaps: list[tuple] = []   # (end of step i, start of step i + 1)
        self._end = None

    def _record(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> None:
        if self.device is not None:
            begun = self._record()
            if self._end is not None:
                self._gaps.append((self._end, begun))

    def end(self) -> None:
        if self.device is not None:
            self._end = self._record()

    def idle_s(self) -> float | None:
        """Seconds the GPU idled between the steps so far (None off CUDA)."""
        if self.device is None:
            return None
        return sum(a.elapsed_time(b) for a, b in self._gaps) / 1000.0  # elapsed_time: milliseconds


def epoch_idle(batches: Iterable, workload: Callable[[object], None] | None = None,
               limit: int | None = None) -> dict:
    """One pass over an epoch's batches: initialisation, idle (data-wait) time, batches, wall time.

    workload None: thesis Alg. 7, the prefetch-factor-0 estimate when `batches` comes from a loader
    with prefetch factor 1 (the idle time is then the time to load every batch but the first). A
    workload (called with each batch, e.g. a simulated GPU step): Alg. 8, the idle time left by
    prefetching. `limit`: at most that many batches (as `train.max_batches`).
    """
    t0 = time.perf_counter()
    timed = TimedBatches(batches)
    for batch in islice(timed, limit):
        if workload is not None:
            workload(batch)
    return {"init_s": timed.first_s or 0.0, "idle_s": timed.wait_s, "batches": timed.batches,
            "wall_s": time.perf_counter() - t0}


def estimate_prefetch0_idle(loader, epoch: int, limit: int | None = None) -> float:
    """Alg. 7 on an `EpochLoader` (mmhpc.data.loading): the idle time per epoch without prefetching.

    The loader must have workers and prefetch factor 1 (`build_loader` builds it so for
    `loader.prefetch_factor=0`); its initialisation is excluded, as in Table 2.5.
    """
    dl = loader.loader
    if dl.num_workers == 0 or dl.prefetch_factor != 1:
        raise ValueError(
            f"the prefetch-0 estimate (thesis Alg. 7) needs workers and prefetch factor 1, got "
            f"{dl.num_workers} workers and prefetch factor {dl.prefetch_factor}"
        )
    return epoch_idle(loader.epoch(epoch), limit=limit)["idle_s"]
