"""What a dataset module hands to the preparation: one `Clip` per sample, pointing into the raw
copy.

A dataset module only parses its distributed layout (file names, annotation files) into clips;
decoding, feature extraction and writing are shared (`audio`, `video`, `text`, `clip_writer`). Raw
media are not opened while clips are found, so a missing or corrupt media file fails its own clip,
not the whole run.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mmhpc.errors import problem

# Clip ids become file names and lines of labels.csv / splits: no separators, commas, whitespace or
# a leading dot (hidden names are temporary files). YouTube ids (AVE) may start with "-" or "_".
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")


class PrepareError(RuntimeError):
    """The raw copy cannot be prepared at all (wrong directory, missing annotation file, bad
    options)."""


class RawFileError(RuntimeError):
    """One raw file is missing, corrupt or unusable; it fails only the clip that needs it."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)


@dataclass(frozen=True)
class Media:
    """A video or image file, optionally a time window of it (IEMOCAP utterances in a dialog
    video)."""

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
    """The clips found in a raw copy; samples dropped by the dataset's own rules are counted, not
    failed."""

    clips: list[Clip]
    skipped: Counter = field(default_factory=Counter)  # reason -> number of samples
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> error, known before decoding
    official_splits: dict[str, list[str]] | None = None
    classes: tuple[str, ...] | None = None  # when an option changes the spec's class list
    text_truncation: str = "right"  # which end of a too-long text the tokenizer drops


@dataclass(frozen=True)
class RawFormat:
    """A dataset's distributed layout and the thesis code base's recipe for it: how to find its
    clips (`find` takes the raw directory and the chosen `options`), the frame rate, the token
    length, the split."""

    name: str
    find: Callable[..., Discovery]
    fps: float = 1.0
    text_len: int = 128  # token ids per text (MVSA 256, as the thesis code tokenises it)
    split: str = "random"  # "random" 80/10/10, or "stratified" per class (IEMOCAP)
    options: dict[str, tuple[str, ...]] = field(
        default_factory=dict
    )  # name -> valid values, default first

    def chosen(self, options: dict[str, str] | None) -> dict[str, str]:
        """Every option of this format with its value: the given ones checked, the others at their
        default."""
        options = dict(options or {})
        for key, value in options.items():
            if key not in self.options:
                raise PrepareError(problem(f"--option {key}", f"{self.name} has no such option",
                                           sorted(self.options) or ["none for this dataset"]))
            if value not in self.options[key]:
                raise PrepareError(problem(f"--option {key}={value}", "not a valid value",
                                           self.options[key]))
        return {key: options.get(key, values[0]) for key, values in self.options.items()}


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
