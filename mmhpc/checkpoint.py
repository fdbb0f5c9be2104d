"""Checkpoints of a run (`output.checkpoint`): the model, the strategy, the runtime, every random
number generator and the record so far, written at each epoch end; a requeued run resumes from the
last one with the batches and metrics of an uninterrupted run. A trainer component
(`mmhpc.train`)."""
from __future__ import annotations

import random
import time

import numpy as np
import torch

from mmhpc.atomic import atomic_write
from mmhpc.errors import ConfigError
from mmhpc.results import RunRecord


def resumable(config: dict) -> dict:
    """What must match for a checkpoint to resume a run: all but the output section and the data's
    location (jobs stage the dataset to a node-local directory that differs between attempts)."""
    out = {k: v for k, v in config.items() if k != "output"}
    out["data"] = {k: v for k, v in config["data"].items() if k != "root"}
    return out


class Checkpointer:
    def __init__(self, cfg, path, is_main: bool):
        self.cfg, self.path, self.is_main = cfg, path, is_main
        self.enabled = bool(cfg.output.checkpoint)

    def on_fit_start(self, trainer, fit) -> None:
        if self.enabled and self.path.exists():
            self.resume(trainer, fit)

    def on_epoch_end(self, trainer, fit, entry) -> None:
        if self.enabled and self.is_main:
            self.save(trainer, fit)

    def on_fit_end(self, trainer, fit, error) -> None:
        if error is None and self.is_main:
            self.path.unlink(missing_ok=True)

    def save(self, trainer, fit) -> None:
        rng = {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "loaders": {k: ld.generator.get_state() for k, ld in trainer.loaders.items()},
        }
        state = {"config": self.cfg.to_dict(), "next_epoch": fit.epoch,
                 "record": fit.record.model_dump(by_alias=True), "best": fit.best,
                 "model": trainer.model.state_dict(), "strategy": trainer.strategy.state_dict(),
                 "runtime": trainer.runtime.state_dict(), "rng": rng}
        # the temporary name is unique per host, process and call: a stale copy of the run (a
        # requeue race) never writes into ours
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))

    def resume(self, trainer, fit) -> None:
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if resumable(state["config"]) != resumable(self.cfg.to_dict()):
            raise ConfigError(
                f"{self.path}: checkpoint of a different config; remove it or change output.name"
            )
        trainer.model.load_state_dict(state["model"])
        trainer.strategy.load_state_dict(state["strategy"])
        trainer.runtime.load_state_dict(state.get("runtime", {}))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        for k, g in rng["loaders"].items():
            if k in trainer.loaders:
                trainer.loaders[k].generator.set_state(g)
        record = RunRecord.model_validate(state["record"])
        record.resumed.append({"at_epoch": state["next_epoch"], "time": time.time(),
                               "env": fit.record.env.model_dump()})
        fit.record, fit.best, fit.epoch = record, state["best"], state["next_epoch"]
