"""Encoders of the thesis (Sec. 4.2): ResNet-18 from scratch for audio and visual, RoBERTa for
text."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet18

from mmhpc.errors import problem

RESNET_WIDTH = 512

# A RoBERTa small enough for CPU tests; `base` is RoBERTa-base's shape (transformers' defaults).
TINY_ROBERTA = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256
)


def _resnet(in_channels: int) -> nn.Module:
    net = resnet18(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


class AudioEncoder(nn.Module):
    """A 1-channel filterbank [B, 1, frames, mel] through ResNet-18 -> [B, 512]."""

    width = RESNET_WIDTH

    def __init__(self):
        super().__init__()
        self.net = _resnet(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class VisualEncoder(nn.Module):
    """Frames [B, T, 3, H, W], each through the 2-D ResNet-18, mean-pooled over time -> [B, 512]."""

    width = RESNET_WIDTH

    def __init__(self):
        super().__init__()
        self.net = _resnet(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        return self.net(x.flatten(0, 1)).view(b, t, -1).mean(dim=1)


class TextEncoder(nn.Module):
    """Token ids and mask [B, 2, L] through RoBERTa; the <s> token's hidden state -> [B, hidden]."""

    def __init__(self, size: str, max_len: int, vocab: int, pretrained: str | None = None):
        super().__init__()
        from transformers import RobertaConfig, RobertaModel  # heavy import, only when text is used

        if pretrained:
            path = Path(pretrained)
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"model.text_pretrained: {path} has no config.json; give a local directory "
                    "saved with save_pretrained() (hub downloads are not used)"
                )
            self.net = RobertaModel.from_pretrained(
                path, local_files_only=True, add_pooling_layer=False
            )
        else:
            extra = TINY_ROBERTA if size == "tiny" else {}
            config = RobertaConfig(vocab_size=max(vocab, 50265 if size == "base" else vocab),
                                   max_position_embeddings=max_len + 2, **extra)
            self.net = RobertaModel(config, add_pooling_layer=False)
        self.width = self.net.config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(input_ids=x[:, 0], attention_mask=self.attention_mask(x[:, 1]))
        return out.last_hidden_state[:, 0]

    def attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The padding mask [B, L] as the attention takes it, [B, 1, 1, L], which transformers
        passes on as it is: from a [B, L] mask it first asks whether any token is padded, to drop a
        mask of all ones (a host synchronisation in every forward). SDPA takes True where a token is
        attended, eager attention adds the mask to the scores; other attention kernels get the [B,
        L] mask."""
        kind = self.net.config._attn_implementation
        keep = mask[:, None, None, :].bool()
        if kind == "sdpa":
            return keep
        if kind == "eager":
            return (~keep).float() * torch.finfo(torch.float32).min
        return mask


def build_encoder(modality: str, *, text_size: str, text_len: int, vocab: int,
                  text_pretrained: str | None) -> nn.Module:
    if modality == "audio":
        return AudioEncoder()
    if modality == "visual":
        return VisualEncoder()
    if modality == "text":
        return TextEncoder(text_size, text_len, vocab, text_pretrained)
    raise ValueError(problem("", f"unknown modality {modality!r}", ("audio", "visual", "text")))
