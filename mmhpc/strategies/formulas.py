"""Balancing formulas used by the strategies, each as a small pure function.

Sources: the thesis ("Optimising Multimodal Learning with a System-Aware Perspective", Chalmers);
the MLB paper ("Improving Multimodal Learning with Multi-Loss Gradient Modulation", Kontras et al.,
2024) and its appendix; the OPM/OGM-GE paper ("On-the-fly Modulation for Balanced Multimodal
Learning", Wei et al., TPAMI 2024); the AMST paper ("AMST: Alternating Multimodal Skip Training").
Where a source was ambiguous, the docstring says which form is implemented and why.
Scores `s_m` passed to the OGM/OPM/MLB functions are per-batch sums of the softmax probability of
the true class (the OPM/OGM-GE paper Eq. 6, the MLB paper Eq. 4): see `correct_class_score`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from mmhpc.errors import problem
from mmhpc.metrics import entropy
from mmhpc.rules.strategies import AMST_PHASES, MSLR_SCHEDULES, OGM_VARIANTS

# Thesis Sec. 4.2: visual never skipped; audio 5 (CREMA-D), 2 (AVE), 4 (IEMOCAP), 6 (UR-FUNNY); text
# 10.
AMST_DEFAULT_SKIPS: dict[str, dict[str, int]] = {
    "cremad": {"audio": 5, "visual": 1},
    "ave": {"audio": 2, "visual": 1},
    "mvsa": {"visual": 1, "text": 10},
    "iemocap": {"audio": 4, "visual": 1, "text": 10},
    "urfunny": {"audio": 6, "visual": 1, "text": 10},
}


# -------------------------------------------------------------------------------- discrepancy ratio


def correct_class_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """s = sum_i softmax(logits_i)[y_i]: the discriminative score of the OPM/OGM-GE paper Eq. 6 /
    the MLB paper Eq. 4.

    A 0-d float32 tensor on the logits' device: no host synchronisation (`.item()` it where a host
    value is needed).
    """
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"expected logits [N, C] and labels [N], got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}"
        )
    probs = F.softmax(logits.detach().float(), dim=1)
    return probs.gather(1, labels.view(-1, 1)).sum()


def discrepancy_ratio_tensor(scores: torch.Tensor) -> torch.Tensor:
    """rho_m = s_m / ((1 / (M-1)) sum_{j != m} s_j), the OPM/OGM-GE paper Eq. 7 (its M-modality
    form): rho [M] from s [M] on the scores' device (for two modalities s_1 / s_2 and its inverse,
    as the PMR code has it); the others' sum is kept above 0 instead of checked."""
    return scores / (_others_sum(scores) / (len(scores) - 1))


def _others_sum(scores: torch.Tensor) -> torch.Tensor:
    return (scores.sum() - scores).clamp_min(torch.finfo(scores.dtype).tiny)


# ---------------------------------------------------------------------------------------------- OGM


def ogm_coefficient_tensor(
    scores: torch.Tensor, alpha: float, variant: str = "thesis"
) -> torch.Tensor:
    """OGM gradient coefficients k [M] from the scores s [M] (modality order), on the scores'
    device.

    variant "thesis" (default): thesis Eq. 2.27, k = 1 - tanh(alpha * relu(rho)), as the thesis code
    base runs
        it (AMST repository, code/baseline/ogm3_new.py, `apply_modulation`): rho_m = s_m / sum_{j !=
        m} s_j and
        only the modality with the highest rho is modulated (k = 1 for the others; ties: the first).
    variant "paper": the OPM/OGM-GE paper Eq. 7 and 11: rho_m = s_m / mean_{j != m} s_j and
        k_m = max(0, 1 - alpha * tanh(rho_m - 1)) for every modality with rho_m > 1, else 1.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if variant not in OGM_VARIANTS:
        raise ValueError(problem("variant", f"invalid value {variant!r}", OGM_VARIANTS))
    ones = torch.ones_like(scores)
    if variant == "thesis":
        rho = scores / _others_sum(scores)
        top = torch.arange(len(scores), device=scores.device) == rho.argmax()
        return torch.where(top, 1 - torch.tanh(alpha * rho.clamp_min(0)), ones)
    rho = discrepancy_ratio_tensor(scores)
    return torch.where(rho > 1, (1 - alpha * torch.tanh(rho - 1)).clamp_min(0), ones)


def ogm_ge_noise(grad: torch.Tensor, std: float | torch.Tensor | None = None,
                 generator: torch.Generator | None = None, eps: float = 1e-8) -> torch.Tensor:
    """Generalisation-enhancement noise h ~ N(0, std^2), the OPM/OGM-GE paper Eq. 16 (OGM-GE).

    The paper asks for the covariance of the current gradient; like the official code, a diagonal
    approximation is used: std = the gradient tensor's own standard deviation (+ eps so it is never
    0), computed on the gradient's device (no host synchronisation). The update is then g' = k * g +
    h.
    """
    if std is None:
        std = (
            grad.detach().float().std()
            if grad.numel() > 1
            else grad.new_zeros((), dtype=torch.float32)
        )
    elif not torch.is_tensor(std) and std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    z = torch.randn(grad.shape, generator=generator, dtype=grad.dtype, device=grad.device)
    return z * (std + eps).to(grad.dtype) if torch.is_tensor(std) else z * (std + eps)


def ogm_ge_modulate(grad: torch.Tensor, coeff: float | torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """OGM-GE gradient k * g + h(g), the OPM/OGM-GE paper Eq. 16 / Alg. 2 (the noise uses g's std
    before scaling)."""
    return grad * coeff + ogm_ge_noise(grad, generator=generator)


# ---------------------------------------------------------------------------------------------- OPM


def opm_drop_tensor(scores: torch.Tensor, lam: float, q_base: float) -> torch.Tensor:
    """OPM drop probabilities q [M] for the next iteration from the scores s [M], the OPM/OGM-GE
    paper Eq. 8, on their device.

    q_m = min(1, q_base * (1 + lam * tanh(rho_m - 1))) if rho_m > 1 else 0, rho the M-modality form
    of Eq. 7, z(x) = tanh(x - 1) and the cap at 1 the paper states; `lam` is the paper's lambda (>
    0), `q_base` in (0, 1) (official code: 0.5, 0.5).
    """
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if not 0.0 <= q_base <= 1.0:
        raise ValueError(f"q_base must lie in [0, 1], got {q_base}")
    rho = discrepancy_ratio_tensor(scores)
    return torch.where(
        rho > 1, (q_base * (1 + lam * torch.tanh(rho - 1))).clamp_max(1), torch.zeros_like(rho)
    )


def opm_keep(
    q: torch.Tensor,
    batch_size: int,
    generator: torch.Generator | None = None,
    p_exe: float = 1.0,
    device=None,
) -> torch.Tensor:
    """Per-sample keep masks [N, M] (1 = keep, 0 = drop) for OPM's modality dropping, the OPM/OGM-GE
    paper Alg. 1.

    Each sample drops modality m with probability q_m (keep iff u >= q_m, u ~ U[0, 1), so P(keep) =
    1 - q_m exactly, q = 0 always keeps, q = 1 always drops). As in the official code, the whole
    batch is left untouched with probability 1 - p_exe (one draw, made first). Drawn on `device`: no
    host synchronisation.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if not 0.0 <= p_exe <= 1.0:
        raise ValueError(f"p_exe must lie in [0, 1], got {p_exe}")
    device = q.device if device is None else device
    q = q.to(device)
    gate = torch.rand((), generator=generator, device=device) < p_exe if p_exe < 1.0 else None
    keep = (torch.rand(batch_size, len(q), generator=generator, device=device) >= q).float()
    return keep if gate is None else torch.where(gate, keep, torch.ones_like(keep))


def opm_feature_scale(q: torch.Tensor, dims: Sequence[int]) -> torch.Tensor:
    """Inverted-dropout rescale of the kept features, 1 / (1 - theta), theta = sum_m d_m q_m / sum_m
    d_m, from the drop probabilities q [M] and the embedding widths d (same order), on q's device.

    Official OPM code (Modality_drop.execute_drop); the paper leaves it implicit. theta < 1 always
    holds, since the lowest-scoring modality has rho <= 1, q = 0 (`opm_drop_tensor`).
    """
    # dims are host numbers: no device tensor is built from them
    return 1.0 / (1.0 - sum(d * q[i] for i, d in enumerate(dims)) / sum(dims))


# ---------------------------------------------------------------------------------------------- MLB


def mlb_coefficient_tensor(scores: torch.Tensor, alpha: float, beta_max: float) -> torch.Tensor:
    """MLB coefficients k [M] from the scores s [M] (modality order), the MLB paper Eq. 4-7, on the
    scores' device with no host read: k = 1 + (beta - 1) * tanh(alpha * (r - 1)).

    r = mean score of the other modalities / own score (Eq. 5): r > 1 means the modality lags, so it
    is accelerated with beta = beta_max (k in (1, beta_max)); otherwise beta = 2 and k = 1 +
    tanh(alpha(r - 1)) lies in (1 - tanh(alpha), 1] (decelerated, never stopped). r = 1 gives k = 1
    (balancing phases out); a score of 0 makes r infinite: the full acceleration, beta_max.
    `strategy.params` are checked where the config is (alpha > 0, beta_max >= 1: MLBRules).
    """
    r = (_others_sum(scores) / (len(scores) - 1)) / scores
    beta = torch.where(r > 1, beta_max, 2.0)
    return 1.0 + (beta - 1.0) * torch.tanh(alpha * (r - 1.0))


# --------------------------------------------------------------------------------------------- MSLR


def mslr_update(lr_m: float, acc_history_m: Sequence[float], k_e: int) -> float:
    """MSLR learning rate, thesis Eq. 2.28: lr_m * acc_t / mean(acc over the last k_e epochs).

    `acc_history_m` holds the modality's validation accuracy per epoch, ending with the current
    acc_t; the window includes acc_t (E[acc_{t-N,t}] closes at t) and shrinks to what exists in
    early epochs. Which `lr_m` it scales and how often is the schedule's choice
    (`mslr_schedule_factor`).
    """
    if k_e < 1:
        raise ValueError(f"k_e must be >= 1, got {k_e}")
    if len(acc_history_m) == 0:
        raise ValueError("mslr_update needs at least the current accuracy")
    window = list(acc_history_m)[-k_e:]
    mean = sum(window) / len(window)
    if mean <= 0:
        raise ValueError(f"mean accuracy over the window is {mean}: ratio undefined")
    return lr_m * acc_history_m[-1] / mean


def mslr_schedule_factor(
    acc_history_m: Sequence[float], k_e: int, schedule: str = "as_run"
) -> float:
    """The factor on a modality's initial rate for the epoch after the last entry of
    `acc_history_m`.

    "as_run" (default): 1, the rates stay fixed. The thesis code base's `adjust_lr` never ran: AMST
        repository code/baseline/mslr3_new.py defines the hook `after_validate`, but
        code/common.py's loop
        calls `after_valid()`; its MSLR log (Doc/Logs/MSLR_CREMAD.log) has no rate update.
    "compound" (what `adjust_lr` would do): after the validation of epoch t (0-based) with t > 0 and
        t mod k_e = 0 the rate is multiplied by acc_t / mean(acc over the last k_e epochs); the
        products
        accumulate over the run.
    "per_epoch" (thesis Eq. 2.28 read literally): every epoch, the initial rate times acc_t /
    mean(last k_e).
    A window whose mean accuracy is 0 leaves the factor unchanged (the ratio is undefined).
    """
    if schedule not in MSLR_SCHEDULES:
        raise ValueError(problem("schedule", f"invalid value {schedule!r}", MSLR_SCHEDULES))
    if schedule == "as_run":
        return 1.0
    history = list(acc_history_m)
    if schedule == "per_epoch":
        return mslr_update(1.0, history, k_e) if history and sum(history[-k_e:]) > 0 else 1.0
    factor = 1.0
    for t in range(1, len(history)):
        if t % k_e == 0 and sum(history[max(0, t - k_e + 1):t + 1]) > 0:
            factor = mslr_update(factor, history[:t + 1], k_e)
    return factor


# ---------------------------------------------------------------------------------------------- MLA


def mla_entropy_weights(logits: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MLA's dynamic fusion weights, thesis Eq. 2.32-2.33.

    e_{s,m} = -p_{s,m}^T log p_{s,m};  w_{s,m} = exp(max_j e_{s,j} - e_{s,m}) / sum_k exp(max_j
    e_{s,j} - e_{s,k}). Lower entropy (more confident) -> larger weight; each sample's weights sum
    to 1.
    """
    if not logits:
        raise ValueError("mla_entropy_weights needs at least one modality")
    names = list(logits)
    e = torch.stack([entropy(logits[m]) for m in names])  # [M, N]
    expo = torch.exp(e.max(dim=0, keepdim=True).values - e)
    w = expo / expo.sum(dim=0, keepdim=True)
    return {m: w[i] for i, m in enumerate(names)}


# ---------------------------------------------------------------------------------------------- PMR


def pmr_class_sums(
    emb: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums [C, D] and counts [C] of embeddings: what prototypes are made of, summable
    over batches."""
    if emb.dim() != 2 or labels.shape != (emb.shape[0],):
        raise ValueError(
            f"expected emb [N, D] and labels [N], got {tuple(emb.shape)}, {tuple(labels.shape)}"
        )
    emb = emb.detach().float()
    sums = torch.zeros(num_classes, emb.shape[1], device=emb.device).index_add_(0, labels, emb)
    counts = torch.zeros(num_classes, device=emb.device).index_add_(
        0, labels, torch.ones_like(labels, dtype=emb.dtype)
    )
    return sums, counts


def pmr_prototypes_from_sums(
    sums: torch.Tensor,
    counts: torch.Tensor,
    previous: torch.Tensor | None = None,
    momentum: float = 0.0,
) -> torch.Tensor:
    """Class prototypes c_k = mean embedding of class k (PMR) from per-class sums and counts
    (`pmr_class_sums`, possibly added over batches), optionally (1 - mu) c_k + mu c_k^prev.

    The momentum blend is the official PMR code's (`momentum_coef`, 0.2 there). A class without
    samples keeps its previous prototype; without a previous one it is an error.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must lie in [0, 1], got {momentum}")
    empty = counts == 0
    if empty.any() and previous is None:
        raise ValueError(
            f"classes {empty.nonzero().flatten().tolist()} have no samples and no previous "
            "prototype"
        )
    protos = sums / counts.clamp_min(1).unsqueeze(1)
    if previous is None:
        return protos
    blended = (1 - momentum) * protos + momentum * previous
    return torch.where(empty.unsqueeze(1), previous, blended)


def pmr_prototype_logits(
    emb: torch.Tensor, prototypes: torch.Tensor, squared: bool = False
) -> torch.Tensor:
    """Prototype-classifier logits -d(z, c_k) [N, C] for the PCE loss of thesis Eq. 2.30 (PMR).

    Default: plain Euclidean distance, as the official PMR code (`-EU_dist`, a sqrt of the dot
    product). `squared=True` gives the prototypical-network form -||z - c_k||^2. The sqrt is taken
    of a value clamped at 1e-12 so a sample sitting on a prototype has a finite gradient.
    """
    if emb.dim() != 2 or prototypes.dim() != 2 or emb.shape[1] != prototypes.shape[1]:
        raise ValueError(
            f"expected emb [N, D] and prototypes [C, D], got {tuple(emb.shape)}, "
            f"{tuple(prototypes.shape)}"
        )
    sq = (emb.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
    return -sq if squared else -sq.clamp_min(1e-12).sqrt()


def pmr_entropy_regulariser(proto_logits: torch.Tensor) -> torch.Tensor:
    """L_r of thesis Eq. 2.30: mean entropy of the prototype-classifier distribution (a positive
    number).

    It enters the loss with a minus sign, L = L_sum + L_PCE - mu * L_r, so minimising L raises the
    entropy of the dominant modality's prototype predictions and holds back its early convergence
    (PMR's PER).
    """
    return entropy(proto_logits).mean()


def pmr_coefficients(rho: torch.Tensor, alpha: float) -> torch.Tensor:
    """PCE weights beta [M], official PMR code: alpha for a modality behind the others (rho < 1),
    else 0; rho [M] from the prototype classifiers' scores (`discrepancy_ratio_tensor`), so rho
    exactly 1 gives 0 to every modality. On rho's device: no host synchronisation."""
    return alpha * (rho < 1).to(rho.dtype)


# -------------------------------------------------------------------------------- Gradient Blending


def gradient_blending_weights(train_prev: Mapping[str, float], train_now: Mapping[str, float],
                              val_prev: Mapping[str, float], val_now: Mapping[str, float],
                              eps: float = 1e-8) -> dict[str, float]:
    """Weights w of thesis Eq. 2.29, L = sum_k w_k L_k, from Gradient Blending's OGR (Wang et al.
    2020, [5]).

    The seeds give only the weighted sum (thesis Eq. 2.29) and name the
    overfitting-to-generalisation ratio (MLB Sec. 2.2); the rule is the GB paper's: per head k
    between two checkpoints, dG_k = L^V_prev - L^V_now (generalisation gain), O = L^V - L^T, dO_k =
    O_now - O_prev (overfitting), w_k proportional to dG_k / dO_k^2, normalised to sum 1. A head
    whose validation loss rose (dG <= 0) gets 0; when none gained, the weights are equal. Fixed user
    weights need no function.
    """
    heads = list(train_now)
    for d, name in ((train_prev, "train_prev"), (val_prev, "val_prev"), (val_now, "val_now")):
        missing = [k for k in heads if k not in d]
        if missing:
            raise ValueError(f"gradient_blending_weights: {name} lacks heads {missing}")
    raw = {}
    for k in heads:
        gain = val_prev[k] - val_now[k]
        d_over = (val_now[k] - train_now[k]) - (val_prev[k] - train_prev[k])
        raw[k] = max(gain, 0.0) / (d_over ** 2 + eps)
    total = sum(raw.values())
    if total == 0:
        return {k: 1.0 / len(heads) for k in heads}
    return {k: v / total for k, v in raw.items()}


# ------------------------------------------------------------------------------ AMST, Alg. 5 choice


def amst_trains(epoch: int, skip: int, phase: str = "code") -> bool:
    """Whether modality m trains in `epoch` (0-based, as the trainer counts), thesis Eq. 3.8 / seed
    001 Eq. 1.

    phase "code" (default): epoch mod skip = 0 with epochs counted from 0, as the thesis code base
    does
        (AMST repository, code/amst.py: `for epoch in range(E)`, `epoch % skip`): trains in epochs
        0, s, 2s, ...
    phase "paper": the AMST paper Alg. 1-2 count epochs from 1 (`for e = 1 to E`): trains in the
    trainer's
    epochs
        s - 1, 2s - 1, ... (the s-th, 2s-th, ... epoch).
    """
    if skip < 1:
        raise ValueError(f"skip must be a positive integer, got {skip}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if phase not in AMST_PHASES:
        raise ValueError(problem("phase", f"invalid value {phase!r}", AMST_PHASES))
    return (epoch + (phase == "paper")) % skip == 0


def select_modality(metric: Mapping[str, float], mode: str) -> str:
    """Which modality Alg. 5 trains next: "entropy" -> lowest bias (Eq. 3.6), "reliability" ->
    highest (Eq. 3.7).

    Ties go to the earliest modality in `metric`'s order, so the choice is deterministic.
    """
    if not metric:
        raise ValueError("select_modality needs at least one modality")
    if mode == "entropy":
        return min(metric, key=metric.__getitem__)
    if mode == "reliability":
        return max(metric, key=metric.__getitem__)
    raise ValueError(f"mode must be 'entropy' or 'reliability', got {mode!r}")
