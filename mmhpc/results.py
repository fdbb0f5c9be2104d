"""Run records: the typed record of one run, its one writer and its one reader.

A record is one JSON file per run (`RunConfig.record_path()`), written atomically by the trainer
alone (`write_record`) and read back by everyone else (`read_record`, `iter_records`): the report
loader, the sweep store, IBF's single-modality baselines. Its parts are pydantic models: `RunRecord`
(status, config, environment, epochs, summary), `Epoch` (metrics and the Table 2.8 time breakdown of
one epoch) and `Summary` (the selected model's test metrics). Unknown keys are kept, so a record
written by a newer version still reads.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import platform
import socket
import sys
import traceback
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mmhpc.atomic import atomic_write_text
from mmhpc.errors import ConfigError, problem

SCHEMA = 1
_PACKAGES = ("torch", "torchvision", "transformers", "numpy", "submitit", "nvidia-ml-py", "psutil")

log = logging.getLogger(__name__)


def record_file(runs_dir: str | Path, run_name: str) -> Path:
    """The record of run `run_name` under `runs_dir`: the only place a record's path is made."""
    return Path(runs_dir) / f"{run_name}.json"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON so readers see the old file or the new one, never a partial one."""
    return atomic_write_text(path, json.dumps(obj, indent=1, default=_jsonable))


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def environment(device=None) -> dict:
    import torch

    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "versions": {p: _version(p) for p in _PACKAGES},
        "cuda": torch.version.cuda,
        "device": str(device) if device is not None else None,
        "slurm": {
            k: v for k, v in os.environ.items() if k.startswith("SLURM_") and k in _SLURM_KEYS
        },
    }
    if device is not None and getattr(device, "type", None) == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
    return env


_SLURM_KEYS = {
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_JOB_PARTITION",
    "SLURM_CLUSTER_NAME",
    "SLURM_RESTART_COUNT",
}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


# ---- the typed record
# -----------------------------------------------------------------------------

class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class EpochTime(_Part):
    """The thesis' Table 2.8 breakdown of one epoch, in seconds, and the training throughput.
    `epoch_s` is the four passes plus `strategy_s`, the epoch's work outside them: a strategy's own
    passes (PMR's prototypes, Gradient Blending's held-out losses) and the copy of the best state so
    far."""
    train_loader_init_s: float
    train_s: float
    val_loader_init_s: float
    val_s: float
    epoch_s: float
    strategy_s: float | None = None  # None: a record from before it was timed (in no epoch_s then)
    train_samples: int | None = None
    train_samples_per_s: float | None = None
    train_data_wait_s: float | None = None
    train_data_wait_estimated: bool = (
        False  # prefetch_factor=0: estimated as thesis Appendix A.2.1 (Alg. 7)
    )
    val_data_wait_s: float | None = None
    train_gpu_idle_s: float | None = (
        None  # the GPU idle between training steps (CUDA events; None off CUDA)
    )

    def add_strategy_work(self, seconds: float) -> None:
        self.strategy_s = (self.strategy_s or 0.0) + seconds
        self.epoch_s += seconds


class Epoch(_Part):
    epoch: int
    time: EpochTime | None = None       # always written by the trainer
    lr: float | None = None
    optimised: list[str] = []  # the modalities trained this epoch
    train: dict[str, float] = {}  # training metrics: acc/<head>, loss/<head>, entropy/<m>, ...
    val: dict[str, float] = {}  # validation metrics, plus bias/<m> and reliability/<m>
    memory: dict[
        str, float
    ] = {}  # GPU memory per device in MiB: peaks allocated, reserved; NVML used
    util: dict[str, float | None] = {}  # the sampler's utilisation summary over the epoch


class Summary(_Part):
    """What a finished run reached; every field is filled by the trainer (defaults: older
    records)."""
    test: dict[str, float] = {}  # test metrics of the model selected on validation
    best_epoch: int | None = (
        None  # 0-based index into epochs (epoch 1 is 0): selected on validation
    )
    epochs_run: int | None = None
    optimised_epochs: dict[str, int] = {}  # optimisation epochs per modality (Table 4.4)
    epoch_time_mean_s: float | None = None
    train_time_s: float | None = None
    ibf: float | None = None            # Eq. 3.1, when single-modality accuracies were given


class Environment(_Part):
    host: str | None = None
    platform: str | None = None
    python: str | None = None
    cpu_count: int | None = None
    versions: dict[str, str | None] = {}
    cuda: str | None = None
    device: str | None = None
    slurm: dict[str, str] = {}
    gpu: dict[str, Any] | None = None


class RunRecord(_Part):
    schema_version: int = Field(SCHEMA, alias="schema")
    run: str
    status: Literal["running", "done", "failed", "interrupted"]  # interrupted: Ctrl-C
    config: dict[str, Any]
    env: Environment = Environment()
    model: dict[str, Any] = {}          # {"parameters": n}
    data: dict[str, int] = {}           # samples per split
    epochs: list[Epoch] = []
    started: float | None = None
    finished: float | None = None
    summary: Summary | None = None
    error: str | None = None            # "ExceptionType: message" of a failed or interrupted run
    traceback: str | None = None
    system: dict[str, Any] | None = (
        None  # the sampler: time-series file, interval, notes, GPUs, summary
    )
    resumed: list[dict[str, Any]] = []
    bench: dict[str, Any] | None = None   # `mmhpc bench`: measured epochs after warm-up
    #: defaults the run resolved, each {"value", "source"} (a source, or "assumed"):
    #: Strategy.provenance
    provenance: dict[str, Any] = {}

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA:
            raise ValueError(problem("", f"schema {v} is not one this version reads", [SCHEMA]))
        return v

    @property
    def modalities(self) -> list[str]:
        """The run's modalities as configured (empty when the config left them to the dataset)."""
        return list((self.config.get("data") or {}).get("modalities") or [])

    def test_acc(self, head: str) -> float | None:
        return None if self.summary is None else self.summary.test.get(f"acc/{head}")


# ---- the one writer and the one reader
# --------------------------------------------------------------

def write_record(path: str | Path, record: RunRecord) -> Path:
    return atomic_write_json(path, record.model_dump(by_alias=True))


class RecordExistsError(FileExistsError):
    """A finished record of the same run exists and output.overwrite is off."""


def mark_failed(record: RunRecord, exc: BaseException, epoch: int | None = None) -> RunRecord:
    """A record's failure: status, the error as "Type: message", and the traceback being handled.
    Ctrl-C is no failure: status `interrupted`, with the epoch (0-based `epoch`, written counted
    from 1)."""
    if isinstance(exc, KeyboardInterrupt):
        record.status = "interrupted"
        record.error = "KeyboardInterrupt: interrupted (Ctrl-C) " + (
            f"in epoch {epoch + 1}" if epoch is not None else "before training")
        return record
    record.status = "failed"
    record.error = f"{type(exc).__name__}: {exc}"
    record.traceback = traceback.format_exc(limit=20)
    return record


def write_failed_record(cfg, exc: BaseException) -> None:
    """The failed record of a run that failed before its trainer wrote one (on rank 0; never over a
    record that exists, such as a finished one the rerun was refused to overwrite). Call it inside
    `except`."""
    path = cfg.record_path()
    if int(os.environ.get("RANK", "0")) == 0 and not path.exists():
        write_record(
            path,
            mark_failed(RunRecord(run=cfg.run_name(), status="running", config=cfg.to_dict()), exc),
        )


class RecordWriter:
    """The trainer's record component: the record at the run's start, after every epoch and at its
    end (done, failed or preempted), on rank 0 alone. A rerun over a finished record writes beside
    it (`.<run>.rerun.json`, and any file a component writes beside that) and replaces it only when
    done."""

    def __init__(self, cfg, is_main: bool):
        self.path = self.write_path = cfg.record_path()
        self.is_main = is_main
        if is_main:
            self._check_existing(cfg.output.overwrite)

    def _check_existing(self, overwrite: bool) -> None:
        if not self.path.exists():
            return
        try:
            old = read_record(self.path)
        except ValueError:
            return  # an unreadable partial file from a crash: not a result
        if old.status == "done":
            if not overwrite:
                raise RecordExistsError(
                    f"{self.path}: a finished record exists; set output.overwrite=true "
                    "to replace it, or output.name=... to keep both"
                )
            # keep the finished record until the new run has finished too
            self.write_path = self.path.with_name(f".{self.path.stem}.rerun.json")

    def save(self, record: RunRecord) -> None:
        if not self.is_main:
            return
        write_record(self.write_path, record)
        if record.status == "done" and self.write_path != self.path:
            stem = self.write_path.stem
            for p in self.write_path.parent.glob(
                f"{glob.escape(stem)}.*"
            ):  # the series written beside the record
                if p != self.write_path:
                    os.replace(p, self.path.with_name(self.path.stem + p.name[len(stem):]))
            os.replace(self.write_path, self.path)

    def on_fit_start(self, trainer, fit) -> None:
        self.save(fit.record)

    def on_epoch_end(self, trainer, fit, entry) -> None:
        self.save(fit.record)

    def on_error(self, trainer, fit, exc: BaseException) -> None:
        mark_failed(fit.record, exc, fit.epoch)

    def on_fit_end(self, trainer, fit, error) -> None:
        self.save(fit.record)  # the final record, done, failed or preempted: written here only


def read_record(path: str | Path) -> RunRecord:
    """The record at `path`; ValueError when it is not one (unreadable, torn, or another JSON
    file)."""
    return _validated(json.loads(Path(path).read_text()), path)


def _validated(data, path) -> RunRecord:
    try:
        return RunRecord.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{path}: not a run record: {e.errors()[0]['msg']}") from None


def iter_records(root: str | Path) -> Iterator[tuple[Path, RunRecord]]:
    """Every readable run record under `root` (hidden files, manifests and sampler files left out).
    Other JSON files are passed over; a damaged file, or one that looks like a record but is not
    valid, is passed over with a warning naming it."""
    for p in sorted(Path(root).rglob("*.json")):
        if (
            p.name.startswith(".")
            or p.name == "manifest.json"
            or p.name.endswith((".markers.json", ".trace.json"))
        ):
            continue
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("%s: skipped, unreadable (%s)", p, e)
            continue
        try:
            yield p, _validated(data, p)
        except ValueError as e:
            if isinstance(data, dict) and {"schema", "run", "config"} <= data.keys():
                log.warning("%s", e)


# ---- IBF from records (Eq. 3.1)
# ------------------------------------------------------------------------

def run_ibf(
    test: Mapping[str, float],
    modalities: list[str],
    single_acc: Mapping[str, float] | None,
    fusion: str = "concat",
) -> float | None:
    """IBF of a run from its test accuracies: 0 for a single-modality run, None without baselines;
    gated and FiLM runs read their probes' accuracies (`metrics.ibf_accuracy_keys`)."""
    from mmhpc.metrics import ibf, ibf_accuracy_keys

    if single_acc is None:
        return None
    if len(modalities) == 1:
        return 0.0
    return ibf({m: test[k] for m, k in ibf_accuracy_keys(fusion, modalities).items()}, single_acc)


def single_accuracies(source: dict | str | Path | None, dataset: str | None = None,
                      preset: str | None = None) -> dict[str, float] | None:
    """Single-modality test accuracies for IBF: a {modality: acc} map, a JSON file of one or a run
    record, or a directory of run records (finished single-modality runs of `dataset`/`preset`; mean
    over seeds)."""
    if source is None or isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if (
                isinstance(data, dict) and "summary" in data
            ):  # a run record of a single-modality run
                rec = _validated(data, path)
                (m,) = rec.modalities
                return {m: rec.test_acc("fused")}
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ConfigError(
                problem(
                    "train.single_acc",
                    f"not a JSON map {{modality: accuracy}} nor the record of "
                    f"a finished single-modality run ({type(e).__name__}: {e})",
                    file=str(path),
                )
            ) from None
    found: dict[str, list[float]] = {}
    for _, rec in iter_records(path):
        data_cfg = rec.config.get("data") or {}
        if rec.status != "done" or len(rec.modalities) != 1:
            continue
        if dataset is not None and (data_cfg.get("dataset"), data_cfg.get("preset")) != (
            dataset,
            preset,
        ):
            continue
        found.setdefault(rec.modalities[0], []).append(rec.test_acc("fused"))
    if not found:
        raise FileNotFoundError(
            f"train.single_acc: no finished single-modality records under {path}"
        )
    return {m: math.fsum(v) / len(v) for m, v in found.items()}
