"""The full model of thesis Fig. 2.1: one encoder per modality, a late-fusion head, linear
probes."""
from __future__ import annotations

import torch
from torch import nn

from mmhpc.models.encoders import RESNET_WIDTH, build_encoder
from mmhpc.models.fusion import build_fusion, cosine_scale


class MultimodalModel(nn.Module):
    """The parameters and the maths; the run's precision and parallelism wrap it
    (`mmhpc.system.runtime.RunModel`)."""

    def __init__(self, modalities: list[str], num_classes: int, cfg, shapes, preset: str = "tiny"):
        """`cfg` is a `ModelConfig`; `shapes` the dataset's `Shapes` (text length and vocabulary);
        `preset` "tiny" picks the small RoBERTa under text_size=auto (synthetic tiny data), anything
        else RoBERTa-base."""
        super().__init__()
        self.modalities = list(modalities)
        self.num_classes = num_classes
        text_size = (
            cfg.text_size if cfg.text_size != "auto" else ("tiny" if preset == "tiny" else "base")
        )
        self.encoders = nn.ModuleDict({
            m: build_encoder(m, text_size=text_size, text_len=shapes.text_len, vocab=shapes.vocab,
                             text_pretrained=cfg.text_pretrained)
            for m in self.modalities})
        widths = {m: enc.width for m, enc in self.encoders.items()}
        # Thesis Sec. 4.2: with text present, ResNet embeddings are projected to the text width.
        dim = cfg.embed_dim or widths.get("text", RESNET_WIDTH)
        self.dim = dim
        self.project = nn.ModuleDict({m: nn.Linear(w, dim) for m, w in widths.items() if w != dim})
        self.dropout = nn.ModuleDict(
            {m: nn.Dropout(p) for m, p in cfg.embedding_dropout.items() if p > 0}
        )
        scale = cfg.cosine_scale or (
            cosine_scale(num_classes, num_modalities=len(self.modalities)) if cfg.cosine else 1.0
        )
        self.fusion = build_fusion(
            cfg.fusion, self.modalities, dim, num_classes, cfg.cosine, scale, cfg.control
        )
        self.probes = nn.ModuleDict({m: nn.Linear(dim, num_classes) for m in self.modalities})

    def encode_one(self, m: str, x: torch.Tensor) -> torch.Tensor:
        e = self.encoders[m](x)
        if m in self.project:
            e = self.project[m](e)
        if m in self.dropout:
            e = self.dropout[m](e)  # Eq. 2.25: inverted dropout on the embedding
        return e

    def encode(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.encode_one(m, batch[m]) for m in self.modalities}

    def forward(self, batch: dict[str, torch.Tensor]) -> dict:
        """Embeddings, fused logits and probe logits in one forward."""
        embs = self.encode(batch)
        return {"embs": embs, "fused": self.fusion(embs), "probes": self.probe_logits(embs)}

    def probe_logits(self, embs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Helper classifiers on detached embeddings (Sec. 2.2): they never train the encoders."""
        return {m: self.probes[m](e.detach()) for m, e in embs.items()}

    def branch_parameters(self, m: str):
        """Parameters of modality m's branch (encoder, projection): what an update of m touches."""
        yield from self.encoders[m].parameters()
        if m in self.project:
            yield from self.project[m].parameters()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

