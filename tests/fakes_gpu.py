"""Fakes of a GPU for CPU tests: a CUDA stream timeline with events, and NVML devices.

`FakeStream` is one CUDA stream: work queued by the host runs after what was queued before it, so an
event recorded by the host completes when the stream reaches it (`torch.cuda.Event`'s semantics), on
a clock the test advances. `FakeNvml` patches the real pynvml module's functions with devices that
answer in pynvml's own return types (ctypes structs, c_uint, NVMLError subclasses by error code), so
the code under test runs its real pynvml calls and error handling.
"""
from __future__ import annotations

import ctypes
import time

import pynvml
import torch


class FakeStream:
    def __init__(self):
        self.host = 0.0        # the host's clock, seconds
        self.busy_until = 0.0  # when the stream finishes the work queued so far

    def run(self, host_s: float = 0.0, gpu_s: float = 0.0) -> None:
        """The host spends `host_s` (launching, waiting for data), then queues `gpu_s` of GPU
        work."""
        self.host += host_s
        self.busy_until = max(self.host, self.busy_until) + gpu_s

    def install(self, monkeypatch) -> FakeStream:
        stream = self

        class Event:
            def __init__(self, enable_timing: bool = False):
                self.enable_timing, self.t = enable_timing, None

            def record(self, s=None):
                self.t = max(stream.host, stream.busy_until)  # completes when the stream reaches it

            def elapsed_time(self, end) -> float:
                assert self.enable_timing and end.enable_timing, "events made without enable_timing"
                return (end.t - self.t) * 1000.0

        monkeypatch.setattr(torch.cuda, "Event", Event)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "stream")
        return self


class FakeGpu:
    def __init__(self, uuid: str, power_w: float = 250.0, mig: bool = False, period_s: float = 0.02,
                 used_mib: float = 1000.0):
        self.uuid, self.power_w, self.mig, self.period_s = uuid, power_w, mig, period_s
        self.used_mib = used_mib
        self.t0 = time.time()
        self.energy_reads: list[int] = []   # every counter value handed out, in order
        self.samples_served: list[tuple[int, int]] = []  # (timestamp us, util %) handed out

    def energy_mj(self) -> int:
        e = int(self.power_w * (time.time() - self.t0) * 1000)
        self.energy_reads.append(e)
        return e

    def samples_after(self, last_us: int) -> list:
        """The driver's utilisation samples, one every period_s since the device came up, newer than
        last_us."""
        now_us, p = int(time.time() * 1e6), int(self.period_s * 1e6)
        k = max(0, (last_us - int(self.t0 * 1e6)) // p + 1)
        out = []
        while (ts := int(self.t0 * 1e6) + k * p) <= now_us:
            if ts > last_us:
                value = (7 * k) % 101
                sample = pynvml.c_nvmlSample_t()
                sample.timeStamp, sample.sampleValue.uiVal = ts, value
                out.append(sample)
                self.samples_served.append((ts, value))
            k += 1
        return out


class FakeNvml:
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
            return nv.c_nvmlUtilization_t(gpu=50, memory=10)

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
            used = int(gpu(handle).used_mib * 2 ** 20)
            return nv.c_nvmlMemory_t(total=80 * 2 ** 30, free=80 * 2 ** 30 - used, used=used)

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
