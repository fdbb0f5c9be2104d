"""YAML sweeps -> validated run configs (pure: no files written, nothing submitted).

A sweep file (format in `sweeps/README.md`):

    name: batch
    base: {data.dataset: cremad, train.epochs: 100}        # RunConfig overrides of every run
    grid: {system.parallelism: [single, ddp, blp]}         # cartesian axes
    zip: {train.batch_size: [32, 64], train.lr: [...]}     # parallel lists, crossed with the grid
    blocks: [{name: ..., base: {...}, grid: {...}, zip: {...}}]  # optional union of sub-sweeps
    seeds: [0, 1, 2]                                       # train.seed, innermost axis
    tiny: {base: {...}, seeds: [0], grid: ...}             # what changes for a tiny (CPU) run of it
    resources: {default: {...}, alvis: {gpu: A100, time_min: 120}}

Axis keys are RunConfig keys (`system.precision`, or a unique leaf such as `precision`) or `resources.*`
(gpu, gpus, nodes, time_min, ...) for allocations that vary per run. Expansion gives every run a
stable index (its array task number) and a name made of its axis values (its record file name).
Every run is checked, as a RunConfig and against the cluster, and all errors are reported together.
"""
from __future__ import annotations

import difflib
import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, ValidationError

from mmhpc.config import RunConfig, apply_overrides, read_yaml, resolve_key
from mmhpc.errors import ConfigError, problem, validation_problems
from mmhpc.launch.clusters import (
    RESOURCE_KEYS,
    ClusterProfile,
    ResourceRequest,
    Resources,
    _Strict,
    resolve_resources,
)

# A sweep's name becomes its results directory: one path component, never a path.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$"
NAME_VALID = "letters, digits and . _ + = - (one directory name, not a path)"
# A tiny run is a smoke run on the synthetic tiny preset: one epoch of two batches.
TINY_DEFAULTS = {"data.source": "synthetic", "data.root": None, "data.preset": "tiny", "train.epochs": 1,
                 "train.max_batches": 2}
# Every sweep run checkpoints each epoch, so a requeued or resumed run continues where it stopped.
SWEEP_DEFAULTS = {"output.checkpoint": True}
SWEEP_OWNED = ("output.name", "output.runs_dir", "output.overwrite")


class SweepError(ConfigError):
    """One or more problems with a sweep; `errors` lists every one, each naming its file or run and field."""

    def __init__(self, errors: list[str], header: str = "sweep"):
        self.errors = list(errors)
        super().__init__(*self.errors)
        self.args = (f"{header}: {len(errors)} error(s), nothing submitted:\n  " + "\n  ".join(errors),)

    def __str__(self) -> str:
        return self.args[0]


# ---- the file's shape: pydantic v2 models, one problem line per error -----------------------------------

Axes = dict[str, Annotated[list[Any], Field(min_length=1)]]


def _dir_name(value: str) -> str:
    if not re.match(NAME_PATTERN, value) or value in (".", ".."):
        raise ValueError(f"{value!r} cannot name a directory; valid: {NAME_VALID}")
    return value


SweepName = Annotated[str, AfterValidator(_dir_name)]


class Block(_Strict):
    name: SweepName | None = None
    base: dict[str, Any] = {}
    grid: Axes = {}
    zip: Axes = {}


class Tiny(_Strict):
    base: dict[str, Any] = {}
    grid: Axes | None = None
    zip: Axes | None = None
    blocks: list[Block] | None = None
    seeds: Annotated[list[StrictInt], Field(min_length=1)] | None = None


class SweepSpec(_Strict):
    name: SweepName
    description: str = ""
    base: dict[str, Any] = {}
    grid: Axes = {}
    zip: Axes = {}
    blocks: list[Block] | None = None
    seeds: Annotated[list[StrictInt], Field(min_length=1)] = [0]
    tiny: Tiny | None = None
    resources: dict[str, ResourceRequest] = {}  # default | <cluster name> -> request


SWEEP_KEYS = tuple(SweepSpec.model_fields)


@dataclass
class PlannedRun:
    index: int
    name: str
    axes: dict[str, Any]
    raw: dict[str, Any]                      # the RunConfig as plain data, before validation
    request: dict[str, Any] = field(default_factory=dict)  # the sweep's resources for it (gpu, gpus, ...)
    config: RunConfig | None = None
    resources: Resources | None = None
    not_applicable: str | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class SweepPlan:
    name: str
    spec: dict
    cluster: str
    size: str
    runs: list[PlannedRun]

    @property
    def errors(self) -> list[str]:
        return [e for r in self.runs for e in r.errors]

    def check(self) -> SweepPlan:
        if self.errors:
            raise SweepError(self.errors, f"sweep {self.name} on {self.cluster}")
        return self

    def runnable(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.not_applicable is None]


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file: a syntax error or a malformed key is a SweepError naming the file."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a sweep file" if path.is_dir() else "no such sweep file"
        raise SweepError([problem("", what, file=str(path))], "sweep")
    try:
        spec = read_yaml(path)
    except ConfigError as e:
        raise SweepError(e.problems, "sweep") from None
    if not isinstance(spec, dict):
        raise SweepError([problem("", f"expected a mapping, got {type(spec).__name__}", SWEEP_KEYS, str(path))],
                         "sweep")
    spec.setdefault("name", path.stem)
    check_spec(spec, str(path))
    return spec


def check_spec(spec: dict, file: str | None = None) -> None:
    """Every problem of a sweep's structure at once: keys, types, counts, axis keys, zip lengths."""
    name = str(spec.get("name", "sweep"))
    try:
        SweepSpec(**spec)
    except ValidationError as e:
        raise SweepError(validation_problems(e, file=file, model=SweepSpec), f"sweep {name}") from None
    errors: list[str] = []
    tiny = spec.get("tiny") or {}
    for where, block in [("", spec), ("tiny.", tiny)] + [(f"{pre}blocks[{i}].", b) for pre, src in
                                                          (("", spec), ("tiny.", tiny))
                                                          for i, b in enumerate(src.get("blocks") or [])]:
        for key in ("grid", "zip"):
            axes = block.get(key) or {}
            for k in axes:
                try:
                    _axis_key(k)
                except ConfigError as e:
                    errors.append(problem("", f"{where}{key}.{e}", file=file))
            lengths = {k: len(v) for k, v in axes.items()}
            if key == "zip" and len(set(lengths.values())) > 1:
                errors.append(problem(f"{where}zip", "lists must have equal lengths, got "
                                      + ", ".join(f"{k}={n}" for k, n in lengths.items()), file=file))
    if errors:
        raise SweepError(errors, f"sweep {name}")


def expand(spec: dict, profile: ClusterProfile, size: str | None = None, runs_dir: str | Path = "runs",
           overrides: list[str] | dict | None = None) -> SweepPlan:
    """Expand a sweep for one cluster into validated runs (errors collected on each run, not raised).

    `overrides` (`--set key=value`) apply to every run after the profile's and before the axes; a
    `{dataset}` or `{preset}` in `data.root` becomes the run's own, so one line points every dataset of a
    sweep at its prepared directory.
    """
    size = size or profile.size
    name = str(spec.get("name", "sweep"))
    check_spec(spec)
    if size == "tiny":
        spec = _apply_tiny(spec)
    seeds = spec.get("seeds", [0])
    resources_req = {**(spec.get("resources") or {}).get("default", {}),
                     **(spec.get("resources") or {}).get(profile.name, {})}
    blocks = spec.get("blocks") or [{}]
    runs: list[PlannedRun] = []
    for block in blocks:
        groups = _axis_groups(spec, block)
        for combo in itertools.product(*groups, [{"train.seed": s} for s in seeds]):
            axes = {k: v for part in combo for k, v in part.items()}
            raw: dict = {}
            apply_overrides(raw, SWEEP_DEFAULTS)
            apply_overrides(raw, spec.get("base") or {})
            apply_overrides(raw, block.get("base") or {})
            if size == "tiny":
                apply_overrides(raw, {**TINY_DEFAULTS, **((spec.get("tiny") or {}).get("base") or {})})
            apply_overrides(raw, profile.overrides)
            apply_overrides(raw, overrides or {})
            request = dict(resources_req)
            for k, v in axes.items():
                if k.startswith("resources."):
                    request[k.split(".", 1)[1]] = v
                else:
                    apply_overrides(raw, {k: v})
            _fill_data_root(raw)
            run_name = _run_name(block.get("name"), axes, name)
            owned = [f"output.{k}" for k in (raw.get("output") or {}) if f"output.{k}" in SWEEP_OWNED]
            apply_overrides(raw, {"output.name": run_name, "output.runs_dir": str(runs_dir), "output.overwrite": False})
            run = PlannedRun(len(runs), run_name, axes, raw, request)
            run.errors += [f"run {run.index} ({run_name}): {k}: set by the sweep (one record per run, named after "
                           "its axis values, never overwritten); remove it" for k in owned]
            _validate(run, profile)
            runs.append(run)
    _check_duplicates(runs)
    return SweepPlan(name, spec, profile.name, size, runs)


# ---- axes ------------------------------------------------------------------------------------------

def _axis_key(key: str) -> str:
    if key.startswith("resources."):
        leaf = key.split(".", 1)[1]
        if leaf not in RESOURCE_KEYS:
            raise ConfigError(f"{key}: unknown key; valid keys: {', '.join('resources.' + k for k in RESOURCE_KEYS)}")
        return key
    key = resolve_key(key)
    known = _config_keys()
    if key not in known and not any(key.startswith(k + ".") for k in known):  # dict fields take sub-keys
        close = difflib.get_close_matches(key, known, n=3)
        raise ConfigError(f"{key}: unknown key" + (f"; did you mean {', '.join(close)}?" if close else
                                                   "; see `mmhpc train --help`"))
    return key


@functools.lru_cache(maxsize=1)
def _config_keys() -> tuple[str, ...]:
    from mmhpc.config import describe_fields

    return tuple(name for name, *_ in describe_fields())


def _apply_tiny(spec: dict) -> dict:
    """The tiny variant: `tiny.grid/zip/blocks/seeds` replace the full ones (e.g. fewer workers on 2 cores)."""
    tiny = spec.get("tiny") or {}
    return {**spec, **{k: v for k, v in tiny.items() if k != "base"}}


def _axis_groups(spec: dict, block: dict) -> list[list[dict]]:
    """Each grid axis is a group of one-key choices; each zip table one group of parallel choices."""
    groups = []
    for source in (spec, block):
        for k, values in (source.get("grid") or {}).items():
            groups.append([{_axis_key(k): v} for v in values])
        zipped = source.get("zip") or {}
        if zipped:
            keys = [_axis_key(k) for k in zipped]
            groups.append([dict(zip(keys, row)) for row in zip(*zipped.values())])
    return groups


# ---- names and validation ------------------------------------------------------------------------------

def _fill_data_root(raw: dict) -> None:
    data = raw.get("data") or {}
    root = data.get("root")
    if isinstance(root, str) and "{" in root:
        data["root"] = root.replace("{dataset}", str(data.get("dataset", "cremad"))).replace(
            "{preset}", str(data.get("preset", "tiny")))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}{_fmt(v)}" for k, v in value.items())
    return str(value)


def _run_name(block: str | None, axes: dict, sweep: str) -> str:
    leaves = [k.rsplit(".", 1)[-1] for k in axes]
    parts = [block] if block else []
    for key, value in axes.items():
        if key == "train.seed":
            continue
        leaf = key.rsplit(".", 1)[-1]
        label = leaf if leaves.count(leaf) == 1 else key.replace(".", "-")
        parts.append(f"{label}-{_fmt(value)}")
    parts = parts or [sweep]  # no axes but seeds: the sweep's name
    parts.append(f"s{axes['train.seed']}")
    return re.sub(r"[^A-Za-z0-9._+=-]+", "-", "_".join(parts))


def _validate(run: PlannedRun, profile: ClusterProfile) -> None:
    label = f"run {run.index} ({run.name})"
    try:
        run.config = RunConfig.from_dict(run.raw)
    except ConfigError as e:
        run.errors.append(f"{label}: {e}")
        return
    res, errors, na = resolve_resources(profile, run.config, run.request)
    run.resources, run.not_applicable = res, na
    run.errors += [f"{label}: {e}" for e in errors]


def _check_duplicates(runs: list[PlannedRun]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            run.errors.append(f"run {run.index} ({run.name}): output.name: same name as run {seen[run.name]}; "
                              "two runs would share one record (repeated axis values?)")
        seen.setdefault(run.name, run.index)


def format_table(plan: SweepPlan) -> str:
    """One line per run: index, name, resources or status, and the axis values."""
    rows = [("#", "run", "resources", "axes")]
    for r in plan.runs:
        what = "n/a" if r.not_applicable else r.resources.label() if r.resources else "invalid"
        axes = " ".join(f"{k}={_fmt(v)}" for k, v in r.axes.items())
        rows.append((str(r.index), r.name, what, axes))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    na = [r for r in plan.runs if r.not_applicable]
    lines.append(f"{len(plan.runs)} runs on {plan.cluster} ({plan.size}), {len(plan.runs) - len(na)} to submit"
                 + (f", {len(na)} not applicable:" if na else ""))
    lines += [f"  run {r.index} ({r.name}): {r.not_applicable}" for r in na]
    return "\n".join(lines)
