"""mmhpc.strategies.formulas against hand-computed values (the arithmetic is in the comments).

Constants used below: tanh(0.5) = 0.4621172, tanh(2/3) = 0.5827829, tanh(1) = 0.7615942,
tanh(1.5) = 0.9051483, tanh(2) = 0.9640276, ln 2 = 0.6931472.
"""
import math

import pytest
import torch

from mmhpc.data.augment import audio_augment
from mmhpc.models.fusion import cosine_scale
from mmhpc.strategies.formulas import (
    AMST_DEFAULT_SKIPS,
    amst_trains,
    correct_class_score,
    discrepancy_ratio_tensor,
    gradient_blending_weights,
    mla_entropy_weights,
    mlb_coefficient_tensor,
    mslr_schedule_factor,
    mslr_update,
    ogm_coefficient_tensor,
    ogm_ge_modulate,
    ogm_ge_noise,
    opm_drop_tensor,
    opm_feature_scale,
    opm_keep,
    pmr_class_sums,
    pmr_coefficients,
    pmr_entropy_regulariser,
    pmr_prototype_logits,
    pmr_prototypes_from_sums,
    select_modality,
)

LN2 = 0.6931471805599453
INF = float("inf")
AV = {"audio": 30.0, "visual": 10.0}          # rho_audio = 30/10 = 3, rho_visual = 10/30 = 1/3
AVT = {"audio": 6.0, "visual": 2.0, "text": 4.0}  # rho: a 6/3 = 2, v 2/5 = 0.4, t 4/4 = 1 (exactly)


def named(formula, score: dict, *args, **kw) -> dict:
    """A formula as the strategies run it (on a tensor of scores in modality order), given
    {modality: score} and read back as {modality: value}."""
    scores = torch.tensor(list(score.values()), dtype=torch.float64)
    return dict(zip(score, formula(scores, *args, **kw).tolist()))


def keep_masks(q: dict, batch_size: int, generator=None, p_exe: float = 1.0) -> dict:
    """`opm_keep` (as OPM runs it) with {modality: drop probability}: {modality: keep mask [N]}."""
    keep = opm_keep(torch.tensor(list(q.values())), batch_size, generator, p_exe)
    return {m: keep[:, i] for i, m in enumerate(q)}


def prototypes(emb, labels, num_classes, previous=None, momentum=0.0):
    """Class prototypes as PMR builds them: class sums and counts, then the (blended) means."""
    return pmr_prototypes_from_sums(*pmr_class_sums(emb, labels, num_classes), previous, momentum)


# ------------------------------------------------------------------------------------- cosine scale


def test_cosine_scale_hand_cases():
    # C = 6, p = 0.9: log(5 * 0.9 / 0.1) = ln 45 = 3.8066625
    #   printed Eq. 3.2, M = 2: 5 / (2 * 7) * 3.8066625 = 1.3595223;  M = 1: 5 / 7 * 3.8066625 =
    #   2.7190446
    #   NormFace form, M = 2: 5 / 12 * 3.8066625 = 1.5861094;  M = 1: 5 / 6 * 3.8066625 = 3.1722187
    assert cosine_scale(6, p=0.9, num_modalities=2) == pytest.approx(1.3595223, abs=1e-6)
    assert cosine_scale(6, p=0.9, num_modalities=1) == pytest.approx(2.7190446, abs=1e-6)
    assert cosine_scale(6, p=0.9, num_modalities=2, form="normface") == pytest.approx(
        1.5861094, abs=1e-6
    )
    assert cosine_scale(6, p=0.9, num_modalities=1, form="normface") == pytest.approx(
        3.1722187, abs=1e-6
    )
    # C = 2, p = 0.9, M = 2: 1 / (2 * 3) * ln 9 = 2.1972246 / 6 = 0.3662041
    assert cosine_scale(2, p=0.9) == pytest.approx(0.3662041, abs=1e-6)
    # defaults p = 0.99, M = 2, C = 6: 5 / 14 * ln 495 = 5 / 14 * 6.2045578 = 2.2159135
    assert cosine_scale(6) == pytest.approx(2.2159135, abs=1e-6)
    # three modalities (IEMOCAP, C = 5, p = 0.99): 4 / (3 * 6) * ln(4 * 99) = 0.2222222 * 5.9814143
    # = 1.3292032
    assert cosine_scale(5, num_modalities=3) == pytest.approx(1.3292032, abs=1e-6)


def test_model_cosine_scale_counts_the_modalities():
    from mmhpc.config import load_config
    from mmhpc.data.specs import DATASETS
    from mmhpc.models.multimodal import MultimodalModel

    for dataset, m in (("cremad", 2), ("iemocap", 3)):
        cfg = load_config(
            None, [f"data.dataset={dataset}", "model.cosine=true", "model.fusion=late_sum"]
        )
        spec = DATASETS[dataset]
        model = MultimodalModel(cfg.modalities, spec.num_classes, cfg.model, spec.shapes("tiny"))
        c = spec.num_classes
        expected = (c - 1) / (m * (c + 1)) * math.log((c - 1) * 0.99 / 0.01)
        assert model.fusion.heads["audio"].scale == pytest.approx(expected)


def test_cosine_scale_reaches_p():
    # the bound is tight: with s from M = 1, the ideal simplex arrangement (cos = 1 for the true
    # class, -1/(C-1) for the others) gives softmax probability exactly p. C = 4: logits s * (1,
    # -1/3, -1/3, -1/3)
    s = cosine_scale(4, p=0.95, num_modalities=1, form="normface")
    p = torch.softmax(torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3], dtype=torch.float64) * s, 0)[
        0
    ].item()
    assert p == pytest.approx(0.95, abs=1e-9)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_classes=1),
        dict(num_classes=6, p=1 / 6),
        dict(num_classes=6, p=1.0),
        dict(num_classes=6, num_modalities=0),
        dict(num_classes=6, form="2C"),
    ],
)
def test_cosine_scale_bad(kw):
    with pytest.raises(ValueError):
        cosine_scale(**kw)


# -------------------------------------------------------------------------------- scores and ratios


def test_correct_class_score():
    # p(true): row 0 label 0 -> 0.7; row 1 label 0 -> 0.2; sum 0.9
    logits = torch.tensor([[0.7, 0.3], [0.2, 0.8]]).log()
    assert correct_class_score(logits, torch.tensor([0, 0])).item() == pytest.approx(0.9, abs=1e-6)
    with pytest.raises(ValueError):
        correct_class_score(logits, torch.tensor([0]))


# ---------------------------------------------------------------------------------------------- OGM


def test_ogm_paper_form():
    # rho_a = 3 > 1: k = 1 - 0.5 * tanh(3 - 1) = 1 - 0.5 * 0.9640276 = 0.5179862; visual (rho < 1)
    # -> 1
    k = named(ogm_coefficient_tensor, AV, alpha=0.5, variant="paper")
    assert k["audio"] == pytest.approx(0.5179862, abs=1e-6) and k["visual"] == 1.0


def test_ogm_paper_form_clipped_at_zero():
    # alpha = 2: 1 - 2 * 0.9640276 = -0.928 -> 0
    assert named(ogm_coefficient_tensor, AV, alpha=2.0, variant="paper")["audio"] == 0.0


def test_ogm_thesis_form_is_the_default():
    # thesis Eq. 2.27: rho_a = 30 / 10 = 3: 1 - tanh(0.5 * 3) = 1 - 0.9051483 = 0.0948517
    k = named(ogm_coefficient_tensor, AV, alpha=0.5)
    assert k["audio"] == pytest.approx(0.0948517, abs=1e-6) and k["visual"] == 1.0


def test_ogm_ties():
    # paper: rho = 1 is not > 1: no modulation; thesis (code base): the first top-ratio modality is
    # modulated, 1 - tanh(1 * 1) = 1 - 0.7615942 = 0.2384058
    assert named(ogm_coefficient_tensor, {"audio": 5.0, "visual": 5.0}, 1.0, "paper") == {
        "audio": 1.0,
        "visual": 1.0,
    }
    assert named(ogm_coefficient_tensor, {"audio": 5.0, "visual": 5.0}, 1.0) == pytest.approx(
        {"audio": 0.2384058, "visual": 1.0}
    )


def test_ogm_three_modalities():
    # paper (mean of the others): rho a = 6 / 3 = 2: 1 - 1 * tanh(1) = 0.2384058; v = 0.4 -> 1; t
    # exactly 1 -> 1
    k = named(ogm_coefficient_tensor, AVT, alpha=1.0, variant="paper")
    assert k == pytest.approx({"audio": 0.2384058, "visual": 1.0, "text": 1.0}, abs=1e-6)
    # thesis (code base: sum of the others, top modality only): rho a = 6 / 6 = 1, v = 2 / 10, t = 4
    # / 8; a: 1 - tanh(2 * 1) = 1 - 0.9640276 = 0.0359724 (the mean form would give rho 2: 1 -
    # tanh(4) = 0.0006707)
    k = named(ogm_coefficient_tensor, AVT, alpha=2.0)
    assert k == pytest.approx({"audio": 0.0359724, "visual": 1.0, "text": 1.0}, abs=1e-6)


def test_ogm_bad():
    with pytest.raises(ValueError):
        named(ogm_coefficient_tensor, AV, alpha=-1.0)
    with pytest.raises(ValueError, match="variant: invalid value 'cvpr'; valid: thesis, paper"):
        named(ogm_coefficient_tensor, AV, alpha=1.0, variant="cvpr")


def test_ogm_ge_noise_uses_gradient_std():
    # std of (1, 2, 3, 4) with ddof 1: sqrt(5/3) = 1.2909944; noise = z * (1.2909944 + 1e-8), z ~
    # N(0, 1)
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    z = torch.randn(4, generator=torch.Generator().manual_seed(0))
    noise = ogm_ge_noise(grad, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(noise, z * 1.2909944)
    # explicit std 0.5 -> z * 0.5
    torch.testing.assert_close(
        ogm_ge_noise(grad, std=0.5, generator=torch.Generator().manual_seed(0)), z * 0.5
    )


def test_ogm_ge_noise_statistics_and_degenerate():
    grad = torch.randn(200_000, generator=torch.Generator().manual_seed(1)) * 3.0
    noise = ogm_ge_noise(grad, generator=torch.Generator().manual_seed(2))
    assert noise.std().item() == pytest.approx(3.0, rel=0.02) and abs(noise.mean().item()) < 0.03
    # a single-element or constant gradient has std 0: noise std is eps, never 0/nan
    assert torch.isfinite(ogm_ge_noise(torch.tensor([2.0]))).all()
    assert (
        ogm_ge_noise(torch.ones(5), generator=torch.Generator().manual_seed(0)).abs().max().item()
        < 1e-7
    )
    with pytest.raises(ValueError):
        ogm_ge_noise(grad, std=-1.0)


def test_ogm_ge_modulate():
    # 0.5 * (1, 2, 3, 4) + z * 1.2909944 (noise from the unscaled gradient)
    grad = torch.tensor([1.0, 2.0, 3.0, 4.0])
    z = torch.randn(4, generator=torch.Generator().manual_seed(3))
    got = ogm_ge_modulate(grad, 0.5, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, torch.tensor([0.5, 1.0, 1.5, 2.0]) + z * 1.2909944)


# ---------------------------------------------------------------------------------------------- OPM


def test_opm_drop_probability_hand_case():
    # rho_a = 3: 0.5 * (1 + 0.5 * tanh(2)) = 0.5 * 1.4820138 = 0.7410069; visual (rho < 1) -> 0
    q = named(opm_drop_tensor, AV, lam=0.5, q_base=0.5)
    assert q["audio"] == pytest.approx(0.7410069, abs=1e-6) and q["visual"] == 0.0


def test_opm_drop_probability_capped_at_one_and_ties():
    # 0.9 * (1 + 1 * 0.9640276) = 1.7676 -> 1
    assert named(opm_drop_tensor, AV, lam=1.0, q_base=0.9)["audio"] == 1.0
    assert named(opm_drop_tensor, {"a": 2.0, "v": 2.0}, 0.5, 0.5) == {"a": 0.0, "v": 0.0}
    # three modalities: only a (rho 2) drops: 0.5 * (1 + 1 * tanh(1)) = 0.5 * 1.7615942 = 0.8807971
    assert named(opm_drop_tensor, AVT, 1.0, 0.5) == pytest.approx(
        {"audio": 0.8807971, "visual": 0.0, "text": 0.0}
    )


@pytest.mark.parametrize("lam,q_base", [(-0.1, 0.5), (0.5, 1.5), (0.5, -0.1)])
def test_opm_drop_probability_bad(lam, q_base):
    with pytest.raises(ValueError):
        named(opm_drop_tensor, AV, lam, q_base)


def test_opm_mask_extremes_and_determinism():
    m = keep_masks({"audio": 0.0, "visual": 1.0}, 6, torch.Generator().manual_seed(0))
    assert m["audio"].tolist() == [1.0] * 6 and m["visual"].tolist() == [0.0] * 6
    a = keep_masks({"audio": 0.5}, 32, torch.Generator().manual_seed(7))
    b = keep_masks({"audio": 0.5}, 32, torch.Generator().manual_seed(7))
    assert torch.equal(a["audio"], b["audio"])
    assert set(a["audio"].unique().tolist()) <= {0.0, 1.0}


def test_opm_mask_keep_rate():
    # P(keep) = 1 - q = 0.75; with 40k samples the rate is within 0.01 (sd ~ 0.002)
    m = keep_masks({"audio": 0.25}, 40_000, torch.Generator().manual_seed(1))
    assert m["audio"].mean().item() == pytest.approx(0.75, abs=0.01)


def test_opm_mask_execution_gate():
    # p_exe = 0 never drops; with p_exe = 0.5 the batch is untouched iff the first uniform draw u >=
    # 0.5
    assert (
        keep_masks({"audio": 1.0}, 4, torch.Generator().manual_seed(0), p_exe=0.0)["audio"].tolist()
        == [1.0] * 4
    )
    for seed in range(6):
        u = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
        got = keep_masks({"audio": 1.0}, 4, torch.Generator().manual_seed(seed), p_exe=0.5)[
            "audio"
        ].tolist()
        assert got == ([1.0] * 4 if u >= 0.5 else [0.0] * 4)


def test_opm_mask_bad():
    with pytest.raises(ValueError):
        keep_masks({"audio": 0.5}, 4, p_exe=2.0)


def test_opm_feature_scale():
    # theta = (512 * 0.5 + 512 * 0) / 1024 = 0.25 -> 1 / 0.75 = 1.3333333
    assert opm_feature_scale(torch.tensor([0.5, 0.0]), [512, 512]).item() == pytest.approx(4 / 3)
    # theta = (100 * 0.8 + 300 * 0) / 400 = 0.2 -> 1.25
    assert opm_feature_scale(torch.tensor([0.8, 0.0]), [100, 300]).item() == pytest.approx(1.25)


# ---------------------------------------------------------------------------------------------- MLB


def mlb_k(r: float, alpha: float, beta_max: float) -> float:
    """MLB's coefficient for a modality whose r (the MLB paper Eq. 5: mean score of the others / its
    own) is `r`: scores (1, r) in `mlb_coefficient_tensor`, as MLB runs it."""
    return named(mlb_coefficient_tensor, {"own": 1.0, "other": r}, alpha, beta_max)["own"]


def test_mlb_acceleration():
    # r = 2 > 1: beta = beta_max = 3: 1 + 2 * tanh(1) = 1 + 1.5231884 = 2.5231884
    assert mlb_k(2.0, alpha=1.0, beta_max=3.0) == pytest.approx(2.5231884, abs=1e-6)
    # r = 1.5, alpha = 2, beta_max = 1.5: 1 + 0.5 * tanh(1) = 1.3807971
    assert mlb_k(1.5, alpha=2.0, beta_max=1.5) == pytest.approx(1.3807971, abs=1e-6)


def test_mlb_deceleration_uses_beta_two():
    # r = 0.5 < 1: beta = 2: 1 + 1 * tanh(-0.5) = 1 - 0.4621172 = 0.5378828 (beta_max plays no role)
    assert mlb_k(0.5, alpha=1.0, beta_max=10.0) == pytest.approx(0.5378828, abs=1e-6)
    # r = 0: 1 - tanh(1) = 0.2384058 > 0, learning never halted
    assert mlb_k(0.0, alpha=1.0, beta_max=3.0) == pytest.approx(0.2384058, abs=1e-6)


def test_mlb_r_exactly_one_and_no_acceleration():
    assert mlb_k(1.0, alpha=5.0, beta_max=3.0) == 1.0
    assert (
        mlb_k(2.0, alpha=5.0, beta_max=1.0) == 1.0
    )  # beta_max = 1 disables acceleration


def test_mlb_coefficients_from_scores():
    # r_a = 10 / 30 = 1/3: 1 + tanh(-2/3) = 1 - 0.5827829 = 0.4172171
    # r_v = 30 / 10 = 3:   1 + (3 - 1) * tanh(2) = 1 + 1.9280552 = 2.9280552
    k = named(mlb_coefficient_tensor, AV, alpha=1.0, beta_max=3.0)
    assert k == pytest.approx({"audio": 0.4172171, "visual": 2.9280552}, abs=1e-6)
    assert named(mlb_coefficient_tensor, {"a": 4.0, "v": 4.0}, 1.0, 3.0) == {"a": 1.0, "v": 1.0}


def test_mlb_coefficients_on_the_device_match_the_hand_values():
    # the scores of test_mlb_coefficients_from_scores (AV: audio 30, visual 10), as a tensor
    k = mlb_coefficient_tensor(torch.tensor([30.0, 10.0]), alpha=1.0, beta_max=3.0)
    assert k.tolist() == pytest.approx([0.4172171, 2.9280552], abs=1e-6)
    # three modalities: r = mean(others) / own; r_a = 20 / 10 = 2 -> 1 + 2 tanh(1) = 2.5231884
    # (beta_max 3)
    k = mlb_coefficient_tensor(torch.tensor([10.0, 20.0, 20.0]), alpha=1.0, beta_max=3.0)
    assert k[0].item() == pytest.approx(2.5231884, abs=1e-6)
    # a zero score: r infinite, full acceleration
    # (and the other's r = 0 / 4: 1 - tanh(1) = 0.2384058)
    k = mlb_coefficient_tensor(torch.tensor([0.0, 4.0]), 1.0, 3.0)
    assert k.tolist() == pytest.approx([3.0, 0.2384058], abs=1e-6)


# --------------------------------------------------------------------------------------------- MSLR


def test_mslr_schedules():
    # accuracies 0.4, 0.6, 0.3, 0.6, 0.9 (epochs 0..4), k_e = 2 as_run (default; the code base's
    # adjust_lr is never called): the rates stay, factor 1 whatever the accuracies
    acc = [0.4, 0.6, 0.3, 0.6, 0.9]
    assert mslr_schedule_factor(acc, 2) == 1.0
    assert mslr_schedule_factor(acc, 2, "as_run") == 1.0
    # compound (adjust_lr as written): t = 2: x 0.3 / mean(0.6, 0.3) = 2/3; t = 4: x 0.9 / mean(0.6,
    # 0.9) = 1.2
    assert mslr_schedule_factor(acc[:2], 2, "compound") == 1.0  # t = 1 is not a multiple of k_e
    assert mslr_schedule_factor(acc[:3], 2, "compound") == pytest.approx(2 / 3)
    assert mslr_schedule_factor(acc[:4], 2, "compound") == pytest.approx(2 / 3)
    assert mslr_schedule_factor(acc, 2, "compound") == pytest.approx(0.8)
    # per_epoch (Eq. 2.28 literally): the last ratio alone, 0.9 / 0.75 = 1.2; before any accuracy: 1
    assert mslr_schedule_factor(acc, 2, "per_epoch") == pytest.approx(1.2)
    assert mslr_schedule_factor([], 2, "per_epoch") == 1.0
    # an all-zero window leaves the factor as it is
    assert mslr_schedule_factor([0.0, 0.0, 0.0], 2, "compound") == 1.0
    with pytest.raises(ValueError):
        mslr_schedule_factor(acc, 2, "cosine")


def test_mslr_hand_cases():
    # window (0.6, 0.7, 0.8), mean 0.7: 1e-3 * 0.8 / 0.7 = 1.1428571e-3
    assert mslr_update(1e-3, [0.5, 0.6, 0.7, 0.8], 3) == pytest.approx(1.1428571e-3)
    # shorter history than k_e: mean of (0.4, 0.6) = 0.5 -> 1e-3 * 0.6 / 0.5 = 1.2e-3
    assert mslr_update(1e-3, [0.4, 0.6], 5) == pytest.approx(1.2e-3)
    # k_e = 1: acc_t / acc_t = 1 -> unchanged
    assert mslr_update(1e-3, [0.4, 0.6], 1) == pytest.approx(1e-3)


@pytest.mark.parametrize("hist,k", [([0.5], 0), ([], 3), ([0.0, 0.0], 2)])
def test_mslr_bad(hist, k):
    with pytest.raises(ValueError):
        mslr_update(1e-3, hist, k)


# ---------------------------------------------------------------------------------------------- MLA


def test_mla_entropy_weights_hand_case():
    # sample 0: e_a = ln 2, e_v = 0; max = ln 2: w_a = e^0 / (e^0 + e^ln2) = 1/3, w_v = 2/3
    # sample 1: e_a = 0, e_v = ln 2 -> w_a = 2/3, w_v = 1/3
    # sample 2: equal entropies -> 1/2 each
    a = torch.tensor([[0.0, 0.0], [0.0, -INF], [0.0, 0.0]])
    v = torch.tensor([[0.0, -INF], [0.0, 0.0], [0.0, 0.0]])
    w = mla_entropy_weights({"audio": a, "visual": v})
    torch.testing.assert_close(w["audio"], torch.tensor([1 / 3, 2 / 3, 0.5]))
    torch.testing.assert_close(w["visual"], torch.tensor([2 / 3, 1 / 3, 0.5]))


def test_mla_entropy_weights_three_modalities():
    # entropies ln2, 0, 0; max ln 2: exp terms 1, 2, 2 -> 1/5, 2/5, 2/5
    w = mla_entropy_weights({"a": torch.zeros(1, 2), "v": torch.tensor([[0.0, -INF]]),
                             "t": torch.tensor([[5.0, -INF]])})
    assert [w[m].item() for m in "avt"] == pytest.approx([0.2, 0.4, 0.4], abs=1e-6)


def test_mla_entropy_weights_empty():
    with pytest.raises(ValueError):
        mla_entropy_weights({})


# ---------------------------------------------------------------------------------------------- PMR


def test_pmr_prototype_logits_hand_case():
    # distances from (0,0): to (0,0) 0, to (3,0) 3; from (3,4): to (0,0) 5, to (3,0) 4
    emb = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    protos = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(
        pmr_prototype_logits(emb, protos),
        torch.tensor([[0.0, -3.0], [-5.0, -4.0]]),
        atol=1e-5,
        rtol=0,
    )
    # squared: 0, 9; 25, 16
    torch.testing.assert_close(pmr_prototype_logits(emb, protos, squared=True),
                               torch.tensor([[0.0, -9.0], [-25.0, -16.0]]))


def test_pmr_prototype_logits_finite_gradient_on_prototype():
    emb = torch.zeros(1, 2, requires_grad=True)
    pmr_prototype_logits(emb, torch.tensor([[0.0, 0.0], [1.0, 0.0]])).sum().backward()
    assert torch.isfinite(emb.grad).all()


def test_pmr_prototype_logits_bad_shapes():
    with pytest.raises(ValueError):
        pmr_prototype_logits(torch.zeros(2, 3), torch.zeros(4, 2))


def test_pmr_entropy_regulariser_value_and_sign():
    # rows (0, 0) -> ln 2 and (0, -inf) -> 0: mean = ln2 / 2 = 0.3465736
    assert pmr_entropy_regulariser(torch.tensor([[0.0, 0.0], [0.0, -INF]])).item() == pytest.approx(
        LN2 / 2
    )
    # entering the loss as -L_r: for logits (x, 0) with x = 2, p = 0.8807971, dH/dx = p (1 - p)
    # ln((1 - p) / p) = 0.8807971 * 0.1192029 * (-2) = -0.2099872, so d(-L_r)/dx = +0.2099872:
    # descent lowers the confident logit, i.e. raises the entropy (PMR's PER slows the dominant
    # modality).
    x = torch.tensor([[2.0, 0.0]], requires_grad=True)
    (-pmr_entropy_regulariser(x)).backward()
    assert x.grad[0, 0].item() == pytest.approx(0.2099872, abs=1e-6)


def test_pmr_prototypes_mean_and_momentum():
    emb = torch.tensor([[1.0, 1.0], [3.0, 3.0], [10.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # class 0: mean of (1,1), (3,3) = (2,2); class 1: (10,0)
    torch.testing.assert_close(
        prototypes(emb, labels, 2), torch.tensor([[2.0, 2.0], [10.0, 0.0]])
    )
    # momentum 0.2: 0.8 * (2,2) + 0.2 * (0,0) = (1.6,1.6); 0.8 * (10,0) + 0.2 * (0,10) = (8,2)
    prev = torch.tensor([[0.0, 0.0], [0.0, 10.0]])
    torch.testing.assert_close(prototypes(emb, labels, 2, prev, momentum=0.2),
                               torch.tensor([[1.6, 1.6], [8.0, 2.0]]))


def test_pmr_class_sums_add_over_batches_to_the_prototypes_of_the_whole_epoch():
    emb = torch.tensor([[1.0, 1.0], [3.0, 3.0], [10.0, 0.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 0])
    (s1, c1), (s2, c2) = (
        pmr_class_sums(emb[:3], labels[:3], 2),
        pmr_class_sums(emb[3:], labels[3:], 2),
    )
    torch.testing.assert_close(c1 + c2, torch.tensor([3.0, 1.0]))
    # class 0: mean of (1,1), (3,3), (5,5) = (3,3)
    torch.testing.assert_close(
        pmr_prototypes_from_sums(s1 + s2, c1 + c2), torch.tensor([[3.0, 3.0], [10.0, 0.0]])
    )


def test_pmr_prototypes_empty_class():
    emb, labels = torch.tensor([[1.0, 1.0], [3.0, 3.0]]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        prototypes(emb, labels, 3)
    prev = torch.tensor([[9.0, 9.0], [5.0, 5.0], [7.0, 7.0]])
    # classes 1, 2 keep their previous prototypes; class 0 -> (2, 2) with momentum 0
    torch.testing.assert_close(prototypes(emb, labels, 3, prev),
                               torch.tensor([[2.0, 2.0], [5.0, 5.0], [7.0, 7.0]]))


def test_discrepancy_ratio_tensor():
    torch.testing.assert_close(
        discrepancy_ratio_tensor(torch.tensor([30.0, 10.0])), torch.tensor([3.0, 1 / 3])
    )
    torch.testing.assert_close(
        discrepancy_ratio_tensor(torch.tensor([6.0, 2.0, 4.0])), torch.tensor([2.0, 0.4, 1.0])
    )
    # the others' scores all 0: kept above 0, so the ratio is large but finite (no nan, no inf)
    assert torch.isfinite(discrepancy_ratio_tensor(torch.tensor([1.0, 0.0]))).all()


def test_pmr_coefficients():
    # audio ahead (rho 3) gets 0; visual behind (rho 1/3) gets alpha; a tie gives 0 to both
    rho = discrepancy_ratio_tensor(torch.tensor([AV["audio"], AV["visual"]]))
    assert pmr_coefficients(rho, 2.0).tolist() == [0.0, 2.0]
    tie = discrepancy_ratio_tensor(torch.tensor([1.0, 1.0]))
    assert pmr_coefficients(tie, 2.0).tolist() == [0.0, 0.0]


# -------------------------------------------------------------------------------- gradient blending


_TRAIN_PREV = {"fused": 0.9, "audio": 1.0, "visual": 1.4}
_TRAIN_NOW = {"fused": 0.6, "audio": 0.7, "visual": 1.0}
_VAL_PREV = {"fused": 1.0, "audio": 1.2, "visual": 1.5}


def test_gradient_blending_hand_case():
    # fused:  dG = 1.0 - 0.8 = 0.2; O 0.1 -> 0.2, dO = 0.1; 0.2 / 0.01 = 20
    # audio:  dG = 1.2 - 1.1 = 0.1; O 0.2 -> 0.4, dO = 0.2; 0.1 / 0.04 = 2.5
    # visual: dG = 1.5 - 1.3 = 0.2; O 0.1 -> 0.3, dO = 0.2; 0.2 / 0.04 = 5
    # total 27.5 -> 0.7272727, 0.0909091, 0.1818182
    w = gradient_blending_weights(
        _TRAIN_PREV, _TRAIN_NOW, _VAL_PREV, {"fused": 0.8, "audio": 1.1, "visual": 1.3}
    )
    assert w == pytest.approx(
        {"fused": 0.7272727, "audio": 0.0909091, "visual": 0.1818182}, abs=1e-5
    )


def test_gradient_blending_no_gain_gets_zero():
    # visual validation loss rose 1.5 -> 1.7: weight 0; fused 20 and audio 2.5 -> 20/22.5, 2.5/22.5
    w = gradient_blending_weights(
        _TRAIN_PREV, _TRAIN_NOW, _VAL_PREV, {"fused": 0.8, "audio": 1.1, "visual": 1.7}
    )
    assert w == pytest.approx({"fused": 0.8888889, "audio": 0.1111111, "visual": 0.0}, abs=1e-5)


def test_gradient_blending_no_head_gained_equal_weights():
    w = gradient_blending_weights(
        _TRAIN_PREV, _TRAIN_NOW, _VAL_PREV, {"fused": 1.1, "audio": 1.3, "visual": 1.5}
    )
    assert w == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3})


def test_gradient_blending_missing_head():
    with pytest.raises(ValueError, match="visual"):
        gradient_blending_weights(_TRAIN_PREV, _TRAIN_NOW, _VAL_PREV, {"fused": 0.8, "audio": 1.1})


# ------------------------------------------------------------------------------- audio augmentation


def test_audio_augment_identity_without_masks_or_noise():
    x = torch.arange(12.0).reshape(1, 4, 3)
    y = audio_augment(x, torch.Generator().manual_seed(0), time_mask=0, freq_mask=0, noise_std=0.0)
    assert torch.equal(x, y) and y is not x


def test_audio_augment_masks_are_one_band_each():
    x = torch.ones(1, 20, 10)
    widths = set()
    for seed in range(20):
        y = audio_augment(
            x, torch.Generator().manual_seed(seed), time_mask=5, freq_mask=3, noise_std=0.0
        )
        rows = (y[0] == 0).all(dim=1).nonzero().flatten().tolist()  # zeroed frames
        cols = (y[0] == 0).all(dim=0).nonzero().flatten().tolist()  # zeroed mel bins
        wt, wf = len(rows), len(cols)
        assert wt <= 5 and wf <= 3
        assert rows == list(range(rows[0], rows[0] + wt)) if wt else True  # one contiguous span
        assert cols == list(range(cols[0], cols[0] + wf)) if wf else True
        # zero cells: wt full rows of 10 plus wf full columns of 20, minus the wt * wf counted twice
        assert int((y == 0).sum()) == wt * 10 + wf * 20 - wt * wf
        widths.add((wt, wf))
    assert torch.equal(x, torch.ones(1, 20, 10))  # input untouched
    # widths are drawn from {0..limit} inclusive: both ends occur over these seeds
    assert {w[0] for w in widths} >= {0, 5} and {w[1] for w in widths} >= {0, 3}
    a = audio_augment(x, torch.Generator().manual_seed(8), time_mask=5, freq_mask=3, noise_std=0.0)
    assert torch.equal(
        a,
        audio_augment(x, torch.Generator().manual_seed(8), time_mask=5, freq_mask=3, noise_std=0.0),
    )


def test_audio_augment_full_width_masks():
    # width limit equal to the axis is allowed; over many seeds some draw the whole axis -> all zero
    x = torch.ones(1, 3, 2)
    outs = [
        audio_augment(x, torch.Generator().manual_seed(s), time_mask=3, freq_mask=2, noise_std=0.0)
        for s in range(40)
    ]
    assert any(bool((o == 0).all()) for o in outs)


def test_audio_augment_noise_std():
    # Eq. 2.24: N(0, 0.02^2) on a zero spectrogram without masks: sample std ~ 0.02, mean ~ 0
    y = audio_augment(
        torch.zeros(1, 400, 100), torch.Generator().manual_seed(0), time_mask=0, freq_mask=0
    )
    assert y.std().item() == pytest.approx(0.02, rel=0.02) and abs(y.mean().item()) < 1e-3


def test_audio_augment_defaults_callable_like_the_loader():
    # mmhpc.data.loading passes only the tensor; default widths are a fifth of each axis (4 frames,
    # 2 bins)
    x = torch.full((1, 20, 10), 5.0)
    y = audio_augment(x)
    assert y.shape == x.shape
    near_zero_rows = (y[0].abs() < 0.2).all(dim=1).sum().item()
    assert near_zero_rows <= 4


@pytest.mark.parametrize(
    "kw", [dict(time_mask=21), dict(freq_mask=11), dict(time_mask=-1), dict(noise_std=-0.1)]
)
def test_audio_augment_bad(kw):
    with pytest.raises(ValueError):
        audio_augment(torch.zeros(1, 20, 10), **kw)
    with pytest.raises(ValueError):
        audio_augment(torch.zeros(5))


# --------------------------------------------------------------------------------------------- AMST


def test_amst_trains():
    assert amst_trains(0, 5) and amst_trains(5, 5) and not amst_trains(3, 5) and amst_trains(7, 1)
    # the AMST paper Alg. 1 counts epochs from 1: skip 5 trains in the 5th, 10th, ... epoch (0-based
    # 4, 9, ...)
    assert [e for e in range(12) if amst_trains(e, 5, "paper")] == [4, 9]
    assert [e for e in range(12) if amst_trains(e, 5)] == [0, 5, 10]
    assert all(amst_trains(e, 1, "paper") for e in range(5))
    with pytest.raises(ValueError):
        amst_trains(0, 5, "one")
    # 100 epochs (0..99): skip 5 trains 20 times, skip 10 trains 10 times (thesis Table 4.4, CREMA-D
    # audio, text)
    assert sum(amst_trains(e, 5) for e in range(100)) == 20
    assert sum(amst_trains(e, 10) for e in range(100)) == 10


@pytest.mark.parametrize("epoch,skip", [(3, 0), (3, -2), (-1, 2)])
def test_amst_trains_bad(epoch, skip):
    with pytest.raises(ValueError):
        amst_trains(epoch, skip)


def test_amst_default_skips_thesis_sec_4_2():
    assert AMST_DEFAULT_SKIPS == {
        "cremad": {"audio": 5, "visual": 1},
        "ave": {"audio": 2, "visual": 1},
        "mvsa": {"visual": 1, "text": 10},
        "iemocap": {"audio": 4, "visual": 1, "text": 10},
        "urfunny": {"audio": 6, "visual": 1, "text": 10},
    }


# --------------------------------------------------------------------------------- Alg. 5 selection


def test_select_modality():
    assert select_modality({"audio": 0.6, "visual": 0.4}, "entropy") == "visual"  # lowest bias
    assert (
        select_modality({"audio": 0.9, "visual": 1.2}, "reliability") == "visual"
    )  # highest reliability
    assert select_modality({"audio": 0.2, "visual": 0.3, "text": 0.5}, "entropy") == "audio"


def test_select_modality_ties_follow_order():
    assert select_modality({"audio": 0.5, "visual": 0.5}, "entropy") == "audio"
    assert select_modality({"visual": 0.5, "audio": 0.5}, "entropy") == "visual"
    assert select_modality({"text": 1.0, "audio": 1.0}, "reliability") == "text"


def test_select_modality_bad():
    with pytest.raises(ValueError):
        select_modality({"audio": 0.5}, "accuracy")
    with pytest.raises(ValueError):
        select_modality({}, "entropy")
