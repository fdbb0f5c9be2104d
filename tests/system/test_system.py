"""System layer on the CPU: pre-initialised loader, parallelism, precision guards, clean
shutdown."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
import torch.distributed as dist

from mmhpc.config import ConfigError
from mmhpc.data.frames import finish_batch
from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.models.multimodal import MultimodalModel
from mmhpc.system import parallel
from mmhpc.system.precision import Precision
from mmhpc.system.runtime import RunModel
from mmhpc.train import Trainer, seed_everything, train

REPO = Path(__file__).resolve().parents[2]


def _workers():
    """Live DataLoader workers of this process: any descendant but multiprocessing's own servers
    (the forkserver and the resource tracker, direct children that live as long as the process)."""
    me = psutil.Process()
    servers = {
        p.pid
        for p in me.children()
        if any(
            k in " ".join(p.cmdline())
            for k in ("forkserver import main", "resource_tracker import main")
        )
    }
    return [p for p in me.children(recursive=True)
            if p.pid not in servers and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _batches(loader, epochs):
    out = []
    for e in range(epochs):
        out.append(
            [
                (
                    b["index"].clone(),
                    (b["visual"].clone(), b["visual_crop"].clone()),
                    b["audio"].clone(),
                )
                for b in loader.epoch(e)
            ]
        )
    loader.close()
    return out


def test_preinit_yields_the_standard_batches_in_order(tiny_config):
    cfg = tiny_config("cremad", "loader.num_workers=2", "train.batch_size=64")
    pre = cfg.replace(["loader.preinit=true"])
    ds = build_datasets(cfg)["train"]
    standard = _batches(build_loader(ds, cfg, True), 3)
    threaded = _batches(build_loader(ds, pre, True), 3)
    assert [len(e) for e in standard] == [len(e) for e in threaded] == [8, 8, 8]
    for es, et in zip(standard, threaded):
        for (i1, v1, a1), (i2, v2, a2) in zip(es, et):
            assert torch.equal(i1, i2)  # same samples, same order
            assert all(map(torch.equal, v1, v2)) and torch.equal(
                a1, a2
            )  # same frames, random crops and flips
    assert not torch.equal(standard[0][0][0], standard[1][0][0])  # epochs are reshuffled
    assert _workers() == []


@pytest.mark.slow
def test_preinit_training_matches_standard_training(tiny_config):
    base = ("train.epochs=2", "loader.num_workers=2", "train.max_batches=3")
    a = train(tiny_config("cremad", *base, "output.name=std"), progress=False)
    b = train(
        tiny_config("cremad", *base, "loader.preinit=true", "output.name=pre"), progress=False
    )
    for ea, eb in zip(a.epochs, b.epochs):
        assert ea.train == eb.train and ea.val == eb.val
    assert _workers() == []


@pytest.mark.slow
def test_preinit_does_not_deadlock_while_the_main_thread_computes(tiny_config, tmp_path):
    """Workers are started from the helper thread while the main thread runs torch ops (a known
    freeze)."""
    cfg = tiny_config(
        "cremad", "loader.num_workers=2", "loader.preinit=true", "train.batch_size=32"
    )
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f"""
        import torch
        from mmhpc.config import RunConfig
        from mmhpc.data.loading import build_datasets, build_loader
        if __name__ == "__main__":
            cfg = RunConfig.from_dict({cfg.to_dict()!r})
            loader = build_loader(build_datasets(cfg)["train"], cfg, True)
            w = torch.randn(256, 256)
            for epoch in range(4):
                for batch in loader.epoch(epoch):
                    for _ in range(20):
                        w = torch.tanh(w @ w)  # intra-op threads busy while the next epoch starts
            loader.close()
            print("finished")
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "finished" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("how", ["exception", "sigint"])
def test_no_worker_outlives_an_error_or_ctrl_c(tiny_config, tmp_path, how):
    tag = uuid.uuid4().hex
    cfg = tiny_config("cremad", "loader.num_workers=2", "loader.preinit=true", "train.epochs=50")
    ready = tmp_path / "ready"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import pathlib, sys
        from mmhpc.config import RunConfig
        from mmhpc.train import Trainer
        if __name__ == "__main__":
            trainer = Trainer(RunConfig.from_dict({cfg.to_dict()!r}), progress=False)
            real = Trainer._epoch
            def epoch(self, e):
                if e == 1:
                    pathlib.Path({str(ready)!r}).touch()
                    if {how!r} == "exception":
                        raise RuntimeError("boom")
                return real(self, e)
            Trainer._epoch = epoch
            trainer.fit()
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=dict(os.environ, MMHPC_TEST_TAG=tag),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if how == "sigint":
        deadline = time.time() + 300
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # inside epoch 1, with the pre-initialised workers of epoch 2 starting
        proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    time.sleep(1.0)
    assert _tagged(tag) == [], "processes of the run outlived it"


def _tagged(tag: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get("MMHPC_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def test_blp_gives_the_gradients_of_single(tiny_config):
    """Branches run concurrently in threads; the one loss's backward reaches every branch
    unchanged."""
    cfg = tiny_config("iemocap", "model.fusion=concat")
    ds = build_datasets(cfg)["train"]
    batch = finish_batch(next(iter(build_loader(ds, cfg, True).epoch(0))))
    torch.manual_seed(0)
    single = MultimodalModel(cfg.modalities, ds.spec.num_classes, cfg.model, ds.shapes)
    blp = MultimodalModel(cfg.modalities, ds.spec.num_classes, cfg.model, ds.shapes)
    blp.load_state_dict(single.state_dict())
    runner = parallel.BranchParallel(
        blp, {m: torch.device("cpu") for m in cfg.modalities}, torch.device("cpu")
    )
    fp32 = Precision("fp32", "cpu")
    for model in (RunModel(single, fp32), RunModel(blp, fp32, runner)):
        torch.manual_seed(1)  # RoBERTa's dropout masks: the same draws for both
        out = model("step", batch)
        torch.nn.functional.cross_entropy(out["fused"], batch["label"]).backward()
    runner.close()
    for (name, p1), (_, p2) in zip(single.named_parameters(), blp.named_parameters()):
        if p1.grad is None:
            assert p2.grad is None, name
            continue
        torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_blp_training_places_branches_by_measured_cost_and_trains_as_single(tiny_config):
    common = (
        "strategy.name=alternating",
        "train.epochs=2",
        "train.max_batches=3",
        "system.sample_interval=0",
    )
    trainer = Trainer(
        tiny_config("cremad", *common, "system.parallelism=blp", "output.name=blp"), progress=False
    )
    par = trainer.runtime.parallelism
    assert set(par.costs) == {"audio", "visual"} and all(
        c > 0 for c in par.costs.values()
    )  # measured
    assert par.runner.placement == {"audio": torch.device("cpu"), "visual": torch.device("cpu")}
    assert (
        trainer.strategy.net.local.branches is par.runner
        and trainer.strategy.net.model is trainer.model
    )
    assert (
        par.input_device("visual") == par.runner.placement["visual"]
        and par.input_device("label") == trainer.device
    )
    blp = trainer.fit()
    single = train(tiny_config("cremad", *common, "output.name=single"), progress=False)
    assert not par.runner.pool._threads or all(
        not t.is_alive() for t in par.runner.pool._threads
    )  # closed
    assert len(blp.epochs) == len(single.epochs) == 2
    for eb, es in zip(blp.epochs, single.epochs):  # same gradients, same updates
        assert eb.train["loss/fused"] == pytest.approx(es.train["loss/fused"], rel=1e-4)
        assert eb.val["acc/fused"] == pytest.approx(es.val["acc/fused"], abs=1e-6)


def test_blp_explicit_placement_is_used_and_checked(tiny_config):
    trainer = Trainer(
        tiny_config(
            "cremad", "system.parallelism=blp", "system.blp_devices={audio: cpu, visual: cpu}"
        ),
        progress=False,
    )
    assert trainer.runtime.parallelism.costs is None  # given, not measured
    assert trainer.runtime.parallelism.runner.placement == {
        "audio": torch.device("cpu"),
        "visual": torch.device("cpu"),
    }
    trainer.close()
    with pytest.raises(
        ConfigError,
        match="system.blp_devices: give one device per modality; got \\['audio'\\]; "
        "valid: audio, visual",
    ):
        Trainer(
            tiny_config("cremad", "system.parallelism=blp", "system.blp_devices={audio: cpu}"),
            progress=False,
        )


def test_load_aware_placement_balances_cost():
    devs = [torch.device("cuda", 0), torch.device("cuda", 1)]
    placed = parallel.assign_branches({"audio": 3.0, "visual": 5.0, "text": 2.5}, devs)
    # visual alone on one device; audio and text (5.5) share the other
    assert placed["visual"] != placed["audio"] and placed["audio"] == placed["text"]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single(tiny_config, tmp_path):
    common = [
        "train.epochs=3",
        "train.batch_size=32",
        "train.max_batches=4",
        "data.modalities=[visual]",
        "system.sample_interval=0",
    ]
    single = train(tiny_config("cremad", *common, "output.name=single"), progress=False)
    ddp_cfg = tiny_config(
        "cremad",
        *common,
        "system.parallelism=ddp",
        "system.device=cpu",
        "output.name=ddp",
        "system.threads=1",
    )
    config = tmp_path / "ddp.yaml"
    config.write_text(ddp_cfg.to_yaml())
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--standalone", "-m", "mmhpc.cli", "train", "-q", str(config)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from mmhpc.results import read_record

    ddp = read_record(tmp_path / "runs" / "ddp.json")
    assert ddp.status == "done" and ddp.config["system"]["parallelism"] == "ddp"
    assert set(ddp.summary.test) == set(single.summary.test)  # the same metrics as a single run
    # Same samples per global step and the same initial weights, but BatchNorm normalises over each
    # process's 16 samples instead of 32 (SyncBatchNorm is GPU-only), so the trajectories drift
    # apart slowly. Stated tolerance: first epoch within 3 %, every epoch within 15 % (seen: 1 %, 4
    # %, 11 %).
    losses = [
        (es.train["loss/fused"], ed.train["loss/fused"])
        for es, ed in zip(single.epochs, ddp.epochs)
    ]
    assert losses[0][1] == pytest.approx(losses[0][0], rel=0.03)
    for s_loss, d_loss in losses:
        assert d_loss == pytest.approx(s_loss, rel=0.15)
    assert (
        losses[-1][1] < 0.95 * losses[0][1]
    )  # and it learns (12 steps at lr 1e-3: seen 1.88 -> 1.64)


def test_ddp_without_a_launcher_says_how(tiny_config):
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node"):
        Trainer(tiny_config("cremad", "system.parallelism=ddp"), progress=False)


def test_dp_on_a_machine_without_two_gpus_is_refused(tiny_config):
    with pytest.raises(
        ConfigError, match="dp .*needs >= 2 CUDA GPUs, this run has 0; valid: single"
    ):
        Trainer(tiny_config("cremad", "system.parallelism=dp"), progress=False)


class _FakeCuda:
    """Stubs of torch.cuda's device count and current device for a machine without CUDA; the process
    group call is recorded instead of made (NCCL cannot run here). Nothing of mmhpc is stubbed."""

    def __init__(self, monkeypatch, count: int):
        self.set_devices: list = []
        self.init_calls: list = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: self.set_devices.append(
            (threading.current_thread().name, torch.device(d))))
        monkeypatch.setattr(parallel.dist, "is_initialized", lambda: False)

        def init_process_group(
            backend, init_method=None, device_id=None, timeout=None, **kw
        ):  # in part
            self.init_calls.append((backend, {"device_id": device_id, **kw}))

        monkeypatch.setattr(parallel.dist, "init_process_group", init_process_group)
        monkeypatch.setattr(parallel.dist, "new_group", lambda **kw: None)


@pytest.mark.parametrize("visible, local_rank, expected", [
    (1, 1, 0),  # --gpus-per-task=1: every task sees its one GPU as ordinal 0
    (1, 3, 0),
    (4, 1, 1),  # torchrun / --gpus-per-node=4: all GPUs visible, one per local rank
    (4, 3, 3),
])
def test_ddp_chooses_its_gpu_once_and_passes_it_to_the_process_group(
    tiny_config, monkeypatch, visible, local_rank, expected
):
    fake = _FakeCuda(monkeypatch, visible)
    if visible == 1:
        monkeypatch.setenv("SLURM_GPUS_PER_TASK", "1")
    monkeypatch.setenv("RANK", str(local_rank))
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    par = parallel.build(tiny_config("cremad", "system.parallelism=ddp", "system.device=cuda"))
    device = par.setup()
    assert device == torch.device("cuda", expected)
    assert [d for _, d in fake.set_devices] == [device]
    assert fake.init_calls == [("nccl", {"device_id": device})]
    assert (par.rank, par.world, par.is_main) == (local_rank, 4, local_rank == 0)


def test_ddp_with_more_local_ranks_than_gpus_is_refused(tiny_config, monkeypatch):
    _FakeCuda(monkeypatch, 2)
    for k, v in {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match="local rank 2 sees 2 GPUs; run one process per GPU"):
        parallel.build(
            tiny_config("cremad", "system.parallelism=ddp", "system.device=cuda")
        ).setup()


def test_preinit_thread_runs_on_the_runs_device(tiny_config, monkeypatch):
    """The helper thread that builds the next epoch's iterator makes the run's GPU its current
    device first (else DataLoader's pin-memory thread would open a context on GPU 0)."""
    fake = _FakeCuda(monkeypatch, 2)
    cfg = tiny_config("cremad", "loader.num_workers=1", "loader.preinit=true")
    loader = build_loader(build_datasets(cfg)["train"], cfg, True, device=torch.device("cuda", 1))
    try:
        assert len(list(loader.epoch(0))) == len(loader)
    finally:
        loader.close()
    assert fake.set_devices and {d for _, d in fake.set_devices} == {torch.device("cuda", 1)}
    assert all(name.startswith("mmhpc-preinit") for name, _ in fake.set_devices)


@pytest.mark.parametrize(
    "precision, device, cap, refused",
    [
        ("tf32", "cpu", None, True),
        ("bf16", "cpu", None, False),
        ("fp32", "cpu", None, False),
        ("fp32_strict", "cpu", None, False),
        ("bf16", "cuda", (7, 0), True),
        ("tf32", "cuda", (7, 5), True),
        ("tf32", "cuda", 7.5, True),  # V100, T4
        ("bf16", "cuda", (8, 0), False),
        ("tf32", "cuda", (8, 6), False),
        ("bf16", "cuda", 9.0, False),
        ("fp32", "cuda", (7, 0), False),
        ("fp32_strict", "cuda", (6, 0), False),
    ],
)
def test_precision_guards(precision, device, cap, refused):
    problem = Precision(precision, device).problem(cap, "GPU")
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"system.precision: {precision} ")
        assert problem.endswith(
            "; valid: fp32, fp32_strict, bf16" if device == "cpu" else "; valid: fp32, fp32_strict"
        )


@pytest.fixture
def restore_backend_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled())
    yield
    (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    ) = saved[:3]
    torch.use_deterministic_algorithms(saved[3], warn_only=True)


@pytest.mark.parametrize("precision, matmul, cudnn", [
    ("fp32", False, True),          # PyTorch's defaults: the thesis' "No TF32" rows (Sec. 4.3.2.1)
    ("fp32_strict", False, False),
    ("tf32", True, True),           # thesis Fig. 3.6
    ("bf16", True, True),           # the thesis code base's TF32 flags stay on under autocast
])
def test_precision_sets_both_tf32_flags_every_time(precision, matmul, cudnn, restore_backend_flags):
    for start in (False, True):  # whatever an earlier run in this process left
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = start
        Precision(precision, "cuda").apply()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (
            matmul,
            cudnn,
        )


def test_fp32_is_pytorchs_default(restore_backend_flags):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; print(torch.backends.cuda.matmul.allow_tf32, "
            "torch.backends.cudnn.allow_tf32)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [
        str(Precision("fp32").mode.matmul_tf32),
        str(Precision("fp32").mode.cudnn_tf32),
    ]


@pytest.mark.parametrize("deterministic", [True, False])
def test_determinism_sets_kernels_and_cudnn_autotuning_both_ways(
    deterministic, restore_backend_flags
):
    torch.backends.cudnn.benchmark = deterministic
    torch.use_deterministic_algorithms(not deterministic)
    seed_everything(0, deterministic)
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.backends.cudnn.benchmark == (not deterministic)


def test_tf32_on_cpu_is_refused_before_training(tiny_config):
    with pytest.raises(ConfigError, match="tf32 is a tensor-core format"):
        Trainer(tiny_config("cremad", "system.precision=tf32", "system.device=cpu"), progress=False)


def _conv_dtypes(model) -> tuple[list, object]:
    seen: list = []
    conv = next(m for m in model.encoders["visual"].modules() if isinstance(m, torch.nn.Conv2d))
    return seen, conv.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))


@pytest.mark.slow
@pytest.mark.parametrize("precision, inner", [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_training_runs_its_encoders_at_the_runs_precision(tiny_config, precision, inner):
    trainer = Trainer(
        tiny_config(
            "mvsa", f"system.precision={precision}", "train.epochs=1", "train.max_batches=2"
        ),
        progress=False,
    )
    seen, hook = _conv_dtypes(trainer.model)
    rec = trainer.fit()
    hook.remove()
    assert rec.status == "done" and rec.config["system"]["precision"] == precision
    assert seen and set(seen) == {inner}  # training, validation and test steps alike


def test_the_model_enters_its_precision_in_any_thread(tiny_config):
    """DataParallel runs each replica's forward in a new thread, where the caller's autocast is
    absent (and CUDA's default autocast dtype is float16): the run's model enters the run's
    precision itself."""
    cfg = tiny_config("cremad")
    ds = build_datasets(cfg)["train"]
    batch = finish_batch(next(iter(build_loader(ds, cfg, True).epoch(0))))
    model = MultimodalModel(cfg.modalities, ds.spec.num_classes, cfg.model, ds.shapes)
    run = RunModel(model, Precision("bf16", "cpu"))
    seen, hook = _conv_dtypes(model)
    out: dict = {}
    replica = threading.Thread(target=lambda: out.update(run("step", batch)))
    replica.start()
    replica.join()
    assert seen == [torch.bfloat16]
    assert out["fused"].dtype == torch.float32 and all(
        z.dtype == torch.float32 for z in out["probes"].values()
    )
    # the strategies' separate calls (masked fusion, probes) run at the precision too, outside any
    # autocast
    z = run("fusion", {"audio": out["embs"]["audio"].detach()})
    assert z.dtype == torch.float32
    z.sum().backward()
    assert model.fusion.head.weight.grad.dtype == torch.float32
    assert RunModel(model, Precision("fp32", "cpu"))("step", batch)["fused"].dtype == torch.float32
    assert seen[-1] == torch.float32
    hook.remove()


@pytest.mark.slow
def test_record_has_the_time_breakdown_and_utilisation(tiny_config):
    rec = train(
        tiny_config("cremad", "train.epochs=2", "system.sample_interval=0.2"), progress=False
    )
    ep = rec.epochs[1]
    assert all(
        getattr(ep.time, k) >= 0
        for k in ("train_loader_init_s", "train_s", "val_loader_init_s", "val_s")
    )
    assert ep.time.train_samples_per_s > 0
    assert ep.util["n_samples"] >= 1 and "cpu_proc_pct_mean" in ep.util
    assert any("nvml" in n.lower() for n in rec.system["notes"])  # no GPU here: noted, not an error
    series = os.path.join(rec.config["output"]["runs_dir"], rec.system["timeseries"])
    assert series.endswith(".util.csv") and os.path.exists(series)


@pytest.mark.slow
def test_bench_cli_writes_the_bench_section_and_a_profiler_trace(synth_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmhpc.cli",
            "bench",
            "-q",
            "--epochs",
            "2",
            "--warmup",
            "1",
            "--profile",
            f"data.root={synth_dir('cremad')}",
            f"output.runs_dir={tmp_path}",
            "train.max_batches=6",
            "train.batch_size=16",
            "system.threads=2",
            "output.name=b",
            "system.sample_interval=0.2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    from mmhpc.results import read_record

    rec = read_record(tmp_path / "b.json")
    b = rec.bench
    assert (b["warmup_epochs"], b["measured_epochs"], len(rec.epochs)) == (1, 2, 3)
    measured = [e.time.epoch_s for e in rec.epochs[1:]]
    assert b["epoch_s_mean"] == pytest.approx(sum(measured) / 2)
    assert "util/cpu_proc_pct_mean" in b
    assert (tmp_path / b["trace"]).stat().st_size > 1000
    assert "epoch_s" in out.stdout


@pytest.mark.parametrize("sweep", ["precision", "loader", "parallelism", "batch"])
def test_system_sweeps_measure_at_the_thesis_settings(sweep):
    """Non-deterministic kernels with cuDNN autotuning; TF32, the thesis' default precision (Sec.
    4.3.2.1), unless the sweep varies it; on Alvis always on the GPU (never `auto`)."""
    from mmhpc.launch.clusters import load_profile
    from mmhpc.sweep import expand, load_sweep

    gpu = expand(load_sweep(REPO / "sweeps" / f"{sweep}.yaml"), load_profile("alvis", "NAISS1"))
    cpu = expand(load_sweep(REPO / "sweeps" / f"{sweep}.yaml"), load_profile("local"))
    assert gpu.runs and cpu.runs and not gpu.errors and not cpu.errors
    for plan, default in ((gpu, "tf32"), (cpu, "fp32")):  # no TF32 on a CPU
        precisions = {r.config.system.precision for r in plan.runs}
        assert precisions == ({"fp32", "tf32", "bf16"} if sweep == "precision" else {default})
        assert all(not r.config.system.deterministic for r in plan.runs)
    assert {r.config.system.device for r in gpu.runs} == {"cuda"}


def test_algorithm_runs_stay_deterministic():
    from mmhpc.launch.clusters import load_profile
    from mmhpc.sweep import expand, load_sweep

    plan = expand(load_sweep(REPO / "sweeps" / "algorithms.yaml"), load_profile("alvis", "NAISS1"))
    assert plan.runs and all(r.config.system.deterministic for r in plan.runs)


def test_ddp_records_the_peak_memory_of_every_rank(tiny_config, monkeypatch, tmp_path):
    """A real gloo process group (one process here); CUDA's memory counters are stubbed (no GPU
    here)."""
    import torch.distributed as dist

    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2 ** 20)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 4 * 2 ** 20)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: None)
    monkeypatch.setattr(
        "mmhpc.system.sampler.device_used_mib", lambda d: 5.0
    )  # NVML: tests/system/test_gpu_measures.py
    par = parallel.build(tiny_config("cremad", "system.parallelism=ddp"))
    par.device = torch.device("cuda", 0)
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    try:
        assert par.peak_memory() == {
            "rank0/cuda:0_peak_mib": 3.0,
            "rank0/cuda:0_reserved_peak_mib": 4.0,
            "rank0/cuda:0_device_used_mib": 5.0,
        }
    finally:
        par.close()
    assert not dist.is_initialized()


def _any_rank_worker(rank: int, store_path: str, cfg, out_dir: str) -> None:
    from mmhpc.system.parallel import Distributed

    dist.init_process_group("gloo", store=dist.FileStore(store_path, 2), rank=rank, world_size=2)
    try:
        par = Distributed(cfg)
        par.rank, par.world = rank, 2
        # step 0: nobody asks to stop; step 1: only rank 1 does (its pre-timeout signal came first);
        # step 2: every rank has the answer of step 1's vote, which travelled while step 2 ran
        seen = [
            par.any_rank(False),
            par.any_rank(rank == 1),
            par.any_rank(False),
            par.any_rank(False),
        ]
        Path(out_dir, f"rank{rank}").write_text(json.dumps(seen))
    finally:
        par.close()
    assert not dist.is_initialized()


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_a_stop_asked_on_one_ddp_rank_stops_every_rank_at_the_same_step(tiny_config, tmp_path):
    """Two real gloo processes: the host-side flag is true on both ranks, one step after one rank
    raised it."""
    import torch.multiprocessing as tmp

    tmp.spawn(
        _any_rank_worker,
        args=(str(tmp_path / "store"), tiny_config("cremad"), str(tmp_path)),
        nprocs=2,
    )
    assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [
        [False, False, True, False]
    ] * 2


def _preempted_ddp_worker(rank: int, port: int, cfg, out_dir: str) -> None:
    from mmhpc.preempt import STOP_REQUESTED
    from mmhpc.train import Preempted, Trainer

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    trainer = Trainer(cfg, progress=False)
    steps = []

    def signal_on_rank_1_at_step_3():  # what the USR2 handler does, on one rank only
        steps.append(1)
        if rank == 1 and len(steps) == 3:
            STOP_REQUESTED.set()

    trainer.components.append(SimpleNamespace(on_step_end=lambda _: signal_on_rank_1_at_step_3()))
    try:
        trainer.fit()
        where = None
    except Preempted as e:
        where = [e.epoch, e.step, len(steps)]
    finally:
        trainer.close()
    Path(out_dir, f"rank{rank}").write_text(json.dumps(where))


@pytest.mark.slow
def test_a_ddp_run_stops_on_every_rank_at_the_same_step_when_one_rank_is_signalled(
    tiny_config, tmp_path
):
    """Two real DDP trainers (gloo on the CPU): rank 1 alone gets the signal during step 3; both
    stop after step 4, the step during which the ranks' vote travelled, and neither trains a step
    more than the other."""
    import socket

    import torch.multiprocessing as tmp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = tiny_config("cremad", "system.parallelism=ddp", "train.max_batches=6", "train.epochs=2",
                      "system.threads=1")
    tmp.spawn(_preempted_ddp_worker, args=(port, cfg, str(tmp_path)), nprocs=2)
    assert [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)] == [[0, 4, 4]] * 2
