"""Cluster profiles: where and how runs are submitted, as data files validated once on load.

The built-in profiles are package data, `mmhpc/launch/profiles/*.yaml` (alvis, local, none), so a
non-editable install finds them. A user file (`$MMHPC_CLUSTERS`, else
`~/.config/mmhpc/clusters.yaml`) maps more names to profiles; a profile may `extends:` another and
override some of its keys. String values may read the environment as `${VAR}` or `${VAR:-default}`,
so accounts and paths stay out of the files. Validation is pydantic v2 (`ClusterProfile`); every
problem is one `file: field: problem; valid: ...` line (mmhpc.errors).

A profile also knows what its devices can do, so that a run it cannot execute is refused before
anything is submitted (`resolve_resources`): multi-node DDP needs InfiniBand, and how many cores
come with a GPU on each node type becomes `--cpus-per-task`. The precision and parallelism rules are
the trainer's own, asked of the same objects with the profile's GPU type instead of a live GPU:
`Precision.problem` (BF16/TF32 need compute capability 8.0+) and the `Parallelism` classes (GPUs per
run, tasks per node, DataParallel's two GPUs, the DDP batch split).
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
)

from mmhpc.config import read_yaml
from mmhpc.errors import ConfigError, problem, validation_problems

PROFILE_DIR = Path(__file__).with_name("profiles")
Size = Literal["tiny", "full"]  # tiny: the synthetic smoke version of a sweep; full: as written
SIZES = get_args(Size)
ACCOUNT_PLACEHOLDER = "NAISSxxxx-xx-xx"  # used by --dry-run when no account is set
Arch = Literal["x86_64", "aarch64"]
Fabric = Literal["infiniband", "slingshot", "ethernet", "none"]
FAST_FABRICS = ("infiniband", "slingshot")  # multi-node NCCL over these; ethernet/none are refused


log = logging.getLogger(__name__)


class ClusterError(ConfigError):
    """A profile or a resource request is invalid: one `file: field: problem; valid: ...` per
    problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeType(_Strict):
    """One kind of node that carries a GPU type: its GPUs and CPU cores (`--cpus-per-task`
    follows)."""
    gpus: PositiveInt
    cores: PositiveInt
    mem_gb: PositiveFloat | None = (
        None  # the node's memory (informative; see GpuType.mem_gb_per_gpu)
    )


class GpuType(_Strict):
    """One GPU type as users name it (`resources.gpu`) and as SLURM is asked for it."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    capability: float = Field(gt=0)  # CUDA compute capability: TF32 and BF16 need 8.0+
    nodes: list[NodeType] = Field(
        min_length=1
    )  # the node types with this GPU (V100: 4- and 2-GPU nodes)
    gres: str | None = None  # SLURM's GPU type (gres) when not the name; "" = untyped request
    partition: str | None = None     # this type's partition (default: the profile's)
    constraint: str | None = None    # sbatch -C (Berzelius: thin | fat)
    memory_gb: PositiveFloat | None = None  # the GPU's own memory (informative)
    mem_gb_per_gpu: PositiveFloat | None = (
        None  # host memory per GPU: --mem = this x GPUs (default: site's)
    )
    fabric: Fabric | None = None     # the nodes' interconnect (default: the profile's)
    vendor: Literal["nvidia", "amd"] = "nvidia"

    @property
    def gres_type(self) -> str:
        return self.name if self.gres is None else self.gres

    @property
    def per_node(self) -> int:
        """The most GPUs of this type one node has: the most a single-node request can ask for."""
        return max(n.gpus for n in self.nodes)

    def cores_per_gpu(self, count: int) -> int:
        """Cores that come with each GPU of a `count`-GPU request: the smallest share among the node
        types that can hold it, so the request fits whichever node SLURM picks."""
        return min(n.cores // n.gpus for n in self.nodes if n.gpus >= count)


class ClusterProfile(_Strict):
    name: str
    scheduler: Literal["slurm", "none"]
    description: str = ""
    partition: str | None = (
        None  # none: the site's default (Berzelius); a GPU type may name its own
    )
    qos: str | None = None
    account: str | None = None          # the project's account as its users name it
    account_required: bool = False
    account_suffix: str = ""  # jobs run as account + suffix (Arrhenius GPU jobs: -gpu)
    project: str | None = None  # storage project for `{project}` in results_root (default: account)
    arch: Arch = "x86_64"  # the compute nodes' architecture (the login node may differ)
    fabric: Fabric = "infiniband"  # interconnect of the nodes (a GPU type may override it)
    fabric_setup: list[
        str
    ] = []  # shell lines multi-node NCCL needs on this fabric (plugin modules)
    exclusive: bool = False  # whole nodes (sbatch --exclusive)
    scratch: str = "TMPDIR"  # the node-local scratch variable that stage_data copies into
    gpu_request: Literal["gpus_per_node", "gpus"] = "gpus_per_node"  # how GPUs are asked for
    sweep_gpus: list[str] = []  # `resources.gpu: cluster` in a sweep: these (default: default_gpu)
    size: Size = "full"                 # default sweep size on this cluster
    time_min: PositiveInt = 60          # default time limit of one run
    max_time_min: PositiveInt = 60
    max_nodes: PositiveInt = 1
    gpus: dict[str, GpuType] = {}       # empty: a CPU cluster
    default_gpu: str | None = None
    cpu_tasks: PositiveInt = 2  # DDP processes per run on a CPU cluster (gloo)
    cpus_per_task: PositiveInt | None = (
        None  # default: the cores that come with the GPUs (see GpuType)
    )
    mem_gb: PositiveFloat | None = None  # --mem per node, in GB; default: the site's (per core/GPU)
    array_parallelism: PositiveInt = 16  # concurrency cap of a whole sweep (all its job arrays)
    max_array_size: PositiveInt = 1000  # SLURM's MaxArraySize: longer arrays are split
    signal_delay_s: int = Field(
        120, ge=0
    )  # USR2 this long before the time limit: checkpoint and requeue
    max_requeues: int = Field(3, ge=0)   # requeues after a timeout (preemptions do not count)
    results_root: str | None = None
    stage_data: bool = False            # copy prepared datasets to the node-local $TMPDIR first
    python: str | None = None           # interpreter on the nodes (default: see `interpreter`)
    modules: list[str] = []
    venv: str | None = None
    apptainer: str | None = None        # image: runs go through `apptainer exec --nv IMAGE python`
    setup: list[str] = []
    overrides: dict[str, Any] = {}      # RunConfig overrides of every run here
    _source: str = PrivateAttr("")  # the file it was read from
    _ref: str = PrivateAttr("")  # how to load it again: its name, or the path of its own file

    @property
    def source(self) -> str:
        return self._source

    @property
    def ref(self) -> str:
        """What a sweep directory records as its cluster: the name, or the profile file's absolute
        path (`--cluster path/to/profile.yaml`, e.g. one written by `mmhpc clusters discover`)."""
        return self._ref or self.name

    @property
    def is_gpu(self) -> bool:
        return bool(self.gpus)

    def with_account(self, account: str | None) -> ClusterProfile:
        if account:
            self.account = account
        return self

    @property
    def job_account(self) -> str | None:
        """`sbatch -A`: the account with the profile's suffix (given once, never twice)."""
        if (
            not self.account
            or not self.account_suffix
            or self.account.endswith(self.account_suffix)
        ):
            return self.account
        return self.account + self.account_suffix

    @property
    def placeholder(self) -> bool:
        """The account is the dry-run placeholder: nothing real may be submitted or written with
        it."""
        return self.account == ACCOUNT_PLACEHOLDER

    def check_account(self, dry_run: bool = False) -> None:
        """No account where one is needed: a dry run goes on with a placeholder and a loud warning;
        anything else is refused (exit 2), as is a placeholder account given by hand."""
        if self.account_required and not self.account:
            if dry_run:
                self.account = ACCOUNT_PLACEHOLDER
                log.warning(
                    "WARNING: cluster %s: no account set (MMHPC_ACCOUNT or --account): these "
                    "scripts use the "
                    "placeholder -A %s and the results path %s; a real submission is "
                    "refused until "
                    "an account is set",
                    self.name,
                    self.job_account,
                    self.results_root_shown(),
                )
                return
            raise ClusterError(
                f"account: cluster {self.name} needs a SLURM account (sbatch -A); set "
                "MMHPC_ACCOUNT or pass --account (your project's, e.g. from "
                "`projinfo` or "
                "`sacctmgr show assoc user=$USER`)"
            )
        if self.placeholder and not dry_run:
            raise ClusterError(
                f"account: {ACCOUNT_PLACEHOLDER} is the dry-run placeholder, not an account; "
                f"set MMHPC_ACCOUNT or pass --account with your project's"
            )

    def check_interpreter(self, dry_run: bool = False) -> None:
        """Nodes of another architecture than this machine cannot run this interpreter: without a
        venv, python or image for them, a dry run warns and anything else is refused."""
        from mmhpc.doctor import node_arch

        here = node_arch()
        if (
            self.scheduler != "slurm"
            or self.apptainer
            or self.python
            or self.venv
            or self.arch == here
        ):
            return
        why = (
            f"cluster {self.name}'s nodes are {self.arch}, this machine is {here}: the jobs need "
            "an "
            "interpreter built for them; set MMHPC_VENV (make install-cluster "
            f"CLUSTER={self.name}) or "
            "MMHPC_APPTAINER (env/apptainer/mmhpc.def)"
        )
        if not dry_run:
            raise ClusterError(f"venv: {why}")
        log.warning("WARNING: %s; these scripts name this machine's interpreter", why)

    def results_root_shown(self) -> str:
        try:
            return str(self.results_dir())
        except ClusterError:
            return "(none)"

    def results_dir(self) -> Path:
        """The results root with `{project}` filled in (the storage project defaults to the account
        in lower case, without the job account's suffix)."""
        if not self.results_root:
            raise ClusterError(
                problem(
                    "results_root",
                    f"cluster {self.name} has none; set MMHPC_RESULTS or pass --results",
                )
            )
        account = self.account or ACCOUNT_PLACEHOLDER
        if self.account_suffix and account.endswith(self.account_suffix):
            account = account[:-len(self.account_suffix)]
        project = self.project or account.lower()
        return Path(self.results_root.replace("{project}", project)).expanduser().absolute()

    def uses_placeholder_path(self) -> bool:
        """The results root is built from the placeholder account (no project known)."""
        return bool(self.results_root and "{project}" in self.results_root and not self.project
                    and (not self.account or self.placeholder))

    def gpu_partition(self, gpu: str | None) -> str | None:
        spec = self.gpus.get(gpu) if gpu else None
        return spec.partition if spec is not None and spec.partition else self.partition

    def gpu_fabric(self, gpu: str | None) -> str:
        spec = self.gpus.get(gpu) if gpu else None
        return spec.fabric if spec is not None and spec.fabric else self.fabric

    def default_sweep_gpus(self) -> list[str]:
        """What `resources.gpu: cluster` in a sweep stands for here."""
        if not self.gpus:
            return []
        return list(self.sweep_gpus) or [self.default_gpu]

    def interpreter(self) -> str:
        """What the jobs run: `python` if set; else the image's `python`; else `{venv}/bin/python`;
        only when none is set the interpreter that submits (the same machine, or a shared file
        system)."""
        if self.apptainer:  # the image carries the environment; --nv exposes the GPUs and driver
            return f"apptainer exec --nv {self.apptainer} {self.python or 'python'}"
        if self.python:
            return self.python
        if self.venv:
            return f"{self.venv.rstrip('/')}/bin/python"
        return sys.executable

    def setup_lines(self, nodes: int = 1) -> list[str]:
        lines = []
        if self.modules and not self.apptainer:
            lines += ["module purge"] + [f"module load {m}" for m in self.modules]
        if (
            self.venv and not self.apptainer
        ):  # for the tools the run starts (torchrun): PATH, VIRTUAL_ENV
            lines.append(f"source {self.venv.rstrip('/')}/bin/activate")
        return lines + list(self.setup) + (list(self.fabric_setup) if nodes > 1 else [])


# ---- loading
# -----------------------------------------------------------------------------------------

def user_clusters_file() -> Path:
    return Path(
        os.environ.get("MMHPC_CLUSTERS") or Path.home() / ".config" / "mmhpc" / "clusters.yaml"
    )


def _raw_profiles() -> dict[str, tuple[dict, str, str]]:
    """name -> (raw mapping, source file, field prefix) of every profile: built-ins first, then the
    user's."""
    raws: dict[str, tuple[dict, str, str]] = {}
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        data = read_yaml(path, ClusterError) or {}
        if not isinstance(data, dict):
            raise ClusterError(problem("", "expected a mapping of profile keys", file=str(path)))
        raws[str(data.get("name", path.stem))] = (data, str(path), "")
    user = user_clusters_file()
    if user.exists():
        data = read_yaml(user, ClusterError) or {}
        if not isinstance(data, dict):
            raise ClusterError(
                problem("", "expected a mapping {cluster name: profile}", file=str(user))
            )
        bad = [problem(str(name), f"expected a mapping of profile keys, got {type(raw).__name__}",
                       sorted(ClusterProfile.model_fields), str(user))
               for name, raw in data.items() if not isinstance(raw, dict)]
        if bad:
            raise ClusterError(*bad)
        for name, raw in data.items():
            raws[str(name)] = ({**raw, "name": str(name)}, str(user), str(name))
    return raws


def cluster_names() -> list[str]:
    return sorted(_raw_profiles())


def is_profile_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) or os.sep in name


def load_profile(name: str, account: str | None = None) -> ClusterProfile:
    """A profile by name (built-in or the user's file), or from a profile file of its own (a
    path)."""
    raws = _raw_profiles()
    if name not in raws and is_profile_file(name):
        path = Path(name).expanduser().absolute()
        if not path.is_file():
            raise ClusterError(problem("cluster", f"no profile file {path}", sorted(raws)))
        data = read_yaml(path, ClusterError) or {}
        if not isinstance(data, dict):
            raise ClusterError(problem("", "expected a mapping of profile keys", file=str(path)))
        own = str(data.get("name") or path.stem)
        raws = {**raws, str(path): ({**data, "name": own}, str(path), "")}
        raw, source, prefix = _resolve_extends(str(path), raws, [])
        profile = profile_from_dict(raw, source, prefix).with_account(account)
        profile._ref = str(path)
        return profile
    if name not in raws:
        raise ClusterError(
            problem("cluster", f"invalid value {name!r}", sorted(raws) + ["a profile file"])
        )
    raw, source, prefix = _resolve_extends(name, raws, [])
    return profile_from_dict(raw, source, prefix).with_account(account)


def _resolve_extends(name: str, raws: dict, seen: list[str]) -> tuple[dict, str, str]:
    raw, source, prefix = raws[name]
    parent = raw.get("extends")
    if parent is None:
        return raw, source, prefix
    if parent not in raws or parent in seen + [name]:
        raise ClusterError(problem(_join(prefix, "extends"), f"invalid value {parent!r}",
                                   sorted(set(raws) - {name}), source))
    base, _, _ = _resolve_extends(parent, raws, seen + [name])
    return {**base, **{k: v for k, v in raw.items() if k != "extends"}}, source, prefix


def _join(prefix: str, field: str) -> str:
    return f"{prefix}.{field}" if prefix and field else prefix or field


def profile_from_dict(raw: dict, source: str = "<dict>", prefix: str = "") -> ClusterProfile:
    """Validate a raw profile mapping: every problem (unknown key, type, choice, range) is one
    line."""
    problems: list[str] = []
    # setup lines are shell run on the node: their $VARs belong to the job, not to this machine
    values = {}
    for key, value in raw.items():
        if key in ("extends", "source"):
            continue
        values[key] = (
            value if key == "setup" else _expand_env(value, _join(prefix, key), source, problems)
        )
    if isinstance(values.get("gpus"), dict):  # each GPU type knows its name
        values["gpus"] = {g: {**spec, "name": str(g)} if isinstance(spec, dict) else spec
                          for g, spec in values["gpus"].items()}
    try:
        profile = ClusterProfile(**values)
    except ValidationError as e:
        problems += validation_problems(
            e, file=source, prefix=[prefix] if prefix else [], model=ClusterProfile
        )
        raise ClusterError(*problems) from None
    if profile.gpus and profile.default_gpu not in profile.gpus:
        problems.append(
            problem(
                _join(prefix, "default_gpu"),
                f"invalid value {profile.default_gpu!r}",
                sorted(profile.gpus),
                source,
            )
        )
    bad = [g for g in profile.sweep_gpus if g not in profile.gpus]
    if bad:
        problems.append(
            problem(
                _join(prefix, "sweep_gpus"),
                f"invalid value {bad[0]!r}",
                sorted(profile.gpus),
                source,
            )
        )
    if profile.time_min > profile.max_time_min:
        problems.append(
            problem(
                _join(prefix, "time_min"),
                f"{profile.time_min} exceeds max_time_min {profile.max_time_min}",
                [f"1..{profile.max_time_min}"],
                source,
            )
        )
    if problems:
        raise ClusterError(*problems)
    profile._source = source
    return profile


# `${VAR}` or `${VAR:-default}`; a default may hold literal `{word}` placeholders such as
# `{project}`. Written here rather than os.path.expandvars, which has no defaults and leaves typos
# in place silently.
_VAR = re.compile(r"\$\{(\w+)(?::-((?:[^${}]|\{\w+\})*))?\}")


def _expand_env(value: Any, field: str, source: str, problems: list[str]) -> Any:
    """`${VAR}` / `${VAR:-default}` in strings (recursively in lists and mappings). An unset
    `${VAR}` without default makes the whole value None, so a missing account reads as 'no
    account'."""
    if isinstance(value, list):
        out = [_expand_env(v, f"{field}[{i}]", source, problems) for i, v in enumerate(value)]
        return [v for v in out if v is not None]
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{field}.{k}", source, problems) for k, v in value.items()}
    if not isinstance(value, str) or "$" not in value:
        return value
    missing = False

    def sub(m: re.Match) -> str:
        nonlocal missing
        env = os.environ.get(m.group(1))
        if env:
            return env
        if m.group(2) is None:
            missing = True
            return ""
        return m.group(2)

    out = _VAR.sub(sub, value)
    if "${" in out:
        problems.append(
            problem(
                field,
                f"unterminated or malformed ${{ in {value!r}",
                ["${VAR}", "${VAR:-default}"],
                source,
            )
        )
        return None
    return None if missing or out == "" else out


# ---- what one run needs, and whether this cluster can give it
# ------------------------------------------

class ResourceRequest(_Strict):
    """A sweep's resources for one run (`resources:` of the sweep file, or `resources.*` axes)."""
    gpu: str | None = None
    gpus: PositiveInt | None = None
    nodes: PositiveInt | None = None
    time_min: PositiveInt | None = None
    mem_gb: PositiveFloat | None = None
    cpus_per_task: PositiveInt | None = None


RESOURCE_KEYS = tuple(ResourceRequest.model_fields)


class Resources(BaseModel):
    """The allocation of one run; runs with equal resources share one job array."""
    model_config = ConfigDict(frozen=True)
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
        return self.model_dump()

    def mem_arg(self) -> str | None:
        """`--mem` in the unit SLURM reads (a bare number is megabytes): whole GB as `32G`, else
        `M`."""
        if self.mem_gb is None:
            return None
        return (
            f"{int(self.mem_gb)}G"
            if float(self.mem_gb).is_integer()
            else f"{round(self.mem_gb * 1024)}M"
        )


def resolve_resources(
    profile: ClusterProfile, cfg, request: dict
) -> tuple[Resources | None, list[str], str | None]:
    """Derive a run's allocation from its parallelism and check it against the cluster.

    Returns (resources, errors, not_applicable): an error is a mistake in the sweep (e.g. BF16 asked
    of a V100); `not_applicable` means the run cannot exist on this kind of machine at all (DP or
    TF32 on a CPU cluster) and is recorded as such instead of failing the whole sweep.
    """
    try:
        req = ResourceRequest(**request)
    except ValidationError as e:
        return None, validation_problems(e, prefix=["resources"], model=ResourceRequest), None
    from mmhpc.rules.system import PARALLELISM_RULES as PARALLELISMS

    par = cfg.system.parallelism
    nodes, time_min = req.nodes or 1, req.time_min or profile.time_min
    errors = _limit_problems(profile, par, nodes, time_min)
    if profile.is_gpu:
        res, gpu_errors = _gpu_resources(profile, cfg, req, nodes, time_min)
        errors += gpu_errors
        if res is None:
            return None, errors, None
    else:
        res, absent = _cpu_resources(profile, cfg, req, nodes, time_min)
        if res is None:
            return None, errors, absent
    device, world = "cuda" if profile.is_gpu else "cpu", res.nodes * res.tasks_per_node
    wrong = PARALLELISMS[par].problem(cfg, device, res.gpus_per_node, world)
    if wrong:
        errors.append(wrong)
    workers = cfg.loader.num_workers
    if res.cpus_per_task and workers > res.cpus_per_task:
        errors.append(
            problem(
                "loader.num_workers",
                f"{workers} workers exceed the {res.cpus_per_task} cores each "
                f"process of this run gets on {profile.name}",
                [f"0..{res.cpus_per_task}", "or resources.cpus_per_task"],
            )
        )
    return res, errors, None


def _limit_problems(profile: ClusterProfile, par: str, nodes: int, time_min: int) -> list[str]:
    """The cluster's limits on time and nodes, and multi-node runs' need of DDP."""
    errors: list[str] = []
    if time_min > profile.max_time_min:
        errors.append(
            problem(
                "resources.time_min",
                f"{time_min} exceeds the {profile.name} limit of "
                f"{profile.max_time_min} minutes ({profile.max_time_min / 1440:g} "
                "days)",
                [f"1..{profile.max_time_min}"],
            )
        )
    if nodes > 1 and par != "ddp":
        errors.append(f"resources.nodes: {nodes} nodes need system.parallelism=ddp (got {par}); "
                      "single, dp and blp run in one process on one node")
    if nodes > profile.max_nodes:
        errors.append(
            problem(
                "resources.nodes",
                f"{nodes} exceeds the {profile.name} limit of {profile.max_nodes}",
                [f"1..{profile.max_nodes}"],
            )
        )
    return errors


def _gpu_resources(
    profile: ClusterProfile, cfg, req: ResourceRequest, nodes: int, time_min: int
) -> tuple[Resources | None, list[str]]:
    """A GPU cluster's allocation of a run (None for an unknown GPU type) and its problems."""
    from mmhpc.rules.system import PARALLELISM_RULES as PARALLELISMS

    gpu = req.gpu or profile.default_gpu
    if gpu not in profile.gpus:
        return None, [problem("resources.gpu", f"invalid value {gpu!r} on {profile.name}",
                              profile.gpus)]
    spec, par = profile.gpus[gpu], cfg.system.parallelism
    rules = PARALLELISMS[par]
    errors = _precision_problems(profile, cfg.system.precision, gpu)
    count = rules.devices_needed(cfg, req.gpus)
    if count > spec.per_node:
        errors.append(
            f"resources.gpus: {par} needs {count} GPUs per node, {gpu} nodes have "
            f"{spec.per_node}"
            + ("; use resources.nodes for multi-node ddp" if par == "ddp" else "")
        )
    errors += _fabric_problems(profile, gpu, nodes)
    tasks = rules.tasks_per_node(count)
    cpus = req.cpus_per_task or profile.cpus_per_task
    if cpus is None and count <= spec.per_node:  # the cores that come with the task's GPUs
        cpus = spec.cores_per_gpu(count) * (count // tasks)
    mem = (
        req.mem_gb
        or profile.mem_gb
        or (spec.mem_gb_per_gpu * count if spec.mem_gb_per_gpu else None)
    )
    res = Resources(gpu=gpu, gpus_per_node=count, nodes=nodes, tasks_per_node=tasks,
                    time_min=time_min, cpus_per_task=cpus, mem_gb=mem)
    return res, errors


def _precision_problems(profile: ClusterProfile, precision: str, gpu: str) -> list[str]:
    """system.precision on this GPU type, with the types that could run it."""
    from mmhpc.rules.system import PrecisionRules as Precision

    spec = profile.gpus[gpu]
    wrong = Precision(precision, "cuda").problem(spec.capability, gpu)
    if spec.vendor == "amd":
        wrong = wrong or Precision(precision, "cuda").rocm_problem(gpu)
    if not wrong:
        return []
    able = [
        g
        for g, s in profile.gpus.items()
        if not Precision(precision, "cuda").problem(s.capability)
    ]
    return [wrong + (f" (or resources.gpu: {', '.join(able)})" if able else "")]


def _fabric_problems(profile: ClusterProfile, gpu: str, nodes: int) -> list[str]:
    """Multi-node DDP needs a fast fabric (InfiniBand, Slingshot with its NCCL plugin)."""
    fabric = profile.gpu_fabric(gpu)
    if nodes > 1 and fabric not in FAST_FABRICS:
        return [
            problem(
                "resources.nodes",
                f"{nodes} nodes of {gpu}: {gpu} nodes have no InfiniBand "
                f"or Slingshot (fabric {fabric}), so multi-node DDP would run "
                "over Ethernet",
                [
                    "1",
                    "or resources.gpu: "
                    + ", ".join(
                        g for g in profile.gpus if profile.gpu_fabric(g) in FAST_FABRICS
                    ),
                ],
            )
        ]
    if nodes > 1 and fabric == "slingshot" and not profile.fabric_setup:
        return [
            problem(
                "fabric_setup",
                f"{nodes} nodes of {gpu} on Slingshot: NCCL needs the "
                "aws-ofi-nccl plugin there; the profile must load it "
                "(fabric_setup)",
                ["e.g. [module load aws-ofi-nccl]"],
                profile.source,
            )
        ]
    return []


def _cpu_resources(
    profile: ClusterProfile, cfg, req: ResourceRequest, nodes: int, time_min: int
) -> tuple[Resources | None, str | None]:
    """A CPU cluster's allocation of a run, or (None, why): a run that cannot exist on a CPU
    cluster (DP, TF32) is recorded as not applicable, not as an error."""
    from mmhpc.rules.system import PARALLELISM_RULES as PARALLELISMS
    from mmhpc.rules.system import PrecisionRules as Precision

    rules = PARALLELISMS[cfg.system.parallelism]
    absent = Precision(cfg.system.precision, "cpu").problem() or (
        rules.problem(cfg, "cpu", 0) if rules.gpu_only else None
    )
    if absent:
        return None, f"{absent} (cluster {profile.name} has no GPU)"
    count = rules.devices_needed(cfg, req.gpus or profile.cpu_tasks)  # DDP: gloo processes
    res = Resources(gpu=None, gpus_per_node=0, nodes=nodes,
                    tasks_per_node=rules.tasks_per_node(count), time_min=time_min,
                    cpus_per_task=req.cpus_per_task or profile.cpus_per_task,
                    mem_gb=req.mem_gb or profile.mem_gb)
    return res, None
