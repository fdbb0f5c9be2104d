"""UtilSampler against real psutil; NVML is absent on CI machines, so its presence is only forced
off, never faked."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from mmhpc.system.sampler import HOST_COLUMNS, UtilSampler, visible_gpus

U = ["GPU-aaaa1111-0000-0000-0000-000000000000", "GPU-bbbb2222-0000-0000-0000-000000000000",
     "GPU-bbbb3333-0000-0000-0000-000000000000"]
MIG = "MIG-5c89b4c6-1a2b-5f3e-9a1d-0123456789ab"


@pytest.fixture
def no_nvml(monkeypatch):
    """Force the NVML-absent path, so GPU machines take it too."""
    pynvml = pytest.importorskip("pynvml")

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)


def _wait_for(condition, timeout=30.0):
    """Poll until `condition()` holds (a condition, not a count of sleeps); fail after `timeout`
    s."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def _tick():
    """Wait until the kernel's CPU accounting advanced (a rate over no tick is undefined: NaN)."""
    before = sum(psutil.cpu_times())
    _wait_for(lambda: sum(psutil.cpu_times()) > before)


def test_busy_child_is_counted(no_nvml):
    # samples taken by hand: the sampled CPU is compared with what the child itself consumed
    s = UtilSampler(60).start(background=False)
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        proc = psutil.Process(child.pid)
        _wait_for(lambda: sum(proc.cpu_times()[:2]) >= 0.3)  # it has burnt 0.3 s of CPU
        s.sample_now()
        child_cpu = sum(proc.cpu_times()[:2])  # read just after the sample: at most a few ms more
    finally:
        child.kill()
        child.wait()
    s.stop()
    row = s.samples.iloc[0]
    assert row.n_children >= 1
    dt = row.t  # the first sample covers the time since start
    assert row.cpu_proc_pct / 100 * dt >= child_cpu - 0.05
    assert row.rss_mb > 1 and 0 <= row.cpu_sys_pct <= 100.5


def test_stop_is_prompt_and_idempotent(no_nvml):
    interval = 0.5
    s = UtilSampler(interval).start()
    _wait_for(lambda: len(s.samples) >= 1)
    t = time.monotonic()
    s.stop()
    assert time.monotonic() - t < 2 * interval
    assert not any(
        th.name == "mmhpc-util-sampler" and th.is_alive() for th in threading.enumerate()
    )
    n = len(s.samples)
    s.stop()
    assert len(s.samples) == n
    with pytest.raises(RuntimeError):
        s.start()
    with pytest.raises(RuntimeError):
        s.sample_now()


def test_interval_does_not_drift(no_nvml):
    interval = 0.05
    with UtilSampler(interval) as s:
        _wait_for(lambda: len(s.samples) >= 6)
        ticks = s.samples.t.to_numpy()  # taken by the thread (the stop tail comes later)
    # Tick k is scheduled at t0 + k*interval (never before it), and ticks missed while the machine
    # was busy are skipped rather than fired in a burst: every sample falls into a grid slot of its
    # own, from slot 1 on.
    slots = np.floor(ticks / interval + 1e-9)
    assert slots[0] >= 1 and (np.diff(slots) >= 1).all(), ticks


def test_nvml_absent_gives_note_and_no_gpu_columns(no_nvml):
    with UtilSampler(60).start(background=False) as s:
        s.sample_now()
    assert any(n.startswith("nvml unavailable:") for n in s.notes)
    assert s.gpus == {}
    assert list(s.samples.columns) == ["t"] + HOST_COLUMNS
    assert not any(k.startswith("gpu") for k in s.summary())


def test_summary_windows(no_nvml):
    s = UtilSampler(60).start(background=False)
    _tick()
    s.sample_now()
    s.mark("epoch 1 start")
    for _ in range(3):
        _tick()
        s.sample_now()
    s.mark("epoch 1 end")
    _tick()
    s.sample_now()
    s.stop()
    whole, ep = s.summary(), s.summary("epoch 1 start", "epoch 1 end")
    assert whole["n_samples"] == len(s.samples) == 5 and ep["n_samples"] == 3
    assert ep["t0"] == s.markers[0][0] and ep["t1"] == s.markers[1][0]
    for col in HOST_COLUMNS:
        assert ep[f"{col}_peak"] >= ep[f"{col}_mean"] - 1e-9
    assert s.summary(0.0, s.markers[0][0])["n_samples"] == 1
    assert s.summary(1e6, 2e6)["n_samples"] == 0 and s.summary(1e6, 2e6)["rss_mb_mean"] is None
    json.dumps(whole)  # goes into run records as is
    with pytest.raises(ValueError, match="no marker"):
        s.summary("epoch 9 start")


def test_save_roundtrip(no_nvml, tmp_path):
    with UtilSampler(60).start(background=False) as s:
        s.sample_now()
        s.mark("half")
        s.sample_now()
    out = s.save(tmp_path / "sub" / "util.csv")
    df = pd.read_csv(out)
    assert list(df.columns) == list(s.samples.columns) and len(df) == len(s.samples) == 2
    meta = json.loads((tmp_path / "sub" / "util.markers.json").read_text())
    assert [m["label"] for m in meta["markers"]] == ["half"] and meta["notes"] == s.notes
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "util.csv",
        "util.markers.json",
    ]  # no temp left


@pytest.mark.parametrize("env, expected", [
    (None, U),
    ("", []),
    ("  ", []),
    ("-1", []),
    ("0", U[:1]),
    ("2,0", [U[2], U[0]]),
    (" 1 , 2 ", U[1:]),
    (U[1], [U[1]]),
    ("GPU-aaaa", [U[0]]),
    (f"{U[2]},0", [U[2], U[0]]),
    (MIG, [MIG]),
    (f"{MIG},MIG-other", [MIG, "MIG-other"]),
])
def test_visible_gpus(env, expected):
    assert visible_gpus(env, U) == expected


@pytest.mark.parametrize("env, entry", [
    ("3", "'3'"),
    ("0,-2", "'-2'"),
    ("0,,1", "''"),
    ("cuda:0", "'cuda:0'"),
    ("GPU-ffff", "'GPU-ffff'"),
    ("GPU-bbbb", "'GPU-bbbb'"),  # ambiguous prefix
    ("MIG-", "'MIG-'"),
    ("0,0", "'0'"),
    (f"1,{U[1]}", repr(U[1])),
])
def test_visible_gpus_rejects(env, entry):
    with pytest.raises(ValueError, match=re.escape("CUDA_VISIBLE_DEVICES entry " + entry)):
        visible_gpus(env, U)


def test_visible_gpus_accepts_bytes_from_old_nvml():
    assert visible_gpus("1", [u.encode() for u in U]) == [U[1]]


def test_real_nvml_when_present():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pytest.skip("no NVML on this machine")
    with UtilSampler(0.05) as s:
        time.sleep(0.15)
    for i in s.gpus:
        assert s.samples[f"gpu{i}_mem_mb"].notna().any()
