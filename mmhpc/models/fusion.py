"""Late-fusion heads of the thesis (Sec. 2.1.3) with per-modality logits by masking (Sec. 3.2).

Every fusion takes a dict {modality: embedding [B, D]}. A modality missing from the dict is
*masked*:
- symmetric fusions (early-sum, late-sum, concat) see zeros in its place (Sec. 3.2.1), so
  `fusion({m: e_m})` is modality m's logits z_m (Eq. 2.4, 2.6, 2.8);
- asymmetric fusions (gated, FiLM) switch the control role to the missing modality and feed it the
  constant c (0 gated, 1 FiLM), so the present modality passes through the modulated path (Sec.
  3.2.2).

With `cosine=True` the output layers are cosine classifiers (Sec. 3.1.2): L2-normalised inputs and
weight rows, times a scale s. For the symmetric fusions each modality is normalised on its own, so
the fused logits stay the sum of the per-modality ones.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmhpc.errors import problem


class CosineLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


COSINE_FORMS = ("printed", "normface")
#: the target probability p of thesis Eq. 3.2: assumed, no source states it (a run records it as
#: assumed)
COSINE_P = 0.99


def cosine_scale(
    num_classes: int, p: float = COSINE_P, num_modalities: int = 2, form: str = "printed"
) -> float:
    """Scale s of the cosine classifier, thesis Eq. 3.2 (after MMCosine [51], from NormFace), M
    modalities.

    form "printed" (default): s = (C - 1) / (M (C + 1)) * log((C - 1) p / (1 - p)), Eq. 3.2 as the
    thesis
        prints it ("(C - 1) / 2(C + 1)", line ~1735 of the thesis), with the 2 read as M, the number
        of
        summed unit cosines (2 in the audio-visual case the thesis cites it for).
    form "normface": s = (C - 1) / (M C) * log((C - 1) p / (1 - p)), NormFace's bound for one cosine
        (s >= (C-1)/C log(...), the smallest s that lets the true class reach softmax probability
        p),
        divided by M because the fused logit sums M cosines; M = 1 is NormFace's own bound.
    """
    if num_classes < 2:
        raise ValueError(f"cosine_scale needs num_classes >= 2, got {num_classes}")
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    if not 1.0 / num_classes < p < 1.0:
        raise ValueError(f"p must lie in (1/C, 1) = ({1.0 / num_classes:.4g}, 1), got {p}")
    if form not in COSINE_FORMS:
        raise ValueError(problem("form", f"invalid value {form!r}", COSINE_FORMS))
    c = num_classes
    denominator = c + 1 if form == "printed" else c
    return (c - 1) / (num_modalities * denominator) * math.log((c - 1) * p / (1 - p))


def _head(dim: int, classes: int, cosine: bool, scale: float) -> nn.Module:
    return CosineLinear(dim, classes, scale) if cosine else nn.Linear(dim, classes)


class Fusion(nn.Module):
    symmetric = True

    def __init__(self, modalities: list[str], dim: int, num_classes: int, cosine: bool = False,
                 scale: float = 1.0):
        super().__init__()
        self.modalities = list(modalities)
        self.dim, self.num_classes, self.cosine, self.scale = dim, num_classes, cosine, scale

    def unimodal(self, embs: dict[str, torch.Tensor], m: str) -> torch.Tensor:
        return self({m: embs[m]})

    def _check(self, embs: dict[str, torch.Tensor]) -> None:
        unknown = set(embs) - set(self.modalities)
        if unknown or not embs:
            raise ValueError(f"fusion over {self.modalities} got embeddings of {sorted(embs)}")


class EarlySum(Fusion):
    """z = F(sum_m e_m) (Eq. 2.1-2.3); z_m = F(e_m) and z = sum z_m + c (Eq. 2.4-2.5)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.head = _head(self.dim, self.num_classes, self.cosine, self.scale)

    def forward(self, embs):
        self._check(embs)
        if self.cosine:  # normalise per modality: sum of cosine logits
            return sum(self.head(e) for e in embs.values())
        return self.head(sum(embs.values()))


class LateSum(Fusion):
    """z = sum_m F_m(e_m) (Eq. 2.6-2.7): a masked modality's branch contributes nothing."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.heads = nn.ModuleDict({m: _head(self.dim, self.num_classes, self.cosine, self.scale)
                                    for m in self.modalities})

    def forward(self, embs):
        self._check(embs)
        return sum(self.heads[m](e) for m, e in embs.items())


class Concat(Fusion):
    """z = W [e_1, ..., e_M] + b (Eq. 2.8-2.9): masked modalities are zeros in the concatenation."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        m = len(self.modalities)
        if self.cosine:
            self.weight = nn.Parameter(torch.empty(self.num_classes, m * self.dim))
            nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        else:
            self.head = nn.Linear(m * self.dim, self.num_classes)

    def forward(self, embs):
        self._check(embs)
        ref = next(iter(embs.values()))
        if self.cosine:  # each modality's block of W and its embedding normalised on their own
            blocks = self.weight.split(self.dim, dim=1)
            return sum(
                self.scale * F.linear(F.normalize(embs[m], dim=-1), F.normalize(blocks[i], dim=-1))
                for i, m in enumerate(self.modalities)
                if m in embs
            )
        parts = [embs[m] if m in embs else ref.new_zeros(ref.shape) for m in self.modalities]
        return self.head(torch.cat(parts, dim=1))


class _Asymmetric(Fusion):
    """Two-modality fusion where a control modality modulates the other."""

    symmetric = False
    mask_value = 0.0

    def __init__(
        self, modalities, dim, num_classes, cosine=False, scale=1.0, control: str | None = None
    ):
        if len(modalities) != 2:
            raise ValueError(
                f"{type(self).__name__} fuses exactly two modalities, got {list(modalities)}; "
                "use early_sum, late_sum or concat for three"
            )
        super().__init__(modalities, dim, num_classes, cosine, scale)
        self.control = control or self.modalities[0]
        if self.control not in self.modalities:
            raise ValueError(problem("model.control", f"invalid value {self.control!r}",
                                     self.modalities))
        self.out = _head(dim, num_classes, cosine, scale)

    def forward(self, embs, control: str | None = None):
        self._check(embs)
        if (
            len(embs) == 1
        ):  # switch the control role to the masked modality and feed it the constant c
            (present,) = embs
            (control,) = [m for m in self.modalities if m != present]
            e = embs[present]
            return self.fuse(e.new_full(e.shape, self.mask_value), e, control)
        control = control or self.control
        (other,) = [m for m in self.modalities if m != control]
        return self.fuse(embs[control], embs[other], control)

    def fuse(self, e_control, e_other, control: str) -> torch.Tensor:
        raise NotImplementedError


class Gated(_Asymmetric):
    """z = FC_out(sigmoid(FC_c(e_c)) * FC_o(e_o)) (Eq. 2.10); masked control c = 0."""

    mask_value = 0.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.fc = nn.ModuleDict({m: nn.Linear(self.dim, self.dim) for m in self.modalities})

    def fuse(self, e_control, e_other, control):
        other = next(m for m in self.modalities if m != control)
        return self.out(torch.sigmoid(self.fc[control](e_control)) * self.fc[other](e_other))


class FiLM(_Asymmetric):
    """z = FC_out(gamma(e_c) * e_o + beta(e_c)) (Eq. 2.11); masked control c = 1."""

    mask_value = 1.0

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gamma = nn.Linear(self.dim, self.dim)
        self.beta = nn.Linear(self.dim, self.dim)

    def fuse(self, e_control, e_other, control):
        return self.out(self.gamma(e_control) * e_other + self.beta(e_control))


# The fusion registry: the one list of valid `model.fusion` values; the config and the strategies
# ask it.
FUSION_CLASSES: dict[str, type[Fusion]] = {
    "early_sum": EarlySum,
    "late_sum": LateSum,
    "concat": Concat,
    "gated": Gated,
    "film": FiLM,
}
FUSIONS = tuple(FUSION_CLASSES)
#: fusions whose fused logits are a sum of per-modality parts (thesis Sec. 3.2.1)
SYMMETRIC = tuple(name for name, cls in FUSION_CLASSES.items() if cls.symmetric)
#: fusions of exactly two modalities, a control and a modulated one (Sec. 2.1.3)
TWO_MODALITY = tuple(name for name, cls in FUSION_CLASSES.items() if not cls.symmetric)


def build_fusion(name: str, modalities, dim: int, num_classes: int, cosine: bool, scale: float,
                 control: str | None = None) -> Fusion:
    if name not in FUSION_CLASSES:
        raise ValueError(problem("model.fusion", f"invalid value {name!r}", FUSIONS))
    cls = FUSION_CLASSES[name]
    if len(modalities) == 1 and not cls.symmetric:
        cls = LateSum  # a single-modality baseline has nothing to gate: a plain linear head
    kwargs = {"control": control} if not cls.symmetric else {}
    return cls(modalities, dim, num_classes, cosine, scale, **kwargs)
