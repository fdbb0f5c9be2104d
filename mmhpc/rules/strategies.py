"""Each strategy's parameters (`Params`) and config checks (`check_config`), torch-free.

The trainer's strategies (`mmhpc.strategies`) inherit these classes, so validation on a login node
and the trainer run one definition. `RULES` maps `strategy.name` (`mmhpc.names`) to its rules.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import TypeAdapter, ValidationError

from mmhpc.errors import ConfigError, problem
from mmhpc.names import FUSIONS, SYMMETRIC

#: AMST's skip phase: "code" counts epochs from 0, "paper" from 1 (formulas.amst_trains)
AMST_PHASES = ("code", "paper")
#: MSLR's rate schedules (mmhpc.strategies.formulas.mslr_schedule_factor)
MSLR_SCHEDULES = ("as_run", "compound", "per_epoch")
#: OGM's coefficient: thesis Eq. 2.27 or the OGM-GE paper's Eq. 11 (mmhpc.strategies.formulas)
OGM_VARIANTS = ("thesis", "paper")
OGM_WEIGHTS = ("conv", "all")
AMST_MODULES = ("alternating", "joint", "full")
AMST_JOINT_HEADS = ("code", "masked")
MLA_RUNTIME_FUSIONS = ("entropy", "fixed")
PMR_PROTOTYPE_SPLITS = ("train", "val")
SELECTIVE_SPLITS = ("val", "train")
#: code/baseline/mslr3_new.py `history_length`: k_e = 5
MSLR_DEFAULT_WINDOW = 5


@functools.cache
def _params_adapter(params: type) -> TypeAdapter:
    return TypeAdapter(params)


def require_symmetric(cfg, what: str) -> None:
    """Refuse gated/FiLM where `what` (a sentence) needs the fused logits as a sum of modality
    parts."""
    if cfg.model.fusion not in SYMMETRIC:
        raise ConfigError(
            problem("model.fusion", f"{what}; {cfg.model.fusion} is not such a fusion", SYMMETRIC)
        )


def _param(key: str | tuple, text: str, valid=None) -> ConfigError:
    """The error of `strategy.params.<key>` (a dotted key or a path; "" for the params as a
    whole)."""
    path = ("strategy", "params", *((key,) if isinstance(key, str) else key))
    return ConfigError(problem([p for p in path if p != ""], text, valid))


def _check_weights(weights: dict[str, float], heads: list[str]) -> None:
    """Fixed loss weights (`strategy.params.weights`): none given, or one >= 0 for each head."""
    if weights and (set(weights) != set(heads) or any(w < 0 for w in weights.values())):
        raise _param("weights", f"give a weight >= 0 for each of {', '.join(heads)}, got {weights}")


@dataclass
class NoParams:
    pass


class Rules:
    name: ClassVar[str] = ""
    fusions: ClassVar[tuple[str, ...]] = FUSIONS
    Params: ClassVar[type] = NoParams
    #: 2 for the balancing baselines, which compare modalities with each other
    min_modalities: ClassVar[int] = 1

    @classmethod
    def check_config(cls, cfg) -> None:
        """Reject configs this strategy cannot run, naming the field and the valid choices: the
        fusion, the number of modalities, then its parameters (`check_params`)."""
        if cfg.model.fusion not in cls.fusions:
            raise ConfigError(problem("model.fusion",
                                      f"strategy {cls.name} does not support {cfg.model.fusion}",
                                      cls.fusions))
        if len(cfg.modalities) < cls.min_modalities:
            raise ConfigError(problem(
                "data.modalities", f"strategy {cls.name} balances two or more modalities, got "
                f"{cfg.modalities}; use strategy.name=naive for a single-modality baseline"))
        cls.check_params(cfg, cls.parse_params(cfg.strategy.params))

    @classmethod
    def check_params(cls, cfg, p) -> None:
        """The rules of this strategy's parsed `Params` `p` (and between them and the run)."""

    @classmethod
    def parse_params(cls, params: dict[str, Any]):
        """`strategy.params` as this strategy's `Params`, validated by pydantic against the
        dataclass's field types (strings from the command line coerced, `__post_init__` checks run);
        ConfigError otherwise."""
        known = [f.name for f in dataclasses.fields(cls.Params)]
        unknown = [
            problem(
                ("strategy", "params", key), f"unknown parameter of {cls.name}", known or ["none"]
            )
            for key in params
            if key not in known
        ]
        if unknown:
            raise ConfigError(*unknown)
        try:
            return _params_adapter(cls.Params).validate_python(dict(params))
        except ValidationError as e:
            raise ConfigError.from_validation(e, prefix=("strategy", "params")) from None


class NaiveRules(Rules):
    name = "naive"


class AlternatingRules(Rules):
    name = "alternating"


@dataclass
class AMSTParams:
    module: Literal[AMST_MODULES] = "alternating"
    #: skip per modality, over the papers' per-dataset defaults (`AMST_DEFAULT_SKIPS`; 1 = never
    #: skipped)
    skips: dict[str, int] = field(default_factory=dict)
    #: "code": epochs counted from 0 (trains in epochs 0, s, 2s, ...); "paper": from 1 (epochs s-1,
    #: 2s-1, ...)
    phase: Literal[AMST_PHASES] = "code"
    #: true: a skipped modality's concat head block stays fixed (the AMST paper Sec. 3.3); false:
    #: SGD's momentum and weight decay still move it, as in the code base
    strict: bool = False
    #: the joint module's reduced concat head: "code" (the code base's HEAD: skipped block
    #: untouched, bias x active / M) or "masked" (skipped embeddings zero-masked in the full head)
    joint_head: Literal[AMST_JOINT_HEADS] = "code"


class AMSTRules(AlternatingRules):
    name = "amst"
    Params = AMSTParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.module != "alternating":
            require_symmetric(
                cfg,
                f"AMST's {p.module} module trains a reduced head over the non-skipped "
                "modalities (the AMST paper Alg. 2), which needs a fusion a modality "
                "can be masked out "
                "of (gated/FiLM train with module=alternating, thesis Alg. 4)",
            )
        for m, s in p.skips.items():
            if m not in cfg.modalities:
                raise _param(("skips", m), "not a modality of this run", cfg.modalities)
            if s < 1:
                raise _param(("skips", m), f"{s!r} must be a positive integer (1 = never skipped)")


@dataclass
class SelectiveParams:
    warmup: int = 1
    require_cosine: bool = True


@dataclass
class EntropyParams(SelectiveParams):
    split: Literal[SELECTIVE_SPLITS] = "val"  # the split whose bias Alg. 5 ranks: "val" or "train"


class SelectiveRules(AlternatingRules):
    Params = SelectiveParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.require_cosine and not cfg.model.cosine:
            raise ConfigError(problem(
                "model.cosine", f"strategy {cls.name} trains with the cosine classifier (thesis "
                "Sec. 3.3.2, 4.2); set model.cosine=true, or strategy.params.require_cosine=false "
                "for the ablation with linear heads"))
        if p.warmup < 0:
            raise _param("warmup", f"{p.warmup!r} must be an integer >= 0 (epochs that train "
                         "every modality before the metric chooses)")


class EntropyRules(SelectiveRules):
    name = "entropy"
    Params = EntropyParams


class ReliabilityRules(SelectiveRules):
    name = "reliability"


class WindowRules(Rules):
    """The balancing acts from epoch `params.start_epoch` to `params.end_epoch` (inclusive; None =
    to the end); it compares modalities, so it needs two or more."""

    min_modalities = 2

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.start_epoch < 0 or (p.end_epoch is not None and p.end_epoch < p.start_epoch):
            raise _param("end_epoch", f"modulation runs from start_epoch ({p.start_epoch}) to "
                         f"end_epoch ({p.end_epoch}, inclusive, null = to the end); give 0 <= "
                         "start <= end")


class OnTheFlyRules(WindowRules):
    fusions = SYMMETRIC

    @classmethod
    def check_config(cls, cfg) -> None:
        require_symmetric(
            cfg,
            f"strategy {cls.name} splits the fused logits into per-modality parts (the OPM/OGM-GE "
            "paper Eq. 6)",
        )
        super().check_config(cfg)


@dataclass
class OGMParams:
    alpha: float = (
        0.1  # thesis Fig. 2.19 "as specified in the original paper"; code base ogm3_new.py
    )
    #: "thesis": Eq. 2.27 on the top-ratio modality; "paper": the OPM/OGM-GE paper Eq. 11
    variant: Literal[OGM_VARIANTS] = "thesis"
    ge: bool = True  # add the generalisation-enhancement noise (OGM-GE); false: plain OGM
    #: "conv": only 4-D gradients (code base); "all": every branch parameter (Alg. 2)
    weights: Literal[OGM_WEIGHTS] = "conv"
    start_epoch: int = 0
    end_epoch: int | None = 50  # code base `modulation_ends` (inclusive); null: to the end


class OGMGERules(OnTheFlyRules):
    name = "ogm_ge"
    Params = OGMParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.alpha < 0:
            raise _param("alpha", f"{p.alpha} must be >= 0")


@dataclass
class OPMParams:
    q_base: float = 0.5  # base drop probability (official code 0.5)
    lam: float = 0.5  # lambda of Eq. 8 (official code 0.5)
    p_exe: float = 1.0  # chance that a batch is modulated at all (official code's knob; 1 = Alg. 1)
    start_epoch: int = 0
    end_epoch: int | None = None


class OPMRules(OnTheFlyRules):
    name = "opm"
    Params = OPMParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        for key, lo, hi in (("q_base", 0.0, 1.0), ("p_exe", 0.0, 1.0), ("lam", 0.0, float("inf"))):
            if not lo <= getattr(p, key) <= hi:
                raise _param(key, f"{getattr(p, key)} must lie in [{lo}, {hi}]")


@dataclass
class PMRParams:
    alpha: float = 1.0  # PCE weight of the lagging modality (code base `--alpha` 1.0)
    mu: float = 0.0  # PER weight: 0 in the code base; thesis Eq. 2.30: 1
    per_end_epoch: int | None = (
        None  # last epoch of the PER ("early training stage"); null: end_epoch
    )
    momentum: float = 0.2  # blend with the previous prototypes (code base `--momentum_coef`)
    #: the split the prototypes are computed on; null: the code base's choice per dataset
    split: Literal[PMR_PROTOTYPE_SPLITS] | None = None
    fraction: float | None = (
        None  # share of its batches (`--factor`); null: 1.0 on AVE, 0.1 elsewhere
    )
    start_epoch: int = 0
    end_epoch: int | None = 70  # code base `--modulation_ends` (inclusive)


class PMRRules(WindowRules):
    name = "pmr"
    Params = PMRParams
    fusions = SYMMETRIC  # the paper's sum and concatenation fusions

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.alpha < 0 or p.mu < 0:
            raise _param("", f"alpha ({p.alpha}) and mu ({p.mu}) must be >= 0")
        if not 0.0 <= p.momentum <= 1.0:
            raise _param("momentum", f"{p.momentum} must lie in [0, 1]")
        if p.fraction is not None and not 0.0 < p.fraction <= 1.0:
            raise _param("fraction", f"{p.fraction} must lie in (0, 1]")


@dataclass
class MSLRParams:
    init: dict[str, float] = field(default_factory=dict)  # per-modality multiplier of train.lr
    window: int = MSLR_DEFAULT_WINDOW  # k_e
    schedule: Literal[MSLR_SCHEDULES] = (
        "as_run"  # as_run: fixed (code base as run); compound (adjust_lr); per_epoch (Eq. 2.28)
    )


class MSLRRules(NaiveRules):
    name = "mslr"
    Params = MSLRParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        for m, v in p.init.items():
            if m not in cfg.modalities:
                raise _param(("init", m), "not a modality of this run", cfg.modalities)
            if v <= 0:
                raise _param(("init", m), f"{v!r} must be a positive number (x train.lr)")
        if p.window < 1:
            raise _param("window", f"{p.window!r} must be a positive integer (epochs, k_e)")


@dataclass
class MLAParams:
    runtime_fusion: Literal[MLA_RUNTIME_FUSIONS] = "entropy"
    weights: dict[str, float] = field(
        default_factory=dict
    )  # fixed weights; default `mla_default_weights`
    projection: bool = (
        False  # the thesis baseline (code/baseline/mla_new.py) has none; true: MLA's OWM
    )
    projection_alpha: float = 0.1


class MLARules(Rules):
    name = "mla"
    Params = MLAParams
    fusions = ("early_sum",)  # the shared head

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.model.fusion not in cls.fusions:
            raise ConfigError(
                problem(
                    "model.fusion",
                    f"MLA's shared head H(e_m) = W e_m + b is early_sum's head "
                    f"(thesis Eq. 2.31); {cfg.model.fusion} gives each modality "
                    "other weights",
                    cls.fusions,
                )
            )
        super().check_config(cfg)

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        _check_weights(p.weights, cfg.modalities)
        if p.projection_alpha <= 0:
            raise _param("projection_alpha", f"{p.projection_alpha} must be > 0")


class MultiLossRules(NaiveRules):
    name = "multi_loss"


@dataclass
class MLBParams:
    alpha: float | None = None  # slope of tanh; None: MLB_DEFAULT_ALPHA
    beta_max: float = 2.0  # largest acceleration (the MLB appendix: values >= 2 made no difference)


class MLBRules(MultiLossRules):
    name = "mlb"
    Params = MLBParams
    min_modalities = 2

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        if p.alpha is not None and p.alpha <= 0:
            raise _param("alpha", f"{p.alpha} must be > 0")
        if p.beta_max < 1:
            raise _param("beta_max", f"{p.beta_max} must be >= 1 (1 = never accelerate)")


@dataclass
class BlendParams:
    weights: dict[str, float] = field(
        default_factory=dict
    )  # fixed weights, keys "fused" and modalities
    interval: int = 1  # epochs between two estimates of the weights
    holdout: float = (
        0.1  # share of the training split held out to estimate the weights; 0: the validation split
    )


class BlendRules(MultiLossRules):
    name = "gradient_blending"
    Params = BlendParams

    @classmethod
    def check_params(cls, cfg, p) -> None:
        super().check_params(cfg, p)
        _check_weights(p.weights, ["fused", *cfg.modalities])
        if p.interval < 1:
            raise _param("interval", f"{p.interval!r} must be a positive integer (epochs)")
        if not 0.0 <= p.holdout < 1.0:
            raise _param("holdout", f"{p.holdout} must lie in [0, 1) (0: use the validation split)")


#: strategy.name -> its rules; the trainer's STRATEGIES[name] subclasses RULES[name]
RULES: dict[str, type[Rules]] = {
    c.name: c
    for c in (
        NaiveRules,
        AlternatingRules,
        AMSTRules,
        EntropyRules,
        ReliabilityRules,
        OGMGERules,
        OPMRules,
        PMRRules,
        MSLRRules,
        MLARules,
        MultiLossRules,
        MLBRules,
        BlendRules,
    )
}
