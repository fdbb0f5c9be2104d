"""The training strategies: every strategy on every fusion it supports, and hand-checked formula
uses.

Unit tests build a strategy on an untrained tiny model and drive its hooks directly (no data
needed); end-to-end runs use one batch per epoch on the tiny synthetic datasets with one thread
each.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mmhpc.config import ConfigError, load_config
from mmhpc.data.frames import finish_batch
from mmhpc.data.specs import DATASETS
from mmhpc.models.multimodal import MultimodalModel
from mmhpc.strategies import STRATEGIES
from mmhpc.system.runtime import Runtime
from mmhpc.train import train

FAST = ["train.max_batches=1", "train.batch_size=8", "system.threads=1", "system.sample_interval=0"]
NEW = ["amst", "entropy", "reliability", "ogm_ge", "opm", "mslr", "pmr", "mla", "mlb", "multi_loss",
       "gradient_blending"]
NEEDS = {"entropy": ["model.cosine=true"], "reliability": ["model.cosine=true"]}


def strategy(name: str, *overrides: str, dataset: str = "cremad", seed: int = 0, datasets=None):
    """A strategy on a freshly initialised tiny model, built the way the trainer builds it."""
    from mmhpc.strategies.data import StrategyData

    cfg = load_config(
        None, [f"data.dataset={dataset}", f"strategy.name={name}", *NEEDS.get(name, []), *overrides]
    )
    torch.manual_seed(seed)
    spec = DATASETS[cfg.data.dataset]
    model = MultimodalModel(cfg.modalities, spec.num_classes, cfg.model, spec.shapes("tiny"))
    data = StrategyData(datasets, cfg, finish_batch) if datasets else None
    return STRATEGIES[name](cfg, model, Runtime.from_config(cfg), data)


def batch(n: int = 8, seed: int = 0, modalities=("audio", "visual")):
    g = torch.Generator().manual_seed(seed)
    shapes = {"audio": (1, 32, 32), "visual": (3, 3, 16, 16)}
    out = {m: torch.randn(n, *shapes[m], generator=g) for m in modalities}
    return out, torch.randint(0, 6, (n,), generator=g)


def val_metrics(**per_modality) -> dict:
    """{"reliability/audio": .., ...} from reliability={"audio": .., ...}, bias={...}."""
    return {
        f"{metric}/{m}": v for metric, values in per_modality.items() for m, v in values.items()
    }


def fusions_of(name: str, params: str | None = None) -> list[str]:
    cls = STRATEGIES[name]
    if name == "amst" and params and "alternating" not in params:
        return ["early_sum", "late_sum", "concat"]
    return list(cls.fusions)


SMOKE = [(name, fusion, None) for name in NEW if name != "amst" for fusion in fusions_of(name)]
SMOKE += [("amst", fusion, f"strategy.params={{module: {module}}}")
          for module in ("alternating", "joint", "full") for fusion in fusions_of("amst", module)]


# ---- every strategy x every fusion it supports
# ----------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize(
    "name, fusion, params",
    SMOKE,
    ids=[f"{n}-{f}" + (f"-{p.split()[-1][:-1]}" if p else "") for n, f, p in SMOKE],
)
def test_every_strategy_trains_on_every_fusion_it_supports(tiny_config, name, fusion, params):
    extra = [params] if params else []
    cfg = tiny_config(
        "cremad",
        f"strategy.name={name}",
        f"model.fusion={fusion}",
        *NEEDS.get(name, []),
        *FAST,
        *extra,
    )
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
    cfg = tiny_config(
        "iemocap", f"strategy.name={name}", f"model.fusion={fusion}", *NEEDS.get(name, []), *FAST
    )
    rec = train(cfg, progress=False)
    assert rec.status == "done"
    assert set(rec.summary.optimised_epochs) == {"audio", "visual", "text"}


@pytest.mark.parametrize("name", [n for n in NEW if "gated" in STRATEGIES[n].fusions])
@pytest.mark.parametrize("fusion", ["gated", "film"])
def test_gated_and_film_with_three_modalities_fail_at_once(name, fusion):
    with pytest.raises(
        ConfigError, match=f"model.fusion: {fusion} fuses exactly two modalities, got 3"
    ):
        load_config(
            None,
            [
                "data.dataset=iemocap",
                f"model.fusion={fusion}",
                f"strategy.name={name}",
                *NEEDS.get(name, []),
            ],
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["strategy.name=entropy"],
            "model.cosine: strategy entropy trains with the cosine classifier",
        ),
        (
            ["strategy.name=reliability", "strategy.params={warmup: -1}", "model.cosine=true"],
            "strategy.params.warmup",
        ),
        (
            ["strategy.name=amst", "model.fusion=gated", "strategy.params={module: joint}"],
            "model.fusion: AMST's joint module .* valid: early_sum, late_sum, concat",
        ),
        (
            ["strategy.name=amst", "strategy.params={module: both}"],
            "strategy.params.module: invalid value 'both'; valid: alternating, joint, full",
        ),
        (
            ["strategy.name=amst", "strategy.params={skips: {text: 2}}"],
            "strategy.params.skips.text: not a modality",
        ),
        (
            ["strategy.name=amst", "strategy.params={skips: {audio: 0}}"],
            "must be a positive integer",
        ),
        (
            ["strategy.name=ogm_ge", "model.fusion=film"],
            "model.fusion: strategy ogm_ge .* valid: early_sum, late_sum, concat",
        ),
        (
            ["strategy.name=ogm_ge", "strategy.params={variant: cvpr}"],
            "strategy.params.variant: invalid value 'cvpr'",
        ),
        (["strategy.name=ogm_ge", "data.modalities=[audio]"], "balances two or more modalities"),
        (
            ["strategy.name=opm", "strategy.params={q_base: 1.5}"],
            r"strategy.params.q_base: 1.5 must lie in \[0.0, 1.0\]",
        ),
        (["strategy.name=mla"], "model.fusion: MLA's shared head .* valid: early_sum"),
        (
            [
                "strategy.name=mla",
                "model.fusion=early_sum",
                "strategy.params={runtime_fusion: max}",
            ],
            "strategy.params.runtime_fusion: invalid value 'max'; valid: entropy, fixed",
        ),
        (
            ["strategy.name=mslr", "strategy.params={init: {text: 2}}"],
            "strategy.params.init.text: not a modality",
        ),
        (
            ["strategy.name=mlb", "strategy.params={beta_max: 0.5}"],
            "strategy.params.beta_max: 0.5 must be >= 1",
        ),
        (
            ["strategy.name=gradient_blending", "strategy.params={weights: {fused: 1}}"],
            "strategy.params.weights: give a weight >= 0 for each of fused, audio, visual",
        ),
        (
            ["strategy.name=pmr", "data.modalities=[visual]"],
            "data.modalities: strategy pmr balances two or more",
        ),
        (
            ["strategy.name=mlb", "data.modalities=[audio]"],
            "data.modalities: strategy mlb balances two or more",
        ),
        (
            ["strategy.name=pmr", "strategy.params={start_epoch: 3, end_epoch: 1}"],
            "strategy.params.end_epoch: modulation runs from start_epoch",
        ),
        (
            ["strategy.name=opm", "strategy.params={lambda: 1}"],
            "strategy.params.lambda: unknown parameter of opm; valid: "
            "q_base, lam, p_exe, start_epoch, "
            "end_epoch",
        ),
        (
            ["strategy.name=ogm_ge", "strategy.params={weights: bn}"],
            "strategy.params.weights: invalid value 'bn'; valid: conv, all",
        ),
        (
            ["strategy.name=amst", "strategy.params={phase: one}"],
            "strategy.params.phase: invalid value 'one'; valid: code, paper",
        ),
        (
            ["strategy.name=mslr", "strategy.params={schedule: cosine}"],
            "strategy.params.schedule: invalid value",
        ),
        (
            ["strategy.name=pmr", "strategy.params={fraction: 0}"],
            r"strategy.params.fraction: 0.0 must lie in \(0, 1\]",
        ),
        (
            ["strategy.name=gradient_blending", "strategy.params={holdout: 1.0}"],
            "strategy.params.holdout",
        ),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


# ---- one step against a hand-built reference
# --------------------------------------------------------------- Each strategy's step is compared
# with the same update written out here: a copy of the model, the loss of the paper/thesis written
# by hand, and a fresh SGD with the run's settings. A step that trains the wrong modality, drops a
# loss term, flips a sign or scales the wrong parameters moves some parameter elsewhere and fails.

def reference(s, lrs: dict | None = None):
    """(copy of s.model, update(loss)) with SGD of the run's settings; `lrs` {modality: lr} gives
    each branch its own rate (the rest keeps train.lr), as MSLR and MLB do."""
    ref = copy.deepcopy(s.model)
    t = s.cfg.train
    params = [p for p in ref.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if lrs:
        branch = {m: list(ref.branch_parameters(m)) for m in lrs}
        ids = {id(p) for ps in branch.values() for p in ps}
        groups = [{"params": branch[m], "lr": lr} for m, lr in lrs.items()]
        groups.append({"params": [p for p in params if id(p) not in ids]})
    opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    def update(loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return ref, update


def encode(model, x):
    return {m: model.encode_one(m, x[m]) for m in model.modalities}


def probe_loss(model, embs, y):
    return sum(F.cross_entropy(model.probes[m](e.detach()), y) for m, e in embs.items())


def assert_same_step(s, ref, before, moved=("encoders.audio", "encoders.visual", "fusion")):
    """Every parameter of the strategy's model equals the reference's; the `moved` prefixes did
    move."""
    for (name, p), (_, q) in zip(s.model.named_parameters(), ref.named_parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6), name
    for prefix in moved:
        assert any(
            not torch.equal(p, before[n])
            for n, p in s.model.named_parameters()
            if n.startswith(prefix)
        ), prefix


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def run_step(s, x, y, epoch=0):
    before = snapshot(s.model)
    s.model.train()
    s.begin_epoch(epoch)
    out = s.train_step(x, y)
    return before, out


LR = ["train.lr=0.1"]


def test_naive_step_is_one_update_of_the_fused_loss_and_the_probes():
    s = strategy("naive", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(F.cross_entropy(ref.fusion(embs), y) + probe_loss(ref, embs, y))
    before, _ = run_step(s, x, y)
    assert_same_step(
        s, ref, before, moved=("encoders.audio", "encoders.visual", "fusion", "probes")
    )


@pytest.mark.parametrize("fusion", ["concat", "late_sum"])
def test_alternating_step_updates_each_modality_on_its_masked_loss_in_turn(fusion):
    s = strategy("alternating", f"model.fusion={fusion}", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(F.cross_entropy(ref.fusion({"audio": embs["audio"]}), y) + probe_loss(ref, embs, y))
    update(
        F.cross_entropy(ref.fusion({"visual": embs["visual"]}), y)
    )  # after the audio update (Alg. 2)
    before, _ = run_step(s, x, y)
    assert_same_step(s, ref, before)


def test_alternating_gated_updates_the_fusion_first_on_all_embeddings():
    s = strategy("alternating", "model.fusion=gated", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(
        F.cross_entropy(ref.fusion({m: e.detach() for m, e in embs.items()}), y)
    )  # Alg. 3 line 3
    update(F.cross_entropy(ref.fusion({"audio": embs["audio"]}), y) + probe_loss(ref, embs, y))
    update(F.cross_entropy(ref.fusion({"visual": embs["visual"]}), y))
    before, _ = run_step(s, x, y)
    assert_same_step(s, ref, before)


# ---- AMST
# ----------------------------------------------------------------------------------------------

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
    s = strategy(
        "amst"
    )  # CREMA-D: audio every 5th epoch, visual always; the code base's phase: 0, 5, 10
    schedule = [s.begin_epoch(e) for e in range(11)]
    assert [e for e, active in enumerate(schedule) if "audio" in active] == [0, 5, 10]
    assert all("visual" in active for active in schedule)
    s = strategy("amst", "strategy.params={skips: {audio: 3, visual: 2}}")
    assert [s.begin_epoch(e) for e in range(5)] == [
        ["audio", "visual"],
        [],
        ["visual"],
        ["audio"],
        ["visual"],
    ]
    s = strategy(
        "amst", "strategy.params={phase: paper}"
    )  # the AMST paper Alg. 1 counts from 1: the 5th, 10th epoch
    assert [e for e in range(11) if "audio" in s.begin_epoch(e)] == [4, 9]


@pytest.mark.parametrize("phase, audio_epochs", [("code", [0]), ("paper", [4])])
@pytest.mark.slow
def test_amst_phase_in_a_five_epoch_run(tiny_config, phase, audio_epochs):
    cfg = tiny_config(
        "cremad",
        "strategy.name=amst",
        "train.epochs=5",
        f"strategy.params={{phase: {phase}}}",
        *FAST,
    )
    rec = train(cfg, progress=False)
    assert [e.epoch for e in rec.epochs if "audio" in e.optimised] == audio_epochs
    assert rec.summary.optimised_epochs == {"audio": 1, "visual": 5}


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


def assert_visual_update_alone(s):
    """The step of epoch 1 is the reference SGD update of the visual loss (plus probes) alone; audio
    stays put."""
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(F.cross_entropy(ref.fusion({"visual": embs["visual"]}), y) + probe_loss(ref, embs, y))
    before, _ = run_step(s, x, y, epoch=1)
    assert_same_step(s, ref, before, moved=("encoders.visual", "fusion"))
    assert all(
        torch.equal(p, before[n])
        for n, p in s.model.named_parameters()
        if n.startswith("encoders.audio")
    )


def test_amst_step_in_a_skipped_epoch_is_the_visual_update_alone():
    s = strategy("amst", *LR)
    assert_visual_update_alone(s)


def test_amst_joint_step_is_one_loss_over_the_active_modalities():
    # joint_head=masked: the reduced head as the fusion with the skipped embedding zero-masked
    # (whole bias)
    s = strategy("amst", "strategy.params={module: joint, joint_head: masked}", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(probe_loss(ref, embs, y) + F.cross_entropy(ref.fusion({"visual": embs["visual"]}), y))
    before, _ = run_step(s, x, y, epoch=1)
    assert_same_step(s, ref, before, moved=("encoders.visual", "fusion"))


@pytest.mark.parametrize("module", ["alternating", "joint"])
def test_amst_strict_keeps_the_skipped_head_block_fixed(module):
    # weight decay 0.1, lr 0.1: on the first step SGD's buffer is g + wd w, and the audio block's g
    # is 0, so by default the block shrinks to w (1 - lr wd) = 0.99 w (the code base); strict keeps
    # it, and its momentum 0
    x, y = batch()
    d = None
    for strict in (False, True):
        s = strategy("amst", "train.weight_decay=0.1", *LR,
                     f"strategy.params={{module: {module}, strict: {strict}, joint_head: masked}}")
        d = s.model.dim
        w = s.model.fusion.head.weight
        before = w.detach().clone()
        run_step(s, x, y, epoch=1)
        if strict:
            assert torch.equal(w[:, :d], before[:, :d])
            assert torch.equal(
                s.optimizer.state[w]["momentum_buffer"][:, :d], torch.zeros_like(before[:, :d])
            )
        else:
            assert torch.allclose(w[:, :d], 0.99 * before[:, :d], rtol=1e-5, atol=1e-7)
        assert not torch.allclose(w[:, d:], before[:, d:])  # the visual block learns either way
    s.begin_epoch(2)
    s.train_step(
        x, y
    )  # a second skipped step: the momentum buffer would move the block if it were kept
    assert torch.equal(s.model.fusion.head.weight[:, :d], before[:, :d])


def test_amst_full_module_averages_alternating_and_joint_logits():
    s = strategy("amst", "strategy.params={module: full}")
    twin = s.model.amst_joint
    assert (
        set(twin.encoders) == {"audio", "visual"}
        and twin.encoders["audio"] is not s.model.encoders["audio"]
    )
    assert {id(p) for p in twin.parameters()} <= {
        id(p) for g in s.optimizer.param_groups for p in g["params"]
    }
    x, _ = batch()
    s.model.eval()
    out = s.eval_logits(x)
    with (
        torch.no_grad()
    ):  # by hand: the alternating module's masked heads and the twin's fused head
        d = s.model.dim
        w, b = s.model.fusion.head.weight, s.model.fusion.head.bias
        audio = s.model.encode_one("audio", x["audio"]) @ w[:, :d].t() + b
        visual = s.model.encode_one("visual", x["visual"]) @ w[:, d:].t() + b
        tw, tb = twin.fusion.head.weight, twin.fusion.head.bias
        joint = (
            torch.cat(
                [twin.encode_one("audio", x["audio"]), twin.encode_one("visual", x["visual"])], 1
            )
            @ tw.t()
            + tb
        )
    assert torch.allclose(
        out["fused"], (audio + visual + joint) / 3, atol=1e-5
    )  # the AMST paper Fig. 1c


# ---- Entropy and Reliability
# ---------------------------------------------------------------------------

def test_reliability_trains_the_most_reliable_modality_and_entropy_the_least_biased():
    rel = strategy("reliability")
    ent = strategy("entropy")
    for s in (rel, ent):
        assert s.begin_epoch(0) == ["audio", "visual"]  # warm-up: no metric exists yet
    val = val_metrics(reliability={"audio": 0.7, "visual": 0.9}, bias={"audio": 0.3, "visual": 0.7})
    rel.end_epoch(0, {}, val)
    ent.end_epoch(0, {}, val)
    assert rel.begin_epoch(1) == ["visual"]  # highest reliability
    assert ent.begin_epoch(1) == ["audio"]  # lowest bias
    val = val_metrics(
        reliability={"audio": 0.95, "visual": 0.8}, bias={"audio": 0.6, "visual": 0.4}
    )
    rel.end_epoch(1, {}, val)
    ent.end_epoch(1, {}, val)
    assert rel.begin_epoch(2) == ["audio"] and ent.begin_epoch(2) == ["visual"]
    assert rel.optimised == {"audio": 1, "visual": 2} and ent.optimised == {"audio": 2, "visual": 1}


def test_entropy_ranks_the_split_it_is_told():
    train_bias, val_bias = (
        val_metrics(bias={"audio": 0.8, "visual": 0.2}),
        val_metrics(bias={"audio": 0.3, "visual": 0.7}),
    )
    s = strategy("entropy")
    s.end_epoch(0, train_bias, val_bias)
    assert s.begin_epoch(1) == ["audio"]  # validation (default): audio is the less biased there
    s = strategy("entropy", "strategy.params={split: train}")
    s.end_epoch(0, train_bias, val_bias)
    assert s.begin_epoch(1) == ["visual"]
    with pytest.raises(
        ConfigError, match="strategy.params.split: invalid value 'test'; valid: val, train"
    ):
        load_config(
            None, ["strategy.name=entropy", "model.cosine=true", "strategy.params={split: test}"]
        )


def test_selective_step_trains_the_chosen_modality_alone():
    s = strategy("reliability", *LR)
    s.end_epoch(0, {}, val_metrics(reliability={"audio": 0.5, "visual": 0.9}))
    assert_visual_update_alone(s)


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
def test_selective_end_to_end_cap_decay_and_training_bias(tiny_config):
    cfg = tiny_config("cremad", "strategy.name=entropy", "model.cosine=true", "train.epochs=2",
                      "train.lr_decay_epoch=1", "train.lr=0.01", *FAST)
    rec = train(cfg, progress=False)
    assert rec.summary.epochs_run == 2  # warm-up (both), then one modality reaches T = 2
    assert max(rec.summary.optimised_epochs.values()) == 2
    assert sum(rec.summary.optimised_epochs.values()) == 3
    assert rec.epochs[0].optimised == ["audio", "visual"] and len(rec.epochs[1].optimised) == 1
    assert [e.lr for e in rec.epochs] == pytest.approx([0.01, 0.001])
    for e in rec.epochs:  # the training split's bias per epoch (Eq. 3.5-3.6 of its mean entropies)
        tr = e.train
        s = {m: 1 - tr[f"entropy/{m}"] / math.log(6) for m in ("audio", "visual")}
        assert tr["bias/audio"] == pytest.approx(s["audio"] / (s["audio"] + s["visual"]))
        assert tr["bias/audio"] + tr["bias/visual"] == pytest.approx(1.0)


def test_selective_state_survives_a_checkpoint():
    s = strategy("reliability")
    s.end_epoch(0, {}, val_metrics(reliability={"audio": 0.2, "visual": 0.4}))
    t = strategy("reliability")
    t.load_state_dict(s.state_dict())
    assert t.begin_epoch(1) == ["visual"] and t.optimised == s.optimised


# ---- OGM-GE and OPM
# ------------------------------------------------------------------------------------

def _unmodulated_grads(s, x, y):
    """Gradients of the joint loss without modulation, by hand, from the strategy's current
    weights."""
    model = s.model
    embs = encode(model, x)
    loss = F.cross_entropy(model.fusion(embs), y) + probe_loss(model, embs, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads, {m: e.detach() for m, e in embs.items()}


def _capture_step(s):
    captured = {}
    s.optimizer.step = lambda: captured.update(
        {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
    )
    return captured


def _concat_scores(s, embs, y):
    """Seed 003 Eq. 6 by hand for concat: s_m = sum_i softmax(W_m e_m + b / 2)[y_i]."""
    w, b = s.model.fusion.head.weight.detach(), s.model.fusion.head.bias.detach()
    d = s.model.dim
    part = {
        "audio": embs["audio"] @ w[:, :d].t() + b / 2,
        "visual": embs["visual"] @ w[:, d:].t() + b / 2,
    }
    return {m: F.softmax(z, 1)[torch.arange(len(y)), y].sum().item() for m, z in part.items()}


def _hand_ogm(score, alpha):
    """Thesis Eq. 2.27 as the code base runs it: the modality with the higher ratio gets 1 -
    tanh(alpha rho)."""
    rho = {"audio": score["audio"] / score["visual"], "visual": score["visual"] / score["audio"]}
    top = max(rho, key=rho.get)
    return {m: 1 - math.tanh(alpha * rho[m]) if m == top else 1.0 for m in rho}


def _branch_of(name):
    return next(
        (m for m in ("audio", "visual") if name.startswith((f"encoders.{m}.", f"project.{m}."))),
        None,
    )


@pytest.mark.slow
def test_ogm_scales_the_top_modalitys_conv_gradients_by_k():
    # alpha 0.1, conv weights; embed_dim 64 puts a 2-D projection into each branch, which must stay
    # unscaled
    s = strategy(
        "ogm_ge", "model.fusion=concat", "model.embed_dim=64", "strategy.params={ge: false}"
    )
    x, y = batch()
    s.model.train()
    ref, embs = _unmodulated_grads(s, x, y)
    k = _hand_ogm(_concat_scores(s, embs, y), alpha=0.1)
    assert min(k.values()) < 0.95 and max(k.values()) == 1.0
    captured = _capture_step(s)
    s.begin_epoch(0)
    s.train_step(x, y)
    assert s.coefficients() == pytest.approx(k, rel=1e-5)
    scaled = 0
    for name, g in captured.items():
        m = _branch_of(name)
        scale = (
            k[m] if m is not None and g.dim() == 4 else 1.0
        )  # 1-D (BatchNorm) and head gradients untouched
        scaled += scale != 1.0
        assert torch.allclose(g, scale * ref[name], rtol=1e-4, atol=1e-7), name
    assert scaled > 10 and {1, 2} <= {g.dim() for n, g in captured.items() if _branch_of(n)}


@pytest.mark.slow
def test_ogm_paper_variant_on_every_parameter():
    s = strategy(
        "ogm_ge",
        "model.fusion=concat",
        "strategy.params={ge: false, alpha: 1.0, variant: paper, weights: all}",
    )
    x, y = batch()
    s.model.train()
    ref, embs = _unmodulated_grads(s, x, y)
    score = _concat_scores(s, embs, y)
    rho = {"audio": score["audio"] / score["visual"], "visual": score["visual"] / score["audio"]}
    k = {
        m: max(0.0, 1 - math.tanh(r - 1)) if r > 1 else 1.0 for m, r in rho.items()
    }  # the OPM/OGM-GE paper Eq. 11
    captured = _capture_step(s)
    s.begin_epoch(0)
    s.train_step(x, y)
    for name, g in captured.items():
        m = _branch_of(name)
        assert torch.allclose(g, (k[m] if m else 1.0) * ref[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.slow
def test_ogm_ge_adds_noise_with_the_gradients_spread_to_conv_weights():
    s = strategy("ogm_ge", "model.fusion=concat")
    x, y = batch()
    s.model.train()
    ref, embs = _unmodulated_grads(s, x, y)
    k = _hand_ogm(_concat_scores(s, embs, y), alpha=0.1)
    captured = _capture_step(s)
    s.begin_epoch(0)
    s.train_step(x, y)
    for m in ("audio", "visual"):  # every encoder's conv gradients get k g + h, h ~ N(0, std(g)^2)
        name = f"encoders.{m}.net.layer4.0.conv1.weight"
        noise = captured[name] - k[m] * ref[name]
        assert noise.std().item() == pytest.approx(ref[name].std().item(), rel=0.05)
        assert abs(noise.mean().item()) < 0.05 * ref[name].std().item()
        bn = f"encoders.{m}.net.layer4.0.bn1.weight"
        assert torch.allclose(
            captured[bn], ref[bn], rtol=1e-4, atol=1e-7
        )  # no noise on 1-D parameters


def test_ogm_window_is_the_code_bases_epochs_0_to_50():
    s = strategy("ogm_ge")
    assert [s.begin_epoch(e) and s.modulating for e in (0, 50, 51)] == [True, True, False]
    s = strategy("ogm_ge", "strategy.params={start_epoch: 2, end_epoch: 3}")
    assert [s.begin_epoch(e) and s.modulating for e in range(5)] == [
        False,
        False,
        True,
        True,
        False,
    ]


def test_opm_drops_features_with_probability_q():
    s = strategy("opm")
    d = s.model.dim
    embs = {"audio": torch.randn(16, d), "visual": torch.randn(16, d)}
    s.q = torch.tensor([1.0, 0.0])
    dropped, valid = s.drop(embs)
    assert torch.all(dropped["audio"] == 0)
    assert torch.allclose(
        dropped["visual"], 2 * embs["visual"]
    )  # 1 / (1 - theta), theta = (1 + 0) / 2
    assert bool(valid.all())
    s.q = torch.tensor([0.0, 0.0])
    dropped, _ = s.drop(embs)
    assert torch.equal(dropped["audio"], embs["audio"])
    s.q = torch.tensor([0.5, 0.0])
    torch.manual_seed(0)
    kept = (
        (s.drop({"audio": torch.ones(4000, 1), "visual": torch.ones(4000, 1)})[0]["audio"] != 0)
        .float()
        .mean()
    )
    assert kept.item() == pytest.approx(0.5, abs=0.03)


def test_opm_step_drops_the_dominant_modality_and_sets_the_next_q():
    s = strategy("opm", "model.fusion=concat", *LR, "strategy.params={q_base: 0.5, lam: 0.5}")
    x, y = batch()
    s.q = torch.tensor([1.0, 0.0])  # audio always dropped this step
    ref, update = reference(s)
    embs = encode(ref, x)
    score = _concat_scores(s, {m: e.detach() for m, e in embs.items()}, y)
    update(
        F.cross_entropy(ref.fusion({"audio": embs["audio"] * 0, "visual": embs["visual"] * 2}), y)
        + probe_loss(ref, embs, y)
    )
    before, _ = run_step(s, x, y)
    assert_same_step(s, ref, before)
    rho = {"audio": score["audio"] / score["visual"], "visual": score["visual"] / score["audio"]}
    q = {
        m: min(1.0, 0.5 * (1 + 0.5 * math.tanh(r - 1))) if r > 1 else 0.0 for m, r in rho.items()
    }  # Eq. 8
    assert s.drop_probabilities() == pytest.approx(q, rel=1e-5)
    assert 0.5 < max(q.values()) < 0.75 and min(q.values()) == 0.0
    t = strategy("opm")
    t.load_state_dict(s.state_dict())
    assert t.drop_probabilities() == s.drop_probabilities()


# ---- MSLR and MLB: per-modality learning rates
# -----------------------------------------------------------

def test_mslr_compounds_each_modalitys_rate_every_k_e_epochs():
    s = strategy("mslr", "train.lr=0.01", "train.weight_decay=0.001",
                 "strategy.params={window: 2, schedule: compound}")
    assert [g["weight_decay"] for g in s.optimizer.param_groups] == [0.001] * 3
    s.begin_epoch(0)
    assert s.modality_lr() == pytest.approx(
        {"audio": 0.01, "visual": 0.1}
    )  # code base: 1e-3 / 1e-2 at lr 1e-3
    accs = [(0.5, 0.2), (0.3, 0.4), (0.6, 0.2), (0.6, 0.3), (0.9, 0.6)]
    rates = []
    for epoch, (acc_a, acc_v) in enumerate(accs):
        s.end_epoch(epoch, {}, {"acc/audio": acc_a, "acc/visual": acc_v})
        s.begin_epoch(epoch + 1)
        rates.append(s.modality_lr())
    # epochs 1, 3 (t = 0, 2 odd): unchanged; after t = 2: audio x 0.6 / mean(0.3, 0.6) = 4/3, visual
    # x 0.2 / mean(0.4, 0.2) = 2/3; after t = 4: audio x 0.9 / mean(0.6, 0.9) = 1.2, visual x 0.6 /
    # 0.45
    assert rates[0] == pytest.approx({"audio": 0.01, "visual": 0.1})
    assert rates[1] == pytest.approx({"audio": 0.01, "visual": 0.1})
    assert rates[2] == pytest.approx({"audio": 0.01 * 4 / 3, "visual": 0.1 * 2 / 3})
    assert rates[3] == pytest.approx(rates[2])
    assert rates[4] == pytest.approx(
        {"audio": 0.01 * 4 / 3 * 1.2, "visual": 0.1 * 2 / 3 * 0.6 / 0.45}
    )
    assert s.optimizer.param_groups[-1]["lr"] == 0.01  # fusion head and probes keep train.lr
    literal = strategy("mslr", "train.lr=0.01", "strategy.params={window: 2, schedule: per_epoch}")
    for epoch, (acc_a, acc_v) in enumerate(accs[:2]):
        literal.end_epoch(epoch, {}, {"acc/audio": acc_a, "acc/visual": acc_v})
    literal.begin_epoch(2)  # Eq. 2.28 every epoch: 0.3 / mean(0.5, 0.3), 0.4 / mean(0.2, 0.4)
    assert literal.modality_lr() == pytest.approx({"audio": 0.01 * 0.75, "visual": 0.1 * 4 / 3})


def test_mslr_step_uses_each_branchs_rate():
    s = strategy("mslr", *LR)
    x, y = batch()
    ref, update = reference(s, lrs={"audio": 0.1, "visual": 1.0})  # init 1 and 10 x train.lr
    embs = encode(ref, x)
    update(F.cross_entropy(ref.fusion(embs), y) + probe_loss(ref, embs, y))
    before, _ = run_step(s, x, y)
    assert_same_step(s, ref, before)


@pytest.mark.slow
def test_mlb_scales_each_encoders_learning_rate_by_k():
    s = strategy("mlb", "train.lr=0.1", "strategy.params={alpha: 2.0, beta_max: 3.0}")
    x, y = batch()
    ref = copy.deepcopy(s.model)
    # the scores come from the unimodal heads (the probes) before the update (the MLB paper Eq. 4)
    with torch.no_grad():
        embs = encode(ref, x)
        score = {
            m: F.softmax(ref.probes[m](e), 1)[torch.arange(len(y)), y].sum().item()
            for m, e in embs.items()
        }
    k = {}
    for m, other in (("audio", "visual"), ("visual", "audio")):
        r = score[other] / score[m]  # Eq. 5: the others' mean over the own score
        beta = 3.0 if r > 1 else 2.0  # Eq. 6
        k[m] = 1 + (beta - 1) * math.tanh(2.0 * (r - 1))  # Eq. 7
    assert min(k.values()) < 1.0 < max(k.values())  # decelerate one, accelerate the other
    ref, update = reference(s, lrs={m: 0.1 * v for m, v in k.items()})
    embs = encode(ref, x)
    update(
        F.cross_entropy(ref.fusion(embs), y)
        + sum(F.cross_entropy(ref.probes[m](e), y) for m, e in embs.items())
    )
    before, _ = run_step(s, x, y)
    assert dict(zip(s.modalities, s.coeffs.tolist())) == pytest.approx(k, rel=1e-5)
    assert_same_step(s, ref, before)  # each encoder updated as with its rate 0.1 x k


def test_multi_loss_step_trains_the_encoders_through_the_unimodal_heads():
    s = strategy("multi_loss", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)  # the MLB paper Eq. 3: the unimodal heads are not detached
    update(
        F.cross_entropy(ref.fusion(embs), y)
        + sum(F.cross_entropy(ref.probes[m](e), y) for m, e in embs.items())
    )
    before, out = run_step(s, x, y)
    assert_same_step(
        s, ref, before, moved=("encoders.audio", "encoders.visual", "fusion", "probes")
    )
    assert {"fused", "audio", "visual", "probe/audio", "probe/visual"} <= set(out.logits)


def test_gradient_blending_reestimates_its_weights_from_the_losses():
    s = strategy(
        "gradient_blending", "strategy.params={holdout: 0}"
    )  # the validation split's losses
    assert s.weights == pytest.approx({"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3})

    def keys(f, a, v):
        return {"loss/fused": f, "loss/probe/audio": a, "loss/probe/visual": v}

    s.end_epoch(0, keys(1.5, 1.2, 1.7), keys(1.6, 1.5, 1.75))
    assert s.weights == pytest.approx(
        {"fused": 1 / 3, "audio": 1 / 3, "visual": 1 / 3}
    )  # one estimate only
    s.end_epoch(1, keys(1.0, 0.5, 1.5), keys(1.4, 1.45, 1.6))
    # gain dG = val_prev - val_now: 0.2, 0.05, 0.15; overfitting O = val - train: before 0.1, 0.3,
    # 0.05, now 0.4, 0.95, 0.1, so dO = 0.3, 0.65, 0.05; dG / dO^2 = 2.2222222, 0.1183432, 60 (sum
    # 62.3405654) -> normalised
    expected = {"fused": 0.0356469, "audio": 0.0018983, "visual": 0.9624548}
    assert s.weights == pytest.approx(expected, abs=1e-6)
    with torch.no_grad():  # the blended loss of Eq. 2.29
        losses = {
            "fused": torch.tensor(2.0),
            "audio": torch.tensor(1.0),
            "visual": torch.tensor(3.0),
        }
        assert s.combine(losses).item() == pytest.approx(
            2 * 0.0356469 + 0.0018983 + 3 * 0.9624548, abs=1e-5
        )
    fixed = strategy(
        "gradient_blending", "strategy.params={weights: {fused: 1, audio: 0.5, visual: 0.5}}"
    )
    fixed.end_epoch(0, keys(1, 1, 1), keys(1, 1, 1))
    fixed.end_epoch(1, keys(0.5, 0.5, 0.5), keys(0.9, 0.9, 0.9))
    assert fixed.weights == {"fused": 1, "audio": 0.5, "visual": 0.5}


def test_gradient_blending_step_weights_each_loss():
    s = strategy(
        "gradient_blending", *LR, "strategy.params={weights: {fused: 0.2, audio: 1.5, visual: 0.1}}"
    )
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(
        0.2 * F.cross_entropy(ref.fusion(embs), y)
        + 1.5 * F.cross_entropy(ref.probes["audio"](embs["audio"]), y)
        + 0.1 * F.cross_entropy(ref.probes["visual"](embs["visual"]), y)
    )
    before, _ = run_step(s, x, y)
    assert_same_step(
        s, ref, before, moved=("encoders.audio", "encoders.visual", "fusion", "probes")
    )


def test_gradient_blending_holds_out_part_of_the_training_split(synth_dir):
    from mmhpc.data.dataset import PreparedDataset
    from mmhpc.strategies.data import StrategyData

    root = synth_dir("cremad")
    s = strategy("gradient_blending", f"data.root={root}", "strategy.params={holdout: 0.25}")
    full = {
        split: PreparedDataset(root, split, ["audio", "visual"], train=split == "train")
        for split in ("train", "val", "test")
    }
    ds = s.split_datasets(s.cfg, full)
    n = len(full["train"])
    held = ds["gb_holdout"]
    assert len(held) == round(0.25 * n) and len(ds["train"]) == n - len(held)
    assert set(held.indices).isdisjoint(ds["train"].indices) and set(held.indices) | set(
        ds["train"].indices
    ) == set(range(n))
    assert ds["val"] is full["val"] and ds["train"].spec is full["train"].spec
    assert not held.dataset.train  # the held-out part is read without training augmentation
    s.data = StrategyData(ds, s.cfg, finish_batch)
    s.model.eval()
    with torch.no_grad():  # by hand: mean cross-entropy of each head over the held-out samples
        items = [held[i] for i in range(len(held))]
        x = finish_batch({m: torch.stack([it[m] for it in items]) for m in ("audio", "visual")})
        y = torch.tensor([it["label"] for it in items])
        embs = encode(s.model, x)
        expected = {
            "loss/fused": F.cross_entropy(s.model.fusion(embs), y).item(),
            **{
                f"loss/probe/{m}": F.cross_entropy(s.model.probes[m](e), y).item()
                for m, e in embs.items()
            },
        }
    assert s.held_out_losses() == pytest.approx(expected, rel=1e-4)
    val = {k: 100.0 for k in expected}  # the validation split plays no part in the estimate
    train_losses = {k: 0.5 for k in expected}
    s.end_epoch(0, train_losses, val)
    assert s.reference == (
        dict(zip(["fused", "audio", "visual"], [0.5] * 3)),
        pytest.approx({k.split("/")[-1]: v for k, v in expected.items()}, rel=1e-4),
    )


# ---- PMR
# -----------------------------------------------------------------------------------------------

def _pmr(synth_dir, *overrides):
    from mmhpc.data.dataset import PreparedDataset

    root = synth_dir("cremad")
    train_ds = PreparedDataset(
        root, "train", ["audio", "visual"], train=False
    )  # no augmentation: repeatable
    s = strategy(
        "pmr", f"data.root={root}", "train.batch_size=8", *overrides, datasets={"train": train_ds}
    )
    return s, train_ds


def _class_means(model, ds, classes=6):
    model.eval()
    with torch.no_grad():
        items = [ds[i] for i in range(len(ds))]
        x = finish_batch({m: torch.stack([it[m] for it in items]) for m in ("audio", "visual")})
        y = torch.tensor([it["label"] for it in items])
        embs = encode(model, x)
    return {m: torch.stack([e[y == k].mean(0) for k in range(classes)]) for m, e in embs.items()}


@pytest.mark.slow  # over 5 s: out of `make check`'s fast tier
def test_pmr_prototypes_are_class_means_of_the_training_data_blended_with_momentum(synth_dir):
    s, ds = _pmr(synth_dir, "strategy.params={fraction: 1.0, momentum: 0.2}")
    s.begin_epoch(0)
    first = _class_means(s.model, ds)
    for m in ("audio", "visual"):
        assert torch.allclose(s.prototypes[m], first[m], atol=1e-5)
    with torch.no_grad():
        for p in s.model.encoders["audio"].parameters():
            p.mul_(1.1)  # the embeddings move: the next prototypes blend old and new
    s.begin_epoch(1)
    second = _class_means(s.model, ds)
    assert torch.allclose(
        s.prototypes["audio"], 0.8 * second["audio"] + 0.2 * first["audio"], atol=1e-5
    )
    assert not torch.allclose(second["audio"], first["audio"], atol=1e-3)
    assert s.begin_epoch(71) and s.modulating is False  # the code base's window ends at epoch 70


def _proto_reference(s, x, y, mu):
    ref, update = reference(s)
    embs = encode(ref, x)
    logits = {m: -torch.cdist(embs[m], s.prototypes[m]) for m in embs}  # the code base's -EU_dist
    score = {
        m: F.softmax(z.detach(), 1)[torch.arange(len(y)), y].sum().item() for m, z in logits.items()
    }
    lag, lead = sorted(score, key=score.get)
    loss = (
        F.cross_entropy(ref.fusion(embs), y)
        + probe_loss(ref, embs, y)
        + 1.0 * F.cross_entropy(logits[lag], y)
    )
    if mu:  # thesis Eq. 2.30: minus mu x the mean prototype entropy of the leading modality
        p = F.softmax(logits[lead], 1)
        loss = loss - mu * (-(p * p.log()).sum(1)).mean()
    update(loss)
    return ref


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_pmr_step_adds_the_lagging_modalitys_prototype_loss(synth_dir, mu):
    s, _ = _pmr(synth_dir, *LR, f"strategy.params={{mu: {mu}}}")
    x, y = batch(n=24)
    s.model.train()
    s.begin_epoch(0)
    ref = _proto_reference(s, x, y, mu)
    before = snapshot(s.model)
    out = s.train_step(x, y)
    assert_same_step(s, ref, before)
    assert {"proto/audio", "proto/visual"} <= set(out.logits)
    s.model.eval()
    assert {"proto/audio", "proto/visual"} <= set(s.eval_logits(x))


# ---- MLA
# -----------------------------------------------------------------------------------------------

def test_mla_entropy_weights_in_fused_logits():
    s = strategy("mla", "model.fusion=early_sum")
    d = s.model.dim
    embs = {"audio": torch.randn(5, d), "visual": torch.randn(5, d)}
    with torch.no_grad():
        z = {
            m: s.model.fusion.head(e) for m, e in embs.items()
        }  # the shared head H(e_m) = W e_m + b
        p = {m: F.softmax(v, 1) for m, v in z.items()}
        h = {
            m: -(q * q.log()).sum(1) for m, q in p.items()
        }  # Eq. 2.32, per sample over the classes
        top = torch.maximum(h["audio"], h["visual"])
        e = {m: torch.exp(top - h[m]) for m in h}  # Eq. 2.33
        w = {m: e[m] / (e["audio"] + e["visual"]) for m in e}
        expected = w["audio"].unsqueeze(1) * z["audio"] + w["visual"].unsqueeze(1) * z["visual"]
        assert torch.allclose(s.fused_logits(embs), expected, atol=1e-5)
        assert torch.all(
            (w["audio"] > w["visual"]) == (h["audio"] < h["visual"])
        )  # confident -> heavier
    fixed = strategy("mla", "model.fusion=early_sum", "strategy.params={runtime_fusion: fixed, "
                                                      "weights: {audio: 0.3, visual: 0.7}}")
    with torch.no_grad():
        z = {m: fixed.model.fusion.head(e) for m, e in embs.items()}
        assert torch.allclose(
            fixed.fused_logits(embs), 0.3 * z["audio"] + 0.7 * z["visual"], atol=1e-5
        )


def test_mla_projects_the_shared_heads_gradient():
    s = strategy(
        "mla", "model.fusion=early_sum", "strategy.params={projection: true, projection_alpha: 0.1}"
    )
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
    assert (weight.grad @ r.t()).abs().max() < 0.05 * (
        g @ r.t()
    ).abs().max()  # r's direction is removed


def test_mla_step_alternates_the_shared_head_without_projection_by_default():
    s = strategy("mla", "model.fusion=early_sum", *LR)
    assert (
        s.params.projection is False
    )  # the thesis' MLA baseline (the AMST code base's mla_new.py)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(F.cross_entropy(ref.fusion.head(embs["audio"]), y) + probe_loss(ref, embs, y))
    update(F.cross_entropy(ref.fusion.head(embs["visual"]), y))
    before, out = run_step(s, x, y)
    assert_same_step(s, ref, before)
    assert {"fused", "audio", "visual", "probe/audio", "probe/visual"} <= set(out.logits)


# ---- IBF
# ----------------------------------------------------------------------------------------------

def test_ibf_reads_the_probes_for_gated_and_film():
    from mmhpc.metrics import ibf_accuracy_keys

    assert ibf_accuracy_keys("gated", ["audio", "visual"]) == {
        "audio": "acc/probe/audio",
        "visual": "acc/probe/visual",
    }
    assert ibf_accuracy_keys("film", ["audio"]) == {"audio": "acc/probe/audio"}
    for fusion in ("concat", "late_sum", "early_sum"):
        assert ibf_accuracy_keys(fusion, ["audio", "visual"]) == {
            "audio": "acc/audio",
            "visual": "acc/visual",
        }


# ---- ablation knobs
# ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ablation_knobs_reach_the_run(tiny_config):
    """Audio augmentation (Eq. 2.24), embedding dropout (Eq. 2.25) and weight decay (Eq. 2.26)."""
    from mmhpc.data.loading import build_datasets

    knobs = [
        "model.audio_augment=true",
        "model.embedding_dropout={audio: 0.5}",
        "train.weight_decay=0.01",
    ]
    cfg = tiny_config("cremad", "strategy.name=amst", *knobs, *FAST)
    ds = build_datasets(cfg)
    train_ds, val_ds = ds["train"], ds["val"]
    assert not torch.equal(
        train_ds[0]["audio"], train_ds[0]["audio"]
    )  # augmented afresh at every load
    assert torch.equal(val_ds[0]["audio"], val_ds[0]["audio"])          # never outside training
    s = strategy("mslr", *knobs)
    assert all(g["weight_decay"] == 0.01 for g in s.optimizer.param_groups)
    x, _ = batch()
    s.model.train()
    with torch.no_grad():
        a1, a2 = s.model.encode(x)["audio"], s.model.encode(x)["audio"]
    assert (
        not torch.equal(a1, a2) and (a1 == 0).float().mean() > 0.3
    )  # inverted dropout on the embedding
    rec = train(cfg, progress=False)
    assert rec.status == "done" and rec.config["model"]["embedding_dropout"] == {"audio": 0.5}


@pytest.mark.slow
def test_gated_run_ibf_uses_the_probes(tiny_config):
    cfg = tiny_config(
        "cremad", "model.fusion=gated", "train.single_acc={audio: 0.9, visual: 0.6}", *FAST
    )
    rec = train(cfg, progress=False)
    test = rec.summary.test
    expected = (
        1 - (min(test["acc/probe/audio"] / 0.9, 1) + min(test["acc/probe/visual"] / 0.6, 1)) / 2
    )  # Eq. 3.1
    assert rec.summary.ibf == pytest.approx(expected)


@pytest.mark.parametrize(
    "name, params",
    [
        ("ogm_ge", "{}"),
        ("ogm_ge", "{variant: paper, weights: all}"),
        ("opm", "{p_exe: 0.5}"),
        ("multi_loss", "{}"),
    ],
)
def test_balancing_steps_never_read_the_device(name, params):
    """Issue 11 item 8: the scores, coefficients, masks and noise stay on the device (the CPU stands
    in for a GPU: any host read of a tensor or a device tensor built from host numbers is
    recorded)."""
    from test_metrics import HostTraffic

    s = strategy(name, "model.fusion=concat", f"strategy.params={params}")
    x, y = batch()
    s.model.train()
    s.begin_epoch(0)
    s.train_step(
        x, y
    )  # OPM: the first step has q = 0; the second drops with the scores of the first
    with HostTraffic() as traffic:
        s.train_step(x, y)
    assert traffic.events == []


# ---- the thesis code base as it ran (AMST repository, code/): defaults pinned by hand
# --------------------

def test_mslr_default_keeps_the_initial_rates_as_the_code_base_ran():
    """mslr3_new.py's adjust_lr hangs on `after_validate`, which common.py never calls (it calls
    after_valid): the runs kept their initial rates. Accuracies that compound would act on at t = 5
    change nothing."""
    s = strategy("mslr", "train.lr=0.01")
    accs = [(0.2, 0.1), (0.3, 0.2), (0.4, 0.2), (0.5, 0.3), (0.6, 0.3), (0.9, 0.6), (0.2, 0.1)]
    for epoch, (acc_a, acc_v) in enumerate(accs):
        s.end_epoch(epoch, {}, {"acc/audio": acc_a, "acc/visual": acc_v})
        s.begin_epoch(epoch + 1)
        assert s.modality_lr() == pytest.approx(
            {"audio": 0.01, "visual": 0.1}
        )  # 1e-3 / 1e-2 at lr 1e-3
    compound = strategy("mslr", "train.lr=0.01", "strategy.params={schedule: compound}")
    for epoch, (acc_a, acc_v) in enumerate(accs[:6]):
        compound.end_epoch(epoch, {}, {"acc/audio": acc_a, "acc/visual": acc_v})
    compound.begin_epoch(6)  # t = 5: audio x 0.9 / mean(0.3, 0.4, 0.5, 0.6, 0.9) = 0.9 / 0.54
    assert compound.modality_lr()["audio"] == pytest.approx(0.01 * 0.9 / 0.54)


def test_mslr_text_rate_is_the_one_its_text_runs_used():
    """Text 8e-5 (the job script's UR-FUNNY runs, the AMST paper), not the argparse default 2e-5:
    0.08 x lr."""
    s = strategy("mslr", dataset="iemocap")
    s.begin_epoch(0)
    assert s.modality_lr() == pytest.approx({"audio": 1e-3, "visual": 1e-2, "text": 8e-5})
    assert "8e-5" in s.provenance()["strategy.params.init.text"]["source"]
    s = strategy(
        "mslr", "strategy.params={init: {text: 0.02}}", dataset="iemocap"
    )  # the code's default
    s.begin_epoch(0)
    assert s.modality_lr()["text"] == pytest.approx(2e-5)
    assert "strategy.params.init.text" not in s.provenance()


def test_pmr_on_ave_takes_its_prototypes_from_the_whole_validation_split(synth_dir):
    """pmr3_new.py: on AVE the prototypes come from the validation loader with factor 1.0
    (Jobs/pmr.sh)."""
    from mmhpc.data.dataset import PreparedDataset
    from mmhpc.strategies.data import StrategyData

    root = synth_dir("ave")
    s = strategy("pmr", f"data.root={root}", "train.batch_size=16", dataset="ave")
    val = PreparedDataset(root, "val", ["audio", "visual"], train=False)
    train_ds = PreparedDataset(root, "train", ["audio", "visual"], train=False)
    s.data = StrategyData({"train": train_ds, "val": val}, s.cfg, finish_batch)
    s.begin_epoch(0)
    s.model.eval()
    with (
        torch.no_grad()
    ):  # by hand: each class's mean validation embedding; absent classes: the mean embedding
        items = [val[i] for i in range(len(val))]
        x = finish_batch({m: torch.stack([it[m] for it in items]) for m in ("audio", "visual")})
        y = torch.tensor([it["label"] for it in items])
        embs = encode(s.model, x)
    for m, e in embs.items():
        expected = torch.stack(
            [e[y == k].mean(0) if (y == k).any() else e.mean(0) for k in range(28)]
        )
        assert torch.allclose(s.prototypes[m], expected, atol=1e-5)
    assert (s.split, s.fraction) == ("val", 1.0)
    other = strategy("pmr", dataset="cremad")  # elsewhere: 10 % of the shuffled training batches
    assert (other.split, other.fraction) == ("train", 0.1)
    both = strategy("pmr", "strategy.params={split: train, fraction: 0.5}", dataset="ave")
    assert (both.split, both.fraction) == ("train", 0.5)


def test_amst_joint_head_is_the_code_bases_reduced_concat_head():
    """code/amst_joint.py passes None for a skipped modality; EarlyConcat leaves it out, each
    present block adding bias / M. So in a skipped epoch z = W_v e_v + b / 2, and SGD never touches
    the audio block (no gradient: no momentum, no weight decay). By hand, SGD's first step is p - lr
    (g + wd p), lr 0.1, wd 0.1."""
    s = strategy("amst", "strategy.params={module: joint}", "train.weight_decay=0.1", *LR)
    x, y = batch()
    d = s.model.dim
    head = s.model.fusion.head
    w0, b0 = head.weight.detach().clone(), head.bias.detach().clone()
    s.model.train()
    with torch.no_grad():
        e_v = encode(s.model, x)["visual"]
        z = e_v @ w0[:, d:].t() + 0.5 * b0
        err = (F.softmax(z, 1) - F.one_hot(y, 6).float()) / len(y)  # dCE/dz of the batch mean
        g_wv, g_b = err.t() @ e_v, 0.5 * err.sum(0)
    run_step(s, x, y, epoch=1)  # audio skipped (skip 5 on CREMA-D)
    assert torch.equal(head.weight[:, :d], w0[:, :d])
    assert torch.allclose(head.weight[:, d:], w0[:, d:] - 0.1 * (g_wv + 0.1 * w0[:, d:]), atol=1e-6)
    assert torch.allclose(head.bias, b0 - 0.1 * (g_b + 0.1 * b0), atol=1e-6)
    s.begin_epoch(2)
    s.train_step(x, y)  # a second skipped step leaves the block where it was too
    assert torch.equal(head.weight[:, :d], w0[:, :d])
    masked = strategy(
        "amst", "strategy.params={module: joint, joint_head: masked}", "train.weight_decay=0.1", *LR
    )
    w1 = masked.model.fusion.head.weight.detach().clone()
    run_step(masked, x, y, epoch=1)  # the zero-masked reading: a zero gradient, decayed to 0.99 w
    assert torch.allclose(
        masked.model.fusion.head.weight[:, :d], 0.99 * w1[:, :d], rtol=1e-5, atol=1e-7
    )


def test_amst_joint_head_in_an_epoch_that_trains_every_modality_is_the_whole_head():
    s = strategy("amst", "strategy.params={module: joint}", *LR)
    x, y = batch()
    ref, update = reference(s)
    embs = encode(ref, x)
    update(probe_loss(ref, embs, y) + F.cross_entropy(ref.fusion(embs), y))  # M / M of the bias
    before, _ = run_step(s, x, y, epoch=0)
    assert_same_step(s, ref, before, moved=("encoders.audio", "encoders.visual", "fusion"))


def test_mla_fixed_weights_are_the_code_bases_for_three_modalities():
    """mla_new.py: text 0.4, visual 0.25, audio 0.35 on the text-visual-audio datasets; 0.5 / 0.5
    for two."""
    s = strategy(
        "mla",
        "model.fusion=early_sum",
        "strategy.params={runtime_fusion: fixed}",
        dataset="iemocap",
    )
    assert s.weights == {"audio": 0.35, "visual": 0.25, "text": 0.4}
    d = s.model.dim
    embs = {m: torch.randn(4, d) for m in ("audio", "visual", "text")}
    with torch.no_grad():
        z = {m: s.model.fusion.head(e) for m, e in embs.items()}
        expected = 0.35 * z["audio"] + 0.25 * z["visual"] + 0.4 * z["text"]
        assert torch.allclose(s.fused_logits(embs), expected, atol=1e-5)
    assert "mla_new.py" in s.provenance()["strategy.params.weights"]["source"]
    two = strategy("mla", "model.fusion=early_sum", "strategy.params={runtime_fusion: fixed}")
    assert two.weights == {"audio": 0.5, "visual": 0.5}


def test_unsourced_defaults_say_assumed():
    """MLB's alpha where its paper gives none, the cosine scale's p: "assumed", with the value, in
    the record."""
    mlb = strategy("mlb", dataset="mvsa", seed=0)
    entry = mlb.provenance()["strategy.params.alpha"]
    assert entry["value"] == 5.0 and entry["source"].startswith("assumed")
    assert (
        not strategy("mlb").provenance()["strategy.params.alpha"]["source"].startswith("assumed")
    )  # CREMA-D
    assert (
        "strategy.params.alpha" not in strategy("mlb", "strategy.params={alpha: 1.0}").provenance()
    )
    cos = strategy("reliability").provenance()["model.cosine_scale.p"]
    assert cos["value"] == 0.99 and cos["source"].startswith("assumed")
    assert (
        "model.cosine_scale.p" not in strategy("reliability", "model.cosine_scale=4.0").provenance()
    )


def test_urfunny_full_preset_has_the_code_bases_sample_count():
    """code/data/UR-FUNNY/ur_funny_info.txt: 10,166 samples (the thesis' text says 16,514)."""
    assert DATASETS["urfunny"].num_samples == 10166
    s = strategy("naive", "data.preset=full", dataset="urfunny")
    entry = s.provenance()["data.num_samples"]
    assert entry["value"] == 10166 and "ur_funny_info.txt" in entry["source"]


@pytest.mark.slow
def test_the_run_record_carries_the_resolved_defaults_and_their_sources(tiny_config):
    cfg = tiny_config("cremad", "strategy.name=mslr", *FAST)
    rec = train(cfg, progress=False)
    assert rec.provenance["strategy.params.schedule"]["value"] == "as_run"
    assert rec.provenance["strategy.params.init.visual"]["value"] == 10.0
