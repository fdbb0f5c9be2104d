"""Evaluation metrics of the thesis (Sec. 3.1, Eq. 4.1, Appendix A) and the MLB appendix (ECE, Eq.
10).

Pure functions: tensors or plain numbers in, tensors or floats out. `MetricAccumulator` is the only
stateful piece; it sums per-head statistics over batches without forcing a device sync per batch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def _check_batch(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits [N, C] and labels [N], got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError("empty batch")


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class equals the label (ties go to the lowest class
    index)."""
    _check_batch(logits, labels)
    return (logits.argmax(dim=1) == labels).float().mean().item()


def ibf(multimodal_acc: Mapping[str, float], single_acc: Mapping[str, float]) -> float:
    """Imbalance factor, thesis Eq. 3.1: IBF = 1 - mean_m min(macc_m / sacc_m, 1).

    `multimodal_acc` is each modality's accuracy inside the multimodal model (its probe),
    `single_acc` the accuracy of the same modality trained alone; any common unit (fraction or
    percent). The "E[sum_m ...]" of Eq. 3.1 is the mean over modalities: Table 4.1 (CREMA-D Naive,
    0.349) needs it.
    """
    if not multimodal_acc:
        raise ValueError("ibf needs at least one modality")
    ratios = []
    for m, macc in multimodal_acc.items():
        if m not in single_acc:
            raise ValueError(f"ibf: modality {m!r} has no single-modality accuracy")
        if single_acc[m] <= 0:
            raise ValueError(
                f"ibf: single-modality accuracy of {m!r} is {single_acc[m]}, must be > 0"
            )
        ratios.append(min(macc / single_acc[m], 1.0))
    return 1.0 - sum(ratios) / len(ratios)


def ibf_accuracy_keys(fusion: str, modalities) -> dict[str, str]:
    """Which accuracy `ibf` reads for each modality: the masked fusion head `acc/<m>` for sum and
    concat fusion, the probe `acc/probe/<m>` (thesis Sec. 2.2) for gated and FiLM fusion
    (`TWO_MODALITY`: a modality cannot be read from their fused head with the others masked as in
    Sec. 3.2.1, and the thesis code base records no
    per-modality accuracy for them, its `reinitialize_metrics`, only the probes')."""
    from mmhpc.models.fusion import (
        TWO_MODALITY,
    )  # the fusion registry (imports the model code: when asked)

    prefix = "acc/probe/" if fusion in TWO_MODALITY else "acc/"
    return {m: f"{prefix}{m}" for m in modalities}


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample prediction entropy in nats, thesis Eq. 3.4: H(p) = -sum_i p_i log p_i, p =
    softmax(logits).

    Computed from log_softmax; classes with p = 0 (logit -inf) contribute 0 instead of 0 * -inf =
    nan.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.clamp_min(torch.finfo(logp.dtype).min)).sum(dim=-1)


def bias(mean_entropy: Mapping[str, float], num_classes: int) -> dict[str, float]:
    """Relative modality bias, thesis Eq. 3.5-3.6.

    S_m = 1 - H_m / log C clipped to [0, 1] (the confidence of modality m); B_m = S_m / sum_j S_j.
    When every S_m is 0 (all predictions uniform) no modality is more confident: equal shares.
    """
    if num_classes < 2:
        raise ValueError(f"bias needs num_classes >= 2 (log C > 0), got {num_classes}")
    if not mean_entropy:
        raise ValueError("bias needs at least one modality")
    scores = {
        m: min(max(1.0 - float(h) / math.log(num_classes), 0.0), 1.0)
        for m, h in mean_entropy.items()
    }
    total = sum(scores.values())
    if total == 0:
        return {m: 1.0 / len(scores) for m in scores}
    return {m: s / total for m, s in scores.items()}


def reliability(train_loss: Mapping[str, float], val_loss: Mapping[str, float]) -> dict[str, float]:
    """Modality reliability, thesis Eq. 3.7: train_loss_m / validation_loss_m (1 = perfectly
    aligned)."""
    out = {}
    for m, tl in train_loss.items():
        if m not in val_loss:
            raise ValueError(f"reliability: modality {m!r} has no validation loss")
        if val_loss[m] <= 0:
            raise ValueError(f"reliability: validation loss of {m!r} is {val_loss[m]}, must be > 0")
        out[m] = float(tl) / float(val_loss[m])
    return out


def ece(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected Calibration Error, MLB appendix Eq. 10 (after Guo et al. 2017).

    ECE = sum_k |B_k| / N * |acc(B_k) - conf(B_k)|, with confidence = top softmax probability and
    K equal-width bins ((k-1)/K, k/K] over (0, 1]; empty bins contribute nothing.
    """
    _check_batch(logits, labels)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, pred = F.softmax(logits.float(), dim=1).max(dim=1)
    correct = (pred == labels).float()
    # right=False puts a value equal to an edge into the lower bin, i.e. bins are (lo, hi].
    edges = torch.linspace(0, 1, n_bins + 1, device=conf.device)[1:-1]
    idx = torch.bucketize(conf, edges, right=False)
    gap = (torch.zeros(n_bins, device=conf.device).index_add_(0, idx, correct)
           - torch.zeros(n_bins, device=conf.device).index_add_(0, idx, conf))
    # sum_k |B_k|/N * |acc_k - conf_k| = sum_k |sum_{i in B_k} (correct_i - conf_i)| / N.
    return (gap.abs().sum() / conf.numel()).item()


class MetricAccumulator:
    """Sums loss, correct count, sample count and entropy per head ("fused", "<modality>",
    "probe/<m>").

    Statistics computed from the logits stay on their device until `result()`, and numbers known on
    the host (sample counts, losses given as floats) stay on the host, so `update` never
    synchronises and never copies a Python number to the device (a blocking copy per head per step
    on a GPU). With `keep_logits=True` the fused head's logits and labels are kept for `ece/fused`.
    """

    def __init__(self, keep_logits: bool = False, n_bins: int = 15):
        self.keep_logits = keep_logits
        self.n_bins = n_bins
        self._sums: dict[
            str, torch.Tensor
        ] = {}  # head -> on the device: [loss_sum, correct, entropy_sum]
        self._host: dict[
            str, list[float]
        ] = {}  # head -> on the host: [loss_sum of float losses, n]
        self._kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, logits: Mapping[str, torch.Tensor], labels: torch.Tensor,
               loss: Mapping[str, float] | None = None) -> None:
        """Add one batch: `logits` maps head name -> [N, C] logits, all sharing `labels` [N].

        `loss` optionally maps a head to its batch-mean loss (tensor or float); a head without one
        is scored with the cross-entropy of its logits.
        """
        for head, z in logits.items():
            self._update_head(head, z, labels, None if loss is None else loss.get(head))

    def _update_head(self, head: str, logits: torch.Tensor, labels: torch.Tensor, loss) -> None:
        _check_batch(logits, labels)
        logits = logits.detach().float()
        n = logits.shape[0]
        host = self._host.setdefault(head, [0.0, 0])
        if loss is None:
            loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        elif torch.is_tensor(loss):
            loss_sum = loss.detach().float().reshape(()) * n
        else:
            host[0] += float(loss) * n
            loss_sum = logits.new_zeros(())
        host[1] += n
        batch = torch.stack(
            [
                loss_sum.to(torch.float64),
                (logits.argmax(1) == labels).sum().to(torch.float64),
                entropy(logits).sum().to(torch.float64),
            ]
        )
        self._sums[head] = self._sums[head] + batch if head in self._sums else batch
        if self.keep_logits and head == "fused":
            self._kept.append((logits, labels.detach()))

    def result(self) -> dict[str, float]:
        """Flat dict {"loss/<head>", "acc/<head>", "entropy/<head>"} (+ "ece/fused" when logits were
        kept)."""
        out = {}
        heads = list(self._sums)
        if heads:  # one copy to the host for every head together
            sums = torch.stack([self._sums[h] for h in heads]).tolist()
            for head, (loss_sum, correct, ent) in zip(heads, sums):
                host_loss, n = self._host[head]
                out[f"loss/{head}"] = (loss_sum + host_loss) / n
                out[f"acc/{head}"] = correct / n
                out[f"entropy/{head}"] = ent / n
        if self._kept:
            out["ece/fused"] = ece(
                torch.cat([k[0] for k in self._kept]),
                torch.cat([k[1] for k in self._kept]),
                self.n_bins,
            )
        return out


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (thesis Appendix A): sample std (ddof = 1) / sqrt(n); 0 for a
    single value."""
    n = len(values)
    if n == 0:
        raise ValueError("standard_error of an empty sequence")
    if n == 1:
        return 0.0
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var) / math.sqrt(n)


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error) of seed results, as reported in the thesis' Appendix A."""
    if len(values) == 0:
        raise ValueError("mean_se of an empty sequence")
    return sum(values) / len(values), standard_error(values)


def speedup(baseline_time: float, time: float) -> float:
    """Thesis Eq. 4.1: Speedup = T_unoptimised / T_optimised (> 1 when `time` beats the
    baseline)."""
    if baseline_time <= 0 or time <= 0:
        raise ValueError(f"speedup needs positive times, got baseline={baseline_time}, time={time}")
    return baseline_time / time
