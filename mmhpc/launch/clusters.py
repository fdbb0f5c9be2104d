"""Cluster profiles: where and how runs are submitted, as data files validated once on load.

The built-in profiles live in `jobs/clusters/*.yaml` (alvis, local, none). A user file
(`$MMHPC_CLUSTERS`, else `~/.config/mmhpc/clusters.yaml`) maps more names to profiles; a profile
may `extends:` another and override some of its keys. String values may read the environment as
`${VAR}` or `${VAR:-default}` (nested defaults allowed), so accounts and paths stay out of the files.

A profile also knows what its devices can do, so that a run it cannot execute is refused before
anything is submitted (`resolve_resources`). The rules are the trainer's own, asked of the same objects
with the profile's GPU type instead of a live GPU: `Precision.problem` (BF16/TF32 need compute
capability 8.0+) and the `Parallelism` classes (GPUs per run, tasks per node, DataParallel's two GPUs).
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

BUILTIN_DIR = Path(__file__).resolve().parents[2] / "jobs" / "clusters"
SCHEDULERS = ("slurm", "none")
SIZES = ("tiny", "full")
ACCOUNT_PLACEHOLDER = "NAISSxxxx-xx-xx"  # used by --dry-run when no account is set


class ClusterError(ValueError):
    """A profile or a resource request is invalid; the message names the field and the valid choices."""


@dataclass(frozen=True)
class GpuType:
    name: str
    capability: float  # CUDA compute capability: TF32 and BF16 need 8.0+
    per_node: int       # GPUs of this type on one node: the most a single-node request can ask for


@dataclass
class ClusterProfile:
    name: str
    scheduler: str
    description: str = ""
    partition: str | None = None
    account: str | None = None
    account_required: bool = False
    project: str | None = None          # storage project for `{project}` in results_root (default: account)
    size: str = "full"                 # default sweep size on this cluster
    time_min: int = 60                 # default time limit of one run
    max_time_min: int = 60
    max_nodes: int = 1
    gpus: dict[str, GpuType] = field(default_factory=dict)  # empty: a CPU cluster
    default_gpu: str | None = None
    cpu_tasks: int = 2                 # DDP processes per run on a CPU cluster (gloo)
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 16        # concurrency cap of one job array
    signal_delay_s: int = 120          # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = 3              # requeues after a timeout (preemptions do not count)
    results_root: str | None = None
    stage_data: bool = False           # copy prepared datasets to the node-local $TMPDIR first
    python: str | None = None          # interpreter on the nodes (default: the submitting one)
    modules: list[str] = field(default_factory=list)
    venv: str | None = None
    apptainer: str | None = None       # image: runs go through `apptainer exec --nv IMAGE python`
    setup: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides of every run here
    source: str = ""

    @property
    def is_gpu(self) -> bool:
        return bool(self.gpus)

    def with_account(self, account: str | None) -> "ClusterProfile":
        if account:
            self.account = account
        return self

    def check_account(self, dry_run: bool = False) -> None:
        if self.account_required and not self.account:
            if dry_run:
                self.account = ACCOUNT_PLACEHOLDER
                return
            raise ClusterError(f"account: cluster {self.name} needs a SLURM account (sbatch -A); set "
                               f"MMHPC_ACCOUNT=NAISSxxxx-xx-xx or pass --account")

    def results_dir(self) -> Path:
        """The results root with `{project}` filled in (the storage project defaults to the account)."""
        if not self.results_root:
            raise ClusterError(f"results_root: cluster {self.name} has none; set MMHPC_RESULTS or pass --results")
        project = self.project or (self.account or ACCOUNT_PLACEHOLDER).lower()
        return Path(self.results_root.replace("{project}", project)).expanduser().absolute()

    def interpreter(self) -> str:
        python = self.python or sys.executable
        if self.apptainer:  # the image carries the environment; --nv exposes the GPUs and driver
            return f"apptainer exec --nv {self.apptainer} {python if self.python else 'python'}"
        return python

    def setup_lines(self) -> list[str]:
        lines = []
        if self.modules and not self.apptainer:
            lines += ["module purge"] + [f"module load {m}" for m in self.modules]
        if self.venv and not self.apptainer:
            lines.append(f"source {self.venv}/bin/activate")
        return lines + list(self.setup)


# ---- loading -----------------------------------------------------------------------------------------

def user_clusters_file() -> Path:
    return Path(os.environ.get("MMHPC_CLUSTERS") or Path.home() / ".config" / "mmhpc" / "clusters.yaml")


def _raw_profiles() -> dict[str, tuple[dict, str]]:
    """name -> (raw mapping, source file) of every profile: built-ins first, then the user file."""
    raws: dict[str, tuple[dict, str]] = {}
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ClusterError(f"{path}: expected a mapping of profile keys")
        raws[data.get("name", path.stem)] = (data, str(path))
    user = user_clusters_file()
    if user.exists():
        data = yaml.safe_load(user.read_text()) or {}
        if not isinstance(data, dict):
            raise ClusterError(f"{user}: expected a mapping {{cluster name: profile}}")
        for name, raw in data.items():
            if not isinstance(raw, dict):
                raise ClusterError(f"{user}: {name}: expected a mapping of profile keys")
            raws[str(name)] = ({**raw, "name": str(name)}, str(user))
    return raws


def cluster_names() -> list[str]:
    return sorted(_raw_profiles())


def load_profile(name: str, account: str | None = None) -> ClusterProfile:
    raws = _raw_profiles()
    if name not in raws:
        raise ClusterError(f"cluster: invalid value {name!r}; valid choices: {', '.join(sorted(raws))}")
    raw, source = _resolve_extends(name, raws, [])
    profile = profile_from_dict(raw, source)
    return profile.with_account(account)


def _resolve_extends(name: str, raws: dict, seen: list[str]) -> tuple[dict, str]:
    raw, source = raws[name]
    parent = raw.get("extends")
    if parent is None:
        return raw, source
    if parent not in raws or parent in seen + [name]:
        raise ClusterError(f"{source}: {name}.extends: invalid value {parent!r}; valid choices: "
                           f"{', '.join(sorted(set(raws) - {name}))}")
    base, _ = _resolve_extends(parent, raws, seen + [name])
    merged = {**base, **{k: v for k, v in raw.items() if k != "extends"}}
    return merged, source


def profile_from_dict(raw: dict, source: str = "<dict>") -> ClusterProfile:
    """Validate a raw profile mapping: unknown keys, types and choices are errors naming the field."""
    where = f"{source}: {raw.get('name', '?')}"
    known = {f.name: f for f in fields(ClusterProfile)} | {"extends": None}
    unknown = sorted(set(raw) - set(known) - {"source"})
    if unknown:
        valid = ", ".join(k for k in known if k != "source")
        raise ClusterError(f"{where}.{unknown[0]}: unknown key; valid keys: {valid}")
    # setup lines are shell run on the node: their $VARs belong to the job, not to this machine
    values = {k: v if k == "setup" else _expand_env(v) for k, v in raw.items() if k not in ("extends", "source")}
    if not values.get("name"):
        raise ClusterError(f"{where}.name: required")
    gpus = {}
    for gname, spec in (values.pop("gpus", None) or {}).items():
        if not isinstance(spec, dict) or set(spec) - {"capability", "per_node"} or "capability" not in spec:
            raise ClusterError(f"{where}.gpus.{gname}: expected {{capability: 8.0, per_node: 4}}")
        gpus[gname] = GpuType(gname, float(spec["capability"]), int(spec.get("per_node", 1)))
    profile = ClusterProfile(**values, gpus=gpus, source=source)
    _check_choice(where, "scheduler", profile.scheduler, SCHEDULERS)
    _check_choice(where, "size", profile.size, SIZES)
    if profile.gpus and profile.default_gpu not in profile.gpus:
        _check_choice(where, "default_gpu", profile.default_gpu, sorted(profile.gpus))
    if profile.scheduler == "slurm" and not profile.partition:
        raise ClusterError(f"{where}.partition: a slurm cluster needs a partition")
    for key in ("time_min", "max_time_min", "max_nodes", "cpu_tasks", "array_parallelism"):
        if not isinstance(getattr(profile, key), int) or getattr(profile, key) < 1:
            raise ClusterError(f"{where}.{key}: expected a positive integer, got {getattr(profile, key)!r}")
    if profile.time_min > profile.max_time_min:
        raise ClusterError(f"{where}.time_min: {profile.time_min} exceeds max_time_min {profile.max_time_min}")
    for key in ("modules", "setup"):
        if not isinstance(getattr(profile, key), list):
            raise ClusterError(f"{where}.{key}: expected a list of strings")
    if not isinstance(profile.overrides, dict):
        raise ClusterError(f"{where}.overrides: expected a mapping of RunConfig overrides")
    return profile


def _check_choice(where: str, key: str, value, choices) -> None:
    if value not in choices:
        raise ClusterError(f"{where}.{key}: invalid value {value!r}; valid choices: {', '.join(map(str, choices))}")


_VAR = re.compile(r"\$\{(\w+)(:-)?")


def _expand_env(value: Any) -> Any:
    """`${VAR}` and `${VAR:-default}` in strings (recursively in lists/dicts); an unset `${VAR}` gives
    None for the whole value, so that a missing account reads as 'no account', not as an empty string."""
    if isinstance(value, list):
        return [v for v in (_expand_env(v) for v in value) if v is not None]
    if isinstance(value, dict):
        return {k: _expand_env(v) for k, v in value.items()}
    if not isinstance(value, str) or "${" not in value:
        return value
    out, missing, _ = _expand_from(value, 0, closing=False)
    return None if missing or out == "" else out


def _expand_from(text: str, pos: int, closing: bool) -> tuple[str, bool, int]:
    out, missing, depth = [], False, 0  # depth: literal braces inside a default, e.g. {project}
    while pos < len(text):
        if closing and text[pos] == "}" and depth == 0:
            return "".join(out), missing, pos + 1
        m = _VAR.match(text, pos)
        if not m:
            depth += {"{": 1, "}": -1}.get(text[pos], 0) if closing else 0
            out.append(text[pos])
            pos += 1
            continue
        name, has_default = m.group(1), bool(m.group(2))
        pos = m.end()
        if has_default:
            default, default_missing, pos = _expand_from(text, pos, closing=True)
        else:
            if pos >= len(text) or text[pos] != "}":
                raise ClusterError(f"{text!r}: unterminated ${{{name}")
            default, default_missing, pos = None, False, pos + 1
        value = os.environ.get(name)
        if value:
            out.append(value)
        elif default is not None:
            out.append(default)
            missing |= default_missing
        else:
            missing = True
    return "".join(out), missing, pos


# ---- what one run needs, and whether this cluster can give it ------------------------------------------

RESOURCE_KEYS = ("gpu", "gpus", "nodes", "time_min", "mem_gb", "cpus_per_task")


@dataclass(frozen=True)
class Resources:
    """The allocation of one run; runs with equal resources share one job array."""
    gpu: str | None          # GPU type, None on a CPU cluster
    gpus_per_node: int       # 0 on a CPU cluster
    nodes: int
    tasks_per_node: int      # DDP: one task (process) per GPU; otherwise 1
    time_min: int
    cpus_per_task: int | None = None
    mem_gb: float | None = None

    def label(self) -> str:
        dev = f"{self.gpu}x{self.gpus_per_node}" if self.gpu else "cpu"
        nodes = f"-n{self.nodes}" if self.nodes > 1 else ""
        return f"{dev}-t{self.tasks_per_node}{nodes}-{self.time_min}m"

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def resolve_resources(profile: ClusterProfile, cfg, request: dict) -> tuple[Resources | None, list[str], str | None]:
    """Derive a run's allocation from its parallelism and check it against the cluster.

    Returns (resources, errors, not_applicable): an error is a mistake in the sweep (e.g. BF16 asked of a
    V100); `not_applicable` means the run cannot exist on this kind of machine at all (DP or TF32 on a CPU
    cluster) and is recorded as such instead of failing the whole sweep.
    """
    errors: list[str] = []
    bad = [k for k in request if k not in RESOURCE_KEYS]
    if bad:
        return None, [f"resources.{bad[0]}: unknown key; valid keys: {', '.join(RESOURCE_KEYS)}"], None
    from mmhpc.system.parallel import PARALLELISMS
    from mmhpc.system.precision import Precision

    par, precision = cfg.system.parallelism, cfg.system.precision
    rules = PARALLELISMS[par]
    nodes = int(request.get("nodes") or 1)
    time_min = int(request.get("time_min") or profile.time_min)
    if time_min > profile.max_time_min:
        errors.append(f"resources.time_min: {time_min} exceeds the {profile.name} limit of {profile.max_time_min} "
                      f"minutes ({profile.max_time_min / 1440:g} days)")
    if nodes > 1 and par != "ddp":
        errors.append(f"resources.nodes: {nodes} nodes need system.parallelism=ddp (got {par}); "
                      "single, dp and blp run in one process on one node")
    if nodes > profile.max_nodes:
        errors.append(f"resources.nodes: {nodes} exceeds the {profile.name} limit of {profile.max_nodes}")
    multi = request.get("gpus")
    if profile.is_gpu:
        gpu = request.get("gpu") or profile.default_gpu
        if gpu not in profile.gpus:
            return None, errors + [f"resources.gpu: invalid value {gpu!r} on {profile.name}; valid choices: "
                                   f"{', '.join(profile.gpus)}"], None
        spec = profile.gpus[gpu]
        wrong = Precision(precision, "cuda").problem(spec.capability, gpu)
        if wrong:
            able = [g for g, s in profile.gpus.items() if not Precision(precision, "cuda").problem(s.capability)]
            errors.append(wrong + (f" (or resources.gpu: {', '.join(able)})" if able else ""))
        count = rules.devices_needed(cfg, multi)
        if count > spec.per_node:
            errors.append(f"resources.gpus: {par} needs {count} GPUs per node, {gpu} nodes have {spec.per_node}"
                          + ("; use resources.nodes for multi-node ddp" if par == "ddp" else ""))
        res = Resources(gpu, count, nodes, rules.tasks_per_node(count), time_min,
                        request.get("cpus_per_task") or profile.cpus_per_task, request.get("mem_gb") or profile.mem_gb)
        wrong = rules.problem(cfg, "cuda", count, res.nodes * res.tasks_per_node)
        if wrong:
            errors.append(wrong)
    else:
        # a run that cannot exist on a CPU cluster (DP, TF32) is recorded as not applicable, not an error
        absent = Precision(precision, "cpu").problem() or (rules.problem(cfg, "cpu", 0) if rules.gpu_only else None)
        if absent:
            return None, errors, f"{absent} (cluster {profile.name} has no GPU)"
        count = rules.devices_needed(cfg, multi or profile.cpu_tasks)
        res = Resources(None, 0, nodes, rules.tasks_per_node(count), time_min,
                        request.get("cpus_per_task") or profile.cpus_per_task, request.get("mem_gb") or profile.mem_gb)
        wrong = rules.problem(cfg, "cpu", 0, res.nodes * res.tasks_per_node)
        if wrong:
            errors.append(wrong)
    return res, errors, None
