"""Pieces the balancing baselines share: per-modality components of the fused prediction, scores
that agree across DDP processes, one optimiser group per modality, and the joint step's metric
logits.

The formulas themselves live in `formulas.py`; this module only wires them to the model.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.distributed as dist
from torch import nn

from mmhpc.models.fusion import Concat, EarlySum, Fusion
from mmhpc.strategies.formulas import correct_class_score


def unimodal_logits(net, embs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each modality's additive part of the fused logits: W_m e_m + b / M (the OPM/OGM-GE paper Eq.
    6).

    The masked fusion `net.fusion({m: e_m})` carries the whole shared bias b; the OPM/OGM-GE paper
    splits it into M parts, so the parts sum to the fused logits. Late-sum has one bias per branch
    (already additive), cosine heads have none. `net`: the strategy's `mmhpc.system.runtime.Net`.
    """
    parts = {m: net.fusion({m: e}) for m, e in embs.items()}
    fusion: Fusion = net.model.fusion
    head = getattr(fusion, "head", None)
    if (
        isinstance(fusion, (EarlySum, Concat))
        and isinstance(head, nn.Linear)
        and head.bias is not None
    ):
        shared = head.bias * (len(fusion.modalities) - 1) / len(fusion.modalities)
        parts = {m: z - shared for m, z in parts.items()}
    return parts


def batch_scores(logits: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """s [M] in the order of `logits`: sum over the (global) batch of softmax(z_m)[y] (the
    OPM/OGM-GE paper Eq. 6, the MLB paper Eq. 4). The scores stay on the device and are summed over
    DDP processes there (so every process takes the same balancing decision); a strategy that needs
    host numbers reads them in one copy (`.tolist()`)."""
    scores = torch.stack([correct_class_score(z, labels) for z in logits.values()])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(scores)
    return scores


def step_logits(net, embs: Mapping[str, torch.Tensor], fused: torch.Tensor,
                unimodal: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached logits of one joint step for the training metrics: fused, probes and masked
    fusion."""
    logits = {"fused": fused.detach(), **{f"probe/{m}": z.detach() for m, z in unimodal.items()}}
    with torch.no_grad():
        logits.update({m: net.fusion({m: e.detach()}) for m, e in embs.items()})
    return logits


class ModalityGroups:
    """Mixin: one optimiser group per modality branch (encoder and projection) plus one for the
    rest.

    The trainer sets every group's rate to `train.lr` x the epoch's decay factor before
    `begin_epoch`; that rate is kept as `epoch_lr`, and `set_modality_lr` gives each branch its own
    rate on top of it. The groups take the optimiser and its defaults (momentum, weight decay) from
    `Strategy.build_optimizer`.
    """

    def build_optimizer(self) -> torch.optim.Optimizer:
        base = super().build_optimizer()
        branches = {
            m: [p for p in self.model.branch_parameters(m) if p.requires_grad]
            for m in self.model.modalities
        }
        in_branch = {id(p) for ps in branches.values() for p in ps}
        shared = [p for p in self.model.parameters() if p.requires_grad and id(p) not in in_branch]
        groups = [{"params": ps, "modality": m} for m, ps in branches.items()] + [
            {"params": shared, "modality": None}
        ]
        return type(base)(groups, **base.defaults)

    def begin_epoch(self, epoch: int) -> list[str]:
        self.epoch_lr = self.optimizer.param_groups[-1]["lr"]
        return super().begin_epoch(epoch)

    def set_modality_lr(self, lrs: Mapping[str, float]) -> None:
        for group in self.optimizer.param_groups:
            if group["modality"] is not None:
                group["lr"] = lrs[group["modality"]]

    def modality_lr(self) -> dict[str, float]:
        return {
            g["modality"]: g["lr"] for g in self.optimizer.param_groups if g["modality"] is not None
        }


class ModulationWindow:
    """Mixin: the balancing acts from epoch `params.start_epoch` to `params.end_epoch` (inclusive;
    None = to the end), and plain joint training runs outside; `modulating` says which holds this
    epoch."""

    modulating = True  # before the first `begin_epoch`

    def begin_epoch(self, epoch: int) -> list[str]:
        p = self.params
        self.modulating = p.start_epoch <= epoch and (p.end_epoch is None or epoch <= p.end_epoch)
        return super().begin_epoch(epoch)


def dataset_default(given, table: Mapping, cfg, fallback):
    """`given` when the user set it, else the per-dataset default (the MLB appendix Table 2 gives
    CREMA-D and AVE values, some per fusion; other datasets take `fallback`)."""
    if given is not None:
        return given
    return table.get((cfg.data.dataset, cfg.model.fusion), table.get(cfg.data.dataset, fallback))
