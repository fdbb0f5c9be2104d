"""AMST, Alternating Multimodal Skip Training: thesis Alg. 4 and the AMST paper's modules (seed
001).

Modality m trains in epoch e (0-based) iff e mod skip_m == 0 (thesis Eq. 3.8, the AMST paper Eq. 1,
counted from 0 as the thesis code base counts: `phase=code`; `phase=paper` counts from 1 as the AMST
paper Alg. 1-2); a skipped modality's encoder still runs forward (its per-modality metrics, Alg. 4
line 2) but never backward, which is where AMST's time per epoch drops (thesis Table 4.5).

Modules (`strategy.params.module`):
- `alternating` (default): thesis Alg. 4 = Alternating training (Alg. 2 sum/concat, Alg. 3
gated/FiLM)
  where only the modalities due this epoch update; the AMST paper Alg. 1 is its shared-head special
  case.
- `joint`: the AMST paper Alg. 2: one joint loss per step from a reduced head over the non-skipped
modalities'
  weights (early-sum: the skipped embeddings are left out of the sum; late-sum: their branch heads
  are
  not called). Concat (`joint_head`): by default as the code base's HEAD runs it (code/amst_joint.py
  passes None for a skipped modality and code/models/fusion_modules.py `EarlyConcat` skips it, each
  block adding bias / M): the skipped block of W gets no gradient, so SGD leaves it, its momentum
  and
  its weight decay untouched, and the bias enters x (active / M); `joint_head=masked` is the fusion
  with the skipped embeddings zero-masked, the whole bias, and a zero gradient on the skipped block
  that momentum and weight decay still act on (unless `strict`).
- `full`: the AMST paper Sec. 3.4: an alternating module (this model) and an independent joint
module with
  its own encoders, trained side by side with the same skips; the prediction is the mean of the
  alternating module's per-modality logits and the joint module's logits (Fig. 1c).

`strict=true` keeps a skipped modality's block of a concat head exactly where it is (weights and SGD
momentum), as the AMST paper Sec. 3.3 says ("only ... the corresponding weights of the independent
head are updated"), in the alternating module too (whose masked concat step otherwise gives the
block a zero gradient that momentum and weight decay act on; the code base's HEAD runs its
alternating module on the shared head only, code/amst_alt.py `--fusion_method msum`). Other heads
need no care: a skipped late-sum branch head and a skipped encoder get no gradient at all, so SGD
leaves them alone; early-sum's head is shared by every modality.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from mmhpc.models.fusion import Concat
from mmhpc.rules.strategies import AMSTRules
from mmhpc.strategies.base import StepOutput, register
from mmhpc.strategies.formulas import AMST_DEFAULT_SKIPS, amst_trains
from mmhpc.strategies.joint import Alternating


def joint_twin(model, cfg) -> nn.Module:
    """The full module's joint module: a second model of the same shape with its own initial
    weights."""
    from mmhpc.models.multimodal import MultimodalModel

    text = model.encoders["text"].net.config if "text" in model.encoders else None
    # the model needs the text length and vocabulary only; both are in the text encoder's config
    shapes = SimpleNamespace(text_len=text.max_position_embeddings - 2 if text else 0,
                             vocab=text.vocab_size if text else 0)
    preset = cfg.data.preset if cfg.data.source == "synthetic" else "full"
    twin = MultimodalModel(model.modalities, model.num_classes, cfg.model, shapes, preset)
    twin.probes = nn.ModuleDict()  # the alternating module's probes already diagnose the encoders
    return twin.to(next(model.parameters()).device)


@register
class AMST(Alternating, AMSTRules):
    """Alternating training with per-modality skip parameters (and the AMST paper's joint/full
    modules)."""

    def __init__(self, cfg, model, runtime, data=None):
        full = self.parse_params(cfg.strategy.params).module == "full"
        if full:  # before the runtime wraps the model and the optimiser is built
            model.add_module("amst_joint", joint_twin(model, cfg))
        super().__init__(cfg, model, runtime, data)
        self.joint_net = self.net.part("amst_joint") if full else None
        defaults = AMST_DEFAULT_SKIPS.get(cfg.data.dataset, {})
        self.skips = {m: int(self.params.skips.get(m, defaults.get(m, 1))) for m in self.modalities}
        self._blocks: dict[torch.Tensor, list[slice]] = {}
        self._joint_blocks: dict[torch.Tensor, list[slice]] = {}

    def provenance(self) -> dict[str, dict]:
        out = super().provenance()
        if self.params.module != "alternating" and "joint_head" not in self.cfg.strategy.params:
            out["strategy.params.joint_head"] = {
                "value": self.params.joint_head,
                "source": "code base HEAD: code/amst_joint.py passes None for a skipped modality, "
                          "code/models/fusion_modules.py EarlyConcat leaves it out (bias / M per "
                          "block)"}
        return out

    def joint_model(self):
        """The model the joint step trains: this one (`joint`), the twin (`full`), or none."""
        return {"joint": self.model, "full": getattr(self.model, "amst_joint", None)}.get(
            self.params.module
        )

    def begin_epoch(self, epoch: int) -> list[str]:
        self.active = [
            m for m in self.modalities if amst_trains(epoch, self.skips[m], self.params.phase)
        ]
        models = [self.model] + ([self.model.amst_joint] if self.params.module == "full" else [])
        self._blocks = (
            self._skipped_blocks(models) if self.params.strict else {}
        )  # fixed for the epoch
        joint = self.joint_model()
        held = self.params.strict or self.params.joint_head == "code"
        self._joint_blocks = self._skipped_blocks([joint]) if joint is not None and held else {}
        return self.active

    def update(self, loss: torch.Tensor, blocks: dict | None = None) -> None:
        blocks = self._blocks if blocks is None else blocks
        saved = [
            (t, cols, t[:, cols].clone())
            for w, spans in blocks.items()
            for t in self._with_state(w)
            for cols in spans
        ]
        fresh = [w for w in blocks if not self.optimizer.state.get(w)]
        super().update(loss)
        with torch.no_grad():
            for t, cols, value in saved:
                t[:, cols] = value
            for w in fresh:  # state created by this step: the skipped columns start from nothing
                for t in self._with_state(w)[1:]:
                    for cols in blocks[w]:
                        t[:, cols] = 0

    def _with_state(self, weight: torch.Tensor) -> list[torch.Tensor]:
        """The weight and its optimiser state of the same shape (SGD momentum; Adam moments)."""
        state = self.optimizer.state.get(weight, {})
        return [weight] + [
            v for v in state.values() if torch.is_tensor(v) and v.shape == weight.shape
        ]

    def _skipped_blocks(self, models) -> dict[torch.Tensor, list[slice]]:
        """Concat head weights -> the column blocks of the modalities skipped this epoch (slices:
        indexing with them copies no index tensor to the device on every update)."""
        out = {}
        for model in models:
            fusion = model.fusion
            skipped = [i for i, m in enumerate(fusion.modalities) if m not in self.active]
            if skipped and isinstance(fusion, Concat):
                weight = fusion.weight if fusion.cosine else fusion.head.weight
                out[weight] = [slice(i * fusion.dim, (i + 1) * fusion.dim) for i in skipped]
        return out

    # ---- steps
    # ------------------------------------------------------------------------------------
    def train_step(self, batch, labels):
        module = self.params.module
        if module == "joint":
            return StepOutput(self._joint_step(self.net, batch, labels))
        logits = super().train_step(batch, labels).logits  # thesis Alg. 4 with self.active
        if module == "full":
            joint = self._joint_step(self.joint_net, batch, labels)["fused"]
            logits.update(alt=logits["fused"], joint=joint, fused=self._full(logits, joint))
        return StepOutput(logits)

    def _joint_step(self, net, batch, labels) -> dict[str, torch.Tensor]:
        """Seed 001 Alg. 2: one loss over the non-skipped modalities' embeddings and head
        weights."""
        logits: dict[str, torch.Tensor] = {}
        embs = net.encode(batch)
        loss = self.probe_loss(embs, labels, logits) if net is self.net else None
        if self.active:
            joint = F.cross_entropy(
                self._reduced_head(net, {m: embs[m] for m in self.active}), labels
            )
            loss = joint if loss is None else loss + joint
        if loss is not None:
            self.update(loss, self._joint_blocks)
        with torch.no_grad():
            detached = {m: e.detach() for m, e in embs.items()}
            logits["fused"] = net.fusion(detached)
            logits.update({m: net.fusion({m: e}) for m, e in detached.items()})
        return logits

    def _reduced_head(self, net, embs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The joint module's logits over the active modalities. `joint_head=code` on a linear
        concat head: sum_active W_m e_m + (active / M) b, the code base's EarlyConcat with the
        skipped inputs left out."""
        z = net.fusion(embs)
        fusion = net.model.fusion
        if self.params.joint_head == "code" and isinstance(fusion, Concat) and not fusion.cosine:
            z = z - (1.0 - len(embs) / len(fusion.modalities)) * fusion.head.bias
        return z

    def _full(self, logits: dict[str, torch.Tensor], joint: torch.Tensor) -> torch.Tensor:
        """Seed 001 Fig. 1c: mean of the alternating module's per-modality logits and the joint
        logits."""
        return torch.stack([logits[m].float() for m in self.modalities] + [joint.float()]).mean(0)

    @torch.no_grad()
    def eval_logits(self, batch):
        out = super().eval_logits(batch)
        if self.params.module == "full":
            twin = self.joint_net
            joint = twin.fusion(twin.encode(batch)).float()
            out.update(alt=out["fused"], joint=joint, fused=self._full(out, joint))
        return out

