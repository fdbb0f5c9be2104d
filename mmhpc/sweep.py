"""YAML sweeps -> validated run configs (pure: no files written, nothing submitted).

A sweep file (format in `sweeps/README.md`):

    name: batch base: {data.dataset: cremad, train.epochs: 100}        # RunConfig overrides of
    every run grid: {system.parallelism: [single, ddp, blp]}         # cartesian axes zip:
    {train.batch_size: [32, 64], train.lr: [...]}     # parallel lists, crossed with the grid
    blocks: [{name: ..., base: {...}, grid: {...}, zip: {...}}]  # optional union of sub-sweeps
    seeds: [0, 1, 2]                                       # train.seed, innermost axis tiny: {base:
    {...}, seeds: [0], grid: ...}             # what changes for a tiny (CPU) run of it resources:
    {default: {...}, alvis: {gpu: A100, time_min: 120}}

Axis keys are RunConfig keys (`system.precision`, or a unique leaf such as `precision`) or
`resources.*` (gpu, gpus, nodes, time_min, ...) for allocations that vary per run. Expansion gives
every run a stable index (its array task number) and a name made of its axis values (its record file
name). Every problem is found in one pass and reported together: the file's shape (keys, types,
counts, axis keys, zip lengths), then each run of what can be expanded, as a RunConfig and against
the cluster (its resources are checked even when its config has a problem elsewhere). A problem
shared by several runs (a typo in `base`) is one line naming how many runs it affects; every line
names its file and run.
"""
from __future__ import annotations

import copy
import difflib
import functools
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, ValidationError

from mmhpc.bulk import gc_paused
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
TINY_DEFAULTS = {
    "data.source": "synthetic",
    "data.root": None,
    "data.preset": "tiny",
    "train.epochs": 1,
    "train.max_batches": 2,
}
# Every sweep run checkpoints each epoch, so a requeued or resumed run continues where it stopped.
SWEEP_DEFAULTS = {"output.checkpoint": True}
SWEEP_OWNED = ("output.name", "output.runs_dir", "output.overwrite")


class SweepError(ConfigError):
    """One or more problems with a sweep; `errors` lists every one, each naming its file or run and
    field."""

    def __init__(self, errors: list[str], header: str = "sweep"):
        self.errors = list(errors)
        super().__init__(*self.errors)
        self.args = (
            f"{header}: {len(errors)} error(s), nothing submitted:\n  " + "\n  ".join(errors),
        )

    def __str__(self) -> str:
        return self.args[0]


# ---- the file's shape: pydantic v2 models, one problem line per error
# -----------------------------------

Axes = dict[str, Annotated[list[Any], Field(min_length=1)]]


def _dir_name(value: str) -> str:
    if not re.match(NAME_PATTERN, value) or value in (".", ".."):
        raise ValueError(problem("", f"{value!r} cannot name a directory", [NAME_VALID]))
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
    raw: dict[str, Any]  # the RunConfig as plain data, before validation
    request: dict[str, Any] = field(
        default_factory=dict
    )  # the sweep's resources for it (gpu, gpus, ...)
    config: RunConfig | None = None
    resources: Resources | None = None
    not_applicable: str | None = None
    problems: list[str] = field(
        default_factory=list
    )  # `field: problem` lines, without the run's label

    @property
    def label(self) -> str:
        return f"run {self.index} ({self.name})"

    @property
    def errors(self) -> list[str]:
        return [f"{self.label}: {p}" for p in self.problems]


@dataclass
class SweepPlan:
    name: str
    spec: dict
    cluster: str
    size: str
    runs: list[PlannedRun]
    file_problems: list[str] = field(default_factory=list)  # the file's shape, each naming the file
    file: str | None = None

    @property
    def errors(self) -> list[str]:
        """The file's problems, then each run problem once: on one line for all the runs it
        affects."""
        groups: dict[str, list[PlannedRun]] = {}
        for run in self.runs:
            for p in dict.fromkeys(run.problems):
                groups.setdefault(p, []).append(run)
        runs = [
            problem(_runs_label(rs, len(self.runs)), p, file=self.file) for p, rs in groups.items()
        ]
        return self.file_problems + runs

    def check(self) -> SweepPlan:
        if self.errors:
            raise SweepError(self.errors, f"sweep {self.name} on {self.cluster}")
        return self

    def runnable(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.not_applicable is None]


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file: a syntax error or a malformed key is a SweepError naming the
    file."""
    spec = read_sweep(path)
    check_spec(spec, str(path))
    return spec


@gc_paused()  # 10,000 runs: mmhpc.bulk
def plan_sweep(
    path: str | Path,
    profile: ClusterProfile,
    size: str | None = None,
    runs_dir: str | Path = "runs",
    overrides: list[str] | dict | None = None,
) -> SweepPlan:
    """Read a sweep file and expand it for one cluster, collecting every problem of the file and of
    its runs in one pass (`SweepPlan.check` raises them all)."""
    return expand(read_sweep(path), profile, size, runs_dir, overrides, file=str(path))


def read_sweep(path: str | Path) -> dict:
    """A sweep file's mapping (its shape unchecked); SweepError when it cannot be read or is no
    mapping."""
    path = Path(path)
    if not path.is_file():
        what = "a directory, not a sweep file" if path.is_dir() else "no such sweep file"
        raise SweepError([problem("", what, file=str(path))], "sweep")
    try:
        spec = read_yaml(path)
    except ConfigError as e:
        raise SweepError(e.problems, "sweep") from None
    if not isinstance(spec, dict):
        raise SweepError(
            [problem("", f"expected a mapping, got {type(spec).__name__}", SWEEP_KEYS, str(path))],
            "sweep",
        )
    spec.setdefault("name", path.stem)
    return spec


def check_spec(spec: dict, file: str | None = None) -> None:
    """Raise every problem of a sweep's structure at once (`spec_problems`)."""
    errors = spec_problems(spec, file)
    if errors:
        raise SweepError(errors, f"sweep {spec.get('name', 'sweep')}")


def spec_problems(spec: dict, file: str | None = None) -> list[str]:
    """Every problem of a sweep's structure: keys, types, counts, then axis keys and zip lengths
    wherever the axes are mappings of lists."""
    errors: list[str] = []
    try:
        SweepSpec(**spec)
    except ValidationError as e:
        errors += validation_problems(e, file=file, model=SweepSpec)
    tiny = spec.get("tiny") if isinstance(spec.get("tiny"), dict) else {}
    parts = [("", spec), ("tiny.", tiny)]
    for pre, src in (("", spec), ("tiny.", tiny)):
        blocks = src.get("blocks")
        parts += [
            (f"{pre}blocks[{i}].", b)
            for i, b in enumerate(blocks if isinstance(blocks, list) else [])
            if isinstance(b, dict)
        ]
    for where, block in parts:
        for key in ("grid", "zip"):
            axes = block.get(key) if isinstance(block.get(key), dict) else {}
            for k in axes:
                try:
                    _axis_key(k)
                except ConfigError as e:
                    errors.append(problem("", f"{where}{key}.{e}", file=file))
            lengths = {k: len(v) for k, v in axes.items() if isinstance(v, list)}
            if key == "zip" and len(set(lengths.values())) > 1:
                errors.append(
                    problem(
                        f"{where}zip",
                        "lists must have equal lengths, got "
                        + ", ".join(f"{k}={n}" for k, n in lengths.items()),
                        file=file,
                    )
                )
    return errors


# the depth at which a malformed part of a sweep is left out of the expansion (its problem is
# reported): one axis of grid/zip, one field of a resource request, one block, one key of `tiny`;
# else the whole key
_DROP_DEPTH = {"grid": 2, "zip": 2, "resources": 3, "blocks": 2, "tiny": 2}


def _expandable(spec: dict) -> dict:
    """The sweep without its malformed parts (see `_DROP_DEPTH`), so the rest still expands and its
    runs are checked in the same pass."""
    try:
        SweepSpec(**spec)
        return spec
    except ValidationError as e:
        locs = [tuple(err["loc"]) for err in e.errors()]
    out = copy.deepcopy(spec)
    for loc in locs:
        loc = loc[:_DROP_DEPTH.get(str(loc[0]), 1)] if loc else loc
        node = out
        for part in loc[:-1]:
            node = node[part] if isinstance(node, (dict, list)) and part in _keys(node) else None
        if isinstance(node, dict):
            node.pop(loc[-1], None)
        elif isinstance(node, list) and loc[-1] in _keys(node):
            node[loc[-1]] = None  # a block: removed below, after every index was used
    for src in (out, out.get("tiny") if isinstance(out.get("tiny"), dict) else {}):
        if isinstance(src.get("blocks"), list):
            src["blocks"] = [b for b in src["blocks"] if b is not None] or None
    if not isinstance(out.get("name"), str):
        out["name"] = "sweep"
    return out


def _keys(node) -> range | dict:
    return node if isinstance(node, dict) else range(len(node))


def expand(
    spec: dict,
    profile: ClusterProfile,
    size: str | None = None,
    runs_dir: str | Path = "runs",
    overrides: list[str] | dict | None = None,
    file: str | None = None,
) -> SweepPlan:
    """Expand a sweep for one cluster into validated runs; every problem is collected, none raised
    (the file's shape on the plan, each run's on the run; `SweepPlan.check` raises them all). What
    is malformed is left out of the expansion, so the rest is still checked.

    `overrides` (`--set key=value`) apply to every run after the profile's and before the axes; a
    `{dataset}` or `{preset}` in `data.root` becomes the run's own, so one line points every dataset
    of a sweep at its prepared directory.
    """
    size = size or profile.size
    file_problems = spec_problems(spec, file)
    spec = _expandable(spec)
    name = str(spec.get("name", "sweep"))
    if size == "tiny":
        spec = _apply_tiny(spec)
    seeds = spec.get("seeds", [0])
    resources_req = {**(spec.get("resources") or {}).get("default", {}),
                     **(spec.get("resources") or {}).get(profile.name, {})}
    blocks = spec.get("blocks") or [{}]
    runs: list[PlannedRun] = []
    for block in blocks:
        groups = _axis_groups(spec, block, profile.default_sweep_gpus())
        for combo in itertools.product(*groups, [{"train.seed": s} for s in seeds]):
            axes = {k: v for part in combo for k, v in part.items()}
            raw, bad = _run_raw(spec, block, axes, size, profile, overrides)
            request = dict(resources_req)
            request.update(
                {k.split(".", 1)[1]: v for k, v in axes.items() if k.startswith("resources.")}
            )
            _fill_data_root(raw)
            run_name = _run_name(block.get("name"), axes, name)
            run = _planned_run(len(runs), run_name, axes, raw, request, bad, runs_dir)
            _validate(run, profile)
            runs.append(run)
    _check_duplicates(runs)
    return SweepPlan(name, spec, profile.ref, size, runs, file_problems, file)


def _run_raw(
    spec: dict, block: dict, axes: dict, size: str, profile: ClusterProfile, overrides
) -> tuple[dict, list[str]]:
    """A run's config before validation, layered: the sweep defaults, the sweep's and the block's
    base, the tiny defaults, the profile's overrides, `--set`, the axes. With the keys that name
    no field (`base: {lrr: 1}`): the run's first problems."""
    raw: dict = {}
    bad: list[str] = []
    for source in (
        SWEEP_DEFAULTS,
        spec.get("base"),
        block.get("base"),
        {**TINY_DEFAULTS, **((spec.get("tiny") or {}).get("base") or {})}
        if size == "tiny"
        else {},
        profile.overrides,
        overrides,
        {k: v for k, v in axes.items() if not k.startswith("resources.")},
    ):
        _apply(raw, source, bad)
    return raw, bad


def _planned_run(
    index: int, run_name: str, axes: dict, raw: dict, request: dict, bad: list[str], runs_dir
) -> PlannedRun:
    """The run with the output fields the sweep owns (a record per run, never overwritten)."""
    owned = [f"output.{k}" for k in (raw.get("output") or {}) if f"output.{k}" in SWEEP_OWNED]
    apply_overrides(
        raw,
        {
            "output.name": run_name,
            "output.runs_dir": str(runs_dir),
            "output.overwrite": False,
        },
    )
    run = PlannedRun(index, run_name, axes, raw, request, problems=bad)
    run.problems += [
        f"{k}: set by the sweep (one record per run, named after its axis values, never "
        "overwritten); remove it"
        for k in owned
    ]
    return run


# ---- axes
# ------------------------------------------------------------------------------------------

def _axis_key(key: str) -> str:
    if key.startswith("resources."):
        leaf = key.split(".", 1)[1]
        if leaf not in RESOURCE_KEYS:
            raise ConfigError(problem(key, "unknown key",
                                      ["resources." + k for k in RESOURCE_KEYS]))
        return key
    key = resolve_key(key)
    known = _config_keys()
    if key not in known and not any(
        key.startswith(k + ".") for k in known
    ):  # dict fields take sub-keys
        close = difflib.get_close_matches(key, known, n=3)
        raise ConfigError(
            f"{key}: unknown key"
            + (f"; did you mean {', '.join(close)}?" if close else "; see `mmhpc train --help`")
        )
    return key


@functools.lru_cache(maxsize=1)
def _config_keys() -> tuple[str, ...]:
    from mmhpc.config import describe_fields

    return tuple(name for name, *_ in describe_fields())


def _apply_tiny(spec: dict) -> dict:
    """The tiny variant: `tiny.grid/zip/blocks/seeds` replace the full ones (e.g. fewer workers on 2
    cores)."""
    tiny = spec.get("tiny") or {}
    return {**spec, **{k: v for k, v in tiny.items() if k != "base"}}


CLUSTER_GPUS = "cluster"  # `resources.gpu: [cluster]`: the profile's GPU types (its sweep_gpus)


def _axis_groups(spec: dict, block: dict, cluster_gpus: list[str] = ()) -> list[list[dict]]:
    """Each grid axis is a group of one-key choices; each zip table one group of parallel choices.
    An axis with an unknown key is left out (`spec_problems` reports it); unequal zip lists stop at
    the shortest. A `resources.gpu` grid axis of `cluster` stands for `cluster_gpus` (none on a CPU
    cluster: no axis)."""
    groups = []
    for source in (spec, block):
        for k, values in (source.get("grid") or {}).items():
            key = _known_axis(k)
            if key == "resources.gpu" and CLUSTER_GPUS in values:
                values = list(dict.fromkeys(g for v in values for g in
                                            (cluster_gpus if v == CLUSTER_GPUS else [v])))
            if key and values:
                groups.append([{key: v} for v in values])
        zipped = {_known_axis(k): v for k, v in (source.get("zip") or {}).items() if _known_axis(k)}
        if zipped:
            groups.append([dict(zip(zipped, row)) for row in zip(*zipped.values())])
    return groups


def _apply(raw: dict, overrides: list[str] | dict | None, problems: list[str]) -> None:
    """Apply overrides one by one; a key that cannot be applied is a problem, and the others still
    apply."""
    items = overrides or {}
    for item in (items if isinstance(items, list) else [{k: v} for k, v in items.items()]):
        try:
            apply_overrides(raw, [item] if isinstance(item, str) else item)
        except ConfigError as e:
            problems += e.problems


def _known_axis(key: str) -> str | None:
    try:
        return _axis_key(key)
    except ConfigError:
        return None


# ---- names and validation
# ------------------------------------------------------------------------------

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
    """The run's config and its resources, in one pass: a config with a malformed field is checked
    against the cluster with that field at its default, unless the field is a system one (the
    resources follow from those); then only the request's own shape is checked."""
    try:
        usable = RunConfig.model_validate(run.raw)
    except ValidationError as e:
        run.problems += validation_problems(e, model=RunConfig)
        locs = [tuple(err["loc"]) for err in e.errors()]
        usable = None if any(loc[:1] == ("system",) for loc in locs) else _repaired(run.raw, locs)
    else:
        run.problems += usable.problems()
    if usable is None:
        try:
            ResourceRequest(**run.request)
        except ValidationError as e:
            run.problems += validation_problems(e, prefix=["resources"], model=ResourceRequest)
        return
    res, errors, na = resolve_resources(profile, usable, run.request)
    run.problems += errors
    if not run.problems:
        run.config, run.resources, run.not_applicable = usable, res, na


def _repaired(raw: dict, locs: list[tuple]) -> RunConfig | None:
    """The config with each malformed field (a section, when the section itself is) left at its
    default."""
    out = copy.deepcopy(raw)
    for loc in locs:
        section = out.get(loc[0]) if len(loc) > 1 else None
        if isinstance(section, dict):
            section.pop(loc[1], None)
        else:
            out.pop(loc[0], None)
    try:
        return RunConfig.model_validate(out)
    except ValidationError:
        return None


def _check_duplicates(runs: list[PlannedRun]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            run.problems.append(
                f"output.name: same name as run {seen[run.name]}; two runs would share one "
                "record (repeated axis values?)"
            )
        seen.setdefault(run.name, run.index)


def _runs_label(runs: list[PlannedRun], total: int) -> str:
    """`run 3 (name)` for a problem of one run, up to three such for a few, else how many and
    which."""
    if len(runs) <= 3:
        return ", ".join(r.label for r in runs)
    if len(runs) == total:
        return f"all {total} runs"
    spans: list[list[int]] = []
    for r in runs:
        if spans and r.index == spans[-1][1] + 1:
            spans[-1][1] = r.index
        else:
            spans.append([r.index, r.index])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:8]) + (
        ", ..." if len(spans) > 8 else ""
    )
    return f"{len(runs)} of {total} runs ({text})"


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
    invalid = sum(1 for r in plan.runs if r.problems)
    lines.append(
        f"{len(plan.runs)} runs on {plan.cluster} ({plan.size}), "
        + (
            f"{invalid} invalid (nothing to submit)"
            if invalid
            else f"{len(plan.runs) - len(na)} to submit"
        )
        + (f", {len(na)} not applicable:" if na else "")
    )
    lines += [f"  run {r.index} ({r.name}): {r.not_applicable}" for r in na]
    return "\n".join(lines)
