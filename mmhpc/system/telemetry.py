"""What a run measures of the system besides its step times: the utilisation sampler (GPU/CPU series
with per-epoch summaries, `mmhpc.system.sampler`), each epoch's peak memory, the one log line per
epoch of a batch job and the finished run's line. A trainer component (`mmhpc.train`)."""
from __future__ import annotations

import logging

from mmhpc.preempt import Preempted
from mmhpc.progress import RUN

log = logging.getLogger("mmhpc.train")


def epoch_line(entry, epochs: int) -> str:
    """One progress line per epoch for a job's output: time, validation accuracies, speed, GPU
    use."""
    accs = " ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in entry.val.items()
                    if k.startswith("acc/") and "probe" not in k)
    t = entry.time
    gpus = [v for k, v in entry.util.items()
            if k.startswith("gpu") and k.endswith("_util_pct_mean") and v is not None]
    gpu = f"GPU {sum(gpus) / len(gpus):.0f} %" if gpus else "GPU n/a"
    return (f"epoch {entry.epoch + 1}/{epochs} {t.epoch_s:.1f} s | val acc {accs} | "
            f"{t.train_samples_per_s:.0f} samples/s | {gpu}")


def run_line(record, modalities: list[str]) -> str:
    """A finished run in one line (the one `-q` keeps): its epochs, the best (from 1), test
    accuracies."""
    s = record.summary
    accs = " ".join(f"{h} {s.test[f'acc/{h}']:.3f}" for h in ["fused", *modalities])
    return (
        f"done: {s.epochs_run} epochs in {s.train_time_s:.0f} s, best epoch {s.best_epoch + 1}, "
        f"test acc {accs}" + (f", IBF {s.ibf:.3f}" if s.ibf is not None else "")
    )


class Telemetry:
    def __init__(self, cfg, runtime, writer):
        self.cfg, self.runtime, self.writer = cfg, runtime, writer
        self.sampler = None
        self.sampled_gpus: dict = {}
        self._mark = None
        self._util: dict = {}

    def on_fit_start(self, trainer, fit) -> None:
        """Rank 0 samples its process and GPUs; in DDP every rank samples its own GPU (its epoch
        figures are gathered at each epoch's end), since rank 0's process may see no other GPU (one
        GPU per task, other nodes)."""
        rt = self.runtime
        if self.cfg.system.sample_interval <= 0:
            return
        ddp, cuda = rt.world > 1, rt.device.type == "cuda"
        if rt.is_main or (ddp and cuda):
            from mmhpc.system.sampler import UtilSampler  # psutil and pandas: only when sampling

            own = [rt.device.index] if ddp and cuda else ([] if ddp else None)
            self.sampler = UtilSampler(self.cfg.system.sample_interval, devices=own).start()
        self.sampled_gpus = self.sampler.gpus if self.sampler else {}
        if ddp:  # every rank's GPU, named by its rank
            gathered = rt.gather(self.sampled_gpus)
            self.sampled_gpus = {r: uuid for r, g in enumerate(gathered) for uuid in g.values()}

    def on_epoch_start(self, trainer, epoch: int) -> None:
        self._mark = self.sampler.mark(f"epoch {epoch} start") if self.sampler else None

    def on_passes_end(self, trainer, epoch: int) -> None:
        """The epoch's passes (training, validation, the strategy's own) are over: the utilisation
        summary of the epoch; DDP: every rank's GPU as gpu<rank>."""
        if self.cfg.system.sample_interval <= 0:
            self._util = {}
            return
        from mmhpc.system.sampler import merge_ranks

        s = self.sampler
        util = s.summary(self._mark, s.mark(f"epoch {epoch} end")) if s else {}
        self._util = merge_ranks(self.runtime.gather(util)) if self.runtime.world > 1 else util

    def on_epoch_end(self, trainer, fit, entry) -> None:
        entry.util = self._util
        # peak GPU memory of the epoch in MiB per device of the run, of every DDP rank; resets the
        # peaks
        entry.memory = self.runtime.peak_memory()
        if not self.runtime.is_main:
            return
        strategy = trainer.strategy
        if fit.stop and fit.epoch < strategy.max_epochs():
            log.info("stopped early after epoch %d of %d: %s", fit.epoch, strategy.max_epochs(),
                     strategy.stop_reason())
        log.info(epoch_line(entry, strategy.max_epochs()))

    def on_fit_end(self, trainer, fit, error) -> None:
        if isinstance(error, Preempted):  # not a failure: the record stays as last saved
            log.warning("%s: %s; its next start resumes at epoch %d", self.cfg.run_name(), error,
                        fit.epoch + 1)
        elif error is None and self.runtime.is_main:
            log.log(RUN, run_line(fit.record, self.cfg.modalities))
        s = self.sampler
        if s is None:
            return
        s.stop()
        if not self.runtime.is_main:
            return
        s.save(self.writer.write_path.with_suffix(".util.csv"))  # beside the record being written
        fit.record.system = {
            "timeseries": self.writer.path.with_suffix(".util.csv").name,
            "interval_s": s.interval_s,
            "notes": s.notes,
            "gpus": self.sampled_gpus,
            "energy_scope": s.energy_scope,
            "summary": s.summary(),
            "sample_cost_us": s.sample_cost_us,
        }
