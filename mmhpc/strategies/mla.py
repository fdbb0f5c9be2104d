"""MLA, multimodal learning by alternating unimodal adaptation (Zhang et al. CVPR 2024; thesis Sec.
2.5.3).

- Shared head (Eq. 2.31): one linear layer H(e) = W e + b for every modality: early-sum's head,
whose
  masked output `fusion({m: e_m})` is exactly H(e_m). MLA therefore runs with
  `model.fusion=early_sum`.
- Training: per step, each modality in turn updates its encoder and the shared head on its own loss
  CE(H(e_m), y) (the thesis' Fig. 2.23).
- Gradient modification (`projection`, off by default as in the thesis' MLA baseline): the head's
gradient from modality m is projected
  away from the inputs the head has already been trained on, orthogonal weight modification as MLA
  describes it: W.grad <- W.grad P, then P <- P - P r r^T P / (alpha + r^T P r) with r the
  batch-mean
  embedding of m (P = I at the start, the first update unprojected). The public MLA code never runs
  this (its parameter-name test does not match, so the projection is dead code); the AMST authors'
  MLA
  baseline (code/baseline/mla_new.py), which the thesis tables report, ran without it: the default.
  Unlike
  that dead code, P is not rescaled to unit Frobenius norm (which would shrink every head gradient
  by
  about 1/sqrt(D)) and alpha is constant instead of decaying within the epoch.
- Runtime fusion (evaluation and the training metrics' "fused"): per sample, sum_m w_m H(e_m) with
  entropy weights (Eq. 2.32-2.33, `mla_entropy_weights`: softmax over the class axis of each
  sample's
  logits, not over the batch as in the public code) or fixed weights (`weights`). Default fixed
  weights:
  the code base's (code/baseline/mla_new.py `reinitialize_metrics`): text 0.4, visual 0.25, audio
  0.35
  for the three modalities ("MLA default alpha for 3 modality dataset"), 0.5 each for two (the
  "default alpha of msum fusion"); other sets of modalities 1/M each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmhpc.rules.strategies import MLARules
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import mla_entropy_weights

#: code/baseline/mla_new.py: the fixed runtime-fusion weights it records for text-visual-audio
#: datasets
MLA_THREE_MODALITY_WEIGHTS = {"text": 0.4, "visual": 0.25, "audio": 0.35}


def mla_default_weights(modalities) -> dict[str, float]:
    """The code base's fixed weights for audio-visual-text, else 1/M each (its 0.5 / 0.5 for
    two)."""
    if set(modalities) == set(MLA_THREE_MODALITY_WEIGHTS):
        return {m: MLA_THREE_MODALITY_WEIGHTS[m] for m in modalities}
    return {m: 1.0 / len(modalities) for m in modalities}


@register
class MLA(Strategy, MLARules):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.weights = {
            k: float(w)
            for k, w in (self.params.weights or mla_default_weights(self.modalities)).items()
        }
        dim = self.model.dim
        self.P = torch.eye(dim, device=self.model.fusion.head.weight.device)
        self.updates = 0  # head updates so far (the first one is not projected)

    def provenance(self) -> dict[str, dict]:
        out = super().provenance()
        if not self.params.weights and self.params.runtime_fusion == "fixed":
            out["strategy.params.weights"] = {
                "value": dict(self.weights),
                "source": "code base: code/baseline/mla_new.py reinitialize_metrics (text 0.4, "
                "visual 0.25, audio "
                "0.35 for three modalities; 0.5 each for two)"
                if len(self.weights) in (2, 3)
                else "assumed: 1/M each",
            }
        return out

    def fused_logits(self, embs):
        """Runtime fusion: per-sample entropy weights (Eq. 2.32-2.33) or fixed weights over
        H(e_m)."""
        z = {m: self.net.fusion({m: e}) for m, e in embs.items()}
        if self.params.runtime_fusion == "entropy":
            w = mla_entropy_weights(z)
            return sum(w[m].unsqueeze(1) * z[m].float() for m in z)
        return sum(self.weights[m] * z[m].float() for m in z)

    def train_step(self, batch, labels):
        logits: dict[str, torch.Tensor] = {}
        embs = self.net.encode(batch)
        probe = self.probe_loss(embs, labels, logits)
        for m in self.modalities:
            z = self.net.fusion({m: embs[m]})
            loss = F.cross_entropy(z, labels)
            logits[m] = z.detach()
            self.optimizer.zero_grad(set_to_none=True)
            self.runtime.backward(loss + probe if probe is not None else loss)
            probe = None  # the probes ride on the first update
            if self.params.projection:
                self.project(embs[m].detach())
            self.runtime.step(self.optimizer)
        with torch.no_grad():
            logits["fused"] = self.fused_logits({m: e.detach() for m, e in embs.items()})
        return StepOutput(logits)

    @torch.no_grad()
    def project(self, features: torch.Tensor) -> None:
        """Orthogonal weight modification of the shared head's gradient, then the update of P."""
        weight = self.model.fusion.head.weight
        if self.updates and weight.grad is not None:
            weight.grad = (weight.grad.float() @ self.P).to(weight.grad.dtype)
        # [D, 1], the mean over the global batch: every DDP process projects alike
        r = self.runtime.mean(features.float().mean(0, keepdim=True)).t().to(self.P.device)
        k = self.P @ r
        self.P -= (k @ k.t()) / (self.params.projection_alpha + (r.t() @ k))
        self.updates += 1

    def extra_state(self) -> dict:
        return {"P": self.P.cpu(), "updates": self.updates}

    def load_extra_state(self, state: dict) -> None:
        self.P = state["P"].to(self.P.device)
        self.updates = state["updates"]
