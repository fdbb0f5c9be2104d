"""On-the-fly modulation (seed 003): OGM-GE slows the dominant encoder's gradients, OPM drops its features.

Both monitor each modality's share of the fused prediction: the discriminative score s_m (Eq. 6, the
additive part W_m e_m + b/M of the fused logits, `unimodal_logits`) and the ratio rho_m of s_m to the
mean of the others (Eq. 7). Both are defined for fusions whose logits are such a sum: early-sum,
late-sum and concat, for any number of modalities (the M-modality form of Eq. 7).

- OGM-GE (Alg. 2; thesis Eq. 2.27): after backward and before the optimiser step, each encoder's
  gradient becomes k_m g + h, with k_m from Eq. 11 for this iteration's scores and h Gaussian noise with
  the gradient's own spread (Eq. 16, the generalisation enhancement). Alg. 2 adds h to every modality's
  encoder (k = 1 for the others). `ge=false` gives plain OGM (k_m g).
- OPM (Alg. 1): in the forward pass each sample drops modality m's feature with probability q_m from
  the previous iteration's scores (Eq. 8; q = 0 at the first step), kept features rescaled by
  1 / (1 - theta) (official code); the scores for the next q come from the undropped features.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmhpc.errors import ConfigError
from mmhpc.strategies.balancing import SYMMETRIC, ModulationWindow, batch_scores, dataset_default, \
    require_symmetric, step_logits, unimodal_logits
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import ogm_coefficients, ogm_ge_modulate, opm_drop_probability, opm_feature_scale, \
    opm_mask

#: seed 004 Table 2 (late-linear, ResNet): CREMA-D 1.0, AVE 0.8; other datasets take 1.0
OGM_DEFAULT_ALPHA = {"cremad": 1.0, "ave": 0.8}


class _OnTheFly(ModulationWindow, Strategy):
    fusions = SYMMETRIC

    @classmethod
    def check_config(cls, cfg) -> None:
        require_symmetric(cfg, f"strategy {cls.name} splits the fused logits into per-modality parts (seed 003 "
                               "Eq. 6)")
        super().check_config(cfg)

    def parts(self, embs) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return unimodal_logits(self.model.fusion, {m: e.detach() for m, e in embs.items()})


@dataclass
class OGMParams:
    alpha: float | None = None  # None: OGM_DEFAULT_ALPHA of the dataset
    variant: str = "paper"      # "paper": seed 003 Eq. 11; "thesis": thesis Eq. 2.27 (see ogm_coefficients)
    ge: bool = True             # add the generalisation-enhancement noise (OGM-GE); false: plain OGM
    start_epoch: int = 0
    end_epoch: int | None = None  # seed 004: muting the modulation late brought no benefit


@register
class OGMGE(_OnTheFly):
    name = "ogm_ge"
    Params = OGMParams

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cls.parse_params(cfg.strategy.params)
        if p.variant not in ("paper", "thesis"):
            raise ConfigError(f"strategy.params.variant: invalid value {p.variant!r}; valid choices: paper, thesis")
        if p.alpha is not None and p.alpha < 0:
            raise ConfigError(f"strategy.params.alpha: {p.alpha} must be >= 0")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.alpha = dataset_default(self.params.alpha, OGM_DEFAULT_ALPHA, self.cfg, 1.0)
        self.coeffs = {m: 1.0 for m in self.modalities}  # the last step's k_m

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        loss = F.cross_entropy(fused, labels) + sum(F.cross_entropy(z, labels) for z in probes.values())
        parts = self.parts(embs)
        self.coeffs = (ogm_coefficients(batch_scores(parts, labels), self.alpha, self.params.variant)
                       if self.modulating else {m: 1.0 for m in self.modalities})
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.modulating:
            self.modulate()
        self.optimizer.step()
        return StepOutput(step_logits(self.model, embs, fused, probes))

    @torch.no_grad()
    def modulate(self) -> None:
        """Alg. 2: g <- k_m g + h(g) on modality m's encoder (h only with GE), between backward and step."""
        for m, k in self.coeffs.items():
            for p in self.model.branch_parameters(m):
                if p.grad is not None:
                    p.grad = ogm_ge_modulate(p.grad, k) if self.params.ge else p.grad * k


@dataclass
class OPMParams:
    q_base: float = 0.5  # base drop probability (official code 0.5)
    lam: float = 0.5     # lambda of Eq. 8 (official code 0.5)
    p_exe: float = 1.0   # chance that a batch is modulated at all (official code's knob; 1 = Alg. 1)
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
                raise ConfigError(f"strategy.params.{key}: {getattr(p, key)} must lie in [{lo}, {hi}]")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.q = {m: 0.0 for m in self.modalities}  # drop probabilities for the next step

    def drop(self, embs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Alg. 1: per-sample feature dropping with probabilities q; returns the features and which samples
        kept at least one modality (the others carry no signal and are left out of the loss)."""
        n = next(iter(embs.values())).shape[0]
        device = next(iter(embs.values())).device
        keep = opm_mask(self.q, n, p_exe=self.params.p_exe, device=device)
        scale = opm_feature_scale(self.q, {m: e.shape[1] for m, e in embs.items()})
        dropped = {m: e * (keep[m] * scale).to(e.dtype).unsqueeze(1) for m, e in embs.items()}
        return dropped, torch.stack(list(keep.values())).sum(0) > 0

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        if self.modulating:
            dropped, valid = self.drop(embs)
            z = self.model.fusion(dropped)
            loss = F.cross_entropy(z[valid], labels[valid]) if bool(valid.any()) else z.sum() * 0
        else:
            loss = F.cross_entropy(fused, labels)
        loss = loss + sum(F.cross_entropy(p, labels) for p in probes.values())
        parts = self.parts(embs)
        self.update(loss)
        if self.modulating:  # Eq. 8: this iteration's scores give the next iteration's q
            self.q = opm_drop_probability(batch_scores(parts, labels), self.params.lam, self.params.q_base)
        return StepOutput(step_logits(self.model, embs, fused, probes))

    def extra_state(self) -> dict:
        return {"q": dict(self.q)}

    def load_extra_state(self, state: dict) -> None:
        self.q = dict(state["q"])
