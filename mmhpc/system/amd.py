"""AMD GPUs for the utilisation sampler: AMD SMI (the `amdsmi` package of ROCm) behind the
handful of NVML calls the sampler makes, so one sampler serves both vendors.

What each call reads, per the AMD SMI Python API reference (ROCm 6.x/7.x):
- utilisation: `amdsmi_get_gpu_activity` -> `gfx_activity` (%)
- memory used: `amdsmi_get_gpu_vram_usage` -> `vram_used` (MB, as 2**20 bytes)
- power: `amdsmi_get_power_info` -> `current_socket_power` (W, MI300 and later) or
  `average_socket_power` (W, MI200 and earlier); the other reads "N/A"
- clock: `amdsmi_get_clock_info(h, GFX)` -> `clk` (`cur_clk` before ROCm 6.1) in MHz
- energy: `amdsmi_get_energy_count` -> `energy_accumulator` (`power` before ROCm 6.2) times
  `counter_resolution` (uJ per count)
AMD SMI has no timestamped utilisation samples and no MIG: those calls answer "not supported", and
the sampler then keeps its polled values, as it does on an NVIDIA board without them.

A ROCm process sees the GPUs ROCR_VISIBLE_DEVICES leaves, renumbered, then HIP_VISIBLE_DEVICES (or
CUDA_VISIBLE_DEVICES, which HIP also reads) selects among those.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

# amdsmi_status_t values (amdsmi.h)
_NOT_SUPPORTED, _NO_PERM, _NOT_FOUND = 2, 10, 31


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's names, which the sampler catches)
    pass


class NVMLError_NoPermission(NVMLError):  # noqa: N801
    pass


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801
    pass


class NVMLError_NotFound(NVMLError):  # noqa: N801
    pass


def _number(value, what: str) -> float:
    """A reading as a float; AMD SMI's Python binding writes "N/A" where the board has none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise NVMLError_NotSupported(f"{what}: {value!r}")


def available() -> bool:
    try:
        import amdsmi  # noqa: F401
    except Exception:
        return False
    return True


class AmdSmiAsNvml:
    """The NVML calls of `UtilSampler`, answered by AMD SMI. Units as NVML's: bytes, mW, MHz, mJ."""

    NVML_CLOCK_SM = "gfx"
    NVML_GPU_UTILIZATION_SAMPLES = "gpu_util"
    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_NoPermission = NVMLError_NoPermission
    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLError_NotFound = NVMLError_NotFound
    vendor = "AMD SMI"

    def __init__(self):
        import amdsmi

        self.smi = amdsmi
        self._handles: list = []
        self._uuids: list[str] = []

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except self.smi.AmdSmiException as e:
            code = e.get_error_code() if hasattr(e, "get_error_code") else None
            kind = {
                _NOT_SUPPORTED: NVMLError_NotSupported,
                _NO_PERM: NVMLError_NoPermission,
                _NOT_FOUND: NVMLError_NotFound,
            }.get(code, NVMLError)
            raise kind(f"{getattr(fn, '__name__', fn)}: {e}") from e

    # -- set-up
    def nvmlInit(self) -> None:  # noqa: N802
        self._call(self.smi.amdsmi_init)
        self._handles = list(self._call(self.smi.amdsmi_get_processor_handles))
        self._uuids = [
            f"GPU-{self._call(self.smi.amdsmi_get_gpu_device_uuid, h)}" for h in self._handles
        ]

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._call(self.smi.amdsmi_shut_down)

    def visible_env(self) -> str | None:
        """The GPUs this process sees as one CUDA_VISIBLE_DEVICES-style list of physical indices or
        UUIDs (None: all), from ROCR_VISIBLE_DEVICES and then HIP_/CUDA_VISIBLE_DEVICES."""
        picked: list[str] = [str(i) for i in range(len(self._uuids))]
        rocr = os.environ.get("ROCR_VISIBLE_DEVICES")
        hip = os.environ.get("HIP_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"))
        if rocr is None and hip is None:
            return None
        if rocr is not None:
            picked = [e.strip() for e in rocr.split(",") if e.strip()]
        if hip is not None:
            entries = [e.strip() for e in hip.split(",") if e.strip()]
            if any(not e.isdigit() or int(e) >= len(picked) for e in entries):
                return hip  # not indices into ROCR's list: let the caller name the bad entry
            picked = [picked[int(e)] for e in entries]
        return ",".join(picked)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return len(self._handles)

    def nvmlDeviceGetHandleByIndex(self, i: int):  # noqa: N802
        return self._handles[i]

    def nvmlDeviceGetUUID(self, handle) -> str:  # noqa: N802
        return self._uuids[self._handles.index(handle)]

    def nvmlDeviceGetHandleByUUID(self, uuid: str):  # noqa: N802
        if uuid not in self._uuids:
            raise NVMLError_NotFound(f"no AMD GPU with UUID {uuid}")
        return self._handles[self._uuids.index(uuid)]

    def nvmlDeviceGetName(self, handle) -> str:  # noqa: N802
        return str(self._call(self.smi.amdsmi_get_gpu_asic_info, handle)["market_name"])

    def nvmlDeviceIsMigDeviceHandle(self, handle) -> bool:  # noqa: N802
        return False

    def nvmlDeviceGetSamples(self, handle, kind, last_us):  # noqa: N802
        raise NVMLError_NotSupported("AMD SMI keeps no timestamped utilisation samples")

    # -- readings
    def nvmlDeviceGetUtilizationRates(self, handle):  # noqa: N802
        act = self._call(self.smi.amdsmi_get_gpu_activity, handle)
        return SimpleNamespace(gpu=_number(act.get("gfx_activity"), "gfx_activity"))

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802
        vram = self._call(self.smi.amdsmi_get_gpu_vram_usage, handle)
        return SimpleNamespace(used=_number(vram.get("vram_used"), "vram_used") * 2**20)

    def nvmlDeviceGetPowerUsage(self, handle) -> float:  # noqa: N802
        info = self._call(self.smi.amdsmi_get_power_info, handle)
        for key in ("current_socket_power", "average_socket_power", "socket_power"):
            try:
                return _number(info.get(key), key) * 1000.0
            except NVMLError_NotSupported:
                continue
        raise NVMLError_NotSupported(f"no socket power in {info}")

    def nvmlDeviceGetClockInfo(self, handle, kind) -> float:  # noqa: N802
        clk = self._call(self.smi.amdsmi_get_clock_info, handle, self.smi.AmdSmiClkType.GFX)
        return _number(clk.get("clk", clk.get("cur_clk")), "gfx clock")

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> float:  # noqa: N802
        e = self._call(self.smi.amdsmi_get_energy_count, handle)
        count = e.get("energy_accumulator", e.get("power"))
        uj = _number(count, "energy_accumulator") * _number(
            e.get("counter_resolution"), "counter_resolution"
        )
        return uj / 1000.0
