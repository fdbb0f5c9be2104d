"""Audio augmentation of the training split (thesis Eq. 2.24), applied by the dataset reader."""
from __future__ import annotations

import torch


def audio_augment(
    fbank: torch.Tensor,
    generator: torch.Generator | None = None,
    time_mask: int | None = None,
    freq_mask: int | None = None,
    noise_std: float = 0.02,
) -> torch.Tensor:
    """x_aug = T(F(x)) + N(0, noise_std^2), thesis Eq. 2.24, on a filterbank [..., frames,
    mel_bins].

    F zeroes one band of w_f ~ U{0..freq_mask} mel bins, T one span of w_t ~ U{0..time_mask} frames,
    at uniform positions (SpecAugment-style, one mask each per call). The thesis gives no widths:
    the default (None) is a fifth of the axis, close to AST's 192/1024 frames. Returns a new tensor.
    """
    if fbank.dim() < 2:
        raise ValueError(f"fbank must be [..., frames, mel_bins], got shape {tuple(fbank.shape)}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    frames, bins = fbank.shape[-2], fbank.shape[-1]
    time_mask = frames // 5 if time_mask is None else time_mask
    freq_mask = bins // 5 if freq_mask is None else freq_mask
    if not 0 <= time_mask <= frames or not 0 <= freq_mask <= bins:
        raise ValueError(
            f"mask widths must lie in [0, axis]: time {time_mask}/{frames}, freq {freq_mask}/{bins}"
        )

    def span(limit: int, size: int) -> slice:
        width = int(torch.randint(0, limit + 1, (1,), generator=generator))
        start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
        return slice(start, start + width)

    out = fbank.clone()
    out[..., span(freq_mask, bins)] = 0
    out[..., span(time_mask, frames), :] = 0
    if noise_std > 0:
        out = out + noise_std * torch.randn(out.shape, generator=generator, dtype=out.dtype).to(
            out.device
        )
    return out
