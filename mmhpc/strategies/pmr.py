"""PMR, prototypical modal rebalance (Fan et al. CVPR 2023; thesis Eq. 2.30), as the thesis code
base runs it.

L = L_fused + sum_m beta_m L_PCE,m - mu L_r (the probes learn on their own, detached, as
everywhere).

- Prototypes (AMST repository code/baseline/pmr3_new.py, `calculate_prototype`): before every epoch
of the
  modulation window, the class means of each modality's embeddings over the first `fraction` of the
  batches of `split`, in evaluation mode without gradients, blended with the previous ones,
  c <- (1 - momentum) c + momentum c_prev (`momentum` 0.2). A class without samples keeps its
  previous
  prototype (the code base divides by zero there); at the first estimate it starts at the mean
  embedding.
  Split and fraction as the code base ran them (`before_train_epoch`; Jobs/pmr.sh "Factor for AVE is
  1.0,
  for others is 0.1"): on AVE the whole validation split in file order (`split=val`,
  `fraction=1.0`),
  elsewhere the first 10 % of that epoch's shuffled training batches (`split=train`,
  `fraction=0.1`).
- PCE: cross-entropy of the prototype classifier -||e_m - c_k|| (`pmr_prototype_logits`), weighted
by
  beta_m = alpha for a modality whose prototype score is below the others' (rho < 1, the lagging
  one),
  else 0, from this batch's scores (the code base's bimodal ratio; its M-modality form here).
- Window: the prototype terms act in epochs `start_epoch`..`end_epoch` (0..70 in the code base).
- PER: the code base has no entropy regulariser (mu = 0, thesis Fig. 2.21 "ignoring the PER
  component"); thesis Eq. 2.30 and the PMR paper subtract mu x the prototype-prediction entropy of
  the
  dominant modality (rho > 1) "during the early training stage": `mu=1` with `per_end_epoch` its
  last epoch.
Scores, weights and regulariser stay on the device: a step makes no host synchronisation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmhpc.rules.strategies import PMRRules
from mmhpc.strategies.balancing import ModulationWindow, batch_scores, step_logits
from mmhpc.strategies.base import StepOutput, Strategy, register
from mmhpc.strategies.formulas import (
    discrepancy_ratio_tensor,
    pmr_class_sums,
    pmr_coefficients,
    pmr_entropy_regulariser,
    pmr_prototype_logits,
    pmr_prototypes_from_sums,
)

#: the code base's prototype passes per dataset (pmr3_new.py `before_train_epoch`, Jobs/pmr.sh
#: FACTOR)
PMR_PROTOTYPE_DATA = {"ave": ("val", 1.0)}
PMR_DEFAULT_PROTOTYPE_DATA = ("train", 0.1)


@register
class PMR(ModulationWindow, Strategy, PMRRules):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.prototypes: dict[str, torch.Tensor] | None = None
        self.per = False  # the entropy regulariser acts this epoch
        split, fraction = PMR_PROTOTYPE_DATA.get(self.cfg.data.dataset, PMR_DEFAULT_PROTOTYPE_DATA)
        self.split = self.params.split or split
        self.fraction = self.params.fraction or fraction

    def begin_epoch(self, epoch: int) -> list[str]:
        active = super().begin_epoch(epoch)
        last = (
            self.params.per_end_epoch
            if self.params.per_end_epoch is not None
            else self.params.end_epoch
        )
        self.per = self.modulating and self.params.mu > 0 and (last is None or epoch <= last)
        if self.modulating:
            self.prototypes = self.compute_prototypes(epoch)
        return active

    @torch.no_grad()
    def compute_prototypes(self, epoch: int) -> dict[str, torch.Tensor]:
        """Class means of the embeddings of the first `fraction` of the batches of `split` (the
        training split in this epoch's shuffled order, the validation split in file order),
        blended."""
        if self.data is None:
            raise RuntimeError(
                "PMR computes its prototypes from the training data: give the strategy a "
                "StrategyData (the trainer does)"
            )
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, torch.Tensor] = {}
        counts = None
        for batch in self.data.batches(
            self.split, epoch, self.fraction, shuffle=self.split == "train"
        ):
            embs = self.net.encode(batch)
            for m, e in embs.items():
                s, c = pmr_class_sums(e, batch["label"].to(e.device), self.model.num_classes)
                sums[m] = sums[m] + s if m in sums else s
            counts = c if counts is None else counts + c
        self.model.train(was_training)
        new = {}
        for m, s in sums.items():
            previous = None if self.prototypes is None else self.prototypes[m].to(s.device)
            first = previous is None
            if first:  # classes not seen yet start at the mean embedding
                previous = (s.sum(0) / counts.sum()).expand(self.model.num_classes, -1)
            new[m] = pmr_prototypes_from_sums(
                s, counts, previous, 0.0 if first else self.params.momentum
            )
        # rank 0's: DDP processes hold their own BatchNorm statistics, so their prototypes could
        # differ
        return self.runtime.broadcast(new)

    def provenance(self) -> dict[str, dict]:
        out = super().provenance()
        source = (
            "code base: code/baseline/pmr3_new.py before_train_epoch (AVE: the validation loader) "
            "and "
            "Jobs/pmr.sh (factor 1.0 for AVE, 0.1 for the others)"
        )
        if self.params.split is None:
            out["strategy.params.split"] = {"value": self.split, "source": source}
        if self.params.fraction is None:
            out["strategy.params.fraction"] = {"value": self.fraction, "source": source}
        return out

    def prototype_logits(self, embs) -> dict[str, torch.Tensor]:
        return {m: pmr_prototype_logits(embs[m].float(), self.prototypes[m].to(embs[m].device))
                for m in self.modalities}

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused, probes = out["embs"], out["fused"], out["probes"]
        loss = F.cross_entropy(fused, labels) + sum(
            F.cross_entropy(z, labels) for z in probes.values()
        )
        proto = None
        if self.prototypes is not None and self.modulating:
            proto = self.prototype_logits(embs)
            rho = discrepancy_ratio_tensor(batch_scores(proto, labels))
            pce = torch.stack([F.cross_entropy(proto[m], labels) for m in self.modalities])
            loss = loss + (pmr_coefficients(rho, self.params.alpha).to(pce.dtype) * pce).sum()
            if self.per:
                reg = torch.stack([pmr_entropy_regulariser(proto[m]) for m in self.modalities])
                loss = loss - self.params.mu * ((rho > 1).to(reg.dtype) * reg).sum()
        self.update(loss)
        logits = step_logits(self.net, embs, fused, probes)
        logits.update({f"proto/{m}": z.detach() for m, z in (proto or {}).items()})
        return StepOutput(logits)

    @torch.no_grad()
    def eval_logits(self, batch):
        out = super().eval_logits(batch)
        if self.prototypes is not None:
            embs = self.net.encode(batch)
            out.update({f"proto/{m}": z.float() for m, z in self.prototype_logits(embs).items()})
        return out

    def extra_state(self) -> dict:
        return {"prototypes": self.prototypes}

    def load_extra_state(self, state: dict) -> None:
        self.prototypes = state["prototypes"]
