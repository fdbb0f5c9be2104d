"""What a precision and a parallelism need of the devices, torch-free (thesis Sec. 3.4.2, 4.3.2.1).

The launcher checks a run against a cluster profile's GPU types with these rules
(`mmhpc.launch.clusters.resolve_resources`), and the trainer's `Precision` and `Parallelism` classes
(`mmhpc.system.precision`, `mmhpc.system.parallel`) inherit them, so both check the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmhpc.errors import ConfigError, problem
from mmhpc.names import PRECISIONS, PrecisionChoice

AMPERE = (8, 0)  # tensor cores with TF32 and BF16


def _capability_text(capability) -> str:
    if isinstance(capability, tuple):
        return f"{capability[0]}.{capability[1]}"
    return f"{float(capability):.1f}"


def _as_tuple(capability) -> tuple[int, int]:
    """(8, 6) or 8.6 -> (8, 6)."""
    if isinstance(capability, tuple):
        return capability
    major, _, minor = f"{float(capability):.1f}".partition(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class PrecisionRules:
    """One run's precision on one kind of device (`cuda` or `cpu`): can the device run it?"""

    name: str
    device_type: str = "cuda"

    @property
    def choice(self) -> PrecisionChoice:
        if self.name not in PRECISIONS:
            raise ConfigError(
                problem("system.precision", f"invalid value {self.name!r}", PRECISIONS)
            )
        return PRECISIONS[self.name]

    def problem(self, capability=None, gpu: str = "this GPU") -> str | None:
        """Why this precision cannot run on the device, or None. `capability`: (8, 0) or 8.0 for a
        GPU."""
        choice = self.choice
        if self.device_type == "cpu" and not choice.cpu:
            return problem(
                "system.precision",
                f"{self.name} is a tensor-core format of NVIDIA GPUs (compute "
                "capability 8.0+), not available on the CPU",
                [n for n, c in PRECISIONS.items() if c.cpu],
            )
        if (
            self.device_type == "cuda"
            and choice.tensor_cores
            and capability is not None
            and _as_tuple(capability) < AMPERE
        ):
            return problem(
                "system.precision",
                f"{self.name} needs compute capability 8.0+, {gpu} has "
                f"{_capability_text(capability)}",
                [n for n, c in PRECISIONS.items() if not c.tensor_cores],
            )
        return None

    def rocm_problem(self, gpu: str = "this GPU") -> str | None:
        """Why this precision cannot run on an AMD GPU (a ROCm build of torch), or None."""
        if self.choice.rocm:
            return None
        return problem(
            "system.precision",
            f"{self.name}: {gpu} is an AMD GPU (ROCm), whose torch has no {self.choice.label} mode",
            [n for n, c in PRECISIONS.items() if c.rocm],
        )


class ParallelismRules:
    """What one run of a parallelism needs (launcher and trainer)."""

    name: ClassVar[str] = ""
    gpu_only: ClassVar[bool] = False  # cannot exist on a CPU machine at all (DataParallel)

    @classmethod
    def devices_needed(cls, cfg, requested: int | None = None) -> int:
        """Devices one run uses: GPUs on a GPU cluster (processes for CPU DDP)."""
        return 1

    @classmethod
    def tasks_per_node(cls, devices: int) -> int:
        """Processes per node: one per device for DDP, else one."""
        return 1

    @classmethod
    def problem(cls, cfg, device_type: str, devices: int, world: int = 1) -> str | None:
        """Why the run cannot use `devices` devices of `device_type` (`world` DDP processes), or
        None."""
        return None


class SingleRules(ParallelismRules):
    name = "single"


class DataParallelRules(ParallelismRules):
    name = "dp"
    gpu_only = True

    @classmethod
    def devices_needed(cls, cfg, requested=None):
        # as many GPUs as BLP would use unless told, for a like-for-like comparison
        return int(requested or len(cfg.modalities))

    @classmethod
    def problem(cls, cfg, device_type, devices, world=1):
        if device_type != "cuda" or devices < 2:
            return problem("system.parallelism", "dp (nn.DataParallel) needs >= 2 CUDA GPUs, this "
                           f"run has {devices if device_type == 'cuda' else 0}",
                           ["single, or ddp (which also runs on the CPU with gloo)"])
        return None


class DistributedRules(ParallelismRules):
    name = "ddp"

    @classmethod
    def devices_needed(cls, cfg, requested=None):
        return int(requested or len(cfg.modalities))

    @classmethod
    def tasks_per_node(cls, devices):
        return devices

    @classmethod
    def problem(cls, cfg, device_type, devices, world=1):
        if cfg.train.batch_size % world:
            return (
                f"train.batch_size: {cfg.train.batch_size} is not divisible by the {world} DDP "
                "processes; the global batch is split evenly"
            )
        return None


class BranchLevelRules(ParallelismRules):
    name = "blp"

    @classmethod
    def devices_needed(cls, cfg, requested=None):
        return len(
            cfg.modalities
        )  # one device per encoder branch; resources.gpus is for dp/ddp only

    @classmethod
    def problem(cls, cfg, device_type, devices, world=1):
        explicit = cfg.system.blp_devices
        if explicit and set(explicit) != set(cfg.modalities):
            return problem("system.blp_devices",
                           f"give one device per modality; got {sorted(explicit)}", cfg.modalities)
        return None


#: system.parallelism -> its rules; the trainer's PARALLELISMS[name] subclasses this entry
PARALLELISM_RULES: dict[str, type[ParallelismRules]] = {
    p.name: p for p in (SingleRules, DataParallelRules, DistributedRules, BranchLevelRules)
}
