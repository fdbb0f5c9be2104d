"""The fake GPU of the CPU test tier: a stubbed `torch.cuda` (`FakeCuda`) and NVML (`FakeNvml`).

Tensors stay on the CPU; only what needs a GPU (torch.cuda's functions, pynvml's) is stubbed, so
every line of mmhpc that asks CUDA or NVML something runs here with known answers. Nothing of mmhpc
is stubbed.

`FakeCuda` has one timeline, as a CUDA stream has: the host's clock and the time the GPU finishes
what was queued so far. `run(host_s, gpu_s)` spends host time, then queues GPU work; an event
records when the stream reaches it (`torch.cuda.Event`'s semantics). Every record may also queue
`ms_per_record` of GPU work (a number, or a function of the moment's state such as the TF32 flag),
so events around N calls read `ms_per_record / N` per call.

`FakeNvml` patches the real pynvml module's functions with devices that answer in pynvml's own
return types (ctypes structs, c_uint, NVMLError subclasses by error code), so the code under test
runs its real pynvml calls and error handling.
"""
from __future__ import annotations

import contextlib
import ctypes
import threading
import time
import warnings
from types import SimpleNamespace

import pynvml
import torch

MiB = 2**20


class FakeEvent:
    def __init__(self, cuda: FakeCuda, enable_timing: bool = False):
        self.cuda, self.enable_timing, self.t = cuda, enable_timing, None

    def record(self, stream=None):
        step = self.cuda.ms_per_record
        self.cuda.run(gpu_s=(step() if callable(step) else step) / 1000.0)
        self.t = max(self.cuda.host_s, self.cuda.busy_until_s)  # when the stream reaches it

    def synchronize(self):
        self.cuda.calls.append("event.synchronize")

    def query(self):
        return True

    def elapsed_time(self, end: FakeEvent) -> float:
        assert self.enable_timing and end.enable_timing, "events made without enable_timing"
        return (end.t - self.t) * 1000.0


class FakeStream:
    """torch.cuda.Stream: its device, and the streams it was told to wait for."""

    def __init__(self, device=None, priority=0):
        self.device = torch.device(device) if device is not None else torch.device("cuda", 0)
        self.waited: list = []

    def wait_stream(self, other):
        self.waited.append(other)

    def synchronize(self):
        pass


class FakeCuda:
    """`FakeCuda(monkeypatch, count=1)`: torch.cuda reports `count` GPUs named `name` of
    `capability`, with `memory_gib` each and the UUIDs `uuids` (torch's format: no GPU- prefix).

    - `run(host_s, gpu_s)`, `ms_per_record`: the timeline events read (see the module's doc);
    - `allocated_mib`, `reserved_mib`: the allocator's peaks; `resets`: the devices reset;
    - `sync_warnings`: messages `set_sync_debug_mode("warn")` emits as if the step synchronised;
    - `calls`: what was asked of CUDA (synchronize, ...); `set_devices`: (thread, device) of each
      set_device.
    """

    def __init__(self, monkeypatch, count: int = 1, name: str = "NVIDIA H200", capability=(9, 0),
                 memory_gib: float = 141.0, ms_per_record=2.0, uuids=None):
        self.count, self.name, self.capability = count, name, capability
        self.host_s = self.busy_until_s = 0.0
        self.ms_per_record = ms_per_record
        self.allocated_mib, self.reserved_mib = 3.0, 4.0
        self.calls: list = []
        self.set_devices: list = []
        self.resets: list = []
        self.sync_warnings: list[str] = []
        self.sync_mode = "default"
        self.current = 0
        uuids = uuids or [f"{i:08x}-0000-0000-0000-000000000000" for i in range(count)]
        self.props = [
            SimpleNamespace(name=name, major=capability[0], minor=capability[1], uuid=uuids[i],
                            total_memory=int(memory_gib * 2**30), multi_processor_count=132)
            for i in range(count)
        ]
        c, m = torch.cuda, monkeypatch
        m.setattr(c, "is_available", lambda: True)
        m.setattr(c, "device_count", lambda: self.count)
        m.setattr(c, "current_device", lambda: self.current)
        m.setattr(c, "set_device", self._set_device)
        m.setattr(c, "get_device_name", lambda d=None: name)
        m.setattr(c, "get_device_capability", lambda d=None: self.capability)
        m.setattr(c, "get_device_properties", lambda d=None: self.props[self._index(d)])
        m.setattr(c, "synchronize", self._synchronize)
        m.setattr(c, "Event", lambda enable_timing=False, **kw: FakeEvent(self, enable_timing))
        m.setattr(c, "Stream", FakeStream)
        m.setattr(c, "current_stream", lambda device=None: FakeStream(device))
        m.setattr(c, "stream", lambda s: contextlib.nullcontext(s))
        m.setattr(c, "empty_cache", lambda: None)
        m.setattr(c, "max_memory_allocated", lambda d=None: self.allocated_mib * MiB)
        m.setattr(c, "max_memory_reserved", lambda d=None: self.reserved_mib * MiB)
        m.setattr(c, "reset_peak_memory_stats", self.resets.append)
        m.setattr(c, "set_sync_debug_mode", self._sync_mode)
        m.setattr(c, "nccl", SimpleNamespace(version=lambda: (2, 27, 3)), raising=False)
        m.setattr(torch.Tensor, "record_stream", lambda self, stream: None)

    def run(self, host_s: float = 0.0, gpu_s: float = 0.0) -> None:
        """The host spends `host_s` (launching, waiting for data), then queues `gpu_s` of GPU
        work, which starts when the GPU is done with what was queued before."""
        self.host_s += host_s
        self.busy_until_s = max(self.host_s, self.busy_until_s) + gpu_s

    def _index(self, d) -> int:
        if d is None:
            return self.current
        return d if isinstance(d, int) else (torch.device(d).index or 0)

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


class FakeGpu:
    """An NVML device. Its driver keeps a utilisation sample every `period_s` since it came up:
    `util_pct` when given, else a sawtooth ((7 k) % 101 for the k-th sample)."""

    def __init__(self, uuid: str, power_w: float = 250.0, mig: bool = False, period_s: float = 0.02,
                 used_mib: float = 1000.0, util_pct: int | None = None):
        self.uuid, self.power_w, self.mig, self.period_s = uuid, power_w, mig, period_s
        self.used_mib, self.util_pct = used_mib, util_pct
        self.t0 = time.time()
        self.energy_reads: list[int] = []   # every counter value handed out, in order
        self.samples_served: list[tuple[int, int]] = []  # (timestamp us, util %) handed out

    def energy_mj(self) -> int:
        e = int(self.power_w * (time.time() - self.t0) * 1000)
        self.energy_reads.append(e)
        return e

    def samples_after(self, last_us: int) -> list:
        """The driver's utilisation samples newer than last_us."""
        now_us, p = int(time.time() * 1e6), int(self.period_s * 1e6)
        k = max(0, (last_us - int(self.t0 * 1e6)) // p + 1)
        out = []
        while (ts := int(self.t0 * 1e6) + k * p) <= now_us:
            if ts > last_us:
                value = (7 * k) % 101 if self.util_pct is None else self.util_pct
                sample = pynvml.c_nvmlSample_t()
                sample.timeStamp, sample.sampleValue.uiVal = ts, value
                out.append(sample)
                self.samples_served.append((ts, value))
            k += 1
        return out


class FakeNvml:
    """`FakeNvml(monkeypatch)`, then `add(uuid, ...)` for each device (a `FakeGpu`)."""

    def __init__(self, monkeypatch):
        self.gpus: list[FakeGpu] = []
        self.inits = 0
        nv = pynvml

        def gpu(handle) -> FakeGpu:
            return self.gpus[handle]

        def unsupported_on_mig(handle):
            if gpu(handle).mig:
                raise nv.NVMLError(nv.NVML_ERROR_NOT_SUPPORTED)

        def by_uuid(uuid):
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            for i, g in enumerate(self.gpus):
                if g.uuid == uuid:
                    return i
            raise nv.NVMLError(nv.NVML_ERROR_NOT_FOUND)

        def utilisation(handle):
            unsupported_on_mig(handle)
            pct = gpu(handle).util_pct
            return nv.c_nvmlUtilization_t(gpu=50 if pct is None else pct, memory=10)

        def samples(handle, kind, last_us):
            assert kind == nv.NVML_GPU_UTILIZATION_SAMPLES
            unsupported_on_mig(handle)
            out = gpu(handle).samples_after(last_us)
            if not out:
                raise nv.NVMLError(nv.NVML_ERROR_NOT_FOUND)
            return nv.NVML_VALUE_TYPE_UNSIGNED_INT, out

        def energy(handle):
            unsupported_on_mig(handle)
            return gpu(handle).energy_mj()

        def memory(handle):
            used = int(gpu(handle).used_mib * MiB)
            return nv.c_nvmlMemory_t(total=80 * 2**30, free=80 * 2**30 - used, used=used)

        def init():
            self.inits += 1

        fakes = {
            "nvmlInit": init, "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": lambda: len(self.gpus),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetUUID": lambda h: gpu(h).uuid,
            "nvmlDeviceGetName": lambda h: "NVIDIA H200",
            "nvmlDeviceGetHandleByUUID": by_uuid,
            "nvmlDeviceIsMigDeviceHandle": lambda h: ctypes.c_uint(int(gpu(h).mig)),
            "nvmlDeviceGetUtilizationRates": utilisation,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetPowerUsage": lambda h: int(gpu(h).power_w * 1000),
            "nvmlDeviceGetClockInfo": lambda h, clock: 1980,
            "nvmlDeviceGetTotalEnergyConsumption": energy,
            "nvmlDeviceGetSamples": samples,
        }
        for name, fn in fakes.items():
            monkeypatch.setattr(nv, name, fn)

    def add(self, uuid: str, **kw) -> FakeGpu:
        self.gpus.append(FakeGpu(uuid, **kw))
        return self.gpus[-1]
