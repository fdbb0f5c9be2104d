"""The names in mmhpc's registries of model parts and system choices, importable without torch.

The fusion and strategy registries (`mmhpc.models.fusion.FUSION_CLASSES`,
`mmhpc.strategies.STRATEGIES`) hold classes whose modules import torch. Config validation and
`--help` need only the names, so they are listed here; tests/test_imports.py checks that each
registry holds exactly these names.
"""
from __future__ import annotations

from dataclasses import dataclass

#: model.fusion -> whether its fused logits are a sum of per-modality parts (symmetric, thesis Sec.
#: 3.2.1) or it fuses exactly two modalities, a control and a modulated one (gated, FiLM; Sec.
#: 2.1.3)
FUSION_SYMMETRIC = {
    "early_sum": True,
    "late_sum": True,
    "concat": True,
    "gated": False,
    "film": False,
}
FUSIONS = tuple(FUSION_SYMMETRIC)
SYMMETRIC = tuple(name for name, symmetric in FUSION_SYMMETRIC.items() if symmetric)
TWO_MODALITY = tuple(name for name, symmetric in FUSION_SYMMETRIC.items() if not symmetric)

#: strategy.name: every registered training strategy
STRATEGIES = (
    "alternating",
    "amst",
    "entropy",
    "gradient_blending",
    "mla",
    "mlb",
    "mslr",
    "multi_loss",
    "naive",
    "ogm_ge",
    "opm",
    "pmr",
    "reliability",
)


# ---- the system choices: adding a precision or a parallelism is one entry here
# ----------------------------
@dataclass(frozen=True)
class PrecisionChoice:
    """What a `system.precision` means (`mmhpc.system.precision` applies it; config validation,
    --help, reports and gpu-check read the names, labels and the thesis' settings from here)."""

    label: str               # in reports and --help
    matmul_tf32: bool        # torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32: bool         # torch.backends.cudnn.allow_tf32
    autocast: str | None     # the autocast dtype, a torch attribute name (None: no autocast)
    tensor_cores: bool       # needs compute capability 8.0+ on a GPU
    cpu: bool                # has a meaning on the CPU
    thesis: bool  # a setting the thesis compares (Tables 4.6-4.9): reports and gpu-check
    loss_scale: bool = (
        False  # backward on a scaled loss (float16's narrow range), unscaled before the step
    )
    rocm: bool = True  # has a meaning in ROCm builds of torch (AMD GPUs: no TF32 mode there)


#: system.precision (thesis Sec. 3.4.2, 4.3.2.1), in the order reports show them
# a row each; columns: label, matmul_tf32, cudnn_tf32, autocast, tensor_cores, cpu, thesis
PRECISIONS = {
    "fp32": PrecisionChoice("FP32", False, True, None, False, True, True),
    "fp32_strict": PrecisionChoice("FP32 strict", False, False, None, False, True, False),
    "tf32": PrecisionChoice("TF32", True, True, None, True, False, True, rocm=False),
    "bf16": PrecisionChoice("BF16", True, True, "bfloat16", True, True, True),
}
THESIS_PRECISIONS = tuple(name for name, choice in PRECISIONS.items() if choice.thesis)

#: system.parallelism -> its label (thesis Sec. 2.7.3.3-2.7.3.4, 3.4.4; `mmhpc.system.parallel` runs
#: them)
PARALLELISMS = {"single": "Single", "dp": "DP", "ddp": "DDP", "blp": "BLP"}
