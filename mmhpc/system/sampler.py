"""Background utilisation sampler (psutil + NVML, or AMD SMI on AMD GPUs: system/amd.py) for
the time series of Fig. 4.1/4.2 and Tables 4.10-4.12.

Rate columns (CPU %, bytes/s) at row `t` cover the interval since the previous row. CPU % is per
core (100 = one core busy), as in `top`. `rss_mb` sums RSS over the process and its children, so
pages shared copy-on-write with DataLoader workers count once per process (PSS would be exact but
costs a smaps read).

GPU utilisation over a window comes from the driver's own timestamped samples
(`nvmlDeviceGetSamples`, one every 1/6 to 1 s depending on the GPU), fetched at every poll and at
every marker, not from the polled `nvmlDeviceGetUtilizationRates` (a 0.5 s poll gives an H200 epoch
a handful of values); the polled value stays in the time series. The energy counter is read at each
marker, so an epoch's energy is the counter's difference between its two markers, not between the
polls around them. NVML gives no utilisation for a MIG slice: its utilisation is None, with a note,
never the CPU's in its place.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import psutil

from mmhpc.atomic import atomic_write_text

MiB = 2 ** 20
HOST_COLUMNS = ["cpu_proc_pct", "rss_mb", "n_children", "cpu_sys_pct",
                "disk_read_bps", "disk_write_bps", "net_sent_bps", "net_recv_bps"]
GPU_METRICS = ["util_pct", "mem_mb", "power_w", "sm_clock_mhz", "energy_mj"]
# The notes of a sampler that measured no GPU utilisation (the report shows them in its place)
NO_GPU_SAMPLING = "GPU sampling unavailable"
NO_GPU_UTIL = "util_pct: unavailable"
# NVML's energy counter covers the GPU board, except on Grace superchips (GH200, GB200), where it
# covers the whole module: Grace CPU, GPU and memory. Such energies are not comparable with a
# discrete GPU's.
MODULE_ENERGY = ("GH200", "GB200", "GRACE")


def energy_scope(gpu_name: str) -> str:
    """`module` for a Grace superchip, else `gpu`: what NVML's energy counter of this device
    covers."""
    return "module" if any(k in gpu_name.upper() for k in MODULE_ENERGY) else "gpu"


def energy_key(i: int, scope: str) -> str:
    """The summary key of a GPU's energy: `gpu0_energy_j`, or `gpu0_module_energy_j` for a module's,
    so energies of different scopes never share a column."""
    return f"gpu{i}_energy_j" if scope == "gpu" else f"gpu{i}_{scope}_energy_j"


def visible_gpus(env_value: str | None, nvml_uuids_by_index: Sequence[str]) -> list[str]:
    """UUIDs of the GPUs a CUDA process sees, in CUDA ordinal order, given CUDA_VISIBLE_DEVICES.

    Integer entries index NVML's (PCI bus) order, which matches CUDA's only under
    CUDA_DEVICE_ORDER=PCI_BUS_ID (what SLURM assumes); UUIDs are unambiguous. `GPU-` entries may be
    unique prefixes, as CUDA allows; `MIG-` UUIDs pass through since NVML resolves them by UUID
    only.
    """
    uuids = [u.decode() if isinstance(u, bytes) else str(u) for u in nvml_uuids_by_index]
    if env_value is None:
        return uuids
    if (
        not env_value.strip() or env_value.strip() == "-1"
    ):  # "-1" is the usual idiom for "hide all GPUs"
        return []
    out: list[str] = []
    for pos, raw in enumerate(env_value.split(",")):
        entry = raw.strip()
        where = f"CUDA_VISIBLE_DEVICES entry {entry!r} (position {pos} of {env_value!r})"
        if entry.lstrip("-").isdigit():
            i = int(entry)
            if not 0 <= i < len(uuids):
                raise ValueError(f"{where}: index out of range, NVML sees {len(uuids)} GPU(s)")
            uuid = uuids[i]
        elif entry.startswith("GPU-") and len(entry) > 4:
            hits = [u for u in uuids if u.lower().startswith(entry.lower())]
            if len(hits) != 1:
                raise ValueError(
                    f"{where}: {'no' if not hits else 'ambiguous'} GPU UUID match among {uuids}"
                )
            uuid = hits[0]
        elif entry.startswith("MIG-") and len(entry) > 4:
            uuid = entry
        else:
            raise ValueError(f"{where}: expected a GPU index, a GPU-... UUID or a MIG-... UUID")
        if uuid in out:
            raise ValueError(f"{where}: duplicate device (CUDA rejects repeated devices)")
        out.append(uuid)
    return out


def _torch_uuids() -> list[str] | None:
    # Only when the caller already initialised CUDA: initialising it here could break fork-based
    # workers.
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized() or getattr(torch.version, "hip", None):
            return None  # ROCm: HIP's UUIDs are not AMD SMI's; the visible-devices variables decide
        uuids = [
            str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
        ]
        return [
            u if u[:4] in ("GPU-", "MIG-") else f"GPU-{u}" for u in uuids
        ]  # MIG: nvml_handle tries both
    except Exception:
        return None


def nvml_handle(nv, uuid: str):
    """(UUID, NVML handle) of the GPU or MIG slice `uuid`, or None. torch formats UUIDs without the
    GPU-/MIG- prefix, and MIG slices cannot be told apart by it: both prefixes are tried."""
    bare = uuid.split("-", 1)[1] if uuid[:4] in ("GPU-", "MIG-") else uuid
    for cand in dict.fromkeys([uuid, f"GPU-{bare}", f"MIG-{bare}"]):
        try:
            return cand, nv.nvmlDeviceGetHandleByUUID(cand)
        except nv.NVMLError:
            continue
    return None


_USED_HANDLES: dict = {}  # torch device -> NVML handle, for device_used_mib


def device_used_mib(device) -> float | None:
    """The memory NVML counts as used on a CUDA device, in MiB (every process and CUDA context on
    it, the caching allocator's reserve included); None where NVML cannot tell."""
    import torch

    try:
        import pynvml as nv

        if device not in _USED_HANDLES:
            nv.nvmlInit()  # reference-counted; kept open for the process (the handle stays valid)
            found = nvml_handle(nv, str(torch.cuda.get_device_properties(device).uuid))
            _USED_HANDLES[device] = None if found is None else found[1]
        handle = _USED_HANDLES[device]
        return None if handle is None else nv.nvmlDeviceGetMemoryInfo(handle).used / MiB
    except Exception:  # no NVML library or driver, a device NVML does not know: not measured
        return None


def _sample_value(nv, value_type: int, sample) -> float:
    """The number in an NVML sample's value union, by the value type the driver gave."""
    field = {
        nv.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nv.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nv.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        nv.NVML_VALUE_TYPE_UNSIGNED_SHORT: "usVal",
    }[value_type]
    return float(getattr(sample.sampleValue, field))


_GPU_KEY = re.compile(r"gpu(\d+)_(.+)")


def gpu_util_unavailable(notes: Sequence[str]) -> str | None:
    """Why a record's sampler measured no GPU utilisation (ROCm without NVML, MIG), or None."""
    why = [n for n in notes if n.startswith(NO_GPU_SAMPLING) or NO_GPU_UTIL in n]
    return "; ".join(why) or None


def merge_ranks(summaries: Sequence[dict]) -> dict:
    """One window's summary of a DDP run from every rank's (each sampled its own GPU): rank 0's
    process figures, and rank r's GPU figures as gpu<r>_..."""
    out = {k: v for k, v in summaries[0].items() if not _GPU_KEY.fullmatch(k)}
    for rank, summary in enumerate(summaries):
        for k, v in summary.items():
            if m := _GPU_KEY.fullmatch(k):
                out[f"gpu{rank}_{m.group(2)}"] = v
    return out


class UtilSampler:
    def __init__(
        self,
        interval_s: float = 0.5,
        devices: Sequence[int | str] | None = None,
        pid: int | None = None,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self.devices = devices
        self.pid = os.getpid() if pid is None else pid
        self.notes: list[str] = []
        self.gpus: dict[int, str] = {}  # CUDA ordinal -> UUID of each sampled GPU
        self.energy_scope: dict[int, str] = {}  # CUDA ordinal -> gpu | module (energy_scope)
        self.markers: list[tuple[float, str]] = []
        self.start_time: float | None = (
            None  # wall clock (time.time()) at t = 0, to align with other logs
        )
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._sampling = threading.Lock()  # one sample at a time: the thread's and `sample_now`'s
        self._t0 = 0.0
        self._nv = None
        self._handles: list = []
        self._off: set[tuple[int, str]] = set()
        self.mig: set[int] = set()  # sampled GPUs that are MIG slices (no utilisation from NVML)
        self._driver: dict[
            int, list[tuple[float, float]]
        ] = {}  # gpu -> [(t, util %)] of the driver's samples
        self._driver_seen: dict[
            int, int
        ] = {}  # gpu -> timestamp (us) of the last driver sample fetched
        self._energy_at: dict[
            str, dict[int, float]
        ] = {}  # marker label -> {gpu: energy counter, mJ}
        self._cost_wall = self._cost_cpu = 0.0
        self._n_cost = 0

    # -- lifecycle
    # ----------------------------------------------------------------------------------------------
    def start(self, background: bool = True) -> UtilSampler:
        """Open NVML and start sampling every `interval_s` on a thread; `background=False` starts no
        thread (samples are then taken by `sample_now`, e.g. by a caller with its own schedule)."""
        if self._started:
            raise RuntimeError("UtilSampler.start() called twice")
        self._started = True
        self._proc = psutil.Process(self.pid)
        try:
            self._open_gpus()
        except BaseException:
            self._close_nvml()
            raise
        self.columns = (
            ["t"] + HOST_COLUMNS + [f"gpu{i}_{m}" for i in self.gpus for m in GPU_METRICS]
        )
        self._t0, self.start_time = time.monotonic(), time.time()
        self._driver_seen = {
            i: int(self.start_time * 1e6) for i in self._driver
        }  # none from before the start
        self._prime()
        if background:
            self._thread = threading.Thread(
                target=self._run, name="mmhpc-util-sampler", daemon=True
            )
            self._thread.start()
        return self

    def sample_now(self) -> None:
        """Take one sample now (beside the thread's, if it runs): its rates cover the time since the
        last one."""
        if not self._started or self._stop.is_set():
            raise RuntimeError("UtilSampler.sample_now() outside start() ... stop()")
        self._sample()

    def stop(self) -> None:
        if not self._started or self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # The tail since the last tick completes short windows and energy totals; a tail of a few ms
        # would give CPU % dominated by the kernel's 10 ms accounting tick, so it is dropped.
        if time.monotonic() - self._t_prev > 0.25 * self.interval_s:
            self._sample()
        self._close_nvml()

    def _close_nvml(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self._nv = None

    def __enter__(self) -> UtilSampler:
        return self if self._started else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def mark(self, label: str) -> float:
        """Record an event marker ("epoch 3 start"); returns its `t`."""
        if not self._started:
            raise RuntimeError("UtilSampler.mark() before start()")
        with (
            self._sampling
        ):  # the boundary's driver samples and energy, read now (not at the next poll)
            t = time.monotonic() - self._t0
            if self._handles:
                self._fetch_driver_samples()
                self._energy_at[str(label)] = self._energy_now()
        with self._lock:
            self.markers.append((t, str(label)))
        return t

    def _note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)

    def _run(self) -> None:
        k = 1
        # Ticks are scheduled at t0 + k*interval so sampling cost and wake-up latency do not
        # accumulate.
        while not self._stop.wait(max(0.0, self._t0 + k * self.interval_s - time.monotonic())):
            try:
                self._sample()
            except (
                Exception
            ) as e:  # a monitoring glitch must not end the series, nor the training run
                self._note(f"sample failed: {type(e).__name__}: {e}")
            k = max(
                k + 1, int((time.monotonic() - self._t0) / self.interval_s) + 1
            )  # skip missed ticks, no burst

    # -- NVML
    # ----------------------------------------------------------------------------------------------
    def _init_backend(self):
        """pynvml, or AMD SMI behind the same calls (a ROCm build of torch, or no NVML); None, with
        a note saying why, when neither loads."""
        from mmhpc.system import amd

        torch = sys.modules.get("torch")
        rocm = torch is not None and bool(getattr(torch.version, "hip", None))
        order = ["amd", "nvml"] if rocm else ["nvml"] + (["amd"] if amd.available() else [])
        for name in order:
            try:
                if name == "nvml":
                    import pynvml as nv
                else:
                    nv = amd.AmdSmiAsNvml()
                nv.nvmlInit()
                if name == "amd":
                    self._note(f"GPU metrics from {nv.vendor}: polled utilisation (no driver "
                               "samples)")
                return nv
            except Exception as e:
                self._note(f"{'nvml' if name == 'nvml' else 'amdsmi'} unavailable: {e}")
        if rocm:
            self._note(f"{NO_GPU_SAMPLING}: a ROCm build on AMD GPUs without AMD SMI (the amdsmi "
                       "package of ROCm) and NVML is NVIDIA's: host metrics only")
        return None

    def _open_gpus(self) -> None:
        nv = self._init_backend()
        if nv is None:
            return
        self._nv = nv
        try:
            n = nv.nvmlDeviceGetCount()
            nvml_uuids = [nv.nvmlDeviceGetUUID(nv.nvmlDeviceGetHandleByIndex(i)) for i in range(n)]
            env = nv.visible_env() if hasattr(nv, "visible_env") else os.environ.get(
                "CUDA_VISIBLE_DEVICES")
            visible = _torch_uuids() or visible_gpus(env, nvml_uuids)
        except Exception as e:
            self._note(f"gpu selection failed: {e}")
            return
        wanted = range(len(visible)) if self.devices is None else self.devices
        for d in wanted:
            if isinstance(d, str):
                if d not in visible:
                    raise ValueError(f"device {d!r} is not among the visible GPUs {visible}")
                d = visible.index(d)
            if not 0 <= d < len(visible):
                raise ValueError(f"device {d} out of range: {len(visible)} visible GPU(s)")
            found = nvml_handle(nv, visible[d])
            if found is None:
                self._note(f"gpu {visible[d]}: no NVML handle")
                continue
            self.gpus[d], handle = found
            self._handles.append(handle)
            try:
                name = nv.nvmlDeviceGetName(handle)
                self.energy_scope[d] = energy_scope(
                    name.decode() if isinstance(name, bytes) else name
                )
            except nv.NVMLError as e:
                self.energy_scope[d] = "gpu"
                self._note(f"gpu{d} name: {e}")
            if self._is_mig(handle):
                self.mig.add(d)
                self._off.add((d, "util_pct"))
                self._note(
                    f"gpu{d} {NO_GPU_UTIL}, a MIG slice (NVML has no utilisation for MIG "
                    "devices)"
                )
            else:
                self._driver[d] = []

    def _is_mig(self, handle) -> bool:
        try:
            return bool(self._nv.nvmlDeviceIsMigDeviceHandle(handle))
        except self._nv.NVMLError:  # a driver without MIG
            return False

    def _fetch_driver_samples(self) -> None:
        """Append the driver's utilisation samples newer than the last fetched (its buffer holds the
        last few seconds' worth, so a poll every interval_s loses none)."""
        nv = self._nv
        for i, h in zip(self.gpus, self._handles):
            if i not in self._driver or (i, "driver_util") in self._off:
                continue
            try:
                vtype, samples = nv.nvmlDeviceGetSamples(
                    h, nv.NVML_GPU_UTILIZATION_SAMPLES, self._driver_seen[i]
                )
            except nv.NVMLError_NotFound:  # no sample since the last fetch
                continue
            except (
                nv.NVMLError_NotSupported,
                nv.NVMLError_NoPermission,
                nv.NVMLError_FunctionNotFound,
            ) as e:
                self._off.add((i, "driver_util"))
                self._note(f"gpu{i} driver utilisation samples: {e}; the polled values stand in")
                continue
            except nv.NVMLError as e:
                self._note(f"gpu{i} driver utilisation samples: {e}")
                continue
            new = sorted((s.timeStamp, _sample_value(nv, vtype, s)) for s in samples
                         if s.timeStamp > self._driver_seen[i])
            if new:
                self._driver_seen[i] = new[-1][0]
                with self._lock:
                    self._driver[i] += [(ts / 1e6 - self.start_time, v) for ts, v in new]

    def _energy_now(self) -> dict[int, float]:
        out = {}
        for i, h in zip(self.gpus, self._handles):
            if (i, "energy_mj") not in self._off:
                try:
                    out[i] = float(self._nv.nvmlDeviceGetTotalEnergyConsumption(h))
                except self._nv.NVMLError as e:
                    self._note(f"gpu{i} energy_mj: {e}")
        return out

    def _gpu_values(self) -> list[float]:
        nv, out = self._nv, []
        getters = {"util_pct": lambda h: nv.nvmlDeviceGetUtilizationRates(h).gpu,
                   "mem_mb": lambda h: nv.nvmlDeviceGetMemoryInfo(h).used / MiB,
                   "power_w": lambda h: nv.nvmlDeviceGetPowerUsage(h) / 1000.0,
                   "sm_clock_mhz": lambda h: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM),
                   "energy_mj": lambda h: nv.nvmlDeviceGetTotalEnergyConsumption(h)}
        for i, h in zip(self.gpus, self._handles):
            for m in GPU_METRICS:
                v = math.nan
                if (i, m) not in self._off:
                    try:
                        v = float(getters[m](h))
                    except (
                        nv.NVMLError_NotSupported,
                        nv.NVMLError_NoPermission,
                        nv.NVMLError_FunctionNotFound,
                    ) as e:
                        self._off.add(
                            (i, m)
                        )  # MIG slices and older boards lack some metrics; stop asking
                        self._note(f"gpu{i} {m}: {e}")
                    except nv.NVMLError as e:
                        self._note(f"gpu{i} {m}: {e}")
                out.append(v)
        return out

    # -- psutil
    # ----------------------------------------------------------------------------------------------
    def _prime(self) -> None:
        self._procs: dict[int, psutil.Process] = {}
        self._cpu_prev: dict[int, float] = {}
        self._fast_kids = os.path.exists(f"/proc/{self.pid}/task/{self.pid}/children")
        self._proc_stats()
        self._sys_prev = self._sys_busy()
        self._io_prev = {k: self._counters(k) for k in ("disk", "net")}
        self._t_prev = time.monotonic()

    def _descendants(self) -> list[int]:
        # psutil's children() reads /proc/*/stat of every process on the node (ms on a busy node);
        # the kernel's per-thread children lists cost only our own tree. Fall back where
        # CONFIG_PROC_CHILDREN is missing.
        if self._fast_kids:
            out, stack = [], [self.pid]
            while stack:
                pid = stack.pop()
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                except OSError:
                    continue
                for tid in tids:
                    try:
                        with open(f"/proc/{pid}/task/{tid}/children") as f:
                            kids = [int(x) for x in f.read().split()]
                    except OSError:
                        continue
                    out += kids
                    stack += kids
            return out
        try:
            return [c.pid for c in self._proc.children(recursive=True)]
        except psutil.Error:
            return []

    def _proc_stats(self) -> tuple[float, float, int]:
        """(CPU seconds consumed since the previous call, RSS bytes, number of live children)."""
        procs, prevs, cpu, rss = {}, {}, 0.0, 0
        for pid in [self.pid, *self._descendants()]:
            p = self._procs.get(
                pid
            )  # reused: building a psutil.Process costs a /proc read of its own
            try:
                p = p or psutil.Process(pid)
                with p.oneshot():
                    ct, mem = p.cpu_times(), p.memory_info()
            except psutil.Error:  # exited (NoSuchProcess/Zombie) or not ours (AccessDenied)
                continue
            procs[pid] = p
            total = prevs[pid] = ct.user + ct.system
            # A process unseen at the last sample was born since then, so all its CPU time is new; a
            # total that went backwards means the pid was reused. Children that exit between samples
            # lose their last partial interval.
            prev = self._cpu_prev.get(pid, 0.0)
            cpu += total - prev if total >= prev else total
            rss += mem.rss
        self._procs, self._cpu_prev = procs, prevs
        return cpu, rss, len(procs) - (self.pid in procs)

    @staticmethod
    def _sys_busy() -> tuple[float, float]:
        t = psutil.cpu_times()
        idle = t.idle + getattr(t, "iowait", 0.0)
        total = (
            sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        )  # guest is inside user already
        return total - idle, total

    def _counters(self, kind: str) -> tuple[float, float] | None:
        try:
            c = psutil.disk_io_counters() if kind == "disk" else psutil.net_io_counters()
        except Exception as e:
            c, why = None, e
        else:
            why = "not available on this system"
        if c is None:
            self._note(f"{kind} counters unavailable: {why}")
            return None
        return (c.read_bytes, c.write_bytes) if kind == "disk" else (c.bytes_sent, c.bytes_recv)

    def _sample(self) -> None:
        with self._sampling:
            self._take_sample()

    def _take_sample(self) -> None:
        w0, c0 = time.perf_counter(), time.thread_time()
        now = time.monotonic()
        dt = max(now - self._t_prev, 1e-9)
        cpu_s, rss, n_kids = self._proc_stats()
        busy, total = self._sys_busy()
        dbusy, dtotal = busy - self._sys_prev[0], total - self._sys_prev[1]
        rates = []
        for k in ("disk", "net"):
            cur, prev = (
                self._counters(k) if self._io_prev[k] is not None else None,
                self._io_prev[k],
            )
            ok = cur is not None and prev is not None
            rates += [
                (c - p) / dt if ok and c >= p else math.nan
                for c, p in zip(cur or (0, 0), prev or (0, 0))
            ]
            self._io_prev[k] = cur
        row = (now - self._t0, 100.0 * cpu_s / dt, rss / MiB, n_kids,
               100.0 * dbusy / dtotal if dtotal > 0 else math.nan, *rates,
               *(self._gpu_values() if self._handles else ()))
        if self._handles:
            self._fetch_driver_samples()
        self._t_prev, self._sys_prev = now, (busy, total)
        with self._lock:
            self._rows.append(row)
            self._cost_wall += time.perf_counter() - w0
            self._cost_cpu += time.thread_time() - c0
            self._n_cost += 1

    # -- results
    # ----------------------------------------------------------------------------------------------
    @property
    def samples(self) -> pd.DataFrame:
        with self._lock:
            rows = list(self._rows)
        return pd.DataFrame(rows, columns=getattr(self, "columns", ["t"] + HOST_COLUMNS))

    @property
    def sample_cost_us(self) -> dict[str, float]:
        """Mean wall time and sampler-thread CPU time per sample, in microseconds."""
        n = max(self._n_cost, 1)
        return {
            "n": self._n_cost,
            "wall_us": 1e6 * self._cost_wall / n,
            "cpu_us": 1e6 * self._cost_cpu / n,
        }

    def _when(self, t: float | str | None, default: float) -> float:
        if t is None:
            return default
        if isinstance(t, str):
            for tm, label in self.markers:
                if label == t:
                    return tm
            raise ValueError(f"no marker {t!r}; markers are {[m for _, m in self.markers]}")
        return float(t)

    def summary(self, t0: float | str | None = None, t1: float | str | None = None) -> dict:
        """Mean and peak of each metric over samples with t0 <= t <= t1 (seconds or marker labels),
        plus `gpu{i}_energy_j` from the energy counter: between the readings taken at two markers,
        else from the last sample at or before t0. GPU utilisation from the driver's samples in the
        window where the driver gives them (`gpu{i}_util_samples` counts the values behind the mean,
        driver's or polled)."""
        df = self.samples
        a, b = self._when(t0, -math.inf), self._when(t1, math.inf)
        win = df[(df.t >= a) & (df.t <= b)]
        out: dict = {
            "t0": None if t0 is None else a,
            "t1": None if t1 is None else b,
            "n_samples": len(win),
        }

        def num(v):
            return None if v is None or pd.isna(v) else float(v)

        for col in df.columns[1:]:
            if col.endswith("_energy_mj"):
                before = df.loc[df.t <= a, col].dropna()
                vals = pd.concat([before.tail(1), win[col].dropna()])
                i = int(col[3:col.index("_")])
                out[energy_key(i, self.energy_scope.get(i, "gpu"))] = (
                    num((vals.iloc[-1] - vals.iloc[0]) / 1000.0) if len(vals) >= 2 else None)
            else:
                out[f"{col}_mean"] = num(win[col].mean()) if len(win) else None
                out[f"{col}_peak"] = num(win[col].max()) if len(win) else None
        for i in self.gpus:
            out.update(self._util(i, win, a, b))
            marked = [self._energy_at.get(t) for t in (t0, t1) if isinstance(t, str)]
            if len(marked) == 2 and all(i in e for e in marked):
                out[f"gpu{i}_energy_j"] = (marked[1][i] - marked[0][i]) / 1000.0
        return out

    def _util(self, i: int, win: pd.DataFrame, a: float, b: float) -> dict:
        key = f"gpu{i}_util_pct"
        if i in self.mig:
            return {f"{key}_mean": None, f"{key}_peak": None, f"gpu{i}_util_samples": 0}
        if i in self._driver and (i, "driver_util") not in self._off:
            with self._lock:
                values = [v for t, v in self._driver[i] if a <= t <= b]
            return {
                f"{key}_mean": sum(values) / len(values) if values else None,
                f"{key}_peak": max(values) if values else None,
                f"gpu{i}_util_samples": len(values),
            }
        return {f"gpu{i}_util_samples": int(win[key].notna().sum())}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the time series as CSV and, next to it, `<stem>.markers.json` (markers, notes,
        devices)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"interval_s": self.interval_s, "start_time": self.start_time, "pid": self.pid,
                "gpus": {str(k): v for k, v in self.gpus.items()}, "notes": self.notes,
                "energy_scope": {str(k): v for k, v in self.energy_scope.items()},
                "markers": [{"t": t, "label": label} for t, label in self.markers],
                "energy_mj_at_markers": self._energy_at,
                "driver_util_samples": {str(k): v for k, v in self._driver.items()}}  # [t, util %]
        # atomic: readers (live plotting, a crashed job's epilogue) never see half a file
        atomic_write_text(path, self.samples.to_csv(index=False))
        atomic_write_text(path.with_suffix(".markers.json"), json.dumps(meta, indent=1))
        return path


