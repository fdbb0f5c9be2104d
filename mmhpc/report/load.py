"""Run records -> one tidy pandas DataFrame: one row per run, done or not.

A sweep directory (with `manifest.json`) lists every planned run, so runs that are not applicable,
failed, still running or never submitted get a row with their state and reason (from
`mmhpc.launch.store`). A plain directory of records (e.g. `reports/results/`, copied from a cluster)
gives one row per record found; sweep directories below it are read as sweeps.

Columns: `sweep`, `run`, `state`, `reason`, every config knob flattened (`system.precision`, ...),
the derived labels the tables group by (`dataset`, `encoder`, `device`, `loader`, ...), the measured
`time_epoch_s` / `time_train_s` / `util_pct` and the test metrics (`acc/fused`, `acc/<m>`,
`bias/<m>`, `ibf`, `epochs/<m>`). The record itself stays in the `record` column for the figures.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmhpc.results import RunRecord, iter_records
from mmhpc.system.sampler import gpu_util_unavailable

# Knobs that never make two runs different experiments (names, paths, seeds: seeds are averaged
# over).
NOT_AXES = ("output.", "train.seed", "data.root", "train.single_acc", "system.sample_interval")
WARMUP_EPOCHS = (
    1  # a training record's first epoch is its warm-up: left out of every mean (see _measurements)
)
STATE_ORDER = ("done", "running", "pending", "failed", "unsubmitted", "missing", "n/a")


@dataclass
class Results:
    """Everything a report needs: the runs, and what the title page says about where they come
    from."""
    path: Path
    runs: pd.DataFrame
    name: str
    description: str = ""
    clusters: list[str] = field(default_factory=list)
    sweeps: list[str] = field(default_factory=list)

    @property
    def done(self) -> pd.DataFrame:
        return self.runs[self.runs["state"] == "done"]


def load_results(path: str | Path, query_slurm: bool = True) -> Results:
    """Every run under `path`: a sweep directory, a directory of sweep directories, or loose
    records."""
    path = Path(path).expanduser().absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such directory of run records or sweep")
    sweep_dirs = sorted({m.parent for m in path.rglob("manifest.json")})
    rows, infos = [], []
    for d in sweep_dirs:
        sweep_rows, info = _sweep_rows(d, query_slurm)
        rows += sweep_rows
        infos.append(info)
    for rec_path, rec in iter_records(path):
        if not any(d == rec_path.parent or d in rec_path.parents for d in sweep_dirs):
            rows.append(_record_row(rec, rec_path, _sweep_label(rec_path, path)))
    if not rows:
        raise FileNotFoundError(
            f"{path}: no run records (*.json with a config) and no sweep manifest found"
        )
    runs = _tidy(rows)
    if len(infos) == 1:
        name, description, cluster = infos[0]
    else:
        name, description = path.name, "; ".join(f"{n}: {d}" for n, d, _ in infos if d)
        cluster = None
    clusters = sorted({c for _, _, c in infos if c} | {c for c in runs["cluster"].dropna() if c})
    if cluster:
        clusters = [cluster] + [c for c in clusters if c != cluster]
    return Results(path, runs, name, description, clusters, sorted(runs["sweep"].unique()))


def _sweep_label(rec_path: Path, root: Path) -> str:
    rel = rec_path.parent.relative_to(root)
    return str(rel) if str(rel) != "." else root.name


# ---- sweep directories
# -----------------------------------------------------------------------------------

def _sweep_rows(path: Path, query_slurm: bool) -> tuple[list[dict], tuple[str, str, str | None]]:
    from mmhpc.launch.store import SweepDir, run_states

    sweep_dir = SweepDir(path)
    manifest = sweep_dir.load()
    name = manifest.get("sweep") or path.name
    spec = _sweep_file(path)
    states = {s.name: s for s in run_states(sweep_dir, manifest, query_slurm=query_slurm)}
    rows = []
    for run in manifest["runs"]:
        rec_path = sweep_dir.record_path(run["name"])
        rec = sweep_dir.record(run["name"])
        state = states[run["name"]]
        if rec is not None and rec.config:
            row = _record_row(rec, rec_path, name)
        else:
            row = _config_row(run["config"], name)
            row["run"] = run["name"]
        row.update(state=state.state, reason=state.reason or row.get("reason", ""))
        if not row.get("device") or row["device"] == "?":
            row["device"] = _planned_device(run)
        rows.append(row)
    known = {r["name"] for r in manifest["runs"]}
    for rec_path, rec in iter_records(sweep_dir.runs_dir if sweep_dir.runs_dir.is_dir() else path):
        if (
            rec_path.stem not in known
        ):  # a record the manifest does not list (copied in by hand): still a run
            rows.append(_record_row(rec, rec_path, name))
    return rows, (name, spec.get("description", ""), manifest.get("cluster"))


def _sweep_file(path: Path) -> dict:
    import yaml

    try:
        spec = yaml.safe_load((path / "sweep.yaml").read_text())
        return spec if isinstance(spec, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _planned_device(run: dict) -> str:
    res = run.get("resources") or {}
    req = run.get("request") or {}
    gpu = res.get("gpu") or req.get("gpu")
    if gpu:
        return str(gpu)
    return "CPU" if run.get("resources") is not None or run.get("not_applicable") else "?"


# ---- one record
# ------------------------------------------------------------------------------------------

def _record_row(rec: RunRecord, path: Path | None, sweep: str) -> dict:
    row = _config_row(rec.config, sweep)
    stopped = rec.status in (
        "failed",
        "interrupted",
    )  # an interrupted run (Ctrl-C) shows as failed, with why
    row.update(
        run=rec.run,
        state="failed" if stopped else rec.status,
        reason=(rec.error or "") if stopped else "",
        path=str(path) if path else None,
        record=rec,
    )
    row["device"] = device_label(rec.env)
    row["host"] = rec.env.host
    row["cluster"] = rec.env.slurm.get("SLURM_CLUSTER_NAME")
    if rec.status == "done":
        row.update(_measurements(rec))
    return row


def _config_row(config: dict, sweep: str) -> dict:
    from mmhpc.config import RunConfig
    from mmhpc.data.specs import DATASETS

    cfg = _merge(RunConfig().to_dict(), config or {})
    row: dict = {
        "sweep": sweep,
        "state": "missing",
        "reason": "",
        "path": None,
        "record": None,
        "device": "?",
    }
    row.update({k: _hashable(v) for k, v in _flatten(cfg).items()})
    data = cfg["data"]
    mods = data.get("modalities") or (list(DATASETS[data["dataset"]].modalities)
                                      if data["dataset"] in DATASETS else [])
    row.update(
        dataset=data["dataset"],
        modalities="+".join(mods),
        n_modalities=len(mods),
        encoder="+".join(mods),
        fusion=cfg["model"]["fusion"],
        strategy=cfg["strategy"]["name"],
        precision=cfg["system"]["precision"],
        parallelism=cfg["system"]["parallelism"],
        loader="preinit" if cfg["loader"]["preinit"] else "standard",
        batch_size=cfg["train"]["batch_size"],
        seed=cfg["train"]["seed"],
    )
    return row


def _measurements(rec: RunRecord) -> dict:
    """Time per epoch, idle time, utilisation and test metrics of a finished run, over its measured
    epochs.

    Warm-up epochs are left out of every mean: a `bench` record's own warm-up, a training record's
    first `WARMUP_EPOCHS` (cuDNN autotuning, allocator growth, first worker start-up and file cache;
    as `mmhpc bench --warmup 1`). A record with no epoch beyond its warm-up has no time, idle time
    or utilisation: `na_reason` says why (never a figure taken over the warm-up). Utilisation: the
    GPUs' mean (their average when a run uses several), else the CPU's. Idle: the time per epoch the
    training step waited for data (`train_data_wait_s`; estimated, thesis Alg. 7, for prefetch
    factor 0).
    """
    out, measured, util = _times(rec)
    waits = [e.time.train_data_wait_s for e in measured if e.time.train_data_wait_s is not None]
    out["idle_s"] = float(np.mean(waits)) if waits else None
    gaps = [e.time.train_gpu_idle_s for e in measured if e.time.train_gpu_idle_s is not None]
    out["gpu_idle_s"] = float(np.mean(gaps)) if gaps else None  # the GPU's own idle between steps
    out["n_epochs"] = len(measured) or None
    out.update(_utilisation(rec, util))
    summary = rec.summary
    for key, value in summary.test.items():
        if key.startswith(("acc/", "bias/")) or key == "ece/fused":
            out[key] = value
    for m, n in summary.optimised_epochs.items():
        out[f"epochs/{m}"] = n
    if summary.ibf is not None:
        out["ibf"] = summary.ibf
    return out


def _times(rec: RunRecord) -> tuple[dict, list, dict]:
    """The warm-up count and the times of a finished run, its measured epochs and their mean
    utilisations (a bench record's own means)."""
    out: dict = {}
    bench = rec.bench
    epochs = [e for e in rec.epochs if e.time is not None]
    warmup = bench.get("warmup_epochs", 0) if bench else WARMUP_EPOCHS
    measured = epochs[warmup:]
    out["warmup_epochs"] = len(epochs) - len(measured)
    if not bench and not measured:
        out["na_reason"] = (
            f"{len(epochs)} epoch(s), all warm-up: no measured epoch for time or utilisation "
            f"(needs at least {warmup + 1})"
        )
    if bench:
        out["time_epoch_s"] = bench.get("epoch_s_mean")
        out["time_train_s"] = _sum_or_none(
            bench.get("train_loader_init_s_mean"), bench.get("train_s_mean")
        )
        util = {k[len("util/"):]: v for k, v in bench.items()
                if k.startswith("util/") and v is not None}
    else:
        out["time_epoch_s"] = (
            float(np.mean([e.time.epoch_s for e in measured])) if measured else None
        )
        out["time_train_s"] = (
            float(np.mean([e.time.train_loader_init_s + e.time.train_s for e in measured]))
            if measured
            else None
        )
        util = _mean_util([e.util for e in measured])
    return out, measured, util


def _utilisation(rec: RunRecord, util: dict) -> dict:
    """util_pct and util_kind: the GPUs' mean, else (no GPU sampled on a GPU run) none and the
    sampler's reason, else the CPU's."""
    gpu = [v for k, v in util.items() if re.fullmatch(r"gpu\d+_util_pct_mean", k)]
    on_gpu = not str(rec.env.device or "").startswith("cpu")
    notes = (rec.system or {}).get("notes") or []
    unavailable = gpu_util_unavailable(notes) if on_gpu else None
    if gpu:
        return {"util_pct": float(np.mean(gpu)), "util_kind": "GPU"}
    if unavailable or any(re.match(r"gpu\d+_", k) for k in util):  # never the CPU's in its place
        # the sampler's own words (ROCm without NVML, a MIG slice)
        return {"util_pct": None, "util_kind": "GPU", "util_pct_na": unavailable}
    if "cpu_proc_pct_mean" in util:
        return {"util_pct": util["cpu_proc_pct_mean"], "util_kind": "CPU"}
    return {}


def _mean_util(per_epoch: list[dict]) -> dict:
    """Mean over epochs of each `*_mean` utilisation; an epoch shorter than the sampler interval has
    no sample (its values are None) and counts for nothing."""
    values: dict[str, list[float]] = {}
    for u in per_epoch:
        for k, v in u.items():
            if k.endswith("_mean") and v is not None:
                values.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in values.items()}


def _sum_or_none(*values):
    return None if any(v is None for v in values) else float(sum(values))


def device_label(env) -> str:
    """A short device name for tables: the GPU model ("A100", "A40", "H100"), else "CPU"."""
    gpu = (env.gpu or {}).get("name")
    if gpu:
        m = re.search(r"\b([A-Z]{1,2}\d{1,4}[A-Za-z]?)\b", gpu.replace("NVIDIA", ""))
        return m.group(1) if m else gpu.replace("NVIDIA ", "").strip()
    device = str(env.device or "")
    if device.startswith("cpu"):
        return "CPU"
    return "?" if not device else device


# ---- helpers
# ---------------------------------------------------------------------------------------------

def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _merge(base[k], v)
            if isinstance(v, dict) and isinstance(base.get(k), dict) and base[k]
            else v
        )
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        # dict-valued knobs (strategy.params, blp_devices) stay one column: they are one setting
        if isinstance(v, dict) and prefix == "":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _hashable(v):
    """Lists and dicts become stable strings, so that every knob can be grouped on."""
    if isinstance(v, list):
        return "+".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True) if v else ""
    return v


def _tidy(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in (
        "time_epoch_s",
        "time_train_s",
        "util_pct",
        "util_kind",
        "host",
        "cluster",
        "ibf",
        "n_epochs",
        "idle_s",
        "gpu_idle_s",
        "warmup_epochs",
        "na_reason",
        "util_pct_na",
    ):
        if col not in df:
            text = ("util_kind", "host", "cluster", "na_reason", "util_pct_na")
            df[col] = np.nan if col not in text else None
    df["reason"] = df["reason"].fillna("")
    df["state"] = pd.Categorical(df["state"], categories=STATE_ORDER)
    return df.sort_values(["sweep", "run"], kind="stable").reset_index(drop=True)


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The flattened config knobs of the frame (`data.dataset`, `system.precision`, ...)."""
    return [c for c in runs.columns if "." in c and c.split(".")[0] in
            ("data", "loader", "model", "strategy", "train", "system", "output")]


def varying(runs: pd.DataFrame) -> list[str]:
    """Knobs that take more than one value across the runs: what the sweep compares."""
    # runs of two sweeps are two experiments even with equal configs (e.g. the FP32 single-device
    # run of the precision and of the parallelism sweep): the sweep is an axis when a report spans
    # several
    cols = [c for c in config_columns(runs) if not c.startswith(NOT_AXES)] + ["device", "sweep"]
    return [c for c in cols if runs[c].astype(str).nunique() > 1]
