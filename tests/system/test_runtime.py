"""The runtime: every strategy on every parallelism this machine has (single, DDP with two gloo
processes, BLP on CPU threads), DDP's parameters equal on every process after every step, and the
gradient
synchronisation of steps with several backward passes."""
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
