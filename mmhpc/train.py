"""The trainer: epochs, evaluation, model selection on validation, timing breakdown, the run record.

The loop is the same for every strategy; `Strategy` subclasses own the step and the per-epoch choices.
Per epoch it times the thesis' Table 2.8 breakdown: training-loader initialisation (iterator creation to
first batch), training, validation-loader initialisation, validation.
"""
from __future__ import annotations

import copy
import os
import random
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmhpc import metrics as mx
from mmhpc.config import ConfigError, RunConfig
from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.models.multimodal import MultimodalModel, count_parameters
from mmhpc.results import SCHEMA, atomic_write_json, environment, read_record, single_accuracies
from mmhpc.strategies import STRATEGIES
from mmhpc.system.precision import apply_precision


class RecordExistsError(FileExistsError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("system.device: cuda requested but no CUDA device is visible; valid here: cpu, auto")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True):
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.record_path = Path(cfg.output.runs_dir) / f"{cfg.run_name()}.json"
        self._check_existing()
        if cfg.system.parallelism != "single":
            raise ConfigError(f"system.parallelism: {cfg.system.parallelism} is not available in this build; "
                              "valid choices: single")
        if cfg.system.threads:
            torch.set_num_threads(cfg.system.threads)
        self.device = resolve_device(cfg.system.device)
        self.autocast = apply_precision(cfg.system.precision, self.device)
        self.single_acc = single_accuracies(cfg.train.single_acc, cfg)
        seed_everything(cfg.train.seed, cfg.system.deterministic)
        self.datasets = build_datasets(cfg)
        train_ds = self.datasets["train"]
        self.num_classes = train_ds.spec.num_classes
        self.model = MultimodalModel(cfg.modalities, self.num_classes, cfg.model, train_ds.shapes,
                                     cfg.data.preset).to(self.device)
        self.strategy = STRATEGIES[cfg.strategy.name](cfg, self.model, self.autocast)
        self.loaders = {split: build_loader(ds, cfg, train=(split == "train")) for split, ds in self.datasets.items()}

    # ---- records ---------------------------------------------------------------------------------
    def _check_existing(self) -> None:
        self._write_path = self.record_path
        if not self.record_path.exists():
            return
        try:
            old = read_record(self.record_path)
        except ValueError:
            return  # an unreadable partial file from a crash: not a result
        if old.get("status") == "done":
            if not self.cfg.output.overwrite:
                raise RecordExistsError(f"{self.record_path}: a finished record exists; set output.overwrite=true "
                                        "to replace it, or output.name=... to keep both")
            # keep the finished record until the new run has finished too
            self._write_path = self.record_path.with_name(f".{self.record_path.stem}.rerun.json")

    def _save(self, record: dict) -> None:
        atomic_write_json(self._write_path, record)
        if record["status"] == "done" and self._write_path != self.record_path:
            os.replace(self._write_path, self.record_path)

    # ---- one pass over a loader ------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        nb = self.cfg.loader.pin_memory
        return {k: v.to(self.device, non_blocking=nb) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _pass(self, loader, train: bool, desc: str) -> tuple[dict, dict]:
        """Run one epoch over `loader`; returns (metrics, timings)."""
        acc = mx.MetricAccumulator(keep_logits=not train)
        self.model.train(train)
        t0 = time.perf_counter()
        it = iter(loader)
        batch = next(it, None)
        t_first = time.perf_counter()
        n = 0
        limit = self.cfg.train.max_batches if train else None
        bar = tqdm(total=limit or len(loader), desc=desc, leave=False, disable=not self.progress)
        while batch is not None:
            batch = self._to_device(batch)
            labels = batch["label"]
            logits = self.strategy.train_step(batch, labels).logits if train else self.strategy.eval_logits(batch)
            acc.update(logits, labels)
            n += len(labels)
            bar.update()
            if limit and bar.n >= limit:
                break
            batch = next(it, None)
        bar.close()
        del it  # shuts workers down unless persistent
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_end = time.perf_counter()
        timing = {"loader_init_s": t_first - t0, "run_s": t_end - t_first, "samples": n,
                  "samples_per_s": n / max(t_end - t0, 1e-9)}
        return acc.result(), timing

    def _evaluate(self, split: str) -> tuple[dict, dict]:
        metrics, timing = self._pass(self.loaders[split], train=False, desc=split)
        ent = {m: metrics[f"entropy/{m}"] for m in self.cfg.modalities}
        metrics.update({f"bias/{m}": v for m, v in mx.bias(ent, self.num_classes).items()})
        return metrics, timing

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, strategy = self.cfg, self.strategy
        record = {"schema": SCHEMA, "run": cfg.run_name(), "status": "running", "config": cfg.to_dict(),
                  "env": environment(self.device), "model": {"parameters": count_parameters(self.model)},
                  "data": {s: len(d) for s, d in self.datasets.items()}, "epochs": [], "started": time.time()}
        self._save(record)
        best = {"acc": -1.0, "epoch": -1, "state": None}
        try:
            bar = tqdm(total=strategy.max_epochs(), desc=cfg.run_name(), disable=not self.progress)
            epoch = 0
            while True:
                lr = cfg.train.lr * strategy.lr_factor(epoch)
                for group in strategy.optimizer.param_groups:
                    group["lr"] = lr
                active = strategy.begin_epoch(epoch)
                train, t_train = self._pass(self.loaders["train"], train=True, desc=f"train {epoch}")
                val, t_val = self._evaluate("val")
                rel = {m: train[f"loss/{m}"] / max(val[f"loss/{m}"], 1e-12) for m in cfg.modalities}  # Eq. 3.7
                val.update({f"reliability/{m}": v for m, v in rel.items()})
                strategy.end_epoch(epoch, train, val)
                record["epochs"].append({
                    "epoch": epoch, "lr": lr, "optimised": active, "train": train, "val": val,
                    "time": {"train_loader_init_s": t_train["loader_init_s"], "train_s": t_train["run_s"],
                             "val_loader_init_s": t_val["loader_init_s"], "val_s": t_val["run_s"],
                             "epoch_s": sum(t[k] for t in (t_train, t_val) for k in ("loader_init_s", "run_s")),
                             "train_samples_per_s": t_train["samples_per_s"]}})
                if val["acc/fused"] > best["acc"]:  # model selection on validation, never on test
                    best = {"acc": val["acc/fused"], "epoch": epoch,
                            "state": copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})}
                bar.set_postfix_str(" ".join(f"{k.split('/')[1][:3]}={val[k]:.2f}" for k in val
                                             if k.startswith("acc/") and "probe" not in k))
                bar.update()
                self._save(record)
                if strategy.should_stop(epoch):
                    break
                epoch += 1
            bar.close()
            self.model.load_state_dict(best["state"])
            test, _ = self._evaluate("test")
            record["summary"] = self._summary(record, test, best["epoch"])
            record["status"] = "done"
        except BaseException as e:
            record["status"] = "failed"
            record["error"] = f"{type(e).__name__}: {e}"
            record["traceback"] = traceback.format_exc(limit=20)
            self._save(record)
            raise
        record["finished"] = time.time()
        self._save(record)
        return record

    def _summary(self, record: dict, test: dict, best_epoch: int) -> dict:
        mods = self.cfg.modalities
        times = [e["time"]["epoch_s"] for e in record["epochs"]]
        summary = {"best_epoch": best_epoch, "epochs_run": len(record["epochs"]), "test": test,
                   "optimised_epochs": dict(self.strategy.optimised),
                   "epoch_time_mean_s": float(np.mean(times)), "train_time_s": float(np.sum(times))}
        if self.single_acc is not None:
            if len(mods) == 1:
                summary["ibf"] = 0.0
            else:
                summary["ibf"] = mx.ibf({m: test[f"acc/{m}"] for m in mods}, self.single_acc)
        return summary


def train(cfg: RunConfig, progress: bool = True) -> dict:
    return Trainer(cfg, progress=progress).fit()
