"""The runtime: every strategy on every parallelism this machine has (single, DDP with two gloo processes,
BLP on CPU threads), DDP's parameters equal on every process after every step, and the gradient
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

#: every registered strategy, with what it needs (cosine heads, the shared head), and AMST's full module
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
    rec = train(tiny_config("cremad", *overrides(name), f"system.parallelism={parallelism}"), progress=False)
    assert rec.status == "done" and len(rec.epochs) == 2, rec.error


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, ports: dict, configs: dict, out_dir: str) -> None:
    """Each strategy in turn, on two gloo processes; after every step the ranks' parameters are compared."""
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
