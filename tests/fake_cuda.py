"""A stubbed `torch.cuda` for the CPU test tier: fake devices (name, capability, properties), fake
CUDA events whose elapsed time comes from a given per-call figure, fake streams, memory counters and
NVML handles. Tensors stay on the CPU; only what needs a GPU (torch.cuda's functions, pynvml) is
stubbed, so every line
of mmhpc that asks CUDA something runs here with known answers. Nothing of mmhpc is stubbed."""
from __future__ import annotations

import contextlib
import threading
import warnings
from types import SimpleNamespace

import torch


class FakeEvent:
    """torch.cuda.Event: every record advances the fake clock by `FakeCuda.ms_per_record` (a number,
    or a function of the moment's state, e.g. of the TF32 flag); `elapsed_time` is the clock's
    difference."""

    def __init__(self, cuda: FakeCuda, enable_timing: bool = False):
        self.cuda, self.t = cuda, None

    def record(self, stream=None):
        step = self.cuda.ms_per_record
        self.cuda.clock_ms += step() if callable(step) else step
        self.t = self.cuda.clock_ms

    def synchronize(self):
        self.cuda.calls.append("event.synchronize")

    def query(self):
        return True

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.t - self.t


class FakeStream:
    def __init__(self, device=None, priority=0):
        self.device = torch.device(device) if device is not None else torch.device("cuda", 0)
        self.waited: list = []

    def wait_stream(self, other):
        self.waited.append(other)

    def synchronize(self):
        pass


class FakeCuda:
    """`FakeCuda(monkeypatch, count=1)`: torch.cuda reports `count` GPUs named `name` of
    `capability`.

    - every event record advances `clock_ms` by `ms_per_record` (a number or a function): timings of
    events
      recorded around N calls read `ms_per_record / N` ms per call;
    - `sync_warnings`: messages `set_sync_debug_mode("warn")` emits as if the step synchronised;
    - `calls`: what was asked of CUDA (set_device, synchronize, ...).
    """

    def __init__(self, monkeypatch, count: int = 1, name: str = "NVIDIA H200", capability=(9, 0),
                 memory_gib: float = 141.0, ms_per_record=2.0):
        self.count, self.name, self.capability = count, name, capability
        self.clock_ms, self.ms_per_record = 0.0, ms_per_record
        self.calls: list = []
        self.set_devices: list = []
        self.sync_warnings: list[str] = []
        self.sync_mode = "default"
        self.current = 0
        props = SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                                total_memory=int(memory_gib * 2**30), multi_processor_count=132)
        c = torch.cuda
        m = monkeypatch
        m.setattr(c, "is_available", lambda: True)
        m.setattr(c, "device_count", lambda: self.count)
        m.setattr(c, "current_device", lambda: self.current)
        m.setattr(c, "set_device", self._set_device)
        m.setattr(c, "get_device_name", lambda d=None: name)
        m.setattr(c, "get_device_capability", lambda d=None: capability)
        m.setattr(c, "get_device_properties", lambda d=None: props)
        m.setattr(c, "synchronize", self._synchronize)
        m.setattr(c, "Event", lambda enable_timing=False, **kw: FakeEvent(self, enable_timing))
        m.setattr(c, "Stream", FakeStream)
        m.setattr(c, "current_stream", lambda device=None: FakeStream(device))
        m.setattr(c, "stream", lambda s: contextlib.nullcontext(s))
        m.setattr(c, "empty_cache", lambda: None)
        m.setattr(c, "max_memory_allocated", lambda d=None: 3 * 2**20)
        m.setattr(c, "max_memory_reserved", lambda d=None: 4 * 2**20)
        m.setattr(c, "reset_peak_memory_stats", lambda d=None: None)
        m.setattr(c, "set_sync_debug_mode", self._sync_mode)
        m.setattr(c, "nccl", SimpleNamespace(version=lambda: (2, 27, 3)), raising=False)
        m.setattr(torch.Tensor, "record_stream", lambda self, stream: None)

    def _set_device(self, d):
        d = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
        self.set_devices.append((threading.current_thread().name, d))
        self.current = d.index or 0

    def _synchronize(self, device=None):
        self.calls.append(("synchronize", device))

    def _sync_mode(self, mode):
        self.sync_mode = mode
        if mode == "warn":
            for text in self.sync_warnings:
                warnings.warn(
                    f"called a synchronizing CUDA operation: {text}", UserWarning, stacklevel=2
                )
