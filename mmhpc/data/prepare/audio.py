"""Audio -> Kaldi filterbank [1024, 128], the recipe of the thesis' code base (AST-style fbank).

The waveform is decoded with PyAV (a WAV, or the audio stream of a video), mixed to mono and
resampled to 16 kHz, its DC offset removed, and turned into 128 log-mel bins every 10 ms over 25 ms
Hanning windows by `torchaudio.compliance.kaldi.fbank` (dither 0, so preparation is deterministic).
The frames are padded with zeros or cut to 1024 (10.24 s). No normalisation is applied here: values
are plain log-mel energies.

torchaudio is imported only here, never on the trainer's import path.
"""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from mmhpc.data.prepare.raw import RawFileError

SAMPLE_RATE = 16000
FRAMES = 1024
MEL_BINS = 128
FBANK_OPTIONS = dict(
    num_mel_bins=MEL_BINS,
    frame_shift=10.0,
    frame_length=25.0,
    window_type="hanning",
    dither=0.0,
    htk_compat=True,
    use_energy=False,
    sample_frequency=SAMPLE_RATE,
)
_MIN_SAMPLES = int(SAMPLE_RATE * FBANK_OPTIONS["frame_length"] / 1000)  # one analysis window


def recipe() -> dict:
    return {"sample_rate": SAMPLE_RATE, "frames": FRAMES, **FBANK_OPTIONS}


def load_mono_16k(path: Path) -> np.ndarray:
    """The audio stream of `path` as float32 mono samples in [-1, 1] at 16 kHz."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise RawFileError(path, "no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks = []
        for frame in container.decode(stream):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if len(samples) < _MIN_SAMPLES:
        raise RawFileError(
            path, f"{len(samples)} audio samples at {SAMPLE_RATE} Hz, shorter than one 25 ms window"
        )
    return samples.astype(np.float32, copy=False)


def filterbank(samples: np.ndarray) -> np.ndarray:
    """float32 [FRAMES, MEL_BINS] log-mel filterbank of 16 kHz mono samples."""
    wave = torch.from_numpy(samples).unsqueeze(0)
    fbank = kaldi.fbank(wave - wave.mean(), **FBANK_OPTIONS).numpy()
    return fit_frames(fbank, FRAMES)


def fit_frames(fbank: np.ndarray, frames: int) -> np.ndarray:
    """Cut to `frames`, or pad the end with zeros (as the AST recipe does)."""
    out = np.zeros((frames, fbank.shape[1]), dtype=np.float32)
    n = min(frames, len(fbank))
    out[:n] = fbank[:n]
    return out


def audio_features(path: Path) -> np.ndarray:
    return filterbank(load_mono_16k(path))
