"""UtilSampler against real psutil; NVML is absent on CI machines, so its presence is only forced off, never faked."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest

from mmhpc.system.sampler import GPU_METRICS, HOST_COLUMNS, UtilSampler, visible_gpus

BUSY = ("import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"
        "print(time.process_time(), time.time() - t)")
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


def test_busy_child_is_counted(no_nvml):
    interval = 0.1
    with UtilSampler(interval) as s:
        s.mark("busy start")
        out = subprocess.run([sys.executable, "-c", BUSY.format(s=1.2)], capture_output=True, text=True, check=True)
        s.mark("busy end")
    child_cpu, child_wall = map(float, out.stdout.split())
    df = s.samples
    busy = df[(df.t > s.markers[0][0]) & (df.t <= s.markers[1][0])]
    assert len(busy) >= 0.6 * child_wall / interval
    assert busy.n_children.max() >= 1
    # On a loaded machine the child may get less than a core, so compare with what it says it got;
    # the child's last partial interval is lost at its exit, hence the slack.
    child_pct = 100 * child_cpu / child_wall
    assert busy.cpu_proc_pct.max() > min(50.0, 0.8 * child_pct)
    seen_cpu = (busy.cpu_proc_pct / 100 * busy.t.diff().fillna(interval)).sum()
    assert seen_cpu >= 0.6 * child_cpu
    assert (df.rss_mb > 1).all() and df.cpu_sys_pct.between(0, 100.5).all()


def test_stop_is_prompt_and_idempotent(no_nvml):
    interval = 0.5
    s = UtilSampler(interval).start()
    time.sleep(0.6)
    t = time.monotonic()
    s.stop()
    assert time.monotonic() - t < 2 * interval
    assert not any(th.name == "mmhpc-util-sampler" and th.is_alive() for th in threading.enumerate())
    n = len(s.samples)
    s.stop()
    assert len(s.samples) == n >= 1
    with pytest.raises(RuntimeError):
        s.start()


def test_interval_does_not_drift(no_nvml):
    with UtilSampler(0.05) as s:
        time.sleep(0.62)
    t = s.samples.t.to_numpy()
    assert len(t) >= 8
    # Ticks stay on the k*interval grid instead of accumulating per-sample cost and wake-up latency.
    assert abs(t[-2] / 0.05 - round(t[-2] / 0.05)) < 0.6


def test_nvml_absent_gives_note_and_no_gpu_columns(no_nvml):
    with UtilSampler(0.05) as s:
        time.sleep(0.12)
    assert any(n.startswith("nvml unavailable:") for n in s.notes)
    assert s.gpus == {}
    assert list(s.samples.columns) == ["t"] + HOST_COLUMNS
    assert not any(k.startswith("gpu") for k in s.summary())


def test_summary_windows(no_nvml):
    with UtilSampler(0.05) as s:
        time.sleep(0.2)
        s.mark("epoch 1 start")
        time.sleep(0.25)
        s.mark("epoch 1 end")
        time.sleep(0.1)
    whole, ep = s.summary(), s.summary("epoch 1 start", "epoch 1 end")
    assert whole["n_samples"] == len(s.samples) > ep["n_samples"] >= 3
    assert ep["t0"] == s.markers[0][0] and ep["t1"] == s.markers[1][0]
    for col in HOST_COLUMNS:
        assert ep[f"{col}_peak"] >= ep[f"{col}_mean"] - 1e-9
    assert s.summary(0.0, 0.1)["n_samples"] <= 2
    assert s.summary(100.0, 200.0)["n_samples"] == 0 and s.summary(100.0, 200.0)["rss_mb_mean"] is None
    json.dumps(whole)  # goes into run records as is
    with pytest.raises(ValueError, match="no marker"):
        s.summary("epoch 9 start")


def test_save_roundtrip(no_nvml, tmp_path):
    with UtilSampler(0.05) as s:
        time.sleep(0.12)
        s.mark("half")
        time.sleep(0.1)
    out = s.save(tmp_path / "sub" / "util.csv")
    df = pd.read_csv(out)
    assert list(df.columns) == list(s.samples.columns) and len(df) == len(s.samples)
    meta = json.loads((tmp_path / "sub" / "util.markers.json").read_text())
    assert [m["label"] for m in meta["markers"]] == ["half"] and meta["notes"] == s.notes
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["util.csv", "util.markers.json"]  # no temp left


def test_gpu_column_names():
    assert GPU_METRICS == ["util_pct", "mem_mb", "power_w", "sm_clock_mhz", "energy_mj"]


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
