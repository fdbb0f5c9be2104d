"""Naive joint training and Alternating training (thesis Sec. 3.2, Alg. 2 and 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmhpc.rules.strategies import AlternatingRules, NaiveRules
from mmhpc.strategies.base import StepOutput, Strategy, register


@register
class Naive(Strategy, NaiveRules):
    """One joint loss on the fused logits; every parameter updated every step (the thesis'
    baseline)."""

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused = out["embs"], out["fused"]
        logits = {
            "fused": fused.detach(),
            **{f"probe/{m}": z.detach() for m, z in out["probes"].items()},
        }
        loss = F.cross_entropy(fused, labels) + sum(
            F.cross_entropy(z, labels) for z in out["probes"].values()
        )
        self.update(loss)
        with torch.no_grad():  # per-modality logits for the metrics only
            logits.update({m: self.net.fusion({m: e.detach()}) for m, e in embs.items()})
        return StepOutput(logits)


@register
class Alternating(Strategy, AlternatingRules):
    """Each modality optimised on its own masked loss, one update per modality per step.

    Sum/concat (Alg. 2): L_i from the fusion with the other embeddings masked by zeros, update
    (theta_f, theta_i). Gated/FiLM (Alg. 3): first update theta_f on the unmasked fused loss, then
    per modality the switched-and-masked loss. Subclasses choose which modalities train via
    `begin_epoch`.
    """

    def train_step(self, batch, labels):
        logits: dict[str, torch.Tensor] = {}
        embs = self.net.encode(batch)
        probe = self.probe_loss(embs, labels, logits)
        if not self.model.fusion.symmetric:
            # Alg. 3 line 3: the fusion learns from all unmasked embeddings; encoders are not
            # touched.
            fused = self.fused_logits({m: e.detach() for m, e in embs.items()})
            self.update(F.cross_entropy(fused, labels))
        for m in self.modalities:
            z = self.net.fusion({m: embs[m]})
            loss = F.cross_entropy(z, labels)
            logits[m] = z.detach()
            if m in self.active:
                # probes ride on the first update; their graph is separate from the encoders'
                self.update(loss + probe if probe is not None else loss)
                probe = None
        if probe is not None:  # no modality trained this step: the probes still learn
            self.update(probe)
        with torch.no_grad():
            logits["fused"] = self.fused_logits({m: e.detach() for m, e in embs.items()})
        return StepOutput(logits)
