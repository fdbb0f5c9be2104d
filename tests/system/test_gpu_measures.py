"""What the trainer measures on a GPU, driven on the CPU with the fake GPU of tests/fakes_gpu.py
(CUDA's timeline and events, NVML): GPU idle between steps, epoch time with the strategies' own
passes, driver utilisation samples, energy at epoch boundaries, MIG, every DDP rank's GPU, memory
beyond the allocator's peak, and the host syncs of a step."""
from __future__ import annotations

import contextlib
import json
import time

import pytest
import torch
from fakes_gpu import FakeCuda, FakeNvml

from mmhpc.models.encoders import TextEncoder
from mmhpc.results import Epoch, EpochTime, RunRecord
from mmhpc.system import parallel
from mmhpc.system.idle import StepGaps
from mmhpc.system.sampler import (
    UtilSampler,
    _sample_value,
    device_used_mib,
    gpu_util_unavailable,
    merge_ranks,
)
from mmhpc.system.telemetry import Telemetry
from mmhpc.train import Trainer, train

CUDA = torch.device("cuda", 0)


@pytest.fixture
def nvml(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return FakeNvml(monkeypatch)


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """Fail on any read of a tensor's value by the host (on a GPU each one waits for the device's
    queue)."""
    def refuse(name):
        def read(self, *a, **k):
            raise AssertionError(f"host read of a tensor: Tensor.{name}")
        return read

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
            m.setattr(torch.Tensor, name, refuse(name))
        yield


# ---- item 7: GPU idle between steps from CUDA events
# --------------------------------------------------------

def test_gpu_idle_is_zero_while_the_gpu_has_work_queued_though_the_host_waited(monkeypatch):
    gpu = FakeCuda(monkeypatch, ms_per_record=0)
    gaps = StepGaps(CUDA)
    for _ in range(
        5
    ):  # the host waits 50 ms for each batch, the GPU works 100 ms per step: never idle
        gpu.run(host_s=0.05)
        gaps.start()
        gpu.run(gpu_s=0.1)
        gaps.end()
    assert gaps.idle_s() == pytest.approx(0.0, abs=1e-9)


def test_gpu_idle_is_the_gpu_timeline_gap_between_steps(monkeypatch):
    gpu = FakeCuda(monkeypatch, ms_per_record=0)
    gaps = StepGaps(CUDA)
    for _ in range(5):  # 50 ms data wait, 10 ms of GPU work: the GPU idles 40 ms between two steps
        gpu.run(host_s=0.05)
        gaps.start()
        gpu.run(host_s=0.001, gpu_s=0.01)  # queuing the work takes the host 1 ms
        gaps.end()
    assert gaps.idle_s() == pytest.approx(4 * (0.05 - 0.01), rel=1e-9)  # 4 gaps between 5 steps


def test_no_gpu_idle_figure_off_cuda():
    gaps = StepGaps(torch.device("cpu"))
    gaps.start()
    gaps.end()
    assert gaps.idle_s() is None


# ---- items 7, 8, 12 through the trainer on the CPU
# --------------------------------------------------------------

@pytest.mark.slow
def test_epoch_time_includes_the_strategy_passes_and_the_best_state_copy(tiny_config, monkeypatch):
    from mmhpc.strategies.pmr import PMR

    original = PMR.compute_prototypes

    def slow_prototypes(self, epoch):
        time.sleep(0.3)
        return original(self, epoch)

    monkeypatch.setattr(PMR, "compute_prototypes", slow_prototypes)
    rec = train(
        tiny_config("cremad", "strategy.name=pmr", "system.sample_interval=0"), progress=False
    )
    t = rec.epochs[0].time
    passes = t.train_loader_init_s + t.train_s + t.val_loader_init_s + t.val_s
    assert t.strategy_s >= 0.3
    assert t.epoch_s == pytest.approx(passes + t.strategy_s)
    assert (
        t.train_gpu_idle_s is None and t.train_data_wait_s is not None
    )  # the CPU: the host's figure only


@pytest.mark.slow
def test_gradient_blending_held_out_pass_is_in_the_epoch(tiny_config, monkeypatch):
    from mmhpc.strategies.multiloss import GradientBlending

    original = GradientBlending.held_out_losses

    def slow(self):
        time.sleep(0.3)
        return original(self)

    monkeypatch.setattr(GradientBlending, "held_out_losses", slow)
    rec = train(
        tiny_config("cremad", "strategy.name=gradient_blending", "system.sample_interval=0"),
        progress=False,
    )
    assert rec.epochs[0].time.strategy_s >= 0.3


@pytest.mark.slow
def test_train_timer_starts_after_a_synchronize_and_copies_skip_the_index(tiny_config, monkeypatch):
    trainer = Trainer(
        tiny_config("cremad", "loader.pin_memory=false", "system.sample_interval=0"), progress=False
    )
    events, copies = [], []
    sync, to_device, loader = (
        trainer.runtime.synchronize,
        trainer.runtime.to_device,
        trainer.loaders["train"],
    )
    epoch = loader.epoch
    monkeypatch.setattr(trainer.runtime, "synchronize", lambda: (events.append("sync"), sync())[1])
    monkeypatch.setattr(loader, "epoch", lambda e: (events.append("train iterator"), epoch(e))[1])

    def spy(batch, non_blocking=False):
        copies.append((sorted(batch), non_blocking))
        return to_device(batch, non_blocking)

    monkeypatch.setattr(trainer.runtime, "to_device", spy)
    try:
        trainer._epoch(0)
    finally:
        trainer.close()
    assert events[events.index("train iterator") - 1] == "sync"
    assert copies and all("index" not in keys and non_blocking for keys, non_blocking in copies)


# ---- item 9: driver samples, energy at markers, MIG, DDP ranks
# ----------------------------------------------

def test_utilisation_from_driver_samples_and_energy_read_at_the_markers(nvml):
    gpu = nvml.add("GPU-11111111-2222-3333-4444-555555555555", power_w=300.0)
    s = UtilSampler(60.0).start(background=False)  # no poll between the markers but one
    try:
        s.mark("epoch 0 start")
        time.sleep(0.25)
        s.sample_now()
        time.sleep(0.25)
        s.mark("epoch 0 end")
        out = s.summary("epoch 0 start", "epoch 0 end")
    finally:
        s.stop()
    a, b = (t for t, _ in s.markers)
    inside = [v for ts, v in gpu.samples_served if a <= ts / 1e6 - s.start_time <= b]
    assert len(inside) >= 10  # a 0.5 s window at 20 ms per driver sample; one polled value
    assert out["gpu0_util_samples"] == len(inside)
    assert out["gpu0_util_pct_mean"] == pytest.approx(sum(inside) / len(inside))
    assert out["gpu0_util_pct_peak"] == max(inside)
    start, _poll, end = gpu.energy_reads[
        :3
    ]  # the counter read at each marker, not at the polls around them
    assert out["gpu0_energy_j"] == pytest.approx((end - start) / 1000.0)


def test_driver_samples_fetched_at_polls_are_not_lost_nor_counted_twice(nvml):
    gpu = nvml.add("GPU-aaaa", period_s=0.01)
    s = UtilSampler(60.0).start(background=False)
    try:
        for _ in range(4):
            time.sleep(0.05)
            s.sample_now()
        s.mark("end")
    finally:
        s.stop()
    times = [t for t, _ in s._driver[0]]
    assert (
        len(times)
        == len(set(times))
        == len([ts for ts, _ in gpu.samples_served if ts / 1e6 >= s.start_time])
    )


def test_a_mig_slice_has_no_utilisation_and_says_so(nvml):
    nvml.add("MIG-12345678-aaaa-bbbb-cccc-123456789012", mig=True)
    with UtilSampler(60.0) as s:
        s.mark("a")
        s.sample_now()
        s.mark("b")
        out = s.summary("a", "b")
    assert s.mig == {0}
    assert out["gpu0_util_pct_mean"] is None and out["gpu0_util_samples"] == 0
    assert out["gpu0_mem_mb_mean"] == pytest.approx(1000.0)  # memory still reads on a MIG slice
    assert any("MIG" in n and "util" in n for n in s.notes)



def test_the_polled_nvml_figures_of_each_gpu_in_the_series_and_the_csv(nvml, tmp_path):
    """The real-NVML check of test_sampler on fake devices: every polled metric of every GPU in the
    series, in its unit (the fake: 50 % util, 1000 / 2500 MiB used, 250 / 400 W, 1980 MHz, energy
    power x time), and the devices and scopes in the saved markers file."""
    nvml.add("GPU-aaaa", used_mib=1000.0)
    nvml.add("GPU-bbbb", used_mib=2500.0, power_w=400.0)
    s = UtilSampler(60.0).start(background=False)
    try:
        time.sleep(0.3)
        s.sample_now()
        time.sleep(0.3)
        s.sample_now()
    finally:
        s.stop()
    df = s.samples
    assert s.gpus == {0: "GPU-aaaa", 1: "GPU-bbbb"} and s.energy_scope == {0: "gpu", 1: "gpu"}
    assert list(df["gpu0_util_pct"].dropna()) == [50.0] * len(df)
    assert list(df["gpu0_mem_mb"]) == [1000.0] * len(df) and list(df["gpu1_mem_mb"]) == [
        2500.0
    ] * len(df)
    assert list(df["gpu1_power_w"]) == [400.0] * len(df) and set(df["gpu0_sm_clock_mhz"]) == {
        1980.0
    }
    # the counter grows at power x time: 400 W over the samples' span, in mJ (0.3 s or more: 120 J)
    e = df["gpu1_energy_mj"]
    span = df["t"].iloc[-1] - df["t"].iloc[0]
    assert (e.iloc[-1] - e.iloc[0]) / 1000.0 == pytest.approx(400.0 * span, rel=0.2)
    s.save(tmp_path / "u.util.csv")
    meta = json.loads((tmp_path / "u.util.markers.json").read_text())
    assert meta["gpus"] == {"0": "GPU-aaaa", "1": "GPU-bbbb"} and nvml.inits == 1


def test_a_rocm_build_without_nvml_says_gpu_sampling_is_unavailable(monkeypatch):
    """ROCm: NVML does not load; the note says GPU sampling is unavailable (the report shows it)."""
    import pynvml

    def absent():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", absent)
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    with UtilSampler(60.0) as s:
        s.sample_now()
    assert s.gpus == {} and not any(c.startswith("gpu") for c in s.samples.columns)
    why = gpu_util_unavailable(s.notes)
    assert why is not None and why.startswith("GPU sampling unavailable: a ROCm build")
    monkeypatch.setattr(torch.version, "hip", None)
    with UtilSampler(60.0) as cuda_build:  # a CUDA build without a driver: no such claim
        pass
    assert gpu_util_unavailable(cuda_build.notes) is None


def test_sample_values_by_the_drivers_value_type():
    import pynvml as nv

    sample = nv.c_nvmlSample_t()
    sample.sampleValue.dVal = 37.5
    assert _sample_value(nv, nv.NVML_VALUE_TYPE_DOUBLE, sample) == 37.5
    sample.sampleValue.ullVal = 2**40 + 3
    assert _sample_value(nv, nv.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, sample) == 2**40 + 3


def test_report_does_not_put_cpu_utilisation_in_place_of_a_mig_gpu():
    from mmhpc.report.load import _measurements

    util = {"gpu0_util_pct_mean": None, "gpu0_mem_mb_mean": 900.0, "cpu_proc_pct_mean": 97.0}
    times = EpochTime(train_loader_init_s=0, train_s=1, val_loader_init_s=0, val_s=1, epoch_s=2)
    rec = RunRecord(
        run="r",
        status="done",
        config={},
        epochs=[Epoch(epoch=0, time=times, util=util)],
        summary={"test": {"acc/fused": 0.5}},
    )
    out = _measurements(rec)
    assert out.get("util_kind") != "CPU" and out.get("util_pct") is None


def test_every_ddp_rank_samples_its_own_gpu(nvml, monkeypatch, tiny_config):
    for i in range(2):
        nvml.add(f"GPU-{i}{i}{i}{i}")

    class Rank1:
        world, rank, is_main = 2, 1, False
        gathered = []

        def gather(self, obj):  # rank 0 sampled GPU 0 of its node
            self.gathered.append(obj)
            return [
                {0: "GPU-0000"}
                if isinstance(obj, dict) and 1 in obj
                else {"gpu0_util_pct_mean": 11.0},
                obj,
            ]

    runtime = Rank1()
    runtime.device = torch.device("cuda", 1)
    telemetry = Telemetry(tiny_config("cremad", "system.sample_interval=60"), runtime, writer=None)
    telemetry.on_fit_start(None, None)
    try:
        assert telemetry.sampler.gpus == {1: "GPU-1111"}  # its own GPU only, not the node's
        assert telemetry.sampled_gpus == {0: "GPU-0000", 1: "GPU-1111"}
        telemetry.on_epoch_start(None, 0)
        telemetry.on_passes_end(None, 0)
        util = telemetry._util
    finally:
        telemetry.sampler.stop()
    assert (
        util["gpu0_util_pct_mean"] == 11.0 and "gpu1_util_pct_mean" in util
    )  # rank r's GPU as gpu<r>


def test_merge_ranks_names_each_ranks_gpu_by_its_rank():
    ranks = [
        {"cpu_proc_pct_mean": 90.0, "gpu0_util_pct_mean": 50.0, "n_samples": 3},
        {"cpu_proc_pct_mean": 80.0, "gpu0_util_pct_mean": 70.0, "gpu0_energy_j": 5.0},
    ]
    assert merge_ranks(ranks) == {
        "cpu_proc_pct_mean": 90.0,
        "n_samples": 3,
        "gpu0_util_pct_mean": 50.0,
        "gpu1_util_pct_mean": 70.0,
        "gpu1_energy_j": 5.0,
    }


# ---- item 10: memory: allocated, reserved, device-level used
# ----------------------------------------------------


def test_peak_memory_has_reserved_and_nvml_used_beside_allocated(nvml, monkeypatch):
    nvml.add("GPU-abcdef01-0000-0000-0000-000000000000", used_mib=3072.0)
    # torch's UUID format: no GPU- prefix
    fake = FakeCuda(monkeypatch, uuids=["abcdef01-0000-0000-0000-000000000000"])
    fake.allocated_mib, fake.reserved_mib = 1024.0, 2048.0
    monkeypatch.setattr("mmhpc.system.sampler._USED_HANDLES", {})
    par = parallel.Single(None)
    par.device = CUDA
    assert par.peak_memory() == {
        "cuda:0_peak_mib": 1024.0,
        "cuda:0_reserved_peak_mib": 2048.0,
        "cuda:0_device_used_mib": 3072.0,
    }
    assert fake.resets == [CUDA]


def test_device_used_is_none_without_nvml(monkeypatch):
    import pynvml

    def absent():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", absent)
    monkeypatch.setattr("mmhpc.system.sampler._USED_HANDLES", {})
    assert device_used_mib(CUDA) is None


# ---- item 12: host syncs of a step
# ----------------------------------------------------------------------------


def test_mlb_step_reads_nothing_back_to_the_host(monkeypatch):
    from test_strategies import batch, strategy

    s = strategy("mlb", "train.lr=0.1", "strategy.params={alpha: 2.0, beta_max: 3.0}")
    x, y = batch()
    s.model.train()
    s.begin_epoch(0)
    with no_host_reads(monkeypatch):
        s.train_step(x, y)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_text_encoder_forward_reads_nothing_back_and_masks_as_before(monkeypatch, attention):
    torch.manual_seed(0)
    enc = TextEncoder("tiny", 16, 100).eval()
    enc.net.config._attn_implementation = attention
    ids = torch.randint(3, 100, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.long)
    mask[:, 10:] = 0
    expected = enc.net(input_ids=ids, attention_mask=mask).last_hidden_state[
        :, 0
    ]  # transformers' own masking
    with no_host_reads(monkeypatch):
        got = enc(torch.stack([ids, mask], 1))
    assert torch.allclose(got, expected, atol=1e-6)


def test_report_shows_the_gpu_idle_beside_the_hosts_data_wait(tmp_path):
    from test_report import record, write

    from mmhpc.report.load import load_results
    from mmhpc.report.tables import build_tables

    for p, idle, gpu_idle in ((1, 0.76, 0.05), (2, 0.72, 0.0)):
        rec = record(
            f"prefetch-{p}",
            [99.0, 9.0],
            loader={"num_workers": 16, "prefetch_factor": p},
            waits=[idle, idle],
        )
        for e in rec["epochs"]:
            e["time"]["train_gpu_idle_s"] = gpu_idle
        write(tmp_path, rec)
    tables, _ = build_tables(load_results(tmp_path).runs)
    (prefetch,) = (t for t in tables if t.name == "loader-prefetch")
    frame = prefetch.frame.set_index("Prefetch factor")
    assert list(frame["Idle time (s)"]) == ["0.760", "0.720"] and list(frame["GPU idle (s)"]) == [
        "0.050",
        "0.000",
    ]
    assert "CUDA events" in prefetch.caption


def test_bench_summary_keeps_the_new_figures_and_a_mig_gpus_missing_utilisation():
    from mmhpc.bench import bench_summary

    def epoch(t, idle, util):
        return {
            "time": {
                "epoch_s": t,
                "train_loader_init_s": 0.0,
                "train_s": t,
                "val_loader_init_s": 0.0,
                "val_s": 0.0,
                "train_samples_per_s": 1.0,
                "strategy_s": 0.5,
                "train_gpu_idle_s": idle,
            },
            "util": {
                "gpu0_util_pct_mean": util,
                "gpu0_mem_mb_peak": 100.0 * t,
                "gpu0_util_samples": 0,
            },
        }

    out = bench_summary(
        [epoch(9.0, 3.0, None), epoch(2.0, 0.2, None), epoch(4.0, 0.4, None)], warmup=1
    )
    assert out["strategy_s_mean"] == 0.5 and out["train_gpu_idle_s_mean"] == pytest.approx(0.3)
    assert out["util/gpu0_util_pct_mean"] is None and out["util/gpu0_mem_mb_peak"] == 400.0
    assert "util/gpu0_util_samples" not in out
