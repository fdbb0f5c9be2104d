"""The CPU tier of the GPU-only code: every gpu-check check and the CUDA branches of mmhpc/system/
run here against a stubbed torch.cuda (tests/fakes_gpu.py: fake devices, events, streams and
timings), so their arithmetic, assertions, records and report run without a GPU. Tensors stay on the
CPU; nothing of mmhpc is stubbed. The tests named after issue 18's items fail on the code before it
(a723877)."""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakes_gpu import FakeCuda, FakeNvml

from mmhpc import gpucheck
from mmhpc.errors import ConfigError, RunError
from mmhpc.gpucheck import Check, Skip
from mmhpc.system import parallel

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake(monkeypatch):
    return FakeCuda(monkeypatch, count=1)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads make a small convolution 10x
    slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gpu-check-data")  # synthetic data, generated once per session


@pytest.fixture
def ck(tmp_path, fake, data_dir, monkeypatch):
    """A gpu-check Check that believes in the fake GPU and computes on the CPU, on tiny synthetic
    data."""
    monkeypatch.setenv("MMHPC_DATA", str(data_dir))
    c = Check(tmp_path / "records", float("inf"), workers=1)
    c.device, c.preset = torch.device("cpu"), "tiny"
    yield c
    import shutil

    shutil.rmtree(c.scratch, ignore_errors=True)


def _small_precision_check(monkeypatch):
    monkeypatch.setattr(gpucheck, "MATMUL_N", 32)
    monkeypatch.setattr(gpucheck, "RESNET_BATCH", 2)
    monkeypatch.setattr(gpucheck, "RESNET_SIZE", 32)
    monkeypatch.setattr(gpucheck, "TIMED", 2)


# ---- item 1: the precision check ran into a method that no longer exists
# ------------------------------

def test_item1_precision_check_runs_its_flags_and_figures_with_fake_timings(ck, fake, monkeypatch):
    _small_precision_check(monkeypatch)
    # fake timings: a matmul with TF32 on takes 1 ms, 4 ms without (what tensor cores give on an
    # H100)
    fake.ms_per_record = lambda: 1.0 if torch.backends.cuda.matmul.allow_tf32 else 4.0
    rec, line = gpucheck.check_precision(ck)
    p = rec["precisions"]
    assert list(p) == ["fp32_strict", "fp32", "tf32", "bf16"]
    assert (
        p["fp32"]["flags"]["matmul_allow_tf32"] is False
        and p["fp32"]["flags"]["cudnn_allow_tf32"] is True
    )
    assert (
        p["fp32_strict"]["flags"]["cudnn_allow_tf32"] is False
        and p["tf32"]["flags"]["matmul_allow_tf32"]
    )
    # events around 10 matmuls read 4 ms: 0.4 ms a call, 2 n^3 flops each
    assert p["fp32"]["matmul_tflops"] == pytest.approx(2 * 32**3 / 0.4e-3 / 1e12)
    assert rec["tf32_matmul_speedup"] == pytest.approx(4.0)
    assert (
        p["bf16"]["matmul_dtype"] == "torch.bfloat16"
        and p["fp32"]["matmul_dtype"] == "torch.float32"
    )
    assert p["bf16"]["resnet18_images_per_s"] == pytest.approx(2 / (1.0 / 2 / 1000))
    assert "tf32: matmul" in line


def test_precision_check_fails_when_tf32_changes_nothing_and_skips_formats_an_old_gpu_lacks(
    ck, fake, monkeypatch
):
    _small_precision_check(monkeypatch)
    with pytest.raises(AssertionError, match="TF32 flag has no effect"):
        gpucheck.check_precision(ck)  # every precision equally fast
    fake.capability = (7, 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (7, 0))
    rec, _ = gpucheck.check_precision(ck)
    assert "needs compute capability 8.0+" in rec["precisions"]["bf16"]["skipped"]
    assert "tf32_matmul_speedup" not in rec


# ---- item 2: blp_devices without an index, or naming no visible GPU
# ----------------------------------

def test_item2_blp_devices_cuda_is_the_runs_gpu_and_indices_are_checked(tiny_config, monkeypatch):
    fake = FakeCuda(monkeypatch, count=2)
    cfg = tiny_config("cremad", "system.parallelism=blp", "system.device=cuda",
                      "system.blp_devices={audio: cuda, visual: 'cuda:1'}")
    par = parallel.build(cfg)
    assert par.setup() == torch.device("cuda", 0)
    assert par.placement(None, None) == {
        "audio": torch.device("cuda", 0),
        "visual": torch.device("cuda", 1),
    }
    fake.current = 1  # the run's GPU is the current one: a bare `cuda` follows it
    par = parallel.build(cfg)
    assert par.setup() == torch.device("cuda", 1) and par.placement(None, None)["audio"].index == 1
    for bad in (
        "{audio: 'cuda:2', visual: cuda}",
        "{audio: cpu, visual: cuda}",
        "{audio: gpu0, visual: cuda}",
    ):
        par = parallel.build(tiny_config("cremad", "system.parallelism=blp", "system.device=cuda",
                                         f"system.blp_devices={bad}"))
        with pytest.raises(
            ConfigError,
            match=r"system.blp_devices: audio: .* is not a device of this run "
            r"\(system.device=cuda, 2 visible GPU\(s\)\); valid: "
            r"cuda, cuda:0, "
            r"cuda:1",
        ):
            par.setup()


def test_blp_devices_on_a_cpu_run_must_be_cpu(tiny_config):
    par = parallel.build(tiny_config("cremad", "system.parallelism=blp", "system.device=cpu",
                                     "system.blp_devices={audio: cuda, visual: cpu}"))
    with pytest.raises(ConfigError, match="valid: cpu"):
        par.setup()


def test_blp_on_fake_gpus_puts_branches_on_their_streams_and_devices(tiny_config, monkeypatch):
    """BranchParallel's CUDA branch (a stream per branch, set_device in each branch thread, the join
    on the master's stream) with two fake GPUs' streams; the tensors stay on the CPU."""
    from mmhpc.train import Trainer

    trainer = Trainer(tiny_config("cremad", "system.parallelism=blp", "system.device=cpu",
                                  "system.blp_devices={audio: cpu, visual: cpu}"), progress=False)
    fake = FakeCuda(monkeypatch, count=2)
    runner = trainer.runtime.parallelism.runner
    runner.streams = {
        m: torch.cuda.Stream(torch.device("cuda", i)) for i, m in enumerate(("audio", "visual"))
    }
    try:
        batch = trainer.strategy.data.probe()
        out = runner.encode(batch)
        costs = parallel.measure_branch_costs(trainer.model, batch, torch.device("cpu"), reps=1)
    finally:
        trainer.close()
    assert set(out) == {"audio", "visual"} and all(
        e.shape[0] == len(batch["label"]) for e in out.values()
    )
    assert all(
        s.waited for s in runner.streams.values()
    )  # each branch waited for the master's queue
    assert {d for _, d in fake.set_devices} == {
        torch.device("cpu")
    }  # each thread: its branch's device
    assert set(costs) == {"audio", "visual"} and all(c > 0 for c in costs.values())


# ---- item 3: wheels shadow consistently; on a GPU node nothing skips quietly
# ---------------------------

def test_item3_on_a_gpu_node_a_check_that_cannot_run_fails(tmp_path, fake, monkeypatch, capsys):
    def lacks_a_package(ck):
        raise Skip("needs pydantic (not installed)")

    def lacks_a_second_gpu(ck):
        raise Skip("needs two CUDA GPUs", hardware=True)

    monkeypatch.setattr(gpucheck, "CHECKS", {"a": lacks_a_package, "b": lacks_a_second_gpu})
    assert gpucheck.run(tmp_path, wheels=tmp_path / "none", isolate=False) == 1
    out = capsys.readouterr().out
    assert "FAIL  a" in out and "cannot run on this GPU node: needs pydantic" in out
    assert "SKIP  b" in out  # hardware this node lacks is a skip, said so
    assert json.loads((tmp_path / "a.json").read_text())["status"] == "FAIL"


# ---- item 4: two ranks on one visible GPU
# -----------------------------------------------------------

def test_item4_two_ranks_on_one_visible_gpu_are_refused_naming_local_rank(monkeypatch):
    FakeCuda(monkeypatch, count=1)
    for k, v in {"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLURM_GPUS_PER_TASK", raising=False)
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 1 sees one GPU \(CUDA_VISIBLE_DEVICES=0\)"):
        parallel.local_device(1)
    with pytest.raises(ConfigError, match="LOCAL_RANK 0"):  # rank 0 of two on the node too
        parallel.local_device(0)
    # --gpus-per-task=1: each task its own GPU, ordinal 0 in every process
    monkeypatch.setenv("SLURM_GPUS_PER_TASK", "1")
    assert parallel.local_device(1) == torch.device("cuda", 0)
    assert parallel.local_device(0, {}) == torch.device("cuda", 0)  # one rank, one GPU


# ---- item 5: a 1-task DDP job exports the torch.distributed variables; doctor and --gpus-per-task
# -----

def test_item5_one_task_ddp_job_through_submitit_exports_rank_and_world_size(
    tiny_config, monkeypatch
):
    from mmhpc.launch.submit import _join_distributed

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(k, "")  # recorded, so what the join sets is undone after the test
        monkeypatch.delenv(k)
    slurm = {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_STEP_NODELIST": "node1",
    }
    for k, v in slurm.items():
        monkeypatch.setenv(k, v)
    assert _join_distributed(tiny_config("cremad", "system.parallelism=ddp")) == 0
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == (
        "0",
        "1",
        "0",
    )
    assert os.environ["MASTER_ADDR"] == "node1" and os.environ["MASTER_PORT"].isdigit()


def test_item5_doctor_accepts_gpus_per_task_allocations(monkeypatch):
    from mmhpc.doctor import run_checks

    FakeCuda(monkeypatch, count=1)
    env = {"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_TASK": "1"}
    gpus = next(c for c in run_checks(env=env) if c.name == "gpus")
    assert gpus.ok, gpus.detail
    gpus = next(c for c in run_checks(env={"SLURM_GPUS_ON_NODE": "4"}) if c.name == "gpus")
    assert not gpus.ok and "SLURM allocated 4 GPU(s) on this node, torch sees 1" in gpus.detail


# ---- item 6: per-check timeout; a dead DDP rank is noticed at once and named
# --------------------------

def test_item6_a_check_past_its_time_limit_is_killed_and_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the check's own process: no GPU either
    t0 = time.monotonic()
    code = gpucheck.main(["--out", str(tmp_path), "--only", "env", "--check-timeout", "0.2",
                          "--wheels", str(tmp_path / "none")])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "FAIL  env" in out and "timed out after 0.2 s (killed" in out
    assert time.monotonic() - t0 < 120
    assert json.loads((tmp_path / "env.json").read_text())["status"] == "FAIL"
    assert not list(tmp_path.glob(".*.result.json"))


def test_without_a_gpu_a_check_gets_cpu_slower_times_its_limit(tmp_path, monkeypatch, capsys):
    """The checks that run without a GPU compute on the CPU: their limits are CPU_SLOWER times the
    GPU node's (`make gpu-check` on a loaded CPU machine passes its trainer runs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setitem(gpucheck.TIMEOUTS, "env", 0.05)
    assert gpucheck.run(tmp_path, only=["env"], wheels=tmp_path / "none") == 1
    assert f"timed out after {0.05 * gpucheck.CPU_SLOWER:g} s (killed" in capsys.readouterr().out


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_each_check_runs_in_a_process_of_its_own_and_reports_its_result(tmp_path, monkeypatch,
                                                                        capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpucheck.run(tmp_path, only=["env", "report"], wheels=tmp_path / "none") == 0
    out = capsys.readouterr().out
    assert "PASS  env" in out and "SKIP  report" in out and "no run records to report on" in out
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["status"] == "PASS" and env["cuda_available"] is False  # the child's own answer
    assert env["python"] == sys.version.split()[0] and env["packages"]["pydantic"]
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert {k: r["status"] for k, r in summary["checks"].items()} == {"env": "PASS",
                                                                       "report": "SKIP"}
    assert not (tmp_path / "report.json").exists()  # a skip writes no record
    # a check process that ends without a result (here: a name it does not know) fails it
    res = gpucheck._run_child("no-such-check", tmp_path, 60.0, 1, 120.0)
    assert res == {"status": "FAIL", "detail": "its process ended with exit code 2 and no result",
                   "record": {}, "hardware": False, "not_here": []}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_timed_out_checks_whole_process_group_is_killed(tmp_path):
    """A hung check's loader workers are its children: the kill takes its process group."""
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    grandchild = int(proc.stdout.readline())
    assert _alive(grandchild)
    gpucheck._kill_group(proc)
    assert proc.returncode == -9
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)
    gpucheck._kill_group(proc)  # already gone: nothing to kill, no error


def test_item6_ddp_process_groups_are_made_with_a_bounded_timeout(tiny_config, monkeypatch):
    FakeCuda(monkeypatch, count=2)
    calls = []
    monkeypatch.setattr(parallel.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(parallel.dist, "init_process_group",
                        lambda backend, init_method=None, **kw: calls.append((backend, kw)))
    monkeypatch.setattr(
        parallel.dist, "new_group", lambda **kw: calls.append(("new_group", kw)) or "group"
    )
    for k, v in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MMHPC_DIST_TIMEOUT_S", "45")
    par = parallel.build(tiny_config("cremad", "system.parallelism=ddp", "system.device=cuda"))
    par.setup()
    from datetime import timedelta

    assert calls[0][0] == "nccl" and calls[0][1]["timeout"] == timedelta(seconds=45)
    assert calls[1] == (
        "new_group",
        {"backend": "gloo"},
    )  # the host-side group, made by every rank at setup


def _dying_rank(rank: int, port: int, cfg, out_dir: str) -> None:
    from mmhpc.train import Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = Trainer(cfg, progress=False)
    run_pass = trainer._pass

    def dies_in_validation(split, epoch):
        if split == "val" and rank == 0:
            os._exit(3)  # rank 0 dies during validation
        return run_pass(split, epoch)

    trainer._pass = dies_in_validation
    t0 = time.monotonic()
    try:
        trainer.fit()
        result = {"error": None}
    except RunError as e:
        result = {"error": str(e), "type": "RunError"}
    except BaseException as e:  # noqa: BLE001
        result = {"error": str(e), "type": type(e).__name__}
    result["seconds"] = time.monotonic() - t0
    Path(out_dir, f"rank{rank}").write_text(json.dumps(result))


@pytest.mark.slow
def test_item6_a_ddp_rank_that_dies_in_validation_is_named_by_the_others_at_once(
    tiny_config, tmp_path
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tiny_config("cremad", "system.parallelism=ddp", "train.max_batches=2", "system.threads=1",
                      "system.sample_interval=0")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_dying_rank, args=(r, port, cfg, str(tmp_path))) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        if p.is_alive():
            p.kill()
    assert procs[0].exitcode == 3
    result = json.loads((tmp_path / "rank1").read_text())
    assert result["type"] == "RunError", result
    assert "ddp rank 1: the broadcast of rank 0's evaluation failed" in result["error"]
    assert "rank(s) 0 died or hang" in result["error"]
    assert result["seconds"] < 60


# ---- item 13: every check and the CUDA branches of mmhpc/system/ on the fake GPU
# ----------------------

def test_env_check_and_records_directory_name_the_fake_gpu(ck):
    rec, line = gpucheck.check_env(ck)
    assert rec["gpu"] == {
        "name": "NVIDIA H200",
        "capability": "9.0",
        "memory_gib": 141.0,
        "count": 1,
        "sms": 132,
    }
    assert line.startswith("NVIDIA H200, capability 9.0")
    assert gpucheck.default_out() == Path("reports/results/h200")


def test_child_process_entry_runs_one_check_and_writes_its_result(ck, tmp_path):
    assert gpucheck.main(["--child", "env", "--out", str(tmp_path), "--workers", "1"]) == 0
    res = json.loads((tmp_path / ".env.result.json").read_text())
    assert res["status"] == "PASS" and res["record"]["gpu"]["name"] == "NVIDIA H200"


def test_sync_counting_reports_what_cuda_says_synchronised(ck, fake):
    assert gpucheck._count_syncs(ck, "strategy.name=naive", steps=1) == []
    fake.sync_warnings = ["aten::item", "cudaMemcpyAsync"]
    assert gpucheck._count_syncs(ck, "strategy.name=naive", steps=1) == [
        "called a synchronizing CUDA operation: aten::item",
        "called a synchronizing CUDA operation: cudaMemcpyAsync",
    ]
    assert fake.sync_mode == "default"  # set back after the counted steps


@pytest.mark.slow
def test_item12_syncs_check_covers_every_strategy_and_a_text_run(ck):
    from mmhpc.strategies import STRATEGIES

    rec, line = gpucheck.check_syncs(ck)
    assert set(rec["runs"]) == {f"cremad/{s}" for s in STRATEGIES} | {"mvsa/text+visual"}
    assert all(r == {"host_syncs": 0, "messages": []} for r in rec["runs"].values()), rec
    assert line.startswith(
        f"0 host synchronisations in 3 steps of each of {len(STRATEGIES) + 1} runs"
    )


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_blp_check_compares_gradients_and_fails_without_a_stream_per_branch(ck):
    # the fake GPU runs no kernels: the profiler finds none, which the check must call a failure
    with pytest.raises(
        AssertionError, match=r"BLP kernels ran on 0 CUDA stream\(s\), expected one per branch"
    ):
        gpucheck.check_blp(ck)
    events = [
        {"cat": "kernel", "args": {"stream": 7}},
        {"cat": "kernel", "args": {"stream": 13}},
        {"cat": "kernel", "args": {"stream": 7}},
        {"cat": "cpu_op", "args": {}},
        {"cat": "kernel", "tid": 3},
    ]
    assert gpucheck.trace_streams(events) == {"7": 2, "13": 1, "3": 1}


def test_ddp_check_runs_its_steps_over_gloo_with_the_fake_gpu(ck):
    rec, line = gpucheck.check_ddp(ck)
    assert rec == {"backend": "gloo", "nccl_version": "2.27.3", "world_size": 1}
    assert line == "NCCL 2.27.3: all-reduce and a DDP step in one process"


@pytest.mark.slow
def test_item14_trainer_check_runs_ddp_and_blp_bf16_preinit_and_lists_what_needs_two_gpus(ck):
    rec, line = gpucheck.check_trainer(ck)
    assert rec["ddp-1rank"]["status"] == "done" and rec["ddp-1rank"]["backend"] == "gloo"
    assert rec["blp-bf16-preinit"]["status"] == "done"
    assert rec["not_run"] == {"dp-2gpu": "needs two CUDA GPUs", "blp-2gpu": "needs two CUDA GPUs"}
    assert ck.not_here == ["trainer: dp-2gpu", "trainer: blp-2gpu"]
    assert "RANK" not in os.environ  # the 1-rank DDP run's variables are gone again


def test_bench_figures_and_line_arithmetic():
    rec = {
        f"visual/{p}": {"train_s_mean": t} for p, t in (("fp32", 4.0), ("tf32", 2.0), ("bf16", 1.0))
    }
    rec["text/fp32"], rec["text/tf32"] = {"train_s_mean": 3.0}, {"skipped": "needs 8.0+"}
    assert gpucheck.bench_line(rec) == (
        "MVSA train s/epoch: visual fp32 4.0 s (1.00x), tf32 2.0 s (2.00x), bf16 1.0 s (4.00x); "
        "text fp32 3.0 s (1.00x), tf32 skipped"
    )


@pytest.mark.slow
def test_bench_check_times_each_encoder_at_each_precision_the_device_runs(ck):
    """On the CPU tier the runs are on the CPU, where tf32 has no meaning: it is skipped with the
    reason, as a GPU older than Ampere skips tf32 and bf16."""
    rec, line = gpucheck.check_bench(ck)
    assert list(rec) == [f"{m}/{p}" for m in ("visual", "text") for p in gpucheck.PRECISIONS]
    for m in ("visual", "text"):
        assert "tf32 is a tensor-core format" in rec[f"{m}/tf32"]["skipped"]
        for p in ("fp32", "bf16"):
            r = rec[f"{m}/{p}"]
            assert r["train_s_mean"] > 0 and r["epoch_s_mean"] >= r["train_s_mean"]
            record = json.loads((ck.out / "runs" / f"precision-mvsa-{m}-{p}.json").read_text())
            assert record["config"]["system"]["precision"] == p
            assert record["config"]["data"]["modalities"] == [m]
    assert line == gpucheck.bench_line(rec) and "tf32 skipped" in line


def test_sampler_check_reads_utilisation_power_and_energy_of_the_fake_gpu(ck, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(gpucheck, "SAMPLER_N", 64)
    monkeypatch.setattr(gpucheck, "SAMPLER_LOAD_S", 0.5)
    nvml = FakeNvml(monkeypatch)
    gpu = nvml.add("GPU-5a5a5a5a-0000-0000-0000-000000000000", power_w=300.0, util_pct=93)
    rec, line = gpucheck.check_sampler(ck)
    s = rec["summary"]
    assert rec["gpus"] == {0: gpu.uuid} and rec["interval_s"] == 0.1
    assert s["gpu0_util_pct_mean"] == 93.0 and s["gpu0_util_samples"] >= 20  # 20 ms per sample
    assert s["gpu0_power_w_mean"] == 300.0
    # the energy counter read at the two markers: 300 W over the 0.5 s load (and a little more)
    assert 300.0 * 0.5 <= s["gpu0_energy_j"] < 300.0 * 5
    assert line.startswith("utilisation 93 %, power 300 W, energy ") and " J over 0.5 s; " in line
    gpu.util_pct = 12  # a GPU that idles under the load fails the check
    with pytest.raises(AssertionError, match=r"GPU utilisation under a matmul loop: 12.0 %"):
        gpucheck.check_sampler(ck)


def test_loader_line_fails_a_preinit_loader_that_stalls_like_a_fresh_start():
    def rec(std_stall, preinit_stall, util=(80.0, 95.0)):
        return {"standard": {"epoch_s_mean": 10.0, "stall_s": std_stall,
                             "util/gpu0_util_pct_mean": util[0]},
                "preinit": {"epoch_s_mean": 8.0, "stall_s": preinit_stall,
                            "util/gpu0_util_pct_mean": util[1]}}

    assert gpucheck.loader_line(rec(0.2, 0.6)) == (
        "MVSA visual, standard (persistent workers) -> pre-initialised: epoch 10.00 s -> 8.00 s, "
        "epoch-start stall 0.200 s -> 0.600 s, GPU util 80 -> 95 %")
    gpucheck.loader_line(rec(2.0, 3.9))  # within twice the standard stall
    with pytest.raises(AssertionError, match="stalls more than the standard one: MVSA visual"):
        gpucheck.loader_line(rec(0.2, 0.75))  # beyond both twice and 0.5 s more
    assert gpucheck.loader_line(rec(0.2, 0.2, util=(None, 50.0))).endswith(
        "(no GPU utilisation: psutil/pandas missing, or none from NVML as on MIG)")


def test_checks_skip_when_their_time_budget_is_spent(ck):
    ck.budget_s = 0
    with pytest.raises(Skip, match="time budget spent") as e:
        gpucheck.check_loader(ck)
    assert not e.value.hardware  # on a GPU node: a FAIL
    with pytest.raises(Skip, match="time budget spent"):
        gpucheck.bench_precisions(ck, "mvsa", ["visual"])


def test_single_run_on_the_fake_gpu_sets_its_device_synchronises_and_reads_peaks(
    tiny_config, monkeypatch
):
    fake = FakeCuda(monkeypatch, count=2)
    fake.current = 1
    par = parallel.build(tiny_config("cremad", "system.device=cuda"))
    assert par.setup() == torch.device("cuda", 1) and fake.set_devices[-1][1] == torch.device(
        "cuda", 1
    )
    par.synchronize()
    assert ("synchronize", torch.device("cuda", 1)) in fake.calls
    nvml = FakeNvml(monkeypatch)  # NVML's used memory, found by the UUID torch gives
    for i, used in enumerate((9.0, 5.0)):
        nvml.add(f"GPU-{i:08x}-0000-0000-0000-000000000000", used_mib=used)
    monkeypatch.setattr("mmhpc.system.sampler._USED_HANDLES", {})
    assert par.peak_memory() == {"cuda:1_peak_mib": 3.0, "cuda:1_reserved_peak_mib": 4.0,
                                 "cuda:1_device_used_mib": 5.0}
    dp = parallel.build(tiny_config("cremad", "system.device=cuda", "system.parallelism=dp"))
    assert dp.setup() == torch.device("cuda", 1)  # two GPUs: allowed
    assert dp.compute_devices() == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert parallel.blp_devices(torch.device("cuda", 0)) == [
        torch.device("cuda", 0),
        torch.device("cuda", 1),
    ]


def test_a_failed_collective_names_the_ranks_that_do_not_answer(tiny_config, tmp_path):
    import torch.distributed as dist

    par = parallel.build(tiny_config("cremad", "system.parallelism=ddp"))
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        assert par.reduce({"acc": 0.5}, 10) == {"acc": 0.5} and par.broadcast("x") == "x"
        with pytest.raises(
            RunError,
            match=r"ddp rank 0: the test collective failed \(Connection closed by "
            r"peer\); every rank still answers",
        ):
            with par._collective("the test collective"):
                raise RuntimeError("Connection closed by peer")
    finally:
        par.close()
