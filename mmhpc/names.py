"""The names in mmhpc's registries of model parts, importable without torch.

The fusion and strategy registries (`mmhpc.models.fusion.FUSION_CLASSES`, `mmhpc.strategies.STRATEGIES`)
hold classes whose modules import torch. Config validation and `--help` need only the names, so they are
listed here; tests/test_imports.py checks that each registry holds exactly these names.
"""
from __future__ import annotations

#: model.fusion -> whether its fused logits are a sum of per-modality parts (symmetric, thesis Sec. 3.2.1)
#: or it fuses exactly two modalities, a control and a modulated one (gated, FiLM; Sec. 2.1.3)
FUSION_SYMMETRIC = {"early_sum": True, "late_sum": True, "concat": True, "gated": False, "film": False}
FUSIONS = tuple(FUSION_SYMMETRIC)
SYMMETRIC = tuple(name for name, symmetric in FUSION_SYMMETRIC.items() if symmetric)
TWO_MODALITY = tuple(name for name, symmetric in FUSION_SYMMETRIC.items() if not symmetric)

#: strategy.name: every registered training strategy
STRATEGIES = ("alternating", "amst", "entropy", "gradient_blending", "mla", "mlb", "mslr", "multi_loss", "naive",
              "ogm_ge", "opm", "pmr", "reliability")
