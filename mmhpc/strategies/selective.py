"""Entropy and Reliability training (thesis Sec. 3.3.2, Alg. 5): one modality optimised per epoch.

After each epoch the next modality is chosen from that epoch's validation metrics: Entropy training
takes the lowest bias (Eq. 3.5-3.6), Reliability training the highest reliability (Eq. 3.7, train
loss / validation loss of the modality's masked head). The step itself is Alternating training (Alg.
2 for sum/concat, Alg. 3 for gated/FiLM) with only the chosen modality updating.

- Cap: `train.epochs` is T, the optimisation epochs any one modality may get; the run stops as soon
as
  one modality reaches T, so it lasts at most M x T epochs (2T bimodal, 3T trimodal, Sec. 4.2).
- LR decay: `train.lr_decay` applies once any modality has `train.lr_decay_epoch` optimisation
epochs
  (Sec. 4.2: "when any single modality reaches 70"). The threshold counts optimisation epochs, the
  unit
  in which other strategies count epochs, so one config (T = 100, decay at 70) decays every strategy
  after the same share of a modality's training.
- First epoch(s): no validation metric exists before training, so the first `warmup` epochs (default
1)
  train every modality, as Alternating training does; every modality then has a meaningful bias and
  reliability to compare, and the warm-up counts towards each modality's optimisation epochs. With
  `warmup=0` the first epoch trains the first modality of `data.modalities`.
- Which split: Alg. 5 ranks "the mean entropy of modality m across the dataset" (Eq. 3.5) without
naming the
  split. Entropy training ranks the validation split's bias by default (`split=val`): it is measured
  with
  the epoch's final weights, without training augmentation, on the split Reliability already reads;
  the
  training split's bias (running over the epoch's steps, the curves of thesis Fig. 3.2 and Table
  4.4) is
  recorded every epoch as train bias/<m> and drives the choice with `split=train`.
- Cosine classifier: the thesis runs both with cosine heads (Sec. 3.3.2, 4.2), which remove the
logit
  scale so that bias measures direction only. A config without `model.cosine=true` is refused (the
  model
  is built before the strategy, so it cannot be switched on silently); `require_cosine=false` allows
  the ablation with linear heads.
"""
from __future__ import annotations

from typing import ClassVar

from mmhpc.rules.strategies import (
    EntropyRules,
    ReliabilityRules,
    SelectiveRules,
)
from mmhpc.strategies.base import register
from mmhpc.strategies.formulas import select_modality
from mmhpc.strategies.joint import Alternating


class _Selective(Alternating, SelectiveRules):
    metric: ClassVar[str] = ""  # the validation metric Alg. 5 ranks ("bias" or "reliability")
    mode: ClassVar[str] = (
        ""  # `select_modality` mode: lowest ("entropy") or highest ("reliability")
    )

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.last: dict[str, float] | None = None  # the previous epoch's metric per modality

    def max_epochs(self) -> int:
        return len(self.modalities) * self.cfg.train.epochs

    def begin_epoch(self, epoch: int) -> list[str]:
        if epoch < self.params.warmup:
            self.active = list(self.modalities)
        elif self.last is None:
            self.active = [self.modalities[0]]
        else:
            self.active = [select_modality(self.last, self.mode)]
        return self.active

    def end_epoch(self, epoch, train, val) -> None:
        super().end_epoch(epoch, train, val)
        source = self._ranked(train, val)
        self.last = {m: source[f"{self.metric}/{m}"] for m in self.modalities}

    def _ranked(self, train: dict, val: dict) -> dict:
        """The epoch's metrics whose `metric` Alg. 5 ranks: validation's."""
        return val

    def should_stop(self, epoch: int) -> bool:
        return max(self.optimised.values()) >= self.cfg.train.epochs or super().should_stop(epoch)

    def stop_reason(self) -> str:
        done = ", ".join(f"{m} {n}" for m, n in self.optimised.items())
        return (
            f"a modality has had T = {self.cfg.train.epochs} optimisation epochs (thesis Alg. 5; "
            f"optimisation epochs: {done})"
        )

    def lr_factor(self, epoch: int) -> float:
        t = self.cfg.train
        return t.lr_decay if max(self.optimised.values()) >= t.lr_decay_epoch else 1.0

    def extra_state(self) -> dict:
        return {"last": self.last}

    def load_extra_state(self, state: dict) -> None:
        self.last = state["last"]


@register
class Entropy(_Selective, EntropyRules):
    """Alg. 5 with the bias metric: train the least confident modality (lowest B_m, Eq. 3.6)."""

    metric = "bias"
    mode = "entropy"

    def _ranked(self, train: dict, val: dict) -> dict:
        return train if self.params.split == "train" else val


@register
class Reliability(_Selective, ReliabilityRules):
    """Alg. 5 with reliability: train the modality that generalises best (highest R_m, Eq. 3.7)."""

    metric = "reliability"
    mode = "reliability"
