"""On-the-fly modulation (OPM/OGM-GE paper): OGM-GE slows the dominant encoder's gradients, OPM
drops its features.

Both monitor each modality's share of the fused prediction: the discriminative score s_m (Eq. 6, the
additive part W_m e_m + b/M of the fused logits, `unimodal_logits`) and its ratio rho_m to the other
modalities' scores (Eq. 7). Both are defined for fusions whose logits are such a sum: early-sum,
late-sum and concat, for any number of modalities. Scores, coefficients, masks and noise stay on the
device: a step makes no host synchronisation.

- OGM-GE (thesis Eq. 2.27; the OPM/OGM-GE paper Alg. 2): after backward and before the optimiser
step, encoder
  gradients become k_m g + h, h Gaussian noise with the gradient's own spread (Eq. 16, the
  generalisation enhancement; `ge=false` gives plain OGM, k_m g). Defaults are the thesis code
  base's
  (AMST repository code/baseline/ogm3_new.py): k = 1 - tanh(alpha rho) on the modality with the
  highest
  ratio only, alpha 0.1, only 4-D (convolution) gradients, epochs 0-50. `variant=paper`,
  `weights=all`, `end_epoch=null` give the OPM/OGM-GE paper's Eq. 11 on every parameter for the
  whole run.
- OPM (Alg. 1): in the forward pass each sample drops modality m's feature with probability q_m from
  the previous iteration's scores (Eq. 8; q = 0 at the first step), kept features rescaled by
  1 / (1 - theta) (official code); the scores for the next q come from the undropped features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from mmhpc.errors import ConfigError
from mmhpc.strategies.balancing import (
    SYMMETRIC,
    ModulationWindow,
    batch_scores,
    require_symmetric,
    step_logits,
    unimodal_logits,
)
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import (
    OGM_VARIANTS,
    ogm_coefficient_tensor,
    ogm_ge_modulate,
    opm_drop_tensor,
    opm_feature_scale,
    opm_keep,
)

OGM_WEIGHTS = ("conv", "all")


class _OnTheFly(ModulationWindow, Strategy):
    fusions = SYMMETRIC

    @classmethod
    def check_config(cls, cfg) -> None:
        require_symmetric(
            cfg,
            f"strategy {cls.name} splits the fused logits into per-modality parts (the OPM/OGM-GE "
            "paper Eq. 6)",
        )
        super().check_config(cfg)

    def parts(self, embs) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return unimodal_logits(self.net, {m: e.detach() for m, e in embs.items()})


@dataclass
class OGMParams:
    alpha: float = (
        0.1  # thesis Fig. 2.19 "as specified in the original paper"; code base ogm3_new.py
    )
    #: "thesis": Eq. 2.27 on the top-ratio modality; "paper": the OPM/OGM-GE paper Eq. 11
    variant: Literal[OGM_VARIANTS] = "thesis"
    ge: bool = True  # add the generalisation-enhancement noise (OGM-GE); false: plain OGM
    #: "conv": only 4-D gradients (code base); "all": every branch parameter (Alg. 2)
    weights: Literal[OGM_WEIGHTS] = "conv"
    start_epoch: int = 0
    end_epoch: int | None = 50  # code base `modulation_ends` (inclusive); null: to the end


@register
class OGMGE(_OnTheFly):
    name = "ogm_ge"
    Params = OGMParams

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cls.parse_params(cfg.strategy.params)
        if p.alpha < 0:
            raise ConfigError(f"strategy.params.alpha: {p.alpha} must be >= 0")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.coeffs: torch.Tensor | None = (
            None  # the last step's k [M] (modality order), on the device
        )

    def coefficients(self) -> dict[str, float]:
        """The last step's k_m as host numbers (for tests and logs; a synchronisation)."""
        k = [1.0] * len(self.modalities) if self.coeffs is None else self.coeffs.tolist()
        return dict(zip(self.modalities, k))

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        loss = F.cross_entropy(fused, labels) + sum(
            F.cross_entropy(z, labels) for z in probes.values()
        )
        parts = self.parts(embs)
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.backward(loss)
        if self.modulating:
            scores = batch_scores({m: parts[m] for m in self.modalities}, labels)
            self.coeffs = ogm_coefficient_tensor(scores, self.params.alpha, self.params.variant)
            self.modulate()
        else:
            self.coeffs = None
        self.runtime.step(self.optimizer)
        return StepOutput(step_logits(self.net, embs, fused, probes))

    @torch.no_grad()
    def modulate(self) -> None:
        """g <- k_m g + h(g) on modality m's branch (h only with GE), between backward and step."""
        conv_only = self.params.weights == "conv"
        for i, m in enumerate(self.modalities):
            for p in self.model.branch_parameters(m):
                g = p.grad
                if g is None or (conv_only and g.dim() != 4):
                    continue
                k = self.coeffs[i].to(device=g.device, dtype=g.dtype)
                p.grad = ogm_ge_modulate(g, k) if self.params.ge else g * k


@dataclass
class OPMParams:
    q_base: float = 0.5  # base drop probability (official code 0.5)
    lam: float = 0.5  # lambda of Eq. 8 (official code 0.5)
    p_exe: float = 1.0  # chance that a batch is modulated at all (official code's knob; 1 = Alg. 1)
    start_epoch: int = 0
    end_epoch: int | None = None


@register
class OPM(_OnTheFly):
    name = "opm"
    Params = OPMParams

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cls.parse_params(cfg.strategy.params)
        for key, lo, hi in (("q_base", 0.0, 1.0), ("p_exe", 0.0, 1.0), ("lam", 0.0, float("inf"))):
            if not lo <= getattr(p, key) <= hi:
                raise ConfigError(
                    f"strategy.params.{key}: {getattr(p, key)} must lie in [{lo}, {hi}]"
                )

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        device = next(self.model.parameters()).device
        self.q = torch.zeros(
            len(self.modalities), device=device
        )  # drop probabilities [M] for the next step

    def drop(self, embs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Alg. 1: per-sample feature dropping with probabilities q; returns the features and which
        samples
        kept at least one modality (the others carry no signal and are left out of the loss)."""
        first = embs[self.modalities[0]]
        q = self.q.to(first.device)
        keep = opm_keep(q, first.shape[0], p_exe=self.params.p_exe, device=first.device)  # [N, M]
        scale = opm_feature_scale(q, [embs[m].shape[1] for m in self.modalities])
        dropped = {m: embs[m] * (keep[:, i] * scale).to(embs[m].dtype).unsqueeze(1)
                   for i, m in enumerate(self.modalities)}
        return dropped, keep.sum(1) > 0

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        if self.modulating:
            dropped, valid = self.drop(embs)
            per_sample = F.cross_entropy(self.net.fusion(dropped), labels, reduction="none")
            weight = valid.to(
                per_sample.dtype
            )  # the mean over the samples that kept a modality (0 if none)
            loss = (per_sample * weight).sum() / weight.sum().clamp_min(1)
        else:
            loss = F.cross_entropy(fused, labels)
        loss = loss + sum(F.cross_entropy(p, labels) for p in probes.values())
        parts = self.parts(embs)
        self.update(loss)
        if self.modulating:  # Eq. 8: this iteration's scores give the next iteration's q
            scores = batch_scores({m: parts[m] for m in self.modalities}, labels)
            self.q = opm_drop_tensor(scores, self.params.lam, self.params.q_base)
        return StepOutput(step_logits(self.net, embs, fused, probes))

    def drop_probabilities(self) -> dict[str, float]:
        return dict(zip(self.modalities, self.q.tolist()))

    def extra_state(self) -> dict:
        return {"q": self.drop_probabilities()}

    def load_extra_state(self, state: dict) -> None:
        self.q = torch.tensor([float(state["q"][m]) for m in self.modalities], device=self.q.device)
