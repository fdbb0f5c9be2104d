"""MSLR, modality-specific learning rates (thesis Eq. 2.28; Yao and Mihalcea 2022; seed 004 Table 2).

Joint training (one fused loss, as Naive) where each modality's branch has its own learning rate:
lr_m(t) = lr x init_m x acc_m(t-1) / mean(acc_m over the last k_e epochs), from the modality's
validation accuracy (its masked head) up to the previous epoch (`mslr_update`); the first epoch uses
lr x init_m. The fusion head and the probes keep `train.lr`; the step decay (`train.lr_decay_epoch`)
scales every rate.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mmhpc.errors import ConfigError
from mmhpc.strategies.balancing import ModalityGroups, dataset_default
from mmhpc.strategies.base import register
from mmhpc.strategies.formulas import mslr_update
from mmhpc.strategies.joint import Naive

#: the thesis' and seed 001's MSLR rates at lr 1e-3: audio 1e-3, visual 1e-2, text 8e-5 (x train.lr)
MSLR_DEFAULT_INIT = {"audio": 1.0, "visual": 10.0, "text": 0.08}
#: k_e of seed 004 Table 2: CREMA-D 20, AVE 10 (other datasets take 20)
MSLR_DEFAULT_WINDOW = {"cremad": 20, "ave": 10}


@dataclass
class MSLRParams:
    init: dict[str, float] = field(default_factory=dict)  # per-modality multiplier of train.lr
    window: int | None = None                               # k_e; None: MSLR_DEFAULT_WINDOW


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
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"strategy.params.init.{m}: {v!r} must be a positive number (x train.lr)")
        if p.window is not None and (isinstance(p.window, bool) or not isinstance(p.window, int) or p.window < 1):
            raise ConfigError(f"strategy.params.window: {p.window!r} must be a positive integer (epochs, k_e)")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.init = {m: float(self.params.init.get(m, MSLR_DEFAULT_INIT.get(m, 1.0))) for m in self.modalities}
        self.window = dataset_default(self.params.window, MSLR_DEFAULT_WINDOW, self.cfg, 20)
        self.history: dict[str, list[float]] = {m: [] for m in self.modalities}

    def begin_epoch(self, epoch: int) -> list[str]:
        active = super().begin_epoch(epoch)
        self.set_modality_lr({m: self.rate(m) for m in self.modalities})
        return active

    def rate(self, m: str) -> float:
        base, history = self.epoch_lr * self.init[m], self.history[m]
        if not history or sum(history[-self.window:]) <= 0:  # no accuracy yet: the ratio is undefined
            return base
        return mslr_update(base, history, self.window)

    def end_epoch(self, epoch, train, val) -> None:
        super().end_epoch(epoch, train, val)
        for m in self.modalities:
            self.history[m].append(val[f"acc/{m}"])

    def extra_state(self) -> dict:
        return {"history": {m: list(h) for m, h in self.history.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.history = {m: list(h) for m, h in state["history"].items()}
