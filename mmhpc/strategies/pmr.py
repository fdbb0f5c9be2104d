"""PMR, prototypical modal rebalance (Fan et al. CVPR 2023; thesis Eq. 2.30): L = L_sum + L_PCE - mu L_r.

- Prototypes: per modality, the class means of its embeddings (`pmr_prototypes_from_sums`), blended with the
  previous epoch's by `momentum` (official code 0.2).
- PCE: cross-entropy of the prototype classifier -||e_m - c_k|| (`pmr_prototype_logits`), weighted per
  step by `pmr_coefficients`: alpha for a modality whose prototype score is below the others' mean
  (rho < 1, the lagging one), 0 otherwise; rho from this batch's prototype scores (M-modality form).
- PER: minus mu times the prototype-prediction entropy of the dominant modality (rho > 1,
  `pmr_entropy_regulariser`), which holds back its early convergence.

Deviation (the trainer gives a strategy no loader of its own): the official code recomputes the
prototypes before every epoch in an extra pass over (a tenth of) the training set; here they are the
class means of the embeddings the previous epoch's training steps produced, with no extra pass. The
first epoch has no prototypes yet and trains the fused loss alone. A class the epoch never saw keeps its
previous prototype (at the very first estimate: the mean embedding of all classes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmhpc.errors import ConfigError
from mmhpc.strategies.balancing import SYMMETRIC, ModulationWindow, batch_scores, dataset_default, step_logits
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import discrepancy_ratios, pmr_coefficients, pmr_entropy_regulariser, \
    pmr_class_sums, pmr_prototype_logits, pmr_prototypes_from_sums

#: seed 004 Table 2 (late-linear, ResNet): CREMA-D 2.0, AVE 1.5; other datasets take 1.0
PMR_DEFAULT_ALPHA = {"cremad": 2.0, "ave": 1.5}


@dataclass
class PMRParams:
    alpha: float | None = None  # PCE weight of the lagging modality; None: PMR_DEFAULT_ALPHA
    mu: float = 1.0             # weight of the entropy regulariser (thesis Eq. 2.30: 1)
    momentum: float = 0.2       # blend with the previous prototypes (official code)
    start_epoch: int = 0
    end_epoch: int | None = None


@register
class PMR(ModulationWindow, Strategy):
    name = "pmr"
    Params = PMRParams
    fusions = SYMMETRIC  # the paper's sum and concatenation fusions
    # prototypes come from the embeddings each process saw: DDP processes would disagree
    parallelisms = ("single", "dp", "blp")

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cls.parse_params(cfg.strategy.params)
        if p.alpha is not None and p.alpha < 0 or p.mu < 0:
            raise ConfigError(f"strategy.params: alpha ({p.alpha}) and mu ({p.mu}) must be >= 0")
        if not 0.0 <= p.momentum <= 1.0:
            raise ConfigError(f"strategy.params.momentum: {p.momentum} must lie in [0, 1]")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.alpha = dataset_default(self.params.alpha, PMR_DEFAULT_ALPHA, self.cfg, 1.0)
        self.prototypes: dict[str, torch.Tensor] | None = None
        # this epoch's per-class embedding sums and counts, kept on the device: no host copy per step
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: torch.Tensor | None = None

    def prototype_logits(self, embs) -> dict[str, torch.Tensor]:
        return {m: pmr_prototype_logits(e.float(), self.prototypes[m].to(e.device)) for m, e in embs.items()}

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        loss = F.cross_entropy(fused, labels) + sum(F.cross_entropy(z, labels) for z in probes.values())
        proto = None
        if self.prototypes is not None and self.modulating:
            proto = self.prototype_logits(embs)
            scores = batch_scores(proto, labels)
            coeff, rho = pmr_coefficients(scores, self.alpha), discrepancy_ratios(scores)
            loss = loss + sum(coeff[m] * F.cross_entropy(z, labels) for m, z in proto.items() if coeff[m])
            loss = loss - self.params.mu * sum(pmr_entropy_regulariser(z) for m, z in proto.items() if rho[m] > 1)
        self.update(loss)
        for m, e in embs.items():
            sums, counts = pmr_class_sums(e, labels, self.model.num_classes)
            self._sums[m] = self._sums[m] + sums if m in self._sums else sums
        self._counts = counts if self._counts is None else self._counts + counts
        logits = step_logits(self.model, embs, fused, probes)
        logits.update({f"proto/{m}": z.detach() for m, z in (proto or {}).items()})
        return StepOutput(logits)

    def end_epoch(self, epoch, train, val) -> None:
        super().end_epoch(epoch, train, val)
        if self._counts is None:  # no training step this epoch: nothing new to learn from
            return
        new = {}
        for m, sums in self._sums.items():
            previous = None if self.prototypes is None else self.prototypes[m].to(sums.device)
            first = previous is None
            if first:  # classes not seen yet start at the mean embedding
                previous = (sums.sum(0) / self._counts.sum()).expand(self.model.num_classes, -1)
            new[m] = pmr_prototypes_from_sums(sums, self._counts, previous, 0.0 if first else self.params.momentum)
        self.prototypes = new
        self._sums, self._counts = {}, None

    @torch.no_grad()
    def eval_logits(self, batch):
        out = super().eval_logits(batch)
        if self.prototypes is not None:
            embs = self.model.encode(batch)
            out.update({f"proto/{m}": z.float() for m, z in self.prototype_logits(embs).items()})
        return out

    def extra_state(self) -> dict:
        return {"prototypes": self.prototypes}

    def load_extra_state(self, state: dict) -> None:
        self.prototypes = state["prototypes"]
