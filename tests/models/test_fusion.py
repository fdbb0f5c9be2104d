"""Fusions: per-modality logits relate to the fused ones as the thesis' equations say."""
import pytest
import torch

from mmhpc.models.fusion import FUSION_CLASSES, Concat, EarlySum, FiLM, Gated, LateSum, build_fusion

MODS = ["audio", "visual", "text"]


def _embs(mods, b=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(b, d, generator=g) for m in mods}


@pytest.mark.parametrize("cls", [EarlySum, Concat])
def test_shared_bias_fusions_sum_of_modalities_minus_extra_bias(cls):
    # Eq. 2.5 / 2.9: z = sum_m z_m + c with c = -(M-1) b, since every z_m carries the bias once.
    torch.manual_seed(0)
    f = cls(MODS, 8, 4)
    embs = _embs(MODS)
    z = f(embs)
    parts = [f.unimodal(embs, m) for m in MODS]
    bias = f.head.bias
    torch.testing.assert_close(z, sum(parts) - (len(MODS) - 1) * bias)


def test_late_sum_is_exact_sum_of_branches():
    # Eq. 2.7: z = sum_m W_m e_m + b_m, and z_m = W_m e_m + b_m (Eq. 2.6).
    torch.manual_seed(0)
    f = LateSum(MODS, 8, 4)
    embs = _embs(MODS)
    manual = {m: embs[m] @ f.heads[m].weight.T + f.heads[m].bias for m in MODS}
    for m in MODS:
        torch.testing.assert_close(f.unimodal(embs, m), manual[m])
    torch.testing.assert_close(f(embs), sum(manual.values()))


def test_concat_masking_is_zeros_in_the_concatenation():
    torch.manual_seed(0)
    f = Concat(MODS, 8, 4)
    embs = _embs(MODS)
    zero = torch.zeros(5, 8)
    expected = f.head(torch.cat([zero, embs["visual"], zero], dim=1))
    torch.testing.assert_close(f.unimodal(embs, "visual"), expected)
    # and z_m = W_m e_m + b with W_m the modality's block of W (Eq. 2.8)
    w_visual = f.head.weight[:, 8:16]
    torch.testing.assert_close(expected, embs["visual"] @ w_visual.T + f.head.bias)


@pytest.mark.parametrize("name", ["early_sum", "late_sum", "concat"])
def test_cosine_logits_are_bounded_and_additive(name):
    torch.manual_seed(0)
    f = build_fusion(name, MODS, 8, 4, cosine=True, scale=3.0)
    embs = _embs(MODS)
    parts = [f.unimodal(embs, m) for m in MODS]
    for p in parts:  # s * cos in [-s, s]
        assert p.abs().max() <= 3.0 + 1e-5
    torch.testing.assert_close(f(embs), sum(parts))
    # scale-free: multiplying an embedding does not change its logits
    big = dict(embs, audio=embs["audio"] * 100)
    torch.testing.assert_close(f.unimodal(big, "audio"), parts[0])


def test_gated_fused_and_switched_masked_logits():
    torch.manual_seed(0)
    f = Gated(["audio", "visual"], 8, 4, control="audio")
    e = _embs(["audio", "visual"])
    # Eq. 2.10 with audio gating visual
    manual = f.out(torch.sigmoid(f.fc["audio"](e["audio"])) * f.fc["visual"](e["visual"]))
    torch.testing.assert_close(f(e), manual)
    # Sec. 3.2.2: audio's own logits: control switched to visual, masked with c = 0
    zero = torch.zeros(5, 8)
    switched = f.out(torch.sigmoid(f.fc["visual"](zero)) * f.fc["audio"](e["audio"]))
    torch.testing.assert_close(f.unimodal(e, "audio"), switched)


def test_film_fused_and_switched_masked_logits():
    torch.manual_seed(0)
    f = FiLM(["audio", "visual"], 8, 4)  # control defaults to the first modality
    e = _embs(["audio", "visual"])
    manual = f.out(f.gamma(e["audio"]) * e["visual"] + f.beta(e["audio"]))  # Eq. 2.11
    torch.testing.assert_close(f(e), manual)
    ones = torch.ones(5, 8)  # FiLM's mask constant c = 1
    torch.testing.assert_close(
        f.unimodal(e, "visual"), f.out(f.gamma(ones) * e["visual"] + f.beta(ones))
    )
    torch.testing.assert_close(
        f.unimodal(e, "audio"), f.out(f.gamma(ones) * e["audio"] + f.beta(ones))
    )


@pytest.mark.parametrize("cls", [Gated, FiLM])
def test_asymmetric_fusions_refuse_three_modalities(cls):
    with pytest.raises(ValueError, match="exactly two modalities"):
        cls(MODS, 8, 4)


def test_unknown_fusion_lists_choices():
    with pytest.raises(ValueError, match="early_sum, late_sum, concat, gated, film"):
        build_fusion("nonsense", MODS, 8, 4, False, 1.0)


@pytest.mark.parametrize("name", list(FUSION_CLASSES))
def test_gradients_reach_only_the_unmasked_modality(name):
    mods = ["audio", "visual"]
    f = build_fusion(name, mods, 8, 4, cosine=False, scale=1.0)
    e = {m: v.requires_grad_() for m, v in _embs(mods).items()}
    f.unimodal(e, "visual").sum().backward()
    assert e["visual"].grad is not None and e["visual"].grad.abs().sum() > 0
    assert e["audio"].grad is None
