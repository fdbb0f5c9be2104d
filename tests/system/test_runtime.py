"""The runtime: every strategy on every parallelism this machine has (single, DDP with two gloo
processes, BLP on CPU threads), DDP's parameters equal on every process after every step, and the
gradient synchronisation of steps with several backward passes."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from mmhpc.config import RunConfig
from mmhpc.strategies import STRATEGIES
from mmhpc.system.runtime import release_host_memory
from mmhpc.train import Trainer, train

#: every registered strategy, with what it needs (cosine heads, the shared head), and AMST's full
#: module
MATRIX = {name: [] for name in STRATEGIES}
MATRIX.update({"entropy": ["model.cosine=true"], "reliability": ["model.cosine=true"],
               "mla": ["model.fusion=early_sum"], "amst_full": ["strategy.params={module: full}"]})
TINY = ["train.epochs=2", "train.max_batches=2", "train.batch_size=8", "system.threads=1",
        "system.sample_interval=0"]


def overrides(name: str) -> list[str]:
    strategy = "amst" if name == "amst_full" else name
    return [f"strategy.name={strategy}", f"output.name={name}", *MATRIX[name], *TINY]


def test_the_matrix_covers_every_strategy():
    assert set(STRATEGIES) <= set(MATRIX)


@pytest.mark.slow
@pytest.mark.parametrize("parallelism", ["single", "blp"])
@pytest.mark.parametrize("name", sorted(MATRIX))
def test_every_strategy_trains_two_epochs(tiny_config, name, parallelism):
    rec = train(
        tiny_config("cremad", *overrides(name), f"system.parallelism={parallelism}"), progress=False
    )
    assert rec.status == "done" and len(rec.epochs) == 2, rec.error


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, ports: dict, configs: dict, out_dir: str) -> None:
    """Each strategy in turn, on two gloo processes; after every step the ranks' parameters are
    compared."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    results = {}
    for name, cfg in configs.items():
        os.environ["MASTER_PORT"] = str(ports[name])
        trainer = Trainer(RunConfig.from_dict(cfg), progress=False)
        unequal: list[int] = []

        def compare(trainer=trainer, unequal=unequal):
            flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
            both = [torch.empty_like(flat) for _ in range(2)]
            dist.all_gather(both, flat)
            unequal.append(int(not torch.equal(both[0], both[1])))

        trainer.components.append(SimpleNamespace(on_step_end=lambda _: compare()))
        rec = trainer.fit()
        results[name] = {"status": rec.status, "epochs": len(rec.epochs), "steps": len(unequal),
                         "unequal": sum(unequal)}
        del trainer
        release_host_memory()  # as train() does: 15 runs in a process (6 GB each without)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))


@pytest.mark.slow
def test_every_strategy_trains_on_ddp_with_equal_parameters_after_every_step(tiny_config, tmp_path):
    import torch.multiprocessing as tmp

    configs = {name: tiny_config("cremad", *overrides(name), "system.parallelism=ddp").to_dict()
               for name in sorted(MATRIX)}
    ports = {name: _free_port() for name in configs}
    tmp.spawn(_ddp_worker, args=(ports, configs, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, r in results.items():
            # 2 epochs of 2 steps (the selective strategies: the warm-up epoch and one more)
            assert r == {"status": "done", "epochs": 2, "steps": 4, "unequal": 0}, (rank, name)


def _scaled_runtime(monkeypatch):
    """A runtime whose precision scales its loss: fp32 with a loss scaler (as a float16 mode would
    have)."""
    import dataclasses

    from mmhpc.config import load_config
    from mmhpc.system import parallel, precision
    from mmhpc.system.runtime import Runtime

    monkeypatch.setitem(
        precision.MODES, "fp32", dataclasses.replace(precision.MODES["fp32"], loss_scale=True)
    )
    return Runtime(parallel.Single(load_config(None, [])), precision.Precision("fp32", "cpu"))


def test_loss_scaling_backward_scales_and_the_step_uses_the_true_gradients(monkeypatch):
    rt = _scaled_runtime(monkeypatch)
    torch.manual_seed(0)
    model, ref = torch.nn.Linear(4, 2), torch.nn.Linear(4, 2)
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt, ref_opt = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, ref))
    scale = rt.scaler.get_scale()
    rt.backward(torch.nn.functional.cross_entropy(model(x), y))
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(model.weight.grad, ref.weight.grad * scale)  # scaled in backward
    rt.step(opt)
    ref_opt.step()
    torch.testing.assert_close(model.weight, ref.weight)  # unscaled before the step
    assert rt.state_dict()["scaler"]["scale"] == scale


def test_loss_scaling_skips_a_step_with_infinite_gradients_and_lowers_the_scale(monkeypatch):
    rt = _scaled_runtime(monkeypatch)
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scale = rt.scaler.get_scale()
    rt.backward(model(torch.full((1, 4), float("inf"))).sum())
    rt.step(opt)
    assert torch.equal(model.weight, before) and rt.scaler.get_scale() < scale


class Toy(torch.nn.Module):
    """The parts of a model a runtime calls (encode, fusion, probe_logits): linear layers."""

    def __init__(self):
        super().__init__()
        self.enc, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)

    def encode(self, batch):
        return {"x": self.enc(batch["x"])}

    def fusion(self, embs):
        return self.head(embs["x"])

    def probe_logits(self, embs):
        return {"x": self.head(embs["x"])}


def _rank_batch(rank: int) -> dict:
    g = torch.Generator().manual_seed(100 + rank)
    return {"x": torch.randn(6, 3, generator=g), "label": torch.randint(0, 2, (6,), generator=g)}


def _ddp_steps(rank: int) -> dict:
    """What each of two DDP ranks does, in the same order: a backward outside DDP (the runtime
    all-reduces the gradients itself), a step through DDP (its reducer does), then the runtime's
    collectives."""
    from mmhpc.config import load_config
    from mmhpc.system.runtime import Runtime

    runtime = Runtime.from_config(load_config(None, ["system.parallelism=ddp"]))
    torch.manual_seed(0)  # the same initial model on both ranks (DDP also broadcasts rank 0's)
    net = runtime.setup_model(Toy())
    batch = _rank_batch(rank)
    try:
        runtime.backward(net.encode(batch)["x"].pow(2).sum())
        out = {"encode_grad": net.model.enc.weight.grad.clone()}
        net.model.zero_grad(set_to_none=True)
        step = net(batch)
        runtime.backward(torch.nn.functional.cross_entropy(step["fused"], batch["label"]))
        out["step_grad"] = net.model.head.weight.grad.clone()
        out["reduce"] = runtime.reduce({"acc": [0.5, 1.0][rank]}, [10, 30][rank])
        out["gather"] = runtime.gather({"rank": rank})
        out["mean"] = runtime.mean(torch.tensor([2.0 * rank]))
        out["peaks"] = runtime.peak_memory()
    finally:
        runtime.close()
    return out


def _rank1(port: int, out_path: str) -> None:
    os.environ.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), MMHPC_DIST_TIMEOUT_S="60")
    torch.save(_ddp_steps(1), out_path)


def test_ddp_runtime_averages_gradients_inside_and_outside_ddp_and_reduces_over_ranks(
    tmp_path, monkeypatch
):
    """Two gloo ranks, rank 0 in this process (its collectives are the ones under test), rank 1
    spawned: both backward routes give every rank the mean of the ranks' gradients."""
    import multiprocessing

    port = _free_port()
    rank1 = multiprocessing.get_context("spawn").Process(
        target=_rank1, args=(port, str(tmp_path / "rank1.pt"))
    )
    rank1.start()
    for k, v in dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(port), MMHPC_DIST_TIMEOUT_S="60").items():
        monkeypatch.setenv(k, v)
    try:
        got = _ddp_steps(0)
    finally:
        rank1.join(timeout=120)
        if rank1.is_alive():
            rank1.kill()
    assert rank1.exitcode == 0
    other = torch.load(tmp_path / "rank1.pt")
    # each rank's gradients alone, on one process
    expected = {"encode_grad": [], "step_grad": []}
    for rank in (0, 1):
        torch.manual_seed(0)
        model, batch = Toy(), _rank_batch(rank)
        model.encode(batch)["x"].pow(2).sum().backward()
        expected["encode_grad"].append(model.enc.weight.grad)
        model.zero_grad()
        logits = model.fusion(model.encode(batch))
        torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
        expected["step_grad"].append(model.head.weight.grad)
    for key, (g0, g1) in expected.items():
        assert not torch.allclose(g0, g1)  # the ranks' own gradients differ
        for out in (got, other):
            torch.testing.assert_close(out[key], (g0 + g1) / 2)
    for out in (got, other):
        assert out["reduce"] == {"acc": pytest.approx((0.5 * 10 + 1.0 * 30) / 40)}
        assert out["gather"] == [{"rank": 0}, {"rank": 1}]
        assert out["mean"].tolist() == [1.0] and out["peaks"] == {}  # no CUDA device: no peaks


def test_one_process_collectives_are_the_values_themselves():
    from mmhpc.config import load_config
    from mmhpc.system import parallel
    from mmhpc.system.precision import Precision
    from mmhpc.system.runtime import Runtime

    rt = Runtime(parallel.Single(load_config(None, [])), Precision("fp32", "cpu"))
    assert rt.reduce({"acc": 0.25}, 7) == {"acc": 0.25} and rt.gather("mine") == ["mine"]
    assert rt.broadcast("x") == "x" and rt.any_rank(True) and not rt.any_rank(False)
    t = torch.tensor([3.0])
    assert rt.mean(t) is t


def test_data_parallel_runs_the_step_through_its_wrapper_at_the_runs_precision():
    """`nn.DataParallel` around the run's model: the step's forward goes through it (on the CPU it
    calls the module in place; on GPUs each replica's thread enters the autocast in RunModel)."""
    from mmhpc.config import load_config
    from mmhpc.system import parallel
    from mmhpc.system.precision import Precision
    from mmhpc.system.runtime import Runtime

    par = parallel.build(load_config(None, ["system.parallelism=dp"]))
    rt = Runtime(par, Precision("bf16", "cpu"))
    torch.manual_seed(0)
    model = Toy()
    net = rt.setup_model(model)
    calls = []
    net.wrapped.register_forward_pre_hook(lambda module, args: calls.append(args[0]))
    assert isinstance(net.wrapped, torch.nn.DataParallel) and net.wrapped.module is net.local
    x = torch.randn(5, 3)
    out = net({"x": x})
    with torch.no_grad():
        net.encode({"x": x})  # evaluation: the local model, not the wrapper
    assert calls == ["step"]
    with torch.autocast("cpu", torch.bfloat16):
        expected = model.head(model.enc(x))
    assert out["fused"].dtype == torch.float32 and torch.equal(out["fused"], expected.float())


def test_a_finished_run_leaves_no_trainer_behind_and_the_heap_is_trimmed(tiny_config, monkeypatch):
    """A trainer's reference cycles would keep its model, gradients and optimiser state until the
    collector's rare full pass: 15 runs in one process grew it to 3.4 GB (6 GB per DDP worker) and
    ended CI in an out-of-memory kill. train() releases them, and trims glibc's heaps."""
    import platform
    import weakref

    import mmhpc.train as train_module

    made = []

    class Watched(train_module.Trainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(weakref.ref(self))

    monkeypatch.setattr(train_module, "Trainer", Watched)
    assert train(tiny_config("cremad"), progress=False).status == "done"
    assert len(made) == 1 and made[0]() is None  # no collection here: train() released it
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert release_host_memory()
