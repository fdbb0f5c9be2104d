"""The trainer: the loop of epochs and passes, the same for every strategy, firing events to
components.

`Strategy` subclasses own the step and the per-epoch choices; the runtime (`mmhpc.system.runtime`)
owns
the devices and the precision. Per epoch the loop times the thesis' Table 2.8 breakdown:
training-loader
initialisation (iterator creation to first batch), training, validation-loader initialisation,
validation; and the time the training step sat idle waiting for data (`mmhpc.system.idle`; estimated
per thesis Alg. 7 for `loader.prefetch_factor=0`).

Components get the events `on_fit_start(trainer, fit)`, `on_epoch_start(trainer, epoch)`,
`on_step_end(trainer)`, `on_passes_end(trainer, epoch)`, `on_epoch_end(trainer, fit, entry)`,
`on_error(trainer, fit, exc)` and `on_fit_end(trainer, fit, error)` (each optional): the record
writer (`mmhpc.results.RecordWriter`), the checkpointer (`mmhpc.checkpoint`), the telemetry
(`mmhpc.system.telemetry`) and any added one (the profiler of `mmhpc bench`). Start events reach
them in list order, the others in reverse order, so what starts first ends last.
"""
from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from mmhpc import metrics as mx
from mmhpc.checkpoint import Checkpointer
from mmhpc.config import ConfigError, RunConfig
from mmhpc.data.frames import finish_batch
from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.models.multimodal import MultimodalModel, count_parameters
from mmhpc.preempt import STOP_REQUESTED
from mmhpc.progress import RUN
from mmhpc.results import (
    Epoch,
    EpochTime,
    RecordExistsError,
    RecordWriter,
    RunRecord,
    Summary,
    environment,
    mark_failed,
    run_ibf,
    single_accuracies,
    write_record,
)
from mmhpc.strategies import STRATEGIES
from mmhpc.strategies.data import StrategyData
from mmhpc.system.idle import StepGaps, TimedBatches, estimate_prefetch0_idle
from mmhpc.system.runtime import Runtime
from mmhpc.system.telemetry import Telemetry

log = logging.getLogger(__name__)

__all__ = [
    "Preempted",
    "RecordExistsError",
    "Trainer",
    "mark_failed",
    "train",
    "write_failed_record",
]


class Preempted(Exception):
    """Training stopped at a step boundary on request (STOP_REQUESTED). The run resumes, in a
    requeued job, from its last epoch checkpoint: the interrupted epoch is trained again from its
    start, so the resumed
    run has the batches and metrics of an uninterrupted one."""

    def __init__(self, epoch: int, step: int):
        super().__init__(
            f"stopped after step {step} of epoch {epoch + 1} on the pre-timeout/preemption signal"
        )
        self.epoch, self.step = epoch, step


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; `deterministic` picks repeatable kernels (algorithm runs, tests) or the
    fastest ones
    with cuDNN autotuning (system sweeps and benchmarks). Both are process-global: set both ways."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


@dataclass
class Fit:
    """The state of one fit: the record so far, the best epoch's weights, the next epoch."""

    record: RunRecord
    best: dict
    epoch: int = 0


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True):
        cfg.validate()
        self.cfg, self.progress = cfg, progress
        self.runtime = Runtime.from_config(cfg)
        self.device = self.runtime.device
        self.writer = RecordWriter(cfg, self.runtime.is_main)
        self.record_path = self.writer.path
        if cfg.system.threads:
            torch.set_num_threads(cfg.system.threads)
        self.single_acc = (
            single_accuracies(cfg.train.single_acc, cfg.data.dataset, cfg.data.preset)
            if self.runtime.is_main
            else None
        )
        seed_everything(cfg.train.seed, cfg.system.deterministic)
        self._build()
        self.components: list = [
            Checkpointer(cfg, self.record_path.with_suffix(".ckpt.pt"), self.runtime.is_main),
            self.writer,
            Telemetry(cfg, self.runtime, self.writer),
        ]

    def _build(self) -> None:
        """Datasets, model, strategy and loaders: every process trains on its shard; validation and
        test
        run whole on rank 0 only."""
        cfg, rt = self.cfg, self.runtime
        datasets = build_datasets(cfg)
        train_ds = datasets["train"]
        self.num_classes = train_ds.spec.num_classes
        preset = cfg.data.preset if cfg.data.source == "synthetic" else "full"
        self.model = MultimodalModel(cfg.modalities, self.num_classes, cfg.model, train_ds.shapes,
                                     preset).to(self.device)
        kind = STRATEGIES[cfg.strategy.name]
        self.datasets = kind.split_datasets(
            cfg, datasets
        )  # Gradient Blending holds part of train out
        train_ds = self.datasets["train"]
        data = StrategyData(self.datasets, cfg, self._to_device)  # the strategy's own passes
        self.strategy = kind(cfg, self.model, rt, data)
        self.loaders = {
            "train": build_loader(train_ds, cfg, True, rt.rank, rt.world, device=self.device)
        }
        if (
            cfg.loader.prefetch_factor == 0
        ):  # the estimate's own standard loader (prefetch 1, thesis A.2.1)
            self.loaders["idle"] = build_loader(
                train_ds, cfg, True, rt.rank, rt.world, preinit=False
            )
        if rt.is_main:
            self.loaders["val"] = build_loader(self.datasets["val"], cfg, False, device=self.device)
            self.loaders["test"] = build_loader(
                self.datasets["test"], cfg, False, preinit=False
            )  # used once

    def _fire(self, event: str, *args) -> None:
        components = (
            self.components if event in ("fit_start", "epoch_start") else self.components[::-1]
        )
        for component in components:
            handler = getattr(component, f"on_{event}", None)
            if handler is not None:
                handler(self, *args)

    # ---- one pass over a loader ------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        # each tensor to the device that consumes it (BLP: a modality's branch device); uint8 frames
        # become
        # model input (crop, flip, normalise) there. The sample index stays on the host (nothing on
        # the
        # device reads it), and every copy is asynchronous: from pageable memory too, where a
        # blocking copy
        # would wait for the GPU's queue first
        batch = {k: v for k, v in batch.items() if k != "index"}
        return finish_batch(self.runtime.to_device(batch, non_blocking=True))

    def _pass(self, split: str, epoch: int) -> tuple[dict, dict]:
        """Run one epoch over a split's loader; returns (metrics, timings)."""
        train, rt = split == "train", self.runtime
        loader = self.loaders[split]
        acc = mx.MetricAccumulator(keep_logits=not train)
        self.model.train(train)
        rt.synchronize()  # the timer starts when the device has finished what came before
        t0 = time.perf_counter()
        gaps = StepGaps(self.device) if train else None  # the GPU's idle time between steps
        it = TimedBatches(loader.epoch(epoch))  # sums the waits in next(): idle time of the step
        batch = next(it, None)
        t_first = time.perf_counter()
        n = steps = 0
        limit = self.cfg.train.max_batches if train else None
        bar = tqdm(total=limit or len(loader), desc=f"{split} {epoch + 1}", leave=False,
                   disable=not (self.progress and rt.is_main))
        while batch is not None:
            if train:
                gaps.start()
            batch = self._to_device(batch)
            labels = batch["label"]
            logits = (
                self.strategy.train_step(batch, labels).logits
                if train
                else self.strategy.eval_logits(batch)
            )
            acc.update(logits, labels)
            if train:
                gaps.end()
                self._fire("step_end")
                # STOP_REQUESTED on any rank: every DDP process stops at the same step (the step
                # after the
                # signal came: the ranks' vote travels during a step, `Distributed.any_rank`)
                if rt.any_rank(STOP_REQUESTED.is_set()):
                    raise Preempted(epoch, steps + 1)
            n += len(labels)
            steps += 1
            bar.update()
            if limit and steps >= limit:  # the same on every rank, whether or not its bar is shown
                break
            batch = next(it, None)
        bar.close()
        wait_s = it.wait_s
        del it  # shuts workers down unless persistent
        rt.synchronize()  # every device the run computes on (BLP: each branch's)
        t_end = time.perf_counter()
        timing = {
            "loader_init_s": t_first - t0,
            "run_s": t_end - t_first,
            "data_wait_s": wait_s,
            "samples": n,
            "samples_per_s": n / max(t_end - t0, 1e-9),
            "gpu_idle_s": gaps.idle_s() if train else None,
        }
        metrics = acc.result()
        if train and rt.world > 1:
            metrics = rt.reduce(metrics, n)
            timing["samples_per_s"] = rt.reduce({"s": timing["samples_per_s"]}, 1)["s"] * rt.world
        return metrics, timing

    def _evaluate(self, split: str, epoch: int = 0) -> tuple[dict, dict]:
        metrics, timing = ({}, {}) if not self.runtime.is_main else self._pass(split, epoch)
        if self.runtime.is_main:
            metrics.update(self._bias(metrics))
        return self.runtime.broadcast((metrics, timing))

    def _bias(self, metrics: dict) -> dict:
        """bias/<m> (Eq. 3.5-3.6) from a split's mean entropies entropy/<m>."""
        ent = {m: metrics[f"entropy/{m}"] for m in self.cfg.modalities}
        return {f"bias/{m}": v for m, v in mx.bias(ent, self.num_classes).items()}

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> RunRecord:
        cfg, strategy = self.cfg, self.strategy
        record = RunRecord(
            run=cfg.run_name(),
            status="running",
            config=cfg.to_dict(),
            env=environment(self.device),
            model={"parameters": count_parameters(self.model)},
            data={s: len(d) for s, d in self.datasets.items()},
            started=time.time(),
            provenance=strategy.provenance(),
        )
        fit = Fit(record, {"acc": -1.0, "epoch": -1, "state": None})
        error = None
        self._fire(
            "fit_start", fit
        )  # resumes from a checkpoint, writes the first record, starts sampling
        try:
            bar = tqdm(total=strategy.max_epochs(), initial=fit.epoch, desc=cfg.run_name(),
                       disable=not (self.progress and self.runtime.is_main))
            while fit.epoch < strategy.max_epochs():
                stop = self._advance(fit, bar)
                if stop:
                    break
            bar.close()
            self._finish(fit)
        except Preempted as e:  # not a failure: the record stays as saved at the last epoch end
            log.warning(
                "%s: %s; its next start resumes at epoch %d", cfg.run_name(), e, fit.epoch + 1
            )
            error = e
            raise
        except BaseException as e:
            error = e
            self._fire("error", fit, e)
            raise
        finally:
            self._fire("fit_end", fit, error)
            self.close()
        return fit.record

    def _advance(self, fit: Fit, bar) -> bool:
        """One epoch: train, validate, select, tell the components; True when the strategy stops
        here."""
        epoch = fit.epoch
        entry = self._epoch(epoch)
        fit.record.epochs.append(entry)
        val = entry.val
        if val["acc/fused"] > fit.best["acc"]:  # model selection on validation, never on test
            t0 = self._clock()
            fit.best = {
                "acc": val["acc/fused"],
                "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            }
            entry.time.add_strategy_work(self._clock() - t0)  # the copy is part of the epoch
        bar.set_postfix_str(" ".join(f"{k.split('/')[1][:3]}={val[k]:.2f}" for k in val
                                     if k.startswith("acc/") and "probe" not in k))
        bar.update()
        stop = self.strategy.should_stop(epoch)
        fit.epoch = epoch + 1
        if stop and fit.epoch < self.strategy.max_epochs() and self.runtime.is_main:
            log.info(
                "stopped early after epoch %d of %d: %s",
                fit.epoch,
                self.strategy.max_epochs(),
                self.strategy.stop_reason(),
            )
        self._fire("epoch_end", fit, entry)
        return stop

    def _finish(self, fit: Fit) -> None:
        """The best epoch's model on the test split: the run's summary."""
        if self.runtime.is_main:
            self.model.load_state_dict(fit.best["state"])
        test, _ = self._evaluate("test")
        record = fit.record
        record.summary = self._summary(record, test, fit.best["epoch"])
        record.status = "done"
        record.finished = time.time()
        if self.runtime.is_main:
            log.log(RUN, run_line(record, self.cfg.modalities))

    def close(self) -> None:
        """Release loader threads and workers, BLP threads and the process group."""
        for loader in self.loaders.values():
            loader.close()
        self.runtime.close()

    def _epoch(self, epoch: int) -> Epoch:
        cfg, strategy = self.cfg, self.strategy
        lr = cfg.train.lr * strategy.lr_factor(epoch)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr
        self._fire("epoch_start", epoch)
        t0 = self._clock()
        active = list(strategy.begin_epoch(epoch))  # PMR's prototype pass runs here
        strategy_s = self._clock() - t0
        train, t_train = self._pass("train", epoch)
        train.update(
            self._bias(train)
        )  # the training split's bias per epoch (thesis Table 4.4, Fig. 3.2)
        val, t_val = self._evaluate("val", epoch)
        rel = {
            m: train[f"loss/{m}"] / max(val[f"loss/{m}"], 1e-12) for m in cfg.modalities
        }  # Eq. 3.7
        val.update({f"reliability/{m}": v for m, v in rel.items()})
        t0 = self._clock()
        strategy.end_epoch(epoch, train, val)  # Gradient Blending's held-out pass runs here
        strategy_s += self._clock() - t0
        self._fire("passes_end", epoch)
        if (
            cfg.loader.prefetch_factor == 0
        ):  # PyTorch cannot: estimated as thesis Appendix A.2.1 (Alg. 7)
            t_train["data_wait_s"] = estimate_prefetch0_idle(
                self.loaders["idle"], epoch, cfg.train.max_batches
            )
        time_ = EpochTime(
            train_loader_init_s=t_train["loader_init_s"],
            train_s=t_train["run_s"],
            val_loader_init_s=t_val["loader_init_s"],
            val_s=t_val["run_s"],
            train_data_wait_s=t_train["data_wait_s"],
            train_data_wait_estimated=cfg.loader.prefetch_factor == 0,
            val_data_wait_s=t_val.get("data_wait_s"),
            train_gpu_idle_s=t_train["gpu_idle_s"],
            strategy_s=strategy_s,
            epoch_s=strategy_s
            + sum(t[k] for t in (t_train, t_val) for k in ("loader_init_s", "run_s")),
            train_samples=t_train["samples"],
            train_samples_per_s=t_train["samples_per_s"],
        )
        return Epoch(epoch=epoch, lr=lr, optimised=active, train=train, val=val, time=time_)

    def _clock(self) -> float:
        """perf_counter once every device of the run has finished its queued work (GPU work is
        async)."""
        self.runtime.synchronize()
        return time.perf_counter()

    def _summary(self, record: RunRecord, test: dict, best_epoch: int) -> Summary:
        times = [e.time.epoch_s for e in record.epochs]
        return Summary(
            best_epoch=best_epoch,
            epochs_run=len(record.epochs),
            test=test,
            optimised_epochs=dict(self.strategy.optimised),
            epoch_time_mean_s=float(np.mean(times)),
            train_time_s=float(np.sum(times)),
            ibf=run_ibf(test, self.cfg.modalities, self.single_acc, self.cfg.model.fusion),
        )


def train(cfg: RunConfig, progress: bool = True) -> RunRecord:
    """Train one run and return its record. A run that fails before its trainer is set up (an
    unreadable dataset) still leaves a failed record, unless a record of that run already exists; a
    config this machine cannot run (precision, parallelism, device: ConfigError) is bad input and
    writes
    nothing."""
    try:
        trainer = Trainer(cfg, progress=progress)
    except ConfigError:
        raise
    except Exception as e:
        write_failed_record(cfg, e)
        raise
    return trainer.fit()


def write_failed_record(cfg: RunConfig, exc: BaseException) -> None:
    """The failed record of a run that failed before its trainer wrote one (on rank 0; never over a
    record that exists, such as a finished one the rerun was refused to overwrite). Call it inside
    `except`."""
    path = cfg.record_path()
    if int(os.environ.get("RANK", "0")) == 0 and not path.exists():
        write_record(
            path,
            mark_failed(RunRecord(run=cfg.run_name(), status="running", config=cfg.to_dict()), exc),
        )


def run_line(record: RunRecord, modalities: list[str]) -> str:
    """A finished run in one line (the one `-q` keeps): its epochs, the best (from 1), test
    accuracies."""
    s = record.summary
    accs = " ".join(f"{h} {s.test[f'acc/{h}']:.3f}" for h in ["fused", *modalities])
    return (
        f"done: {s.epochs_run} epochs in {s.train_time_s:.0f} s, best epoch {s.best_epoch + 1}, "
        f"test acc {accs}" + (f", IBF {s.ibf:.3f}" if s.ibf is not None else "")
    )
