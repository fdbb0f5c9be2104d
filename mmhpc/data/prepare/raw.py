"""What a dataset module hands to the preparation: one `Clip` per sample, pointing into the raw copy.

A dataset module only parses its distributed layout (file names, annotation files) into clips; decoding,
feature extraction and writing are shared (`audio`, `video`, `text`, `clip_writer`). Raw media are not
opened while clips are found, so a missing or corrupt media file fails its own clip, not the whole run.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Clip ids become file names and lines of labels.csv / splits: no separators, commas, whitespace or
# a leading dot (hidden names are temporary files). YouTube ids (AVE) may start with "-" or "_".
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class PrepareError(RuntimeError):
    """The raw copy cannot be prepared at all (wrong directory, missing annotation file, bad options)."""


class RawFileError(RuntimeError):
    """One raw file is missing, corrupt or unusable; it fails only the clip that needs it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)


@dataclass(frozen=True)
class Media:
    """A video or image file, optionally a time window of it (IEMOCAP utterances in a dialog video)."""

    path: Path
    start: float | None = None  # seconds; None: from the beginning
    end: float | None = None    # seconds; None: to the end


@dataclass(frozen=True)
class Clip:
    clip_id: str
    label: int                           # index into the spec's classes
    audio: Path | None = None            # a WAV, or a video container whose audio stream is used
    visual: Media | None = None
    text: str | Path | None = None       # the text itself, or a file that holds it (MVSA)


@dataclass
class Discovery:
    """The clips found in a raw copy; samples dropped by the dataset's own rules are counted, not failed."""

    clips: list[Clip]
    skipped: Counter = field(default_factory=Counter)        # reason -> number of samples
    failed: dict[str, str] = field(default_factory=dict)     # clip id -> error, known before decoding
    official_splits: dict[str, list[str]] | None = None      # split -> clip ids (AVE); None: random 80/10/10


@dataclass(frozen=True)
class RawFormat:
    """A dataset's distributed layout: how to find its clips, and the frame rate its frames are taken at."""

    name: str
    find: Callable[[Path], Discovery]
    fps: float = 1.0
    text_truncation: str = "right"   # which end of a too-long text the tokenizer drops


def is_safe_id(clip_id: str) -> bool:
    return bool(_SAFE_ID.match(clip_id))


def require_file(path: Path, what: str) -> Path:
    """An annotation file the whole dataset depends on: its absence is fatal, not per clip."""
    if not path.is_file():
        raise PrepareError(f"{path}: missing ({what}); is --raw the dataset's top directory?")
    return path


def read_text(path: Path) -> str:
    """Text of a raw file; tweets and transcripts are not always UTF-8, so fall back to Latin-1."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")
