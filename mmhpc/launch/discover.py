"""`mmhpc clusters discover`: a draft cluster profile from what SLURM says about itself.

Reads `scontrol show config` (MaxArraySize, DefMemPerCPU), `scontrol show partition -o` (MaxTime,
MaxNodes, which partition is the default), `scontrol show node -o` (Arch, CPUTot, RealMemory, Gres
with its GPU type, ActiveFeatures, Partitions) and `sacctmgr show assoc user=$USER` (accounts, QOS),
and writes a profile that validates, each value marked `detected` or `assumed` in a comment. The
account is never guessed: the profile reads `${MMHPC_ACCOUNT}` and the comment lists the accounts
sacctmgr showed. `--probe` submits a 2-minute 1-GPU job that records what SLURM does not know (GPU
name and compute capability, `uname -m`, scratch variables, interconnect, PyTorch modules) and fills
those in.

Parsed here rather than with facebookresearch's clusterscope: it reduces a node's GPUs to a
generation and a count (`h100, 8`), dropping the gres type a request must name
(`nvidia_gh200_120gb`), and reads neither node features (Berzelius' `thin`/`fat` constraints),
MaxArraySize nor sacctmgr.
"""
from __future__ import annotations

import getpass
import os
import re
import shlex
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmhpc.errors import problem
from mmhpc.launch.clusters import ClusterError, profile_from_dict

COMMANDS = {  # what is asked of SLURM; the recorded fixtures of tests/clusters/ hold these outputs
    "config": ["scontrol", "show", "config"],
    "partitions": ["scontrol", "show", "partition", "-o"],
    "nodes": ["scontrol", "show", "node", "-o"],
    "assoc": [
        "sacctmgr",
        "-n",
        "-P",
        "show",
        "assoc",
        "user={user}",
        "format=account,partition,qos",
    ],
}
# CUDA compute capability of GPU models SLURM names in gres types (NVIDIA's CUDA GPUs list); AMD
# models have none: their precision rules are by vendor (no TF32 in ROCm builds of torch).
MODELS = [
    ("gh200", "GH200", 9.0),
    ("gb200", "GB200", 10.0),
    ("h200", "H200", 9.0),
    ("h100", "H100", 9.0),
    ("a100", "A100", 8.0),
    ("a40", "A40", 8.6),
    ("a10", "A10", 8.6),
    ("l40s", "L40S", 8.9),
    ("l40", "L40", 8.9),
    ("l4", "L4", 8.9),
    ("v100", "V100", 7.0),
    ("t4", "T4", 7.5),
    ("mi300", "MI300X", 9.4),
    ("mi250", "MI250X", 9.0),
    ("mi210", "MI210", 9.0),
    ("mi100", "MI100", 9.0),
]
AMD = ("mi300", "mi250", "mi210", "mi100")
_KV = re.compile(r"(\w+)=(.*?)(?= \w+=|$)")


def parse_kv(line: str) -> dict[str, str]:
    """`Key=Value Key=Value ...` of one `scontrol -o` line (a value may hold spaces, e.g.
    Reason)."""
    return {k: v.strip() for k, v in _KV.findall(line.strip())}


def parse_config(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_gres(gres: str) -> list[tuple[str | None, int]]:
    """`gpu:nvidia_gh200_120gb:4(S:0-3),shard:8` -> [("nvidia_gh200_120gb", 4)]; untyped `gpu:8` ->
    [(None, 8)]; no GPUs -> []."""
    out = []
    for item in re.split(r",(?![^(]*\))", gres or ""):
        item = re.sub(r"\(.*\)", "", item).strip()
        parts = item.split(":")
        if parts[0] != "gpu" or len(parts) < 2:
            continue
        count = parts[-1]
        if not count.isdigit():
            continue
        out.append((parts[1] if len(parts) == 3 else None, int(count)))
    return out


def minutes(max_time: str) -> int | None:
    """SLURM's MaxTime (`3-00:00:00`, `1-12`, `2:00:00`, `30:00`, `30`, `UNLIMITED`) in whole
    minutes (seconds round up); None when unlimited."""
    if not max_time or max_time.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, dash, rest = max_time.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    if dash:  # days-hours[:minutes[:seconds]]
        h, m, s = (parts + [0, 0])[:3]
    else:  # minutes | minutes:seconds | hours:minutes:seconds
        h, m, s = [0] * (3 - len(parts)) + parts if len(parts) == 3 else (0, parts[0], parts[1] if
                                                                           len(parts) > 1 else 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def model_of(gres_type: str | None, features: set[str]) -> tuple[str, float | None, str]:
    """(display name, capability or None, vendor) from a gres type or node features."""
    for text in ([gres_type] if gres_type else []) + sorted(features):
        low = text.lower()
        for key, name, cap in MODELS:
            if key in low:
                return name, cap, "amd" if key in AMD else "nvidia"
    return (gres_type or "GPU"), None, "nvidia"


@dataclass
class NodeGroup:
    arch: str
    cores: int
    mem_mb: int
    gres: str | None
    gpus: int
    features: frozenset
    names: list[str] = field(default_factory=list)


@dataclass
class Value:
    value: object
    how: str  # detected | assumed
    note: str = ""


def run_slurm(user: str) -> dict[str, str]:
    """The outputs of COMMANDS here; a command that fails is a ClusterError naming it."""
    out = {}
    for key, cmd in COMMANDS.items():
        cmd = [c.format(user=user) for c in cmd]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            if key == "assoc":  # no accounting: no accounts to list
                out[key] = ""
                continue
            raise ClusterError(
                f"discover: `{shlex.join(cmd)}` failed ({e}); run it on a login node of the "
                "cluster (SLURM's commands on PATH)"
            ) from None
        if done.returncode and key != "assoc":
            raise ClusterError(f"discover: `{shlex.join(cmd)}` exited {done.returncode}: "
                               f"{done.stderr.strip()[-300:]}")
        out[key] = done.stdout if not done.returncode else ""
    return out


def discover(
    outputs: dict[str, str], partition: str | None = None, probe: dict | None = None
) -> str:
    """A profile (YAML text with comments) from the recorded outputs of COMMANDS (and a probe's)."""
    config = parse_config(outputs.get("config", ""))
    parts = [
        parse_kv(line)
        for line in outputs.get("partitions", "").splitlines()
        if "PartitionName=" in line
    ]
    if not parts:
        raise ClusterError("discover: `scontrol show partition` listed no partition")
    chosen = _chosen_partition(parts, partition)
    pname = chosen["PartitionName"]
    groups = _node_groups(outputs.get("nodes", ""), pname)
    if not groups:
        raise ClusterError(f"discover: no node of partition {pname} in `scontrol show node`")
    gpu_groups = [g for g in groups.values() if g.gpus]
    v = _partition_values(chosen, len(parts) == 1, groups, bool(gpu_groups), config)
    accounts = sorted(
        {line.split("|")[0] for line in outputs.get("assoc", "").splitlines() if line.strip()}
    )
    qos = sorted({q for line in outputs.get("assoc", "").splitlines() for q in
                  (line.split("|")[2].split(",") if line.count("|") >= 2 else []) if q})
    real = [a for a in accounts if a != "root"]
    v["account_required"] = Value(
        bool(real),
        "detected",
        f"sacctmgr accounts: {', '.join(accounts) or 'none'}"
        + ("; export MMHPC_ACCOUNT=<one of them>" if real else ""),
    )
    gpus = _gpu_specs(gpu_groups)
    v.update(_gpu_values(gpus) if gpu_groups else _cpu_values(groups))
    v["fabric"] = _fabric(groups.values(), probe)
    if probe:
        _apply_probe(v, gpus, probe)
    return _render(pname, config, v, gpus, accounts, qos)


def _chosen_partition(parts: list[dict], partition: str | None) -> dict:
    """The partition asked for (`--partition`), else SLURM's default one, else the first."""
    names = [p["PartitionName"] for p in parts]
    if partition is None:
        return next((p for p in parts if p.get("Default") == "YES"), parts[0])
    if partition in names:
        return parts[names.index(partition)]
    raise ClusterError(problem("--partition", f"invalid value {partition!r}", names))


def _node_groups(nodes: str, pname: str) -> dict[tuple, NodeGroup]:
    """The partition's nodes of `scontrol show node`, grouped by their hardware and features."""
    groups: dict[tuple, NodeGroup] = {}
    for line in nodes.splitlines():
        node = parse_kv(line)
        if "NodeName" not in node or pname not in node.get("Partitions", "").split(","):
            continue
        gpus = parse_gres(node.get("Gres", ""))
        gres, count = gpus[0] if gpus else (None, 0)
        features = frozenset(
            f
            for f in node.get("ActiveFeatures", node.get("Features", "")).split(",")
            if f and f != "(null)"
        )
        key = (
            node.get("Arch", "x86_64"),
            int(node.get("CPUTot", 1)),
            int(node.get("RealMemory", 0) or 0),
            gres,
            count,
            features,
        )
        groups.setdefault(key, NodeGroup(*key)).names.append(node["NodeName"])
    return groups


def _partition_values(
    chosen: dict, only: bool, groups: dict, has_gpus: bool, config: dict
) -> dict[str, Value]:
    """What the partition and the cluster's config say: name, exclusivity, arch, limits."""
    v: dict[str, Value] = {}
    pname = chosen["PartitionName"]
    if only and chosen.get("Default") == "YES" and has_gpus:
        v["partition"] = Value(
            None, "detected", f"the only partition ({pname}), the default: no --partition"
        )
    else:
        v["partition"] = Value(
            pname,
            "detected",
            "--partition" + (" (the default)" if chosen.get("Default") == "YES" else ""),
        )
    if chosen.get("OverSubscribe", "").startswith("EXCLUSIVE"):
        v["exclusive"] = Value(
            True, "detected", f"OverSubscribe={chosen['OverSubscribe']}: whole nodes"
        )
    arches = sorted({g.arch for g in groups.values()})
    v["arch"] = Value(
        arches[0], "detected", "Arch of the nodes" + (f" (also {arches[1:]})" if arches[1:] else "")
    )
    max_time = minutes(chosen.get("MaxTime", ""))
    v["max_time_min"] = (
        Value(max_time, "detected", f"MaxTime {chosen.get('MaxTime')}")
        if max_time
        else Value(10080, "assumed", f"MaxTime {chosen.get('MaxTime', '?')}: 7 days assumed")
    )
    v["time_min"] = Value(min(60, v["max_time_min"].value), "assumed", "default time of one run")
    total = int(chosen.get("TotalNodes") or sum(len(g.names) for g in groups.values()))
    max_nodes = chosen.get("MaxNodes", "UNLIMITED")
    v["max_nodes"] = Value(min(total, int(max_nodes)) if max_nodes.isdigit() else total, "detected",
                           f"MaxNodes {max_nodes}, {total} node(s)")
    size = config.get("MaxArraySize", "")
    v["max_array_size"] = (Value(int(size), "detected", "MaxArraySize") if size.isdigit() else
                           Value(1000, "assumed", "SLURM's default MaxArraySize"))
    return v


def _gpu_specs(gpu_groups: list[NodeGroup]) -> dict[str, dict]:
    """One GPU type per model (and per node feature where nodes of one model differ by it)."""
    gpus: dict[str, dict] = {}
    by_model = defaultdict(list)
    for g in gpu_groups:
        by_model[model_of(g.gres, set(g.features))].append(g)
    for (name, cap, vendor), members in by_model.items():
        kinds = {frozenset(g.features) for g in members}
        shared = frozenset.intersection(*kinds) if kinds else frozenset()
        for g in members:
            own = sorted(g.features - shared) if len(kinds) > 1 else []
            gname = name if not own else f"{name}-{own[0]}"
            spec = gpus.setdefault(
                gname,
                {"gres": g.gres or "", "capability": cap or 7.0, "nodes": [], "_notes": []},
            )
            if own:
                spec["constraint"] = own[0]
            if vendor == "amd":
                spec["vendor"] = "amd"
            node = {"gpus": g.gpus, "cores": g.cores}
            if g.mem_mb:
                node["mem_gb"] = round(g.mem_mb / 1024)
            if node not in spec["nodes"]:
                spec["nodes"].append(node)
            spec["_notes"] = [
                f"gres {g.gres or 'untyped'} x{g.gpus} on {len(g.names)} node(s)"
                + (f" (feature {own[0]}: -C {own[0]})" if own else "")
                + ("" if cap else "; capability assumed 7.0 (unknown model: --probe)")
            ]
    return gpus


def _gpu_values(gpus: dict[str, dict]) -> dict[str, Value]:
    return {
        "default_gpu": Value(sorted(gpus)[0], "assumed", "the first GPU type by name"),
        "overrides": Value(
            {"system.device": "cuda"}, "assumed", "GPU runs never fall back to the CPU"
        ),
        "size": Value("full", "assumed", ""),
    }


def _cpu_values(groups: dict) -> dict[str, Value]:
    cores = min(g.cores for g in groups.values())
    return {
        "cpu_tasks": Value(2, "assumed", "DDP processes (gloo) per run"),
        "cpus_per_task": Value(1, "assumed", f"{cores} cores per node"),
        "array_parallelism": Value(max(1, min(16, cores)), "detected", f"CPUTot {cores}"),
        "size": Value("tiny", "assumed", "no GPU: the tiny CPU versions of the sweeps"),
        "overrides": Value(
            {"system.device": "cpu", "system.threads": 1}, "assumed", "one core per task"
        ),
    }


def _fabric(groups, probe: dict | None) -> Value:
    if probe and probe.get("fabric"):
        return Value(probe["fabric"], "detected", "probe: " + probe.get("fabric_seen", ""))
    feats = {f.lower() for g in groups for f in g.features}
    for name, words in (
        ("infiniband", ("ib", "infiniband", "hdr", "edr", "ndr")),
        ("slingshot", ("slingshot",)),
    ):
        if feats & set(words) or any(w in f for f in feats for w in words[1:]):
            return Value(name, "detected", "node features")
    return Value("ethernet", "assumed", "not in SLURM's outputs: multi-node DDP refused until set "
                                        "(infiniband | slingshot; --probe looks)")


def _apply_probe(v: dict[str, Value], gpus: dict, probe: dict) -> None:
    if probe.get("arch"):
        v["arch"] = Value(probe["arch"], "detected", "probe: uname -m")
    if probe.get("scratch"):
        v["scratch"] = Value(probe["scratch"], "detected", "probe: node-local scratch variable")
    if probe.get("modules"):
        v["modules_seen"] = Value(probe["modules"], "detected", "probe: module -t avail PyTorch")
    for spec in gpus.values():
        if probe.get("capability") and len(gpus) == 1:
            spec["capability"] = probe["capability"]
            spec["_notes"].append(
                f"probe: {probe.get('gpu_name', '')} capability {probe['capability']}"
            )


def _scalar(value) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=200)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _render(pname: str, config: dict, v: dict[str, Value], gpus: dict, accounts, qos) -> str:
    cluster = config.get("ClusterName") or "cluster"
    name = re.sub(r"[^\w-]", "-", f"{cluster}-{pname}")
    lines = [
        f"# Drafted by `mmhpc clusters discover` on {time.strftime('%Y-%m-%d')} from scontrol and "
        "sacctmgr"
        f" (cluster {cluster}, partition {pname}).",
        "# Each value says whether it was detected or assumed: check the assumed ones. "
        "Accounts are never",
        "# guessed: the profile reads $MMHPC_ACCOUNT.",
        f"# DefMemPerCPU: {config.get('DefMemPerCPU', '?')} MB; QOS available: "
        f"{', '.join(qos) or 'none'}",
        f"name: {name}",
        f"description: discovered from {cluster}, partition {pname}",
        "scheduler: slurm",
    ]
    for key in (
        "partition",
        "arch",
        "fabric",
        "size",
        "time_min",
        "max_time_min",
        "max_nodes",
        "max_array_size",
        "account_required",
        "exclusive",
        "cpu_tasks",
        "cpus_per_task",
        "array_parallelism",
        "default_gpu",
        "scratch",
    ):
        if key in v:
            item = v[key]
            if item.value is None:
                lines.append(f"# partition: none  # {item.how}: {item.note}")
                continue
            lines.append(f"{key}: {_scalar(item.value)}  # {item.how}: {item.note}".rstrip(": "))
    lines += ["account: ${MMHPC_ACCOUNT}", "project: ${MMHPC_PROJECT}",
              "results_root: ${MMHPC_RESULTS:-results}  # assumed: set MMHPC_RESULTS to project "
              "storage",
              "python: ${MMHPC_PYTHON}", "venv: ${MMHPC_VENV}", "apptainer: ${MMHPC_APPTAINER}",
              "modules: []  # assumed: `module spider PyTorch` (or --probe) lists the site's"]
    if "modules_seen" in v:
        lines.append(f"# PyTorch modules on a node (probe): {', '.join(v['modules_seen'].value)}")
    if gpus:
        lines.append("gpus:")
        for gname, spec in gpus.items():
            notes = spec.pop("_notes")
            lines.append(f"  {gname}:  # detected: {'; '.join(notes)}")
            for key, value in spec.items():
                lines.append(f"    {key}: {_scalar(value)}")
    lines.append(
        f"overrides: {_scalar(v['overrides'].value)}  # {v['overrides'].how}: {v['overrides'].note}"
    )
    return "\n".join(lines) + "\n"


def validate(text: str, source: str):
    """The drafted profile validates as any profile file does (ClusterError otherwise)."""
    return profile_from_dict(yaml.safe_load(text), source)


# ---- --probe: one short job that records what SLURM does not know
# -----------------------------------

PROBE_SCRIPT = r"""#!/bin/bash
echo "arch=$(uname -m)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -1 | sed 's/^/gpu=/'
fi
for v in TMPDIR SNIC_TMP SCRATCH LOCAL_SCRATCH SLURM_TMPDIR; do
  [ -n "${!v:-}" ] && echo "scratch_var=$v"
done
ls /sys/class/infiniband 2>/dev/null | head -1 | sed 's/^/ib=/'
ip -o link 2>/dev/null | grep -o 'hsn[0-9]*' | head -1 | sed 's/^/hsn=/'
(module -t avail PyTorch 2>&1 || true) | grep -i torch | head -5 | sed 's/^/module=/'
"""


def parse_probe(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        value = value.strip()
        if not sep or not value:
            continue
        if key == "arch":
            out["arch"] = value
        elif key == "gpu":
            name, _, cap = value.rpartition(",")
            out["gpu_name"] = name.strip()
            try:
                out["capability"] = float(cap)
            except ValueError:
                pass
        elif key == "scratch_var":
            out.setdefault("scratch", value)
        elif key == "ib":
            out["fabric"], out["fabric_seen"] = "infiniband", f"/sys/class/infiniband/{value}"
        elif key == "hsn" and "fabric" not in out:
            out["fabric"], out["fabric_seen"] = "slingshot", f"interface {value}"
        elif key == "module":
            out.setdefault("modules", []).append(value)
    return out


def run_probe(
    partition: str | None, gpu_gres: str | None, account: str | None, timeout_s: int = 900
) -> dict:
    """Submit the probe (2 minutes, 1 GPU when the partition has GPUs) and wait for its output."""
    with tempfile.TemporaryDirectory(prefix="mmhpc-probe-", dir=os.getcwd()) as tmp:
        script, out = Path(tmp) / "probe.sh", Path(tmp) / "probe.out"
        script.write_text(PROBE_SCRIPT)
        cmd = [
            "sbatch",
            "--wait",
            "--parsable",
            "--time=2",
            "--nodes=1",
            "--ntasks=1",
            f"--output={out}",
            "--job-name=mmhpc-probe",
        ]
        cmd += [f"--partition={partition}"] if partition else []
        cmd += [f"--account={account}"] if account else []
        cmd += (
            [f"--gpus-per-node={gpu_gres + ':' if gpu_gres else ''}1"]
            if gpu_gres is not None
            else []
        )
        try:
            done = subprocess.run(
                cmd + [str(script)], capture_output=True, text=True, timeout=timeout_s
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ClusterError(f"discover --probe: `{shlex.join(cmd)}` failed: {e}") from None
        if done.returncode or not out.exists():
            raise ClusterError(f"discover --probe: the probe job failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-300:]}")
        return parse_probe(out.read_text())


def discover_here(
    partition: str | None = None, probe: bool = False, account: str | None = None
) -> str:
    user = os.environ.get("USER") or getpass.getuser()
    outputs = run_slurm(user)
    found = None
    if probe:
        draft = yaml.safe_load(discover(outputs, partition))
        gpus = draft.get("gpus") or {}
        gres = next(iter(gpus.values()))["gres"] if gpus else None
        found = run_probe(draft.get("partition"), gres, account or os.environ.get("MMHPC_ACCOUNT"))
    return discover(outputs, partition, found)
