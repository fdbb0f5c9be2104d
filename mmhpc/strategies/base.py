"""The strategy interface: what differs between training strategies, and nothing else.

The trainer owns the loop (epochs, loaders, evaluation, timing, records); a strategy owns one
training step (forward, losses, which updates) and the per-epoch decisions (which modalities train,
when to stop, when to decay the learning rate). The system is the runtime's
(`mmhpc.system.runtime.Runtime`): every forward goes through `self.net`, every update through
`runtime.backward` and `runtime.step`, so every strategy runs on every parallelism and precision.
A new strategy subclasses `Strategy` and its rules class (`mmhpc.rules.strategies`: name, `Params`,
fusions, `check_params` for the rules of its parameters, torch-free, listed in `RULES`), overrides
what differs and registers itself with `@register`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmhpc.data.specs import DATASETS
from mmhpc.models.fusion import COSINE_P
from mmhpc.rules.strategies import Rules

# The strategy registry: the one list of valid `strategy.name` values (filled by importing
# mmhpc.strategies).
STRATEGIES: dict[str, type[Strategy]] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES[cls.name] = cls
    return cls


@dataclass
class StepOutput:
    """Detached per-head logits of one training step, for the epoch's training metrics."""

    logits: dict[str, torch.Tensor]


class Strategy(Rules):
    def __init__(self, cfg, model, runtime, data=None):
        """`model`: the parameters (a `MultimodalModel` on the run's device); `runtime`: the run's
        `Runtime`, which wraps the model for its parallelism and precision here; `data`: a
        `mmhpc.strategies.data.StrategyData` for passes of the strategy's own (None in unit
        tests)."""
        self.cfg, self.model, self.runtime, self.data = cfg, model, runtime, data
        self.params = self.parse_params(cfg.strategy.params)
        self.modalities: list[str] = list(model.modalities)
        self.optimised = {
            m: 0 for m in self.modalities
        }  # optimisation epochs per modality (Table 4.4)
        self.active: list[str] = list(self.modalities)
        self.net = runtime.setup_model(model, data.probe if data is not None else None)
        self.optimizer = self.build_optimizer()

    @classmethod
    def split_datasets(cls, cfg, datasets: dict) -> dict:
        """The run's datasets as this strategy trains on them (Gradient Blending holds part of train
        out)."""
        return datasets

    # ---- configuration ---------------------------------------------------------------------------

    def build_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if t.optimizer == "adam":
            return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    # ---- per-epoch decisions ---------------------------------------------------------------------
    def max_epochs(self) -> int:
        return self.cfg.train.epochs

    def begin_epoch(self, epoch: int) -> list[str]:
        """Decide which modalities train this epoch; returns them."""
        self.active = list(self.modalities)
        return self.active

    def end_epoch(self, epoch: int, train: dict[str, float], val: dict[str, float]) -> None:
        for m in self.active:
            self.optimised[m] += 1

    def should_stop(self, epoch: int) -> bool:
        return epoch + 1 >= self.max_epochs()

    def stop_reason(self) -> str:
        """Why `should_stop` ended training before train.epochs (the trainer logs it)."""
        return "the strategy's stopping rule"

    def lr_factor(self, epoch: int) -> float:
        """Step decay (Sec. 4.2): lr x decay from `lr_decay_epoch` on."""
        t = self.cfg.train
        return t.lr_decay if epoch >= t.lr_decay_epoch else 1.0

    # ---- provenance ------------------------------------------------------------------------------
    def provenance(self) -> dict[str, dict]:
        """Values this run took from a default rather than from its config, each {"value",
        "source"}: where the value comes from, or "assumed" when no source gives it (the run
        record's `provenance`)."""
        out: dict[str, dict] = {}
        model, data = self.cfg.model, self.cfg.data
        if model.cosine and model.cosine_scale is None:
            out["model.cosine_scale.p"] = {
                "value": COSINE_P,
                "source": "assumed: thesis Eq. 3.2 (after MMCosine) leaves the target "
                "probability p unstated",
            }
        spec = DATASETS.get(data.dataset)
        if (
            data.source == "synthetic"
            and data.preset == "full"
            and spec is not None
            and spec.size_source
        ):
            out["data.num_samples"] = {"value": spec.num_samples, "source": spec.size_source}
        return out

    # ---- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What a resumed run needs besides model and optimiser; subclasses extend `extra_state`."""
        return {"optimised": dict(self.optimised), "optimizer": self.optimizer.state_dict(),
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimised = dict(state["optimised"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---- one step --------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def fused_logits(self, embs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net.fusion(embs)

    @torch.no_grad()
    def eval_logits(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Fused, per-modality (masked fusion) and probe logits for evaluation."""
        embs = self.net.encode(batch)
        out = {"fused": self.fused_logits(embs)}
        out.update({m: self.net.fusion({m: embs[m]}) for m in self.modalities})
        out.update({f"probe/{m}": z for m, z in self.net.probe_logits(embs).items()})
        return {k: v.float() for k, v in out.items()}

    # ---- helpers for subclasses ------------------------------------------------------------------
    def probe_loss(self, embs: dict[str, torch.Tensor], labels: torch.Tensor,
                   logits: dict[str, torch.Tensor]) -> torch.Tensor:
        probes = self.net.probe_logits(embs)
        logits.update({f"probe/{m}": z.detach() for m, z in probes.items()})
        return sum(F.cross_entropy(z, labels) for z in probes.values())

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss`: gradients through the runtime (loss scaling, DDP's
        all-reduce)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.runtime.backward(loss)
        self.runtime.step(self.optimizer)
