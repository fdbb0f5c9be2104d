"""mmhpc.metrics against hand-computed values (arithmetic in the comments), thesis tables where they
exist."""
import math

import pytest
import torch
from torch.overrides import TorchFunctionMode

from mmhpc.metrics import (
    MetricAccumulator,
    accuracy,
    bias,
    ece,
    entropy,
    ibf,
    mean_se,
    reliability,
    speedup,
    standard_error,
)
from mmhpc.strategies.balancing import batch_scores
from mmhpc.strategies.formulas import correct_class_score

LN2 = 0.6931471805599453
INF = float("inf")


def _logits(probs):
    """Logits whose softmax is exactly `probs` (log-probabilities)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# ----------------------------------------------------------------------------------------- accuracy


def test_accuracy_hand_case():
    # argmax rows: 1, 0, 2, 0 vs labels 1, 1, 2, 0 -> 3 of 4 correct = 0.75
    logits = torch.tensor([[0.1, 2.0, 0.3], [5.0, 1.0, 0.0], [0.0, 0.0, 9.0], [3.0, 2.0, 1.0]])
    assert accuracy(logits, torch.tensor([1, 1, 2, 0])) == pytest.approx(0.75)


def test_accuracy_tie_goes_to_lowest_class():
    # [1, 1] ties: argmax picks class 0 -> correct for label 0, wrong for label 1 -> 1/2
    logits = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1])) == pytest.approx(0.5)


@pytest.mark.parametrize("logits,labels", [
    (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long)),   # N mismatch
    (torch.zeros(3), torch.zeros(3, dtype=torch.long)),      # logits not 2-D
    (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)),   # empty
])
def test_accuracy_bad_shapes(logits, labels):
    with pytest.raises(ValueError):
        accuracy(logits, labels)


# ---------------------------------------------------------------------------------------------- IBF


def test_ibf_cremad_naive_table_4_1():
    # V: 22.4 / 60.5 = 0.370248; A: 55.1 / 59.1 = 0.932318; mean = 0.651283; IBF = 0.348717 -> 0.349
    assert round(ibf({"visual": 22.4, "audio": 55.1}, {"visual": 60.5, "audio": 59.1}), 3) == 0.349


def test_ibf_cremad_ogm_table_4_1():
    # V: 24.7 / 60.5 = 0.408264; A: 53.6 / 59.1 = 0.906937; mean 0.657600; IBF 0.342400 -> 0.342
    assert round(ibf({"visual": 24.7, "audio": 53.6}, {"visual": 60.5, "audio": 59.1}), 3) == 0.342


def test_ibf_ave_naive_caps_ratio_at_one():
    # V: 14.4 / 28.5 = 0.505263; A: 57.2 / 55.3 = 1.034 -> min(., 1) = 1; mean 0.752632 -> IBF
    # 0.247368 -> 0.247
    assert round(ibf({"visual": 14.4, "audio": 57.2}, {"visual": 28.5, "audio": 55.3}), 3) == 0.247


def test_ibf_iemocap_three_modalities():
    # V 26.7/46.5 = 0.574194, A 43.1/49.2 = 0.876016, T 58.8/62.3 = 0.943820
    # sum 2.394030, mean 0.798010, IBF 0.201990 -> 0.202 (Table 4.1)
    got = ibf(
        {"visual": 26.7, "audio": 43.1, "text": 58.8}, {"visual": 46.5, "audio": 49.2, "text": 62.3}
    )
    assert round(got, 3) == 0.202


def test_ibf_zero_when_every_modality_reaches_single():
    assert ibf({"a": 0.7, "v": 0.9}, {"a": 0.6, "v": 0.9}) == 0.0


def test_ibf_missing_modality_named():
    with pytest.raises(ValueError, match="text"):
        ibf({"audio": 50.0, "text": 40.0}, {"audio": 60.0})


def test_ibf_zero_single_accuracy_named():
    with pytest.raises(ValueError, match="visual"):
        ibf({"visual": 10.0}, {"visual": 0.0})


def test_ibf_empty():
    with pytest.raises(ValueError):
        ibf({}, {"a": 1.0})


# ------------------------------------------------------------------------------------------ entropy


def test_entropy_hand_cases():
    # uniform over 4 classes: ln 4 = 1.386294
    # p = (0.5, 0.25, 0.25): 0.5 ln 2 + 2 * 0.25 ln 4 = 0.5 ln2 + ln2 = 1.5 ln 2 = 1.039721
    # one-hot through -inf logits: exactly 0, not nan
    h = entropy(
        torch.stack([torch.zeros(3), _logits([0.5, 0.25, 0.25]), torch.tensor([0.0, -INF, -INF])])
    )
    assert h[1].item() == pytest.approx(1.5 * LN2, abs=1e-6)
    assert h[2].item() == 0.0
    h4 = entropy(torch.zeros(1, 4))
    assert h4.item() == pytest.approx(1.3862944, abs=1e-6)
    assert h[0].item() == pytest.approx(1.0986123, abs=1e-6)  # ln 3


def test_entropy_shift_invariant_and_large_logits_finite():
    # softmax ignores a constant shift: logits (1000, 1000) is uniform over 2 -> ln 2
    h = entropy(torch.tensor([[1000.0, 1000.0], [1e4, -1e4]]))
    assert h[0].item() == pytest.approx(LN2, abs=1e-6)
    assert torch.isfinite(h).all() and h[1].item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------- bias


def test_bias_hand_case():
    # C = 4, log C = 1.386294. H_a = ln 2 -> S_a = 1 - 0.5 = 0.5; H_v = 0.75 ln 4 -> S_v = 0.25
    # B_a = 0.5 / 0.75 = 2/3, B_v = 0.25 / 0.75 = 1/3
    b = bias({"audio": LN2, "visual": 0.75 * 1.3862943611198906}, 4)
    assert b["audio"] == pytest.approx(2 / 3) and b["visual"] == pytest.approx(1 / 3)


def test_bias_clips_scores():
    # H above log C (impossible, e.g. rounding) -> S = 0 (clipped); negative H -> S = 1 (clipped) S
    # = (1, 0) -> B = (1, 0)
    b = bias({"a": -0.1, "v": 5.0}, 2)
    assert b == {"a": 1.0, "v": 0.0}


def test_bias_all_uniform_equal_shares():
    # H = log C everywhere -> every S = 0 -> equal thirds
    b = bias({"a": math.log(6), "v": math.log(6), "t": math.log(6)}, 6)
    assert b == pytest.approx({"a": 1 / 3, "v": 1 / 3, "t": 1 / 3})


def test_bias_tie_equal():
    b = bias({"a": 0.3, "v": 0.3}, 3)
    assert b["a"] == pytest.approx(0.5) and b["v"] == pytest.approx(0.5)


@pytest.mark.parametrize("c", [0, 1])
def test_bias_needs_two_classes(c):
    with pytest.raises(ValueError):
        bias({"a": 0.1}, c)


# -------------------------------------------------------------------------------------- reliability


def test_reliability_hand_case():
    # audio 0.5 / 1.0 = 0.5 (overfits), visual 1.2 / 0.8 = 1.5 (better on validation)
    r = reliability({"audio": 0.5, "visual": 1.2}, {"audio": 1.0, "visual": 0.8})
    assert r == pytest.approx({"audio": 0.5, "visual": 1.5})


def test_reliability_errors_name_modality():
    with pytest.raises(ValueError, match="text"):
        reliability({"text": 1.0}, {"audio": 1.0})
    with pytest.raises(ValueError, match="audio"):
        reliability({"audio": 1.0}, {"audio": 0.0})


# ---------------------------------------------------------------------------------------------- ECE


def _ece_case():
    # conf / pred / label:
    #   0.90 / 0 / 0 correct  -> bin (0.8, 1.0]
    #   0.70 / 1 / 0 wrong    -> bin (0.6, 0.8]
    #   0.65 / 0 / 0 correct  -> bin (0.6, 0.8]
    #   0.55 / 0 / 1 wrong    -> bin (0.4, 0.6]
    logits = _logits([[0.9, 0.1], [0.3, 0.7], [0.65, 0.35], [0.55, 0.45]])
    return logits, torch.tensor([0, 0, 0, 1])


def test_ece_hand_case_with_empty_bins():
    # K = 5; bins (0, .2] and (.2, .4] are empty and add nothing.
    # (.8, 1]: 1/4 * |1 - 0.9| = 0.025
    # (.6, .8]: 2/4 * |0.5 - (0.7 + 0.65)/2| = 0.5 * |0.5 - 0.675| = 0.0875
    # (.4, .6]: 1/4 * |0 - 0.55| = 0.1375
    # ECE = 0.025 + 0.0875 + 0.1375 = 0.25
    assert ece(*_ece_case(), n_bins=5) == pytest.approx(0.25, abs=1e-6)


def test_ece_one_bin_is_gap_of_means():
    # K = 1: |acc - mean conf| = |2/4 - (0.9 + 0.7 + 0.65 + 0.55)/4| = |0.5 - 0.7| = 0.2
    assert ece(*_ece_case(), n_bins=1) == pytest.approx(0.2, abs=1e-6)


def test_ece_edge_value_goes_to_lower_bin():
    # K = 2, bins (0, .5], (.5, 1]. Sample 1: logits (0, 0) -> conf exactly 0.5, pred 0 (tie), label
    # 0 correct. Sample 2: conf 0.75, pred 0, label 1 wrong. 0.5 in the lower bin: 1/2 * |1 - 0.5| +
    # 1/2 * |0 - 0.75| = 0.25 + 0.375 = 0.625 (were 0.5 in the upper bin: 2/2 * |0.5 - 0.625| =
    # 0.125)
    logits = torch.stack([torch.zeros(2), _logits([0.75, 0.25])])
    assert ece(logits, torch.tensor([0, 1]), n_bins=2) == pytest.approx(0.625, abs=1e-6)


def test_ece_confident_and_right_is_zero():
    # conf = 1/(1+e^-50) ~ 1, correct -> |1 - 1| = 0
    assert ece(torch.tensor([[50.0, 0.0], [0.0, 50.0]]), torch.tensor([0, 1])) == pytest.approx(
        0.0, abs=1e-6
    )


def test_ece_bad_inputs():
    with pytest.raises(ValueError):
        ece(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        ece(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), n_bins=0)


# -------------------------------------------------------------------------------------- accumulator


def test_accumulator_two_batches():
    acc = MetricAccumulator()
    # batch 1: rows (0, 0) label 1 -> argmax 0 wrong; (0, -inf) label 0 right. mean loss given: 1.0
    acc.update(
        {"fused": torch.tensor([[0.0, 0.0], [0.0, -INF]])},
        torch.tensor([1, 0]),
        loss={"fused": 1.0},
    )
    # batch 2: three confident right rows, mean loss 0.4
    acc.update(
        {"fused": torch.tensor([[-INF, 0.0], [0.0, -INF], [0.0, -INF]])},
        torch.tensor([1, 0, 0]),
        loss={"fused": torch.tensor(0.4)},
    )
    r = acc.result()
    # loss = (2 * 1.0 + 3 * 0.4) / 5 = 3.2 / 5 = 0.64; acc = (1 + 3) / 5 = 0.8
    # entropy: only row (0, 0) is uncertain, ln 2; the others are 0 -> ln2 / 5 = 0.138629
    assert r["loss/fused"] == pytest.approx(0.64)
    assert r["acc/fused"] == pytest.approx(0.8)
    assert r["entropy/fused"] == pytest.approx(LN2 / 5, abs=1e-6)
    assert "ece/fused" not in r


def test_accumulator_default_loss_is_cross_entropy_and_heads_separate():
    acc = MetricAccumulator()
    # audio: CE of uniform 2-class logits = ln 2 whatever the label; argmax 0 -> 1 of 2 right
    # probe/audio: confident rows, CE = -log 1 = 0 (logits 0 vs -inf), 2 of 2 right
    acc.update(
        {"audio": torch.zeros(2, 2), "probe/audio": torch.tensor([[0.0, -INF], [-INF, 0.0]])},
        torch.tensor([0, 1]),
    )
    # a later batch may carry only some heads: probe/audio alone, 1 more right sample
    acc.update({"probe/audio": torch.tensor([[0.0, -INF]])}, torch.tensor([0]))
    r = acc.result()
    assert r["loss/audio"] == pytest.approx(LN2, abs=1e-6)
    assert r["acc/audio"] == pytest.approx(0.5)
    assert r["loss/probe/audio"] == pytest.approx(0.0, abs=1e-6)
    assert r["acc/probe/audio"] == 1.0
    assert set(r) == {"loss/audio", "acc/audio", "entropy/audio",
                      "loss/probe/audio", "acc/probe/audio", "entropy/probe/audio"}


def test_accumulator_keeps_fused_logits_for_ece():
    acc = MetricAccumulator(keep_logits=True, n_bins=5)
    logits, labels = _ece_case()
    # the audio head is not the fused head: never kept
    acc.update({"fused": logits[:1], "audio": logits[:1]}, labels[:1])
    acc.update({"fused": logits[1:], "audio": logits[1:]}, labels[1:])
    # same samples as test_ece_hand_case_with_empty_bins -> 0.25
    assert acc.result()["ece/fused"] == pytest.approx(0.25, abs=1e-6)
    assert len(acc._kept) == 2


def test_accumulator_empty_result_and_bad_batch():
    assert MetricAccumulator().result() == {}
    with pytest.raises(ValueError):
        MetricAccumulator().update({"fused": torch.zeros(3, 2)}, torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------ standard error etc.


def test_standard_error_hand_case():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5; var (ddof 1) = 5/3; std = 1.290994
    # se = 1.290994 / sqrt(4) = 0.645497
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.6454972, abs=1e-7)
    assert mean_se([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, 0.6454972), abs=1e-7)


def test_standard_error_single_and_constant():
    assert standard_error([7.0]) == 0.0
    assert mean_se([7.0]) == (7.0, 0.0)
    assert standard_error([3.0, 3.0, 3.0]) == 0.0


def test_standard_error_empty():
    with pytest.raises(ValueError):
        standard_error([])
    with pytest.raises(ValueError):
        mean_se([])


def test_speedup_table_4_5():
    # Eq. 4.1: T_unoptimised / T_optimised. CREMA-D AMST: 13.6 / 9.9 = 1.3737 -> "1.4x"; AVE ALT 8.0
    # / 9.2 -> 0.9x
    assert round(speedup(13.6, 9.9), 1) == 1.4
    assert round(speedup(8.0, 9.2), 1) == 0.9
    assert speedup(5.0, 5.0) == 1.0


@pytest.mark.parametrize("b,t", [(0.0, 1.0), (1.0, 0.0), (-1.0, 2.0)])
def test_speedup_bad_times(b, t):
    with pytest.raises(ValueError):
        speedup(b, t)


# ------------------------------------------------------------- no host traffic on the training step


class HostTraffic(TorchFunctionMode):
    """Records what would synchronise a GPU step: tensors built from host data on a device, host
    reads."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.events = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        # a tensor built from host values on a named device is a blocking copy on a GPU, also where
        # the test's device is the CPU
        if name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
            self.events.append(f"torch.{name} on {kwargs['device']}")
        if name in self.READS:
            self.events.append(f"Tensor.{name}")
        return func(*args, **kwargs)


def test_accumulator_update_never_touches_the_host():
    # "meta" stands in for a GPU (no data, so any host read would fail too): update must neither
    # build a device tensor from a Python number nor read a device value, whatever the loss is given
    # as
    z, y = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    acc, device_loss = MetricAccumulator(), torch.tensor(0.2, device="meta")
    with HostTraffic() as traffic:
        acc.update(
            {"fused": z, "audio": z, "probe/audio": z}, y, loss={"fused": 0.5, "audio": device_loss}
        )
        acc.update({"fused": z}, y, loss={"fused": 0.7})
    assert traffic.events == [], traffic.events


def test_accumulator_result_reads_the_device_once():
    acc = MetricAccumulator()
    for _ in range(3):
        acc.update({"fused": torch.zeros(2, 2), "audio": torch.zeros(2, 2)}, torch.tensor([0, 1]))
    with HostTraffic() as traffic:
        acc.result()
    assert traffic.events == ["Tensor.tolist"]


def test_correct_class_score_stays_on_the_device():
    z, y = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    with HostTraffic() as traffic:
        s = correct_class_score(z, y)
    assert traffic.events == [] and s.device.type == "meta" and s.dim() == 0


def test_batch_scores_stay_on_the_device():
    logits = {
        "audio": torch.tensor([[0.7, 0.3], [0.2, 0.8]]).log(),
        "visual": torch.tensor([[0.5, 0.5], [0.1, 0.9]]).log(),
    }
    with HostTraffic() as traffic:
        scores = batch_scores(logits, torch.tensor([0, 1]))
    assert (
        traffic.events == []
    )  # OGM-GE, OPM and PMR use them on the device; MLB reads them once per step
    # audio: 0.7 + 0.8 = 1.5; visual: 0.5 + 0.9 = 1.4
    assert scores.tolist() == pytest.approx([1.5, 1.4], abs=1e-6)
