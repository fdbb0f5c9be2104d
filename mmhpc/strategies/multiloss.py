"""Strategies with one loss per head: Multi-Loss and MLB (MLB paper), Gradient Blending (thesis Eq.
2.29).

The unimodal classifiers f_i (the MLB paper Fig. 1b-c; the helper classifiers of thesis Fig. 2.20)
are the model's linear probes applied to the encoder outputs *without* detaching them, so their
losses train the encoders; the "probe/<m>" metrics of these runs are those classifiers. Any fusion
works: the fused head only contributes the multimodal loss.

- Multi-Loss (the MLB paper Eq. 3): L = CE(f(X), y) + sum_i CE(f_i(X_i), y).
- MLB (the MLB paper Eq. 2-7): the same loss; encoder i's learning rate is scaled by k_i each step,
from
this
  batch's unimodal scores (`mlb_coefficient_tensor`: accelerate a lagging modality up to beta_max,
  decelerate a leading one, k -> 1 once they agree). Eq. 2 scales the update lr x k_i: the
  optimiser's
  update of encoder i's group is multiplied by k_i on the device (SGD's and Adam's updates are
  linear in
  the rate, so this is lr x k_i exactly; not on the gradient, so Adam's normalisation cannot undo
  it).
  k_i never reaches the host: a step makes no host synchronisation.
- Gradient Blending (thesis Eq. 2.29; Wang et al. 2020): L = w_fused L_multi + sum_m w_m L_m. Fixed
  `weights`, or (default) weights re-estimated every `interval` epochs from the overfitting-to-
  generalisation ratio between two estimates (`gradient_blending_weights`) of the heads' train
  losses
  and their losses on a part of the training data held out of training (`holdout`, 10 %, seeded; the
  GB
  paper's held-out set), so the validation split stays for model selection alone; `holdout=0` uses
  the
  validation split instead. Equal weights until the first estimate. Deviation: the train losses are
  the
  epoch's running training losses, not a separate pass over the training set at the checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmhpc.rules.strategies import BlendRules, MLBRules, MultiLossRules
from mmhpc.strategies.balancing import ModalityGroups, batch_scores, dataset_default, step_logits
from mmhpc.strategies.base import StepOutput, register
from mmhpc.strategies.data import split_held_out
from mmhpc.strategies.formulas import gradient_blending_weights, mlb_coefficient_tensor
from mmhpc.strategies.joint import Naive

#: the MLB appendix Table 2 (ResNet): CREMA-D late-linear 5.0, FiLM 0.5, gated 5.0; AVE late-linear
#: 2.0
MLB_DEFAULT_ALPHA = {"cremad": 5.0, ("cremad", "film"): 0.5, "ave": 2.0}
#: alpha on datasets MLB's paper gives no value for (MVSA, IEMOCAP, UR-FUNNY; the code base has no
#: MLB)
MLB_FALLBACK_ALPHA = 5.0


@register
class MultiLoss(Naive, MultiLossRules):
    def unimodal(self, embs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """f_i(X_i): the probe heads on the encoder outputs, gradients flowing into the encoders."""
        return {m: self.model.probes[m](e) for m, e in embs.items()}

    def combine(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(losses.values())

    def before_update(self, unimodal: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        pass

    def train_step(self, batch, labels):
        out = self.net(batch)
        embs, fused = out["embs"], out["fused"]
        uni = self.unimodal(embs)
        losses = {
            "fused": F.cross_entropy(fused, labels),
            **{m: F.cross_entropy(z, labels) for m, z in uni.items()},
        }
        loss = self.combine(losses)
        self.before_update(uni, labels)
        self.update(loss)
        return StepOutput(step_logits(self.net, embs, fused, uni))


@register
class MLB(ModalityGroups, MultiLoss, MLBRules):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.alpha = dataset_default(
            self.params.alpha, MLB_DEFAULT_ALPHA, self.cfg, MLB_FALLBACK_ALPHA
        )
        self.epoch_lr = self.cfg.train.lr
        self.coeffs: torch.Tensor | None = (
            None  # the last step's k [M] (order of the unimodal heads), on the device
        )
        self._order = list(self.modalities)

    def provenance(self) -> dict[str, dict]:
        out = super().provenance()
        if self.params.alpha is None:
            key = (self.cfg.data.dataset, self.cfg.model.fusion)
            published = key in MLB_DEFAULT_ALPHA or self.cfg.data.dataset in MLB_DEFAULT_ALPHA
            out["strategy.params.alpha"] = {
                "value": self.alpha,
                "source": "MLB appendix (MLB appendix) Table 2, tuned with Adam" if published else
                "assumed: MLB's papers give no value for this dataset (Table 2: CREMA-D, AVE); "
                "CREMA-D's 5.0"}
        return out

    def before_update(self, unimodal, labels) -> None:
        self.coeffs = mlb_coefficient_tensor(
            batch_scores(unimodal, labels), self.alpha, self.params.beta_max
        )
        self._order = list(unimodal)

    def update(self, loss) -> None:
        """The optimiser's step, then each encoder group's update scaled by its k_i: p <- p0 + k_i
        (p - p0)."""
        groups = [g for g in self.optimizer.param_groups if g["modality"] is not None]
        before = [[p.detach().clone() for p in g["params"]] for g in groups]
        super().update(loss)
        with torch.no_grad():
            for g, p0 in zip(groups, before):
                if not p0:
                    continue
                params = [p.detach() for p in g["params"]]
                k = self.coeffs[self._order.index(g["modality"])].to(
                    params[0].device, non_blocking=True
                )
                delta = torch._foreach_sub(params, p0)
                torch._foreach_mul_(delta, k - 1.0)
                torch._foreach_add_(params, delta)


#: the name of the held-out part of the training split in the run's datasets
HOLDOUT = "gb_holdout"


@register
class GradientBlending(MultiLoss, BlendRules):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        heads = ["fused", *self.modalities]
        self.weights = dict(self.params.weights) or {k: 1.0 / len(heads) for k in heads}
        self.reference: dict | None = None  # the (train, val) losses of the last estimate

    def combine(self, losses):
        return sum(self.weights[k] * v for k, v in losses.items())

    @classmethod
    def split_datasets(cls, cfg, datasets: dict) -> dict:
        p = cls.parse_params(cfg.strategy.params)
        if p.weights or p.holdout == 0:  # no estimate, or one on the validation split
            return datasets
        from mmhpc.data.dataset import PreparedDataset

        train = datasets["train"]
        plain = PreparedDataset(train.root, "train", train.modalities, train=False, verify="none")
        part, held = split_held_out(train, p.holdout, cfg.train.seed, plain)
        return {**datasets, "train": part, HOLDOUT: held}

    @torch.no_grad()
    def held_out_losses(self) -> dict[str, float]:
        """Mean CE of the fused head and each unimodal head on the held-out part of the training
        data."""
        was_training = self.model.training
        self.model.eval()
        total, n = None, 0
        for batch in self.data.batches(HOLDOUT):
            labels = batch["label"]
            logits = self.eval_logits(batch)
            heads = [logits["fused"]] + [logits[f"probe/{m}"] for m in self.modalities]
            losses = torch.stack([F.cross_entropy(z, labels, reduction="sum") for z in heads])
            total = losses if total is None else total + losses
            n += len(labels)
        self.model.train(was_training)
        return dict(
            zip(["loss/fused", *(f"loss/probe/{m}" for m in self.modalities)], (total / n).tolist())
        )

    def end_epoch(self, epoch, train, val) -> None:
        super().end_epoch(epoch, train, val)
        if self.params.weights or (epoch + 1) % self.params.interval:
            return
        held = self.held_out_losses() if self.params.holdout > 0 else val
        key = {"fused": "loss/fused", **{m: f"loss/probe/{m}" for m in self.modalities}}
        now = ({k: train[v] for k, v in key.items()}, {k: held[v] for k, v in key.items()})
        if self.reference is not None:
            (t0, v0), (t1, v1) = self.reference, now
            self.weights = gradient_blending_weights(t0, t1, v0, v1)
        self.reference = now

    def extra_state(self) -> dict:
        return {"weights": dict(self.weights), "reference": self.reference}

    def load_extra_state(self, state: dict) -> None:
        self.weights, self.reference = dict(state["weights"]), state["reference"]
