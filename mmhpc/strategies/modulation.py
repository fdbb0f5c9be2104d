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

import torch
import torch.nn.functional as F

from mmhpc.rules.strategies import OGMGERules, OnTheFlyRules, OPMRules
from mmhpc.strategies.balancing import (
    ModulationWindow,
    batch_scores,
    step_logits,
    unimodal_logits,
)
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import (
    ogm_coefficient_tensor,
    ogm_ge_modulate,
    opm_drop_tensor,
    opm_feature_scale,
    opm_keep,
)


class _OnTheFly(ModulationWindow, Strategy, OnTheFlyRules):
    def parts(self, embs) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return unimodal_logits(self.net, {m: e.detach() for m, e in embs.items()})


@register
class OGMGE(_OnTheFly, OGMGERules):
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


@register
class OPM(_OnTheFly, OPMRules):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        device = next(self.model.parameters()).device
        self.q = torch.zeros(
            len(self.modalities), device=device
        )  # drop probabilities [M] for the next step

    def drop(self, embs: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Alg. 1: per-sample feature dropping with probabilities q; returns the features and which
        samples kept at least one modality (the others carry no signal and are left out of the
        loss)."""
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
