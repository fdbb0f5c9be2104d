"""What the trainer's loop (`mmhpc.train`) assembles from its passes: the record a fit starts with,
the timings of a pass and an epoch (thesis Table 2.8), the bias and reliability metrics (thesis
Eq. 3.5-3.7), the best epoch's weights and the run's summary."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mmhpc import metrics as mx
from mmhpc.models.multimodal import count_parameters
from mmhpc.results import (
    Epoch,
    EpochTime,
    RunRecord,
    Summary,
    environment,
    run_ibf,
    single_accuracies,
)
from mmhpc.system.idle import StepGaps


@dataclass
class Fit:
    """The state of one fit: the record so far, the best epoch's weights, the next epoch, whether
    the strategy stopped after the last one."""

    record: RunRecord
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": -1, "state": None})
    epoch: int = 0
    stop: bool = False


__all__ = ["Epoch", "Fit", "PassClock", "best_state", "bias_metrics", "epoch_time", "new_record",
           "progress_postfix", "reliability", "single_acc", "summary"]


def single_acc(cfg) -> dict | None:
    """The single-modality test accuracies IBF compares with (`train.single_acc`), read before the
    run starts."""
    return single_accuracies(cfg.train.single_acc, cfg.data.dataset, cfg.data.preset)


def new_record(cfg, device, model, datasets: dict, strategy) -> RunRecord:
    """The record of a run about to start."""
    return RunRecord(
        run=cfg.run_name(),
        status="running",
        config=cfg.to_dict(),
        env=environment(device),
        model={"parameters": count_parameters(model)},
        data={s: len(d) for s, d in datasets.items()},
        started=time.time(),
        provenance=strategy.provenance(),
    )


class PassClock:
    """The timings of one pass over a loader: the loader's initialisation (iterator creation to
    first batch), the run, the data waits and, in training, the GPU's idle time between steps
    (`mmhpc.system.idle`). Starts once the run's devices have finished their queued work."""

    def __init__(self, runtime, train: bool):
        self.runtime, self.train, self.samples, self.steps = runtime, train, 0, 0
        runtime.synchronize()  # the timer starts when the device has finished what came before
        self.t0 = time.perf_counter()
        self.gaps = StepGaps(runtime.device) if train else None  # GPU idle time between steps

    def first(self, batch):
        """The first batch has come: the loader's initialisation is over."""
        self.t_first = time.perf_counter()
        return batch

    def step_start(self) -> None:
        if self.gaps is not None:
            self.gaps.start()

    def step_end(self) -> None:
        if self.gaps is not None:
            self.gaps.end()

    def count(self, samples: int) -> None:
        self.samples += samples
        self.steps += 1

    def result(self, metrics: dict, wait_s: float) -> tuple[dict, dict]:
        """(metrics, timings) once every device the run computes on (BLP: each branch's) is done;
        a DDP training pass's metrics and throughput reduced over the ranks."""
        rt, n = self.runtime, self.samples
        rt.synchronize()
        t_end = time.perf_counter()
        timing = {
            "loader_init_s": self.t_first - self.t0,
            "run_s": t_end - self.t_first,
            "data_wait_s": wait_s,
            "samples": n,
            "samples_per_s": n / max(t_end - self.t0, 1e-9),
            "gpu_idle_s": self.gaps.idle_s() if self.gaps is not None else None,
        }
        if self.train and rt.world > 1:
            metrics = rt.reduce(metrics, n)
            timing["samples_per_s"] = rt.reduce({"s": timing["samples_per_s"]}, 1)["s"] * rt.world
        return metrics, timing


def bias_metrics(metrics: dict, modalities: list[str], num_classes: int) -> dict:
    """bias/<m> (thesis Eq. 3.5-3.6) from a split's mean entropies entropy/<m>."""
    ent = {m: metrics[f"entropy/{m}"] for m in modalities}
    return {f"bias/{m}": v for m, v in mx.bias(ent, num_classes).items()}


def reliability(train: dict, val: dict, modalities: list[str]) -> dict:
    """reliability/<m>: the training loss over the validation loss of each modality (thesis Eq.
    3.7)."""
    return {
        f"reliability/{m}": train[f"loss/{m}"] / max(val[f"loss/{m}"], 1e-12) for m in modalities
    }


def epoch_time(t_train: dict, t_val: dict, strategy_s: float, estimated: bool) -> EpochTime:
    """An epoch's time breakdown (thesis Table 2.8) from its passes' timings and the strategy's
    own work; `estimated`: the training data wait is thesis Appendix A.2.1's estimate (Alg. 7)."""
    return EpochTime(
        train_loader_init_s=t_train["loader_init_s"],
        train_s=t_train["run_s"],
        val_loader_init_s=t_val["loader_init_s"],
        val_s=t_val["run_s"],
        train_data_wait_s=t_train["data_wait_s"],
        train_data_wait_estimated=estimated,
        val_data_wait_s=t_val.get("data_wait_s"),
        train_gpu_idle_s=t_train["gpu_idle_s"],
        strategy_s=strategy_s,
        epoch_s=strategy_s
        + sum(t[k] for t in (t_train, t_val) for k in ("loader_init_s", "run_s")),
        train_samples=t_train["samples"],
        train_samples_per_s=t_train["samples_per_s"],
    )


def best_state(model, val: dict, epoch: int) -> dict:
    """The best epoch so far (model selection on validation, never on test): its weights on the
    host."""
    return {
        "acc": val["acc/fused"],
        "epoch": epoch,
        "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def progress_postfix(val: dict) -> str:
    """The validation accuracies on the fit's progress bar."""
    return " ".join(
        f"{k.split('/')[1][:3]}={val[k]:.2f}" for k in val
        if k.startswith("acc/") and "probe" not in k
    )


def summary(record: RunRecord, test: dict, best_epoch: int, optimised: dict, cfg,
            single_acc) -> Summary:
    """The run's summary: the best epoch's test metrics, epoch times, IBF (thesis Eq. 3.1)."""
    times = [e.time.epoch_s for e in record.epochs]
    return Summary(
        best_epoch=best_epoch,
        epochs_run=len(record.epochs),
        test=test,
        optimised_epochs=dict(optimised),
        epoch_time_mean_s=float(np.mean(times)),
        train_time_s=float(np.sum(times)),
        ibf=run_ibf(test, cfg.modalities, single_acc, cfg.model.fusion),
    )
