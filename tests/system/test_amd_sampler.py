"""The sampler on AMD GPUs (issue 17, item 6): AMD SMI read through system/amd.py, driven with a
fake `amdsmi` module that answers as its Python binding does (dicts, "N/A" for a reading the board
lacks, AmdSmiLibraryException with amdsmi_status_t codes, ROCm 6.0's older key names)."""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch

from mmhpc.system.sampler import UtilSampler, gpu_util_unavailable


class FakeAmdGpu:
    def __init__(self, uuid, name, power_w, old_keys=False, no_clock=False):
        self.uuid, self.name, self.power_w = uuid, name, power_w
        self.old_keys, self.no_clock = old_keys, no_clock
        self.t0 = time.monotonic()


def fake_amdsmi(gpus: list[FakeAmdGpu]) -> types.ModuleType:
    m = types.ModuleType("amdsmi")

    class AmdSmiException(Exception):
        pass

    class AmdSmiLibraryException(AmdSmiException):
        def __init__(self, code):
            super().__init__(f"error code {code}")
            self.code = code

        def get_error_code(self):
            return self.code

    m.AmdSmiException, m.AmdSmiLibraryException = AmdSmiException, AmdSmiLibraryException
    m.AmdSmiClkType = types.SimpleNamespace(GFX="GFX")
    m.calls = []
    m.amdsmi_init = lambda: m.calls.append("init")
    m.amdsmi_shut_down = lambda: m.calls.append("shut_down")
    m.amdsmi_get_processor_handles = lambda: list(gpus)
    m.amdsmi_get_gpu_device_uuid = lambda h: h.uuid
    m.amdsmi_get_gpu_asic_info = lambda h: {"market_name": h.name}
    m.amdsmi_get_gpu_activity = lambda h: {
        "gfx_activity": 87,
        "umc_activity": 20,
        "mm_activity": "N/A",
    }
    m.amdsmi_get_gpu_vram_usage = lambda h: {"vram_total": 65536, "vram_used": 3072}

    def power(h):  # MI200 and earlier: average only; MI300: current
        if h.old_keys:
            return {"average_socket_power": h.power_w, "current_socket_power": "N/A"}
        return {"current_socket_power": h.power_w, "average_socket_power": "N/A"}

    def clock(h, kind):
        assert kind == "GFX"
        if h.no_clock:
            raise AmdSmiLibraryException(2)  # AMDSMI_STATUS_NOT_SUPPORTED
        return {"cur_clk": 1700} if h.old_keys else {"clk": 2100, "min_clk": 500}

    def energy(h):  # counts of 15.3 uJ, growing at power x time
        count = int(h.power_w * (time.monotonic() - h.t0) * 1e6 / 15.3)
        key = "power" if h.old_keys else "energy_accumulator"
        return {key: count, "counter_resolution": 15.3, "timestamp": 0}

    m.amdsmi_get_power_info, m.amdsmi_get_clock_info = power, clock
    m.amdsmi_get_energy_count = energy
    return m


@pytest.fixture
def rocm(monkeypatch):
    """A ROCm build of torch on a node with two AMD GPUs and no NVML."""
    gpus = [
        FakeAmdGpu("a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f1", "AMD Instinct MI300X", 600.0),
        FakeAmdGpu(
            "a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f2",
            "AMD Instinct MI250X",
            400.0,
            old_keys=True,
            no_clock=True,
        ),
    ]
    import pynvml

    def absent():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", absent)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    for var in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    smi = fake_amdsmi(gpus)
    monkeypatch.setitem(sys.modules, "amdsmi", smi)
    return smi


def sample_twice() -> UtilSampler:
    s = UtilSampler(60.0).start(background=False)
    try:
        s.mark("a")
        time.sleep(0.3)
        s.sample_now()
        time.sleep(0.3)
        s.sample_now()
        s.mark("b")
    finally:
        s.stop()
    return s


def test_amd_gpus_are_sampled_through_amd_smi_in_the_samplers_units(rocm):
    s = sample_twice()
    df, out = s.samples, s.summary("a", "b")
    assert s.gpus == {
        0: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f1",
        1: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f2",
    }
    assert gpu_util_unavailable(s.notes) is None
    assert any(n.startswith("GPU metrics from AMD SMI") for n in s.notes)
    assert set(df["gpu0_util_pct"]) == {87.0} and set(df["gpu1_mem_mb"]) == {3072.0}
    # MI300's current power, MI250X's average (its current reads "N/A")
    assert set(df["gpu0_power_w"]) == {600.0} and set(df["gpu1_power_w"]) == {400.0}
    # a clock the board does not report: NaN, a note, and the sampler stops asking
    assert set(df["gpu0_sm_clock_mhz"]) == {2100.0} and df["gpu1_sm_clock_mhz"].isna().all()
    assert (1, "sm_clock_mhz") in s._off and any("gpu1 sm_clock_mhz" in n for n in s.notes)
    # energy from the accumulator x its resolution, between the two markers: power x time
    span = s._when("b", 0) - s._when("a", 0)
    assert out["gpu0_energy_j"] == pytest.approx(600.0 * span, rel=0.1)
    assert out["gpu1_energy_j"] == pytest.approx(400.0 * span, rel=0.1)
    # no driver samples on AMD: the mean is the polled values'
    assert out["gpu0_util_samples"] == len(df) and out["gpu0_util_pct_mean"] == 87.0
    assert rocm.calls == ["init", "shut_down"]


@pytest.mark.parametrize(
    "env, expect",
    [
        ({"ROCR_VISIBLE_DEVICES": "1"}, {0: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f2"}),
        ({"HIP_VISIBLE_DEVICES": "1"}, {0: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f2"}),
        (
            {"ROCR_VISIBLE_DEVICES": "1,0", "HIP_VISIBLE_DEVICES": "1"},
            {0: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f1"},
        ),
        ({"CUDA_VISIBLE_DEVICES": "0"}, {0: "GPU-a1b2c3d4-0000-1000-80c0-d5d2a4a7d7f1"}),
    ],
)
def test_the_amd_gpus_a_rocm_process_sees_are_the_ones_sampled(rocm, monkeypatch, env, expect):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with UtilSampler(60.0) as s:
        s.sample_now()
    assert s.gpus == expect


def test_a_bad_visible_devices_entry_on_amd_is_named(rocm, monkeypatch):
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "7")
    with UtilSampler(60.0) as s:
        pass
    assert s.gpus == {} and any("'7'" in n and "out of range" in n for n in s.notes), s.notes
