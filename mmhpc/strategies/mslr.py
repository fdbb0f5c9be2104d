"""MSLR, modality-specific learning rates (thesis Eq. 2.28; Yao and Mihalcea 2022), as the thesis code base runs it.

Joint training (one fused loss, as Naive) where each modality's branch has its own learning rate,
lr x init_m x f_m, from the modality's validation accuracy (its masked head); `mslr_schedule_factor`
gives f_m. Default (`schedule=compound`, AMST repository code/baseline/mslr3_new.py): after the
validation of epoch t > 0 with t mod k_e = 0 the rate is multiplied by acc_t / mean(acc over the last
k_e epochs), compounding over the run, with k_e = 5 (`history_length`) and initial rates 1e-3 audio,
1e-2 visual, 2e-5 text (x train.lr = 1e-3: 1, 10, 0.02). `schedule=per_epoch` is thesis Eq. 2.28 read
literally (every epoch, the initial rate times the ratio). The fusion head and the probes keep
`train.lr`; the step decay (`train.lr_decay_epoch`) scales every rate, as the code base's StepLR does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mmhpc.errors import ConfigError
from mmhpc.strategies.balancing import ModalityGroups
from mmhpc.strategies.base import register
from mmhpc.strategies.formulas import MSLR_SCHEDULES, mslr_schedule_factor
from mmhpc.strategies.joint import Naive

#: code/baseline/mslr3_new.py: audio_lr 1e-3, visual_lr 1e-2, text_lr 2e-5 at the base lr 1e-3 (x train.lr)
MSLR_DEFAULT_INIT = {"audio": 1.0, "visual": 10.0, "text": 0.02}
#: code/baseline/mslr3_new.py `history_length`: k_e = 5
MSLR_DEFAULT_WINDOW = 5


@dataclass
class MSLRParams:
    init: dict[str, float] = field(default_factory=dict)  # per-modality multiplier of train.lr
    window: int = MSLR_DEFAULT_WINDOW                       # k_e
    schedule: str = "compound"                              # "compound" (code base) or "per_epoch" (Eq. 2.28)


@register
class MSLR(ModalityGroups, Naive):
    name = "mslr"
    Params = MSLRParams

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        p = cls.parse_params(cfg.strategy.params)
        for m, v in p.init.items():
            if m not in cfg.modalities:
                raise ConfigError(f"strategy.params.init.{m}: not a modality of this run; valid: "
                                  f"{', '.join(cfg.modalities)}")
            if v <= 0:
                raise ConfigError(f"strategy.params.init.{m}: {v!r} must be a positive number (x train.lr)")
        if p.window < 1:
            raise ConfigError(f"strategy.params.window: {p.window!r} must be a positive integer (epochs, k_e)")
        if p.schedule not in MSLR_SCHEDULES:
            raise ConfigError(f"strategy.params.schedule: invalid value {p.schedule!r}; valid choices: "
                              f"{', '.join(MSLR_SCHEDULES)}")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.init = {m: float(self.params.init.get(m, MSLR_DEFAULT_INIT.get(m, 1.0))) for m in self.modalities}
        self.window = self.params.window
        self.history: dict[str, list[float]] = {m: [] for m in self.modalities}

    def begin_epoch(self, epoch: int) -> list[str]:
        active = super().begin_epoch(epoch)
        self.set_modality_lr({m: self.rate(m) for m in self.modalities})
        return active

    def rate(self, m: str) -> float:
        return self.epoch_lr * self.init[m] * mslr_schedule_factor(self.history[m], self.window, self.params.schedule)

    def end_epoch(self, epoch, train, val) -> None:
        super().end_epoch(epoch, train, val)
        for m in self.modalities:
            self.history[m].append(val[f"acc/{m}"])

    def extra_state(self) -> dict:
        return {"history": {m: list(h) for m, h in self.history.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.history = {m: list(h) for m, h in state["history"].items()}
