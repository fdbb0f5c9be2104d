"""The training strategies: every strategy on every fusion it supports, and hand-checked formula uses.

Unit tests build a strategy on an untrained tiny model and drive its hooks directly (no data needed);
end-to-end runs use one batch per epoch on the tiny synthetic datasets with one thread each.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmhpc.config import ConfigError, load_config
from mmhpc.data.specs import DATASETS
from mmhpc.models.multimodal import MultimodalModel
from mmhpc.strategies import STRATEGIES
from mmhpc.strategies.formulas import gradient_blending_weights, mlb_coefficients
from mmhpc.train import train

FAST = ["train.max_batches=1", "train.batch_size=8", "system.threads=1", "system.sample_interval=0"]
NEW = ["amst", "entropy", "reliability", "ogm_ge", "opm", "mslr", "pmr", "mla", "mlb", "multi_loss",
       "gradient_blending"]
NEEDS = {"entropy": ["model.cosine=true"], "reliability": ["model.cosine=true"]}


def strategy(name: str, *overrides: str, dataset: str = "cremad", seed: int = 0):
    """A strategy on a freshly initialised tiny model, built the way the trainer builds it."""
    cfg = load_config(None, [f"data.dataset={dataset}", f"strategy.name={name}", *NEEDS.get(name, []), *overrides])
    torch.manual_seed(seed)
    spec = DATASETS[cfg.data.dataset]
    model = MultimodalModel(cfg.modalities, spec.num_classes, cfg.model, spec.shapes("tiny"))
    return STRATEGIES[name](cfg, model)


def batch(n: int = 8, seed: int = 0, modalities=("audio", "visual")):
    g = torch.Generator().manual_seed(seed)
    shapes = {"audio": (1, 32, 32), "visual": (3, 3, 16, 16)}
    out = {m: torch.randn(n, *shapes[m], generator=g) for m in modalities}
    return out, torch.randint(0, 6, (n,), generator=g)


def val_metrics(**per_modality) -> dict:
    """{"reliability/audio": .., ...} from reliability={"audio": .., ...}, bias={...}."""
    return {f"{metric}/{m}": v for metric, values in per_modality.items() for m, v in values.items()}


def fusions_of(name: str, params: str | None = None) -> list[str]:
    cls = STRATEGIES[name]
    if name == "amst" and params and "alternating" not in params:
        return ["early_sum", "late_sum", "concat"]
    return list(cls.fusions)


SMOKE = [(name, fusion, None) for name in NEW if name != "amst" for fusion in fusions_of(name)]
SMOKE += [("amst", fusion, f"strategy.params={{module: {module}}}")
          for module in ("alternating", "joint", "full") for fusion in fusions_of("amst", module)]


# ---- every strategy x every fusion it supports ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name, fusion, params", SMOKE, ids=[f"{n}-{f}" + (f"-{p.split()[-1][:-1]}" if p else "")
                                                              for n, f, p in SMOKE])
def test_every_strategy_trains_on_every_fusion_it_supports(tiny_config, name, fusion, params):
    extra = [params] if params else []
    cfg = tiny_config("cremad", f"strategy.name={name}", f"model.fusion={fusion}", *NEEDS.get(name, []), *FAST, *extra)
    rec = train(cfg, progress=False)
    assert rec.status == "done" and rec.summary.epochs_run == 1
    test = rec.summary.test
    for head in ("fused", "audio", "visual", "probe/audio", "probe/visual"):
        assert 0.0 <= test[f"acc/{head}"] <= 1.0
    assert all(math.isfinite(v) for v in rec.epochs[0].train.values())
    assert rec.summary.optimised_epochs == {"audio": 1, "visual": 1}  # epoch 0: everyone trains


@pytest.mark.slow
@pytest.mark.parametrize("name", ["amst", "reliability", "ogm_ge", "opm", "mla", "mlb"])
def test_three_modalities_with_text(tiny_config, name):
    fusion = "early_sum" if name == "mla" else "concat"
    cfg = tiny_config("iemocap", f"strategy.name={name}", f"model.fusion={fusion}", *NEEDS.get(name, []), *FAST)
    rec = train(cfg, progress=False)
    assert rec.status == "done"
    assert set(rec.summary.optimised_epochs) == {"audio", "visual", "text"}


@pytest.mark.parametrize("name", [n for n in NEW if "gated" in STRATEGIES[n].fusions])
@pytest.mark.parametrize("fusion", ["gated", "film"])
def test_gated_and_film_with_three_modalities_fail_at_once(name, fusion):
    with pytest.raises(ConfigError, match=f"model.fusion: {fusion} fuses exactly two modalities, got 3"):
        load_config(None, ["data.dataset=iemocap", f"model.fusion={fusion}", f"strategy.name={name}",
                           *NEEDS.get(name, [])])


@pytest.mark.parametrize("overrides, message", [
    (["strategy.name=entropy"], "model.cosine: strategy entropy trains with the cosine classifier"),
    (["strategy.name=reliability", "strategy.params={warmup: -1}", "model.cosine=true"], "strategy.params.warmup"),
    (["strategy.name=amst", "model.fusion=gated", "strategy.params={module: joint}"],
     "model.fusion: AMST's joint module .* valid choices: early_sum, late_sum, concat"),
    (["strategy.name=amst", "strategy.params={module: both}"], "strategy.params.module: invalid value 'both'; "
                                                                "valid choices: alternating, joint, full"),
    (["strategy.name=amst", "strategy.params={skips: {text: 2}}"], "strategy.params.skips.text: not a modality"),
    (["strategy.name=amst", "strategy.params={skips: {audio: 0}}"], "must be a positive integer"),
    (["strategy.name=amst", "system.parallelism=ddp"], "strategy amst cannot run under ddp; valid: single, blp"),
    (["strategy.name=ogm_ge", "model.fusion=film"], "model.fusion: strategy ogm_ge .* valid choices: early_sum, "
                                                    "late_sum, concat"),
    (["strategy.name=ogm_ge", "strategy.params={variant: cvpr}"], "strategy.params.variant: invalid value 'cvpr'"),
    (["strategy.name=ogm_ge", "data.modalities=[audio]"], "balances two or more modalities"),
    (["strategy.name=opm", "strategy.params={q_base: 1.5}"], r"strategy.params.q_base: 1.5 must lie in \[0.0, 1.0\]"),
    (["strategy.name=mla"], "model.fusion: MLA's shared head .* valid choices: early_sum"),
    (["strategy.name=mla", "model.fusion=early_sum", "strategy.params={runtime_fusion: max}"],
     "strategy.params.runtime_fusion: invalid value 'max'; valid choices: entropy, fixed"),
    (["strategy.name=mslr", "strategy.params={init: {text: 2}}"], "strategy.params.init.text: not a modality"),
    (["strategy.name=mlb", "strategy.params={beta_max: 0.5}"], "strategy.params.beta_max: 0.5 must be >= 1"),
    (["strategy.name=gradient_blending", "strategy.params={weights: {fused: 1}}"],
     "strategy.params.weights: give a weight >= 0 for each of fused, audio, visual"),
    (["strategy.name=pmr", "system.parallelism=ddp"], "strategy pmr cannot run under ddp"),
    (["strategy.name=pmr", "data.modalities=[visual]"], "data.modalities: strategy pmr balances two or more"),
    (["strategy.name=mlb", "data.modalities=[audio]"], "data.modalities: strategy mlb balances two or more"),
    (["strategy.name=pmr", "strategy.params={start_epoch: 3, end_epoch: 1}"], "strategy.params.end_epoch: "
                                                                              "modulation runs from start_epoch"),
    (["strategy.name=opm", "strategy.params={lambda: 1}"], "strategy.params.lambda: unknown parameter of opm; valid: "
                                                           "q_base, lam, p_exe, start_epoch, end_epoch"),
])
def test_bad_parameters_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_declared_parallelisms():
    one_backward = {"ogm_ge", "opm", "mslr", "mlb", "multi_loss", "gradient_blending"}
    for name in NEW:
        assert ("ddp" in STRATEGIES[name].parallelisms) == (name in one_backward), name


# ---- AMST ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dataset, modalities, skips", [
    ("cremad", None, {"audio": 5, "visual": 1}),
    ("ave", None, {"audio": 2, "visual": 1}),
    ("iemocap", "[audio,visual]", {"audio": 4, "visual": 1}),
    ("urfunny", "[audio,visual]", {"audio": 6, "visual": 1}),
])
def test_amst_default_skips_per_dataset(dataset, modalities, skips):
    extra = [f"data.modalities={modalities}"] if modalities else []
    assert strategy("amst", *extra, dataset=dataset).skips == skips


def test_amst_schedule_which_modality_trains_when():
    s = strategy("amst")  # CREMA-D: audio every 5th epoch, visual always
    schedule = [s.begin_epoch(e) for e in range(11)]
    assert [e for e, active in enumerate(schedule) if "audio" in active] == [0, 5, 10]
    assert all("visual" in active for active in schedule)
    s = strategy("amst", "strategy.params={skips: {audio: 3, visual: 2}}")
    assert [s.begin_epoch(e) for e in range(5)] == [["audio", "visual"], [], ["visual"], ["audio"], ["visual"]]


def _audio_backward_counter(s):
    calls = []
    next(s.model.encoders["audio"].parameters()).register_hook(lambda g: calls.append(1))
    return calls


@pytest.mark.parametrize("module", ["alternating", "joint"])
def test_amst_skipped_modality_never_runs_backward(module):
    s = strategy("amst", f"strategy.params={{module: {module}}}")
    calls = _audio_backward_counter(s)
    x, y = batch()
    s.begin_epoch(1)  # audio skipped (skip 5)
    out = s.train_step(x, y)
    assert calls == [] and {"audio", "visual", "fused"} <= set(out.logits)
    s.begin_epoch(5)
    s.train_step(x, y)
    assert calls == [1]


def test_amst_full_module_averages_alternating_and_joint_logits():
    s = strategy("amst", "strategy.params={module: full}")
    twin = s.model.amst_joint
    assert set(twin.encoders) == {"audio", "visual"} and twin.encoders["audio"] is not s.model.encoders["audio"]
    assert {id(p) for p in twin.parameters()} <= {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    x, _ = batch()
    s.model.eval()
    out = s.eval_logits(x)
    expected = (out["audio"] + out["visual"] + out["joint"]) / 3  # seed 001 Fig. 1c
    assert torch.allclose(out["fused"], expected, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(out["joint"], twin.fusion(twin.encode(x)), atol=1e-5)


# ---- Entropy and Reliability ---------------------------------------------------------------------------

def test_reliability_trains_the_most_reliable_modality_and_entropy_the_least_biased():
    rel = strategy("reliability")
    ent = strategy("entropy")
    for s in (rel, ent):
        assert s.begin_epoch(0) == ["audio", "visual"]  # warm-up: no metric exists yet
    val = val_metrics(reliability={"audio": 0.7, "visual": 0.9}, bias={"audio": 0.3, "visual": 0.7})
    rel.end_epoch(0, {}, val)
    ent.end_epoch(0, {}, val)
    assert rel.begin_epoch(1) == ["visual"]  # highest reliability
    assert ent.begin_epoch(1) == ["audio"]   # lowest bias
    val = val_metrics(reliability={"audio": 0.95, "visual": 0.8}, bias={"audio": 0.6, "visual": 0.4})
    rel.end_epoch(1, {}, val)
    ent.end_epoch(1, {}, val)
    assert rel.begin_epoch(2) == ["audio"] and ent.begin_epoch(2) == ["visual"]
    assert rel.optimised == {"audio": 1, "visual": 2} and ent.optimised == {"audio": 2, "visual": 1}


def test_selective_without_warmup_starts_with_the_first_modality():
    s = strategy("entropy", "strategy.params={warmup: 0}")
    assert s.begin_epoch(0) == ["audio"]


def test_selective_stops_at_the_cap_and_decays_when_any_modality_reaches_the_decay_epoch():
    s = strategy("reliability", "train.epochs=3", "train.lr_decay_epoch=2", "train.lr_decay=0.1")
    assert s.max_epochs() == 6  # M x T
    # reliability favours visual throughout: epochs 0 (both), 1 and 2 (visual)
    val = val_metrics(reliability={"audio": 0.5, "visual": 0.9})
    lrs, stops = [], []
    for epoch in range(6):
        lrs.append(s.lr_factor(epoch))
        s.begin_epoch(epoch)
        s.end_epoch(epoch, {}, val)
        stops.append(s.should_stop(epoch))
        if stops[-1]:
            break
    assert s.optimised == {"audio": 1, "visual": 3}  # visual reached T = 3
    assert stops == [False, False, True]
    assert lrs == [1.0, 1.0, 0.1]  # visual had 2 optimisation epochs after epoch 1


@pytest.mark.slow
def test_selective_end_to_end_cap_and_decay(tiny_config):
    cfg = tiny_config("cremad", "strategy.name=entropy", "model.cosine=true", "train.epochs=2",
                      "train.lr_decay_epoch=1", "train.lr=0.01", *FAST)
    rec = train(cfg, progress=False)
    assert rec.summary.epochs_run == 2  # warm-up (both), then one modality reaches T = 2
    assert max(rec.summary.optimised_epochs.values()) == 2
    assert sum(rec.summary.optimised_epochs.values()) == 3
    assert rec.epochs[0].optimised == ["audio", "visual"] and len(rec.epochs[1].optimised) == 1
    assert [e.lr for e in rec.epochs] == pytest.approx([0.01, 0.001])


def test_selective_state_survives_a_checkpoint():
    s = strategy("reliability")
    s.end_epoch(0, {}, val_metrics(reliability={"audio": 0.2, "visual": 0.4}))
    t = strategy("reliability")
    t.load_state_dict(s.state_dict())
    assert t.begin_epoch(1) == ["visual"] and t.optimised == s.optimised


# ---- OGM-GE and OPM ------------------------------------------------------------------------------------

def _unmodulated_grads(s, x, y):
    """Gradients of the joint loss without modulation, by hand, from the strategy's current weights."""
    model = s.model
    out = model(x)
    loss = F.cross_entropy(out["fused"], y) + sum(F.cross_entropy(z, y) for z in out["probes"].values())
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads, {m: e.detach() for m, e in out["embs"].items()}


def _capture_step(s):
    captured = {}
    s.optimizer.step = lambda: captured.update({n: p.grad.clone() for n, p in s.model.named_parameters()
                                                if p.grad is not None})
    return captured


def _hand_ogm_coefficients(s, embs, y, alpha):
    """Seed 003 Eq. 6-7, 11 by hand for concat: s_m from W_m e_m + b/2, rho = s_m / s_other."""
    w, b = s.model.fusion.head.weight.detach(), s.model.fusion.head.bias.detach()
    d = s.model.dim
    part = {"audio": embs["audio"] @ w[:, :d].t() + b / 2, "visual": embs["visual"] @ w[:, d:].t() + b / 2}
    score = {m: F.softmax(z, 1)[torch.arange(len(y)), y].sum().item() for m, z in part.items()}
    rho = {"audio": score["audio"] / score["visual"], "visual": score["visual"] / score["audio"]}
    return {m: max(0.0, 1 - alpha * math.tanh(r - 1)) if r > 1 else 1.0 for m, r in rho.items()}


@pytest.mark.slow
def test_ogm_scales_the_dominant_encoders_gradients_by_k():
    s = strategy("ogm_ge", "model.fusion=concat", "strategy.params={ge: false, alpha: 1.0}")
    x, y = batch()
    s.model.train()
    ref, embs = _unmodulated_grads(s, x, y)
    k = _hand_ogm_coefficients(s, embs, y, alpha=1.0)
    assert min(k.values()) < 1.0 and max(k.values()) == 1.0  # one modality dominates
    captured = _capture_step(s)
    s.begin_epoch(0)
    s.train_step(x, y)
    assert s.coeffs == pytest.approx(k, rel=1e-5)
    for name, g in captured.items():
        scale = next((k[m] for m in k if name.startswith((f"encoders.{m}.", f"project.{m}."))), 1.0)
        assert torch.allclose(g, scale * ref[name], rtol=1e-4, atol=1e-7), name
    assert any(name.startswith("encoders.") for name in captured)


@pytest.mark.slow
def test_ogm_ge_adds_noise_with_the_gradients_spread():
    s = strategy("ogm_ge", "model.fusion=concat", "strategy.params={alpha: 1.0}")
    x, y = batch()
    s.model.train()
    ref, embs = _unmodulated_grads(s, x, y)
    k = _hand_ogm_coefficients(s, embs, y, alpha=1.0)
    captured = _capture_step(s)
    s.begin_epoch(0)
    s.train_step(x, y)
    for m in ("audio", "visual"):  # Alg. 2: every encoder gets k g + h, h ~ N(0, std(g)^2)
        name = f"encoders.{m}.net.layer4.0.conv1.weight"
        noise = captured[name] - k[m] * ref[name]
        assert noise.abs().max() > 0
        assert noise.std().item() == pytest.approx(ref[name].std().item(), rel=0.05)
        assert abs(noise.mean().item()) < 0.05 * ref[name].std().item()


def test_ogm_outside_its_epochs_is_plain_joint_training():
    s = strategy("ogm_ge", "strategy.params={start_epoch: 2, end_epoch: 3}")
    assert [s.begin_epoch(e) and s.modulating for e in range(5)] == [False, False, True, True, False]


def test_opm_drops_features_with_probability_q():
    s = strategy("opm")
    d = s.model.dim
    embs = {"audio": torch.randn(16, d), "visual": torch.randn(16, d)}
    s.q = {"audio": 1.0, "visual": 0.0}
    dropped, valid = s.drop(embs)
    assert torch.all(dropped["audio"] == 0)
    assert torch.allclose(dropped["visual"], 2 * embs["visual"])  # 1 / (1 - theta), theta = (1 + 0) / 2
    assert bool(valid.all())
    s.q = {"audio": 0.0, "visual": 0.0}
    dropped, _ = s.drop(embs)
    assert torch.equal(dropped["audio"], embs["audio"])
    s.q = {"audio": 0.5, "visual": 0.0}
    torch.manual_seed(0)
    kept = (s.drop({"audio": torch.ones(4000, 1), "visual": torch.ones(4000, 1)})[0]["audio"] != 0).float().mean()
    assert kept.item() == pytest.approx(0.5, abs=0.03)


def test_opm_step_sets_next_drop_probabilities_from_the_scores():
    s = strategy("opm", "strategy.params={q_base: 0.5, lam: 0.5}")
    x, y = batch()
    s.begin_epoch(0)
    s.train_step(x, y)  # q was 0: nothing dropped; the scores give the next q (Eq. 8)
    q = sorted(s.q.values())
    assert q[0] == 0.0 and 0.5 < q[1] < 0.75
    t = strategy("opm")
    t.load_state_dict(s.state_dict())
    assert t.q == s.q


# ---- MSLR and MLB: per-modality learning rates -----------------------------------------------------------

def test_mslr_changes_each_modalitys_learning_rate_from_its_accuracy():
    s = strategy("mslr", "train.lr=0.01", "train.weight_decay=0.001", "strategy.params={window: 2}")
    assert [g["weight_decay"] for g in s.optimizer.param_groups] == [0.001] * 3
    s.begin_epoch(0)
    assert s.modality_lr() == pytest.approx({"audio": 0.01, "visual": 0.1})  # thesis: 1e-3 / 1e-2 at lr 1e-3
    for epoch, (acc_a, acc_v) in enumerate([(0.5, 0.2), (0.3, 0.4)]):
        s.end_epoch(epoch, {}, {"acc/audio": acc_a, "acc/visual": acc_v})
    s.begin_epoch(2)
    # lr_m x acc_t / mean(acc over the last k_e = 2 epochs)
    assert s.modality_lr() == pytest.approx({"audio": 0.01 * 0.3 / 0.4, "visual": 0.1 * 0.4 / 0.3})
    assert s.optimizer.param_groups[-1]["lr"] == 0.01  # fusion head and probes keep train.lr
    encoder_params = {id(p) for p in s.model.encoders["visual"].parameters()}
    visual_group = next(g for g in s.optimizer.param_groups if g["modality"] == "visual")
    assert encoder_params <= {id(p) for p in visual_group["params"]}


@pytest.mark.slow
def test_mlb_scales_each_encoders_learning_rate_by_k():
    s = strategy("mlb", "train.lr=0.01", "strategy.params={alpha: 2.0, beta_max: 3.0}")
    x, y = batch()
    s.begin_epoch(0)
    s.train_step(x, y)
    # the scores come from the unimodal heads (the probes) before the update
    t = strategy("mlb", "train.lr=0.01", "strategy.params={alpha: 2.0, beta_max: 3.0}")
    t.model.train()
    with torch.no_grad():
        embs = t.model.encode(x)
        score = {m: F.softmax(t.model.probes[m](e), 1)[torch.arange(len(y)), y].sum().item() for m, e in embs.items()}
    k = mlb_coefficients(score, 2.0, 3.0)
    assert s.coeffs == pytest.approx(k, rel=1e-5)
    assert sorted(s.coeffs.values())[0] < 1.0 < sorted(s.coeffs.values())[1]  # decelerate one, accelerate the other
    assert s.modality_lr() == pytest.approx({m: 0.01 * v for m, v in k.items()})


def test_multi_loss_unimodal_heads_train_the_encoders():
    s = strategy("multi_loss")
    x, y = batch()
    embs = s.model.encode(x)
    weight = next(s.model.encoders["visual"].parameters())
    (grad,) = torch.autograd.grad(F.cross_entropy(s.unimodal(embs)["visual"], y), weight, retain_graph=True)
    assert grad.abs().sum() > 0  # f_i(X_i) reaches the encoder (seed 002 Eq. 3) ...
    (none,) = torch.autograd.grad(F.cross_entropy(s.model.probe_logits(embs)["visual"], y), weight, allow_unused=True)
    assert none is None          # ... where the diagnostic probes of the other strategies do not
    out = s.train_step(x, y)
    assert {"fused", "audio", "visual", "probe/audio", "probe/visual"} <= set(out.logits)


def test_gradient_blending_reestimates_its_weights_from_the_losses():
    s = strategy("gradient_blending")
    assert s.weights == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3})
    keys = lambda f, a, v: {"loss/fused": f, "loss/probe/audio": a, "loss/probe/visual": v}  # noqa: E731
    s.end_epoch(0, keys(1.5, 1.2, 1.7), keys(1.6, 1.5, 1.75))
    assert s.weights == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3})  # one estimate only
    s.end_epoch(1, keys(1.0, 0.5, 1.5), keys(1.4, 1.45, 1.6))
    heads = lambda f, a, v: {"fused": f, "audio": a, "visual": v}  # noqa: E731
    expected = gradient_blending_weights(heads(1.5, 1.2, 1.7), heads(1.0, 0.5, 1.5), heads(1.6, 1.5, 1.75),
                                         heads(1.4, 1.45, 1.6))
    assert s.weights == pytest.approx(expected)
    with torch.no_grad():
        losses = {"fused": torch.tensor(2.0), "audio": torch.tensor(1.0), "visual": torch.tensor(3.0)}
        assert s.combine(losses).item() == pytest.approx(sum(expected[k] * v.item() for k, v in losses.items()))
    fixed = strategy("gradient_blending", "strategy.params={weights: {fused: 1, audio: 0.5, visual: 0.5}}")
    fixed.end_epoch(0, keys(1, 1, 1), keys(1, 1, 1))
    fixed.end_epoch(1, keys(0.5, 0.5, 0.5), keys(0.9, 0.9, 0.9))
    assert fixed.weights == {"fused": 1, "audio": 0.5, "visual": 0.5}


# ---- PMR -----------------------------------------------------------------------------------------------

def test_pmr_builds_prototypes_and_adds_the_prototype_losses():
    s = strategy("pmr")
    x, y = batch(n=24)
    s.begin_epoch(0)
    out = s.train_step(x, y)
    assert not any(k.startswith("proto/") for k in out.logits)  # no prototypes before the first epoch ends
    s.end_epoch(0, {}, {})
    d = s.model.dim
    assert {m: tuple(p.shape) for m, p in s.prototypes.items()} == {"audio": (6, d), "visual": (6, d)}
    s.begin_epoch(1)
    out = s.train_step(x, y)
    assert {"proto/audio", "proto/visual"} <= set(out.logits)
    s.model.eval()
    assert {"proto/audio", "proto/visual"} <= set(s.eval_logits(x))


# ---- MLA -----------------------------------------------------------------------------------------------

def test_mla_entropy_weights_in_fused_logits():
    s = strategy("mla", "model.fusion=early_sum")
    d = s.model.dim
    embs = {"audio": torch.randn(5, d), "visual": torch.randn(5, d)}
    with torch.no_grad():
        z = {m: s.model.fusion.head(e) for m, e in embs.items()}  # the shared head H(e_m) = W e_m + b
        p = {m: F.softmax(v, 1) for m, v in z.items()}
        h = {m: -(q * q.log()).sum(1) for m, q in p.items()}  # Eq. 2.32, per sample over the classes
        top = torch.maximum(h["audio"], h["visual"])
        e = {m: torch.exp(top - h[m]) for m in h}  # Eq. 2.33
        w = {m: e[m] / (e["audio"] + e["visual"]) for m in e}
        expected = w["audio"].unsqueeze(1) * z["audio"] + w["visual"].unsqueeze(1) * z["visual"]
        assert torch.allclose(s.fused_logits(embs), expected, atol=1e-5)
        assert torch.all((w["audio"] > w["visual"]) == (h["audio"] < h["visual"]))  # confident -> heavier
    fixed = strategy("mla", "model.fusion=early_sum", "strategy.params={runtime_fusion: fixed, "
                                                      "weights: {audio: 0.3, visual: 0.7}}")
    with torch.no_grad():
        z = {m: fixed.model.fusion.head(e) for m, e in embs.items()}
        assert torch.allclose(fixed.fused_logits(embs), 0.3 * z["audio"] + 0.7 * z["visual"], atol=1e-5)


def test_mla_projects_the_shared_heads_gradient():
    s = strategy("mla", "model.fusion=early_sum", "strategy.params={projection_alpha: 0.1}")
    weight = s.model.fusion.head.weight
    d = s.model.dim
    r = torch.rand(1, d)
    weight.grad = torch.ones_like(weight)
    s.project(r)  # the first update: unprojected, then P = I - r r^T / (alpha + r^T r)
    assert torch.equal(weight.grad, torch.ones_like(weight))
    expected_p = torch.eye(d) - r.t() @ r / (0.1 + (r @ r.t()).item())
    assert torch.allclose(s.P, expected_p, atol=1e-6)
    g = torch.randn_like(weight)
    weight.grad = g.clone()
    s.project(torch.rand(1, d))
    assert torch.allclose(weight.grad, g @ expected_p, atol=1e-5)
    assert (weight.grad @ r.t()).abs().max() < 0.05 * (g @ r.t()).abs().max()  # r's direction is removed


def test_mla_alternates_one_update_per_modality():
    s = strategy("mla", "model.fusion=early_sum")
    x, y = batch()
    s.begin_epoch(0)
    steps = []
    step = s.optimizer.step
    s.optimizer.step = lambda: (steps.append(1), step())
    out = s.train_step(x, y)
    assert len(steps) == 2 and s.updates == 2
    assert {"fused", "audio", "visual", "probe/audio", "probe/visual"} <= set(out.logits)


# ---- ablation knobs ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ablation_knobs_reach_the_run(tiny_config):
    """Audio augmentation (Eq. 2.24), embedding dropout (Eq. 2.25) and weight decay (Eq. 2.26)."""
    from mmhpc.data.loading import build_datasets

    knobs = ["model.audio_augment=true", "model.embedding_dropout={audio: 0.5}", "train.weight_decay=0.01"]
    cfg = tiny_config("cremad", "strategy.name=amst", *knobs, *FAST)
    ds = build_datasets(cfg)
    train_ds, val_ds = ds["train"], ds["val"]
    assert not torch.equal(train_ds[0]["audio"], train_ds[0]["audio"])  # augmented afresh at every load
    assert torch.equal(val_ds[0]["audio"], val_ds[0]["audio"])          # never outside training
    s = strategy("mslr", *knobs)
    assert all(g["weight_decay"] == 0.01 for g in s.optimizer.param_groups)
    x, _ = batch()
    s.model.train()
    with torch.no_grad():
        a1, a2 = s.model.encode(x)["audio"], s.model.encode(x)["audio"]
    assert not torch.equal(a1, a2) and (a1 == 0).float().mean() > 0.3  # inverted dropout on the embedding
    rec = train(cfg, progress=False)
    assert rec.status == "done" and rec.config["model"]["embedding_dropout"] == {"audio": 0.5}
