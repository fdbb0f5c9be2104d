"""The trainer: epochs, evaluation, model selection on validation, timing breakdown, the run record.

The loop is the same for every strategy; `Strategy` subclasses own the step and the per-epoch choices.
Per epoch it times the thesis' Table 2.8 breakdown: training-loader initialisation (iterator creation to
first batch), training, validation-loader initialisation, validation; and the time the training step
sat idle waiting for data (`mmhpc.system.idle`; estimated per thesis Alg. 7 for `loader.prefetch_factor=0`).
"""
from __future__ import annotations

import logging
import os
import random
import time
import traceback

import numpy as np
import torch
from tqdm.auto import tqdm

from mmhpc import metrics as mx
from mmhpc.config import ConfigError, RunConfig
from mmhpc.data.frames import finish_batch
from mmhpc.data.loading import build_datasets, build_loader
from mmhpc.models.multimodal import MultimodalModel, count_parameters
from mmhpc.preempt import STOP_REQUESTED
from mmhpc.progress import RUN
from mmhpc.results import (
    Epoch,
    EpochTime,
    RunRecord,
    Summary,
    environment,
    read_record,
    run_ibf,
    single_accuracies,
    write_record,
)
from mmhpc.strategies import STRATEGIES
from mmhpc.strategies.data import StrategyData
from mmhpc.system.idle import StepGaps, TimedBatches, estimate_prefetch0_idle
from mmhpc.system.runtime import Runtime

log = logging.getLogger(__name__)



class RecordExistsError(FileExistsError):
    """A finished record of the same run exists and output.overwrite is off."""


class Preempted(Exception):
    """Training stopped at a step boundary on request (STOP_REQUESTED). The run resumes, in a requeued job,
    from its last epoch checkpoint: the interrupted epoch is trained again from its start, so the resumed
    run has the batches and metrics of an uninterrupted one."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"stopped after step {step} of epoch {epoch + 1} on the pre-timeout/preemption signal")
        self.epoch, self.step = epoch, step


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed every RNG; `deterministic` picks repeatable kernels (algorithm runs, tests) or the fastest ones
    with cuDNN autotuning (system sweeps and benchmarks). Both are process-global: set both ways."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


class Trainer:
    def __init__(self, cfg: RunConfig, progress: bool = True):
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.step_hooks: list = []  # called after every training step (e.g. a profiler's step)
        self.record_path = cfg.record_path()
        self.ckpt_path = self.record_path.with_suffix(".ckpt.pt")
        self.par = self.runtime = Runtime.from_config(cfg)
        self.device = self.runtime.device
        if self.par.is_main:
            self._check_existing()
        if cfg.system.threads:
            torch.set_num_threads(cfg.system.threads)
        self.single_acc = (single_accuracies(cfg.train.single_acc, cfg.data.dataset, cfg.data.preset)
                           if self.par.is_main else None)
        seed_everything(cfg.train.seed, cfg.system.deterministic)
        self.datasets = build_datasets(cfg)
        train_ds = self.datasets["train"]
        self.num_classes = train_ds.spec.num_classes
        self.model = MultimodalModel(cfg.modalities, self.num_classes, cfg.model, train_ds.shapes,
                                     cfg.data.preset if cfg.data.source == "synthetic" else "full").to(self.device)
        kind = STRATEGIES[cfg.strategy.name]
        self.datasets = kind.split_datasets(cfg, self.datasets)  # Gradient Blending holds part of train out
        train_ds = self.datasets["train"]
        data = StrategyData(self.datasets, cfg, self._to_device)  # the strategy's own passes
        self.strategy = kind(cfg, self.model, self.runtime, data)
        # every process trains on its shard; validation and test run whole on rank 0 only
        self.loaders = {"train": build_loader(train_ds, cfg, True, self.par.rank, self.par.world, device=self.device)}
        if cfg.loader.prefetch_factor == 0:  # the estimate's own standard loader (prefetch 1, thesis A.2.1)
            self.loaders["idle"] = build_loader(train_ds, cfg, True, self.par.rank, self.par.world, preinit=False)
        if self.par.is_main:
            self.loaders["val"] = build_loader(self.datasets["val"], cfg, False, device=self.device)
            self.loaders["test"] = build_loader(self.datasets["test"], cfg, False, preinit=False)  # used once

    # ---- records ---------------------------------------------------------------------------------
    def _check_existing(self) -> None:
        self._write_path = self.record_path
        if not self.record_path.exists():
            return
        try:
            old = read_record(self.record_path)
        except ValueError:
            return  # an unreadable partial file from a crash: not a result
        if old.status == "done":
            if not self.cfg.output.overwrite:
                raise RecordExistsError(f"{self.record_path}: a finished record exists; set output.overwrite=true "
                                        "to replace it, or output.name=... to keep both")
            # keep the finished record until the new run has finished too
            self._write_path = self.record_path.with_name(f".{self.record_path.stem}.rerun.json")

    def _save(self, record: RunRecord) -> None:
        if not self.par.is_main:
            return
        write_record(self._write_path, record)
        if record.status == "done" and self._write_path != self.record_path:
            series = self._write_path.with_suffix(".util.csv")
            if series.exists():
                os.replace(series, self.record_path.with_suffix(".util.csv"))
                os.replace(series.with_name(series.stem + ".markers.json"),
                           self.record_path.with_name(self.record_path.stem + ".util.markers.json"))
            os.replace(self._write_path, self.record_path)

    # ---- one pass over a loader ------------------------------------------------------------------
    def _to_device(self, batch: dict) -> dict:
        # each tensor to the device that consumes it (BLP: a modality's branch device); uint8 frames become
        # model input (crop, flip, normalise) there. The sample index stays on the host (nothing on the
        # device reads it), and every copy is asynchronous: from pageable memory too, where a blocking copy
        # would wait for the GPU's queue first
        batch = {k: v for k, v in batch.items() if k != "index"}
        return finish_batch(self.runtime.to_device(batch, non_blocking=True))

    def _pass(self, split: str, epoch: int) -> tuple[dict, dict]:
        """Run one epoch over a split's loader; returns (metrics, timings)."""
        train = split == "train"
        loader = self.loaders[split]
        acc = mx.MetricAccumulator(keep_logits=not train)
        self.model.train(train)
        self.par.synchronize()  # the timer starts when the device has finished what came before
        t0 = time.perf_counter()
        gaps = StepGaps(self.device) if train else None  # the GPU's idle time between steps
        it = TimedBatches(loader.epoch(epoch))  # sums the waits in next(): idle time of the step
        batch = next(it, None)
        t_first = time.perf_counter()
        n = steps = 0
        limit = self.cfg.train.max_batches if train else None
        bar = tqdm(total=limit or len(loader), desc=f"{split} {epoch + 1}", leave=False,
                   disable=not (self.progress and self.par.is_main))
        while batch is not None:
            if train:
                gaps.start()
            batch = self._to_device(batch)
            labels = batch["label"]
            logits = self.strategy.train_step(batch, labels).logits if train else self.strategy.eval_logits(batch)
            acc.update(logits, labels)
            if train:
                gaps.end()
                for hook in self.step_hooks:
                    hook()
                if self._stop_requested():
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
        self.par.synchronize()  # every device the run computes on (BLP: each branch's)
        t_end = time.perf_counter()
        timing = {"loader_init_s": t_first - t0, "run_s": t_end - t_first, "data_wait_s": wait_s, "samples": n,
                  "samples_per_s": n / max(t_end - t0, 1e-9), "gpu_idle_s": gaps.idle_s() if train else None}
        metrics = acc.result()
        if train and self.par.world > 1:
            metrics = self.par.reduce(metrics, n)
            timing["samples_per_s"] = self.par.reduce({"s": timing["samples_per_s"]}, 1)["s"] * self.par.world
        return metrics, timing

    def _stop_requested(self) -> bool:
        """STOP_REQUESTED on any rank: every DDP process stops at the same step (the step after the signal
        came: the ranks' vote travels during a step, `Distributed.any_rank`)."""
        return self.par.any_rank(STOP_REQUESTED.is_set())

    def _evaluate(self, split: str, epoch: int = 0) -> tuple[dict, dict]:
        metrics, timing = ({}, {}) if not self.par.is_main else self._pass(split, epoch)
        if self.par.is_main:
            metrics.update(self._bias(metrics))
        return self.par.broadcast((metrics, timing))

    def _bias(self, metrics: dict) -> dict:
        """bias/<m> (Eq. 3.5-3.6) from a split's mean entropies entropy/<m>."""
        ent = {m: metrics[f"entropy/{m}"] for m in self.cfg.modalities}
        return {f"bias/{m}": v for m, v in mx.bias(ent, self.num_classes).items()}

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> RunRecord:
        cfg, strategy = self.cfg, self.strategy
        record = RunRecord(run=cfg.run_name(), status="running", config=cfg.to_dict(), env=environment(self.device),
                           model={"parameters": count_parameters(self.model)},
                           data={s: len(d) for s, d in self.datasets.items()}, started=time.time(),
                           provenance=strategy.provenance())
        best = {"acc": -1.0, "epoch": -1, "state": None}
        epoch = 0
        if cfg.output.checkpoint and self.ckpt_path.exists():
            record, best, epoch = self._resume(record)
        self._save(record)
        self._start_sampler()
        try:
            bar = tqdm(total=strategy.max_epochs(), initial=epoch, desc=cfg.run_name(),
                       disable=not (self.progress and self.par.is_main))
            while epoch < strategy.max_epochs():
                entry = self._epoch(epoch)
                record.epochs.append(entry)
                val = entry.val
                if val["acc/fused"] > best["acc"]:  # model selection on validation, never on test
                    t0 = self._clock()
                    best = {"acc": val["acc/fused"], "epoch": epoch,
                            "state": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}}
                    entry.time.add_strategy_work(self._clock() - t0)  # the copy is part of the epoch
                bar.set_postfix_str(" ".join(f"{k.split('/')[1][:3]}={val[k]:.2f}" for k in val
                                             if k.startswith("acc/") and "probe" not in k))
                bar.update()
                if self.par.is_main:
                    log.info(epoch_line(entry, strategy.max_epochs()))
                self._save(record)
                stop = strategy.should_stop(epoch)
                epoch += 1
                if cfg.output.checkpoint and self.par.is_main:
                    self._checkpoint(record, best, epoch)
                if stop:
                    if epoch < strategy.max_epochs() and self.par.is_main:
                        log.info("stopped early after epoch %d of %d: %s", epoch, strategy.max_epochs(),
                                 strategy.stop_reason())
                    break
            bar.close()
            if self.par.is_main:
                self.model.load_state_dict(best["state"])
            test, _ = self._evaluate("test")
            record.summary = self._summary(record, test, best["epoch"])
            record.status = "done"
            record.finished = time.time()
            if self.par.is_main:
                log.log(RUN, run_line(record, cfg.modalities))
        except Preempted as e:  # not a failure: the record stays as saved at the last epoch end
            log.warning("%s: %s; its next start resumes at epoch %d", cfg.run_name(), e, epoch + 1)
            raise
        except BaseException as e:
            mark_failed(record, e, epoch)
            raise
        finally:
            self._stop_sampler(record)
            self.close()
            self._save(record)  # the final record, done or failed: written here only
        if self.par.is_main:
            self.ckpt_path.unlink(missing_ok=True)
        return record

    def close(self) -> None:
        """Release loader threads and workers, BLP threads and the process group."""
        for loader in self.loaders.values():
            loader.close()
        self.par.close()

    def _epoch(self, epoch: int) -> Epoch:
        cfg, strategy = self.cfg, self.strategy
        lr = cfg.train.lr * strategy.lr_factor(epoch)
        for group in strategy.optimizer.param_groups:
            group["lr"] = lr
        mark = self.sampler.mark(f"epoch {epoch} start") if self.sampler else None
        t0 = self._clock()
        active = list(strategy.begin_epoch(epoch))  # PMR's prototype pass runs here
        strategy_s = self._clock() - t0
        train, t_train = self._pass("train", epoch)
        train.update(self._bias(train))  # the training split's bias per epoch (thesis Table 4.4, Fig. 3.2)
        val, t_val = self._evaluate("val", epoch)
        rel = {m: train[f"loss/{m}"] / max(val[f"loss/{m}"], 1e-12) for m in cfg.modalities}  # Eq. 3.7
        val.update({f"reliability/{m}": v for m, v in rel.items()})
        t0 = self._clock()
        strategy.end_epoch(epoch, train, val)  # Gradient Blending's held-out pass runs here
        strategy_s += self._clock() - t0
        util = self._sampled(mark, epoch) if self.cfg.system.sample_interval > 0 else {}
        if cfg.loader.prefetch_factor == 0:  # PyTorch cannot: estimated as thesis Appendix A.2.1 (Alg. 7)
            t_train["data_wait_s"] = estimate_prefetch0_idle(self.loaders["idle"], epoch, cfg.train.max_batches)
        time_ = EpochTime(train_loader_init_s=t_train["loader_init_s"], train_s=t_train["run_s"],
                          val_loader_init_s=t_val["loader_init_s"], val_s=t_val["run_s"],
                          train_data_wait_s=t_train["data_wait_s"],
                          train_data_wait_estimated=cfg.loader.prefetch_factor == 0,
                          val_data_wait_s=t_val.get("data_wait_s"), train_gpu_idle_s=t_train["gpu_idle_s"],
                          strategy_s=strategy_s, epoch_s=strategy_s + sum(
                              t[k] for t in (t_train, t_val) for k in ("loader_init_s", "run_s")),
                          train_samples=t_train["samples"], train_samples_per_s=t_train["samples_per_s"])
        return Epoch(epoch=epoch, lr=lr, optimised=active, train=train, val=val, time=time_,
                     memory=self._peak_memory(), util=util)

    def _clock(self) -> float:
        """perf_counter once every device of the run has finished its queued work (GPU work is async)."""
        self.par.synchronize()
        return time.perf_counter()

    # ---- utilisation sampling --------------------------------------------------------------------
    def _start_sampler(self) -> None:
        """Rank 0 samples its process and GPUs; in DDP every rank samples its own GPU (its epoch figures are
        gathered by `_sampled`), since rank 0's process may see no other GPU (one GPU per task, other nodes)."""
        self.sampler = None
        if self.cfg.system.sample_interval <= 0:
            return
        ddp = self.par.world > 1
        if self.par.is_main or (ddp and self.device.type == "cuda"):
            from mmhpc.system.sampler import UtilSampler  # psutil and pandas: only when sampling

            own = [self.device.index] if ddp and self.device.type == "cuda" else ([] if ddp else None)
            self.sampler = UtilSampler(self.cfg.system.sample_interval, devices=own).start()
        self.sampled_gpus = self.sampler.gpus if self.sampler else {}
        if ddp:  # every rank's GPU, named by its rank
            gathered = self.par.gather(self.sampled_gpus)
            self.sampled_gpus = {r: uuid for r, g in enumerate(gathered) for uuid in g.values()}

    def _sampled(self, mark, epoch: int) -> dict:
        """The epoch's utilisation summary (`mark`: its start marker); DDP: every rank's GPU as gpu<rank>."""
        from mmhpc.system.sampler import merge_ranks

        util = self.sampler.summary(mark, self.sampler.mark(f"epoch {epoch} end")) if self.sampler else {}
        return merge_ranks(self.par.gather(util)) if self.par.world > 1 else util

    def _stop_sampler(self, record: RunRecord) -> None:
        if self.sampler is None:
            return
        self.sampler.stop()
        if not self.par.is_main:
            return
        self.sampler.save(self._write_path.with_suffix(".util.csv"))  # beside the record being written
        record.system = {"timeseries": self.record_path.with_suffix(".util.csv").name,
                         "interval_s": self.sampler.interval_s, "notes": self.sampler.notes,
                         "gpus": self.sampled_gpus, "energy_scope": self.sampler.energy_scope,
                         "summary": self.sampler.summary(),
                         "sample_cost_us": self.sampler.sample_cost_us}

    def _peak_memory(self) -> dict:
        """Peak GPU memory of the epoch in MiB per device of the run, of every DDP rank; resets the peaks."""
        return self.par.peak_memory()

    # ---- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self, record: RunRecord, best: dict, next_epoch: int) -> None:
        state = {"config": self.cfg.to_dict(), "next_epoch": next_epoch, "record": record.model_dump(by_alias=True),
                 "best": best,
                 "model": self.model.state_dict(), "strategy": self.strategy.state_dict(),
                 "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                         "python": random.getstate(),
                         "loaders": {k: ld.generator.get_state() for k, ld in self.loaders.items()}}}
        # unique per job and process: a stale copy of the run (a requeue race) never writes into ours
        job = os.environ.get("SLURM_JOB_ID", "local")
        tmp = self.ckpt_path.with_name(f".{self.ckpt_path.name}.{job}-{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.ckpt_path)

    def _resume(self, fresh: RunRecord) -> tuple[RunRecord, dict, int]:
        state = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        if _resumable(state["config"]) != _resumable(self.cfg.to_dict()):
            raise ConfigError(f"{self.ckpt_path}: checkpoint of a different config; remove it or change output.name")
        self.model.load_state_dict(state["model"])
        self.strategy.load_state_dict(state["strategy"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        for k, g in rng["loaders"].items():
            if k in self.loaders:
                self.loaders[k].generator.set_state(g)
        record = RunRecord.model_validate(state["record"])
        record.resumed.append({"at_epoch": state["next_epoch"], "time": time.time(),
                               "env": fresh.env.model_dump()})
        return record, state["best"], state["next_epoch"]

    def _summary(self, record: RunRecord, test: dict, best_epoch: int) -> Summary:
        times = [e.time.epoch_s for e in record.epochs]
        return Summary(best_epoch=best_epoch, epochs_run=len(record.epochs), test=test,
                       optimised_epochs=dict(self.strategy.optimised), epoch_time_mean_s=float(np.mean(times)),
                       train_time_s=float(np.sum(times)), ibf=run_ibf(test, self.cfg.modalities, self.single_acc,
                                                                           self.cfg.model.fusion))


def epoch_line(entry: Epoch, epochs: int) -> str:
    """One progress line per epoch for a job's output: time, validation accuracies, speed, GPU use."""
    accs = " ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in entry.val.items()
                    if k.startswith("acc/") and "probe" not in k)
    t = entry.time
    gpus = [v for k, v in entry.util.items() if k.startswith("gpu") and k.endswith("_util_pct_mean") and v is not None]
    gpu = f"GPU {sum(gpus) / len(gpus):.0f} %" if gpus else "GPU n/a"
    return (f"epoch {entry.epoch + 1}/{epochs} {t.epoch_s:.1f} s | val acc {accs} | "
            f"{t.train_samples_per_s:.0f} samples/s | {gpu}")


def run_line(record: RunRecord, modalities: list[str]) -> str:
    """A finished run in one line (the one `-q` keeps): its epochs, the best (from 1), test accuracies."""
    s = record.summary
    accs = " ".join(f"{h} {s.test[f'acc/{h}']:.3f}" for h in ["fused", *modalities])
    return (f"done: {s.epochs_run} epochs in {s.train_time_s:.0f} s, best epoch {s.best_epoch + 1}, "
            f"test acc {accs}" + (f", IBF {s.ibf:.3f}" if s.ibf is not None else ""))


def _resumable(config: dict) -> dict:
    """What must match for a checkpoint to resume a run: all but the output section and the data's
    location (jobs stage the dataset to a node-local directory that differs between attempts)."""
    out = {k: v for k, v in config.items() if k != "output"}
    out["data"] = {k: v for k, v in config["data"].items() if k != "root"}
    return out


def mark_failed(record: RunRecord, exc: BaseException, epoch: int | None = None) -> RunRecord:
    """A record's failure: status, the error as "Type: message", and the traceback being handled. Ctrl-C
    is no failure: status `interrupted`, with the epoch (0-based `epoch`, written counted from 1)."""
    if isinstance(exc, KeyboardInterrupt):
        record.status = "interrupted"
        record.error = "KeyboardInterrupt: interrupted (Ctrl-C) " + (
            f"in epoch {epoch + 1}" if epoch is not None else "before training")
        return record
    record.status = "failed"
    record.error = f"{type(exc).__name__}: {exc}"
    record.traceback = traceback.format_exc(limit=20)
    return record


def train(cfg: RunConfig, progress: bool = True) -> RunRecord:
    """Train one run and return its record. A run that fails before its trainer is set up (an unreadable
    dataset) still leaves a failed record, unless a record of that run already exists; a config this
    machine cannot run (precision, parallelism, device: ConfigError) is bad input and writes nothing."""
    try:
        trainer = Trainer(cfg, progress=progress)
    except ConfigError:
        raise
    except Exception as e:
        write_failed_record(cfg, e)
        raise
    return trainer.fit()


def write_failed_record(cfg: RunConfig, exc: BaseException) -> None:
    """The failed record of a run that failed before its trainer wrote one (on rank 0; never over a record
    that exists, such as a finished one the rerun was refused to overwrite). Call it inside `except`."""
    path = cfg.record_path()
    if int(os.environ.get("RANK", "0")) == 0 and not path.exists():
        write_record(path, mark_failed(RunRecord(run=cfg.run_name(), status="running", config=cfg.to_dict()), exc))
