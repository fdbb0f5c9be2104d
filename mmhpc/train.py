"""The trainer: the loop of epochs and passes, the same for every strategy, firing events to
components. `Strategy` subclasses own the step and the per-epoch choices, the runtime
(`mmhpc.system.runtime`) the devices and the precision; `mmhpc.parts` builds the trainer's parts
and `mmhpc.epochs` assembles the record: per epoch the thesis' Table 2.8 time breakdown and the
time the training step sat idle waiting for data (`mmhpc.system.idle`).

Components get the events `on_fit_start(trainer, fit)`, `on_epoch_start(trainer, epoch)`,
`on_step_end(trainer)`, `on_passes_end(trainer, epoch)`, `on_epoch_end(trainer, fit, entry)`,
`on_error(trainer, fit, exc)` and `on_fit_end(trainer, fit, error)` (each optional): the record
writer (`mmhpc.results.RecordWriter`), the checkpointer (`mmhpc.checkpoint`), the telemetry
(`mmhpc.system.telemetry`) and any added one (the profiler of `mmhpc bench`). Start events reach
them in list order, the others in reverse order, so what starts first ends last.
"""
from __future__ import annotations

import logging
import time

from tqdm.auto import tqdm

from mmhpc import epochs as ep
from mmhpc import metrics as mx
from mmhpc.checkpoint import Checkpointer
from mmhpc.config import ConfigError, RunConfig
from mmhpc.data.frames import finish_batch
from mmhpc.parts import build_parts, seed_everything
from mmhpc.preempt import STOP_REQUESTED, Preempted
from mmhpc.results import RecordExistsError, RecordWriter, RunRecord, write_failed_record
from mmhpc.system.idle import TimedBatches, estimate_prefetch0_idle
from mmhpc.system.runtime import Runtime, release_host_memory
from mmhpc.system.telemetry import Telemetry

log = logging.getLogger(__name__)

__all__ = ["Preempted", "RecordExistsError", "Trainer", "seed_everything", "train",
           "write_failed_record"]


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True):
        cfg.validate()
        self.cfg, self.progress = cfg, progress
        self.runtime = rt = Runtime.from_config(cfg)
        self.device = rt.device
        self.writer = RecordWriter(cfg, rt.is_main)
        self.record_path = self.writer.path
        self.single_acc = ep.single_acc(cfg) if rt.is_main else None  # IBF's baselines
        p = build_parts(cfg, rt, self._to_device)
        self.datasets, self.model, self.strategy, self.loaders = (p.datasets, p.model, p.strategy,
                                                                  p.loaders)
        self.num_classes = p.num_classes
        ckpt = Checkpointer(cfg, self.record_path.with_suffix(".ckpt.pt"), rt.is_main)
        self.components: list = [ckpt, self.writer, Telemetry(cfg, rt, self.writer)]

    def _fire(self, event: str, *args) -> None:
        first = event in ("fit_start", "epoch_start")
        for component in self.components if first else self.components[::-1]:
            handler = getattr(component, f"on_{event}", None)
            if handler is not None:
                handler(self, *args)

    def _bar(self, total: int, desc: str, **kwargs) -> tqdm:
        return tqdm(total=total, desc=desc, disable=not (self.progress and self.runtime.is_main),
                    **kwargs)

    # ---- one pass over a loader ------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        # each tensor to the device that consumes it (BLP: a modality's branch device), where uint8
        # frames become model input; the sample index stays on the host; every copy is asynchronous
        batch = {k: v for k, v in batch.items() if k != "index"}
        return finish_batch(self.runtime.to_device(batch, non_blocking=True))

    def _pass(self, split: str, epoch: int) -> tuple[dict, dict]:
        """Run one epoch over a split's loader; returns (metrics, timings)."""
        train, loader = split == "train", self.loaders[split]
        limit = self.cfg.train.max_batches if train else None
        acc = mx.MetricAccumulator(keep_logits=not train)
        self.model.train(train)
        clock = ep.PassClock(self.runtime, train)
        it = TimedBatches(loader.epoch(epoch))  # sums the waits in next(): idle time of the step
        batch = clock.first(next(it, None))
        bar = self._bar(limit or len(loader), f"{split} {epoch + 1}", leave=False)
        while batch is not None:
            clock.step_start()
            batch = self._to_device(batch)
            labels = batch["label"]
            logits = (self.strategy.train_step(batch, labels).logits if train
                      else self.strategy.eval_logits(batch))
            acc.update(logits, labels)
            if train:
                self._step_end(clock, epoch)
            clock.count(len(labels))
            bar.update()
            if limit and clock.steps >= limit:  # the same on every rank, its bar shown or not
                break
            batch = next(it, None)
        bar.close()
        wait_s = it.wait_s
        del it  # shuts workers down unless persistent
        metrics, timing = clock.result(acc.result(), wait_s)
        metrics.update(ep.bias_metrics(metrics, self.cfg.modalities, self.num_classes))
        return metrics, timing

    def _step_end(self, clock: ep.PassClock, epoch: int) -> None:
        clock.step_end()
        self._fire("step_end")
        # STOP_REQUESTED on any rank: every DDP process stops at the same step (the step after the
        # signal came: the ranks' vote travels during a step, `Distributed.any_rank`)
        if self.runtime.any_rank(STOP_REQUESTED.is_set()):
            raise Preempted(epoch, clock.steps + 1)

    def _evaluate(self, split: str, epoch: int = 0) -> tuple[dict, dict]:
        """A validation or test pass, on rank 0; every rank gets its results."""
        rt = self.runtime
        return rt.broadcast(self._pass(split, epoch) if rt.is_main else ({}, {}))

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> RunRecord:
        cfg, strategy = self.cfg, self.strategy
        fit = ep.Fit(ep.new_record(cfg, self.device, self.model, self.datasets, strategy))
        error = None
        self._fire("fit_start", fit)  # resumes from a checkpoint, writes a record, starts sampling
        try:
            bar = self._bar(strategy.max_epochs(), cfg.run_name(), initial=fit.epoch)
            while fit.epoch < strategy.max_epochs():
                if self._advance(fit, bar):
                    break
            bar.close()
            self._finish(fit)
        except BaseException as e:
            error = e
            if not isinstance(e, Preempted):  # not a failure: the record stays as last saved
                self._fire("error", fit, e)
            raise
        finally:
            self._fire("fit_end", fit, error)
            self.close()
        return fit.record

    def _advance(self, fit: ep.Fit, bar) -> bool:
        """One epoch: train, validate, select, tell the components; True when the strategy stops
        here."""
        epoch, strategy = fit.epoch, self.strategy
        entry = self._epoch(epoch)
        fit.record.epochs.append(entry)
        if entry.val["acc/fused"] > fit.best["acc"]:  # model selection on validation, never test
            t0 = self._clock()
            fit.best = ep.best_state(self.model, entry.val, epoch)
            entry.time.add_strategy_work(self._clock() - t0)  # the copy is part of the epoch
        bar.set_postfix_str(ep.progress_postfix(entry.val))
        bar.update()
        fit.stop, fit.epoch = strategy.should_stop(epoch), epoch + 1
        self._fire("epoch_end", fit, entry)
        return fit.stop

    def _finish(self, fit: ep.Fit) -> None:
        """The best epoch's model on the test split: the run's summary."""
        if self.runtime.is_main:
            self.model.load_state_dict(fit.best["state"])
        test, _ = self._evaluate("test")
        record = fit.record
        record.summary = ep.summary(record, test, fit.best["epoch"], self.strategy.optimised,
                                    self.cfg, self.single_acc)
        record.status, record.finished = "done", time.time()

    def close(self) -> None:
        """Release loader threads and workers, BLP threads and the process group."""
        for loader in self.loaders.values():
            loader.close()
        self.runtime.close()

    def _epoch(self, epoch: int) -> ep.Epoch:
        cfg, strategy = self.cfg, self.strategy
        lr = cfg.train.lr * strategy.lr_factor(epoch)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr
        self._fire("epoch_start", epoch)
        t0 = self._clock()
        active = list(strategy.begin_epoch(epoch))  # PMR's prototype pass runs here
        strategy_s = self._clock() - t0
        train, t_train = self._pass("train", epoch)  # with its bias (thesis Table 4.4, Fig. 3.2)
        val, t_val = self._evaluate("val", epoch)
        val.update(ep.reliability(train, val, cfg.modalities))
        t0 = self._clock()
        strategy.end_epoch(epoch, train, val)  # Gradient Blending's held-out pass runs here
        strategy_s += self._clock() - t0
        self._fire("passes_end", epoch)
        estimated = cfg.loader.prefetch_factor == 0  # PyTorch cannot: thesis A.2.1 (Alg. 7)
        if estimated:
            t_train["data_wait_s"] = estimate_prefetch0_idle(self.loaders["idle"], epoch,
                                                             cfg.train.max_batches)
        time_ = ep.epoch_time(t_train, t_val, strategy_s, estimated)
        return ep.Epoch(epoch=epoch, lr=lr, optimised=active, train=train, val=val, time=time_)

    def _clock(self) -> float:
        """perf_counter once every device of the run has finished its queued work (GPU work is
        async)."""
        self.runtime.synchronize()
        return time.perf_counter()


def train(cfg: RunConfig, progress: bool = True) -> RunRecord:
    """Train one run and return its record. A run that fails before its trainer is set up (an
    unreadable dataset) still leaves a failed record, unless a record of that run already exists; a
    config this machine cannot run (precision, parallelism, device: ConfigError) is bad input and
    writes nothing."""
    try:
        trainer = Trainer(cfg, progress=progress)
    except ConfigError:
        raise
    except Exception as e:
        write_failed_record(cfg, e)
        raise
    try:
        return trainer.fit()
    finally:
        del trainer
        release_host_memory()
