"""Preparing one clip: its output files, written atomically, and per-file errors instead of a crash.

Every output file is written to a hidden temporary name and renamed into place, so a file that
exists is complete: a clip whose outputs all exist is prepared, and a rerun after a crash skips it.
Hidden names are also what the manifest ignores, so a stale temporary file is never listed.
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmhpc.atomic import atomic_write_bytes
from mmhpc.data.prepare import audio, text, video
from mmhpc.data.prepare.raw import Clip, RawFileError, read_text

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class Settings:
    """What every clip of one preparation shares (sent once to each worker with the clip)."""

    modalities: tuple[str, ...]
    frames: int
    fps: float
    tokenizer: str | None
    truncation_side: str
    text_len: int


def output_files(clip_id: str, settings: Settings) -> list[str]:
    """The clip's files, relative to the prepared root (the layout of `mmhpc.data.specs`)."""
    files = []
    if "audio" in settings.modalities:
        files.append(f"audio/{clip_id}.npy")
    if "visual" in settings.modalities:
        files.extend(f"visual/{clip_id}/{k}.jpg" for k in range(settings.frames))
    if "text" in settings.modalities:
        files.append(f"text/{clip_id}.npy")
    return files


def is_prepared(out: Path, clip_id: str, settings: Settings) -> bool:
    return all((out / rel).is_file() for rel in output_files(clip_id, settings))


def remove_outputs(out: Path, clip_id: str) -> None:
    for rel in (f"audio/{clip_id}.npy", f"text/{clip_id}.npy"):
        (out / rel).unlink(missing_ok=True)
    shutil.rmtree(out / "visual" / clip_id, ignore_errors=True)




def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def prepare_clip(clip: Clip, out: Path, settings: Settings) -> tuple[str, str | None]:
    """Write one clip's outputs; return (clip id, None) or (clip id, the error naming the raw file).

    A failed clip leaves no outputs behind, so the manifest lists only prepared clips.
    """
    try:
        if "audio" in settings.modalities:
            fbank = _reading(clip.audio, "audio", audio.audio_features)
            atomic_write_bytes(out / "audio" / f"{clip.clip_id}.npy", npy_bytes(fbank))
        if "visual" in settings.modalities:
            media = clip.visual
            frames = _reading(media and media.path, "visual",
                              lambda p: video.clip_frames(media, settings.fps, settings.frames))
            for k, img in enumerate(frames):
                jpg = out / "visual" / clip.clip_id / f"{k}.jpg"
                atomic_write_bytes(jpg, video.jpeg_bytes(img))
        if "text" in settings.modalities:
            ids = text.token_ids(
                _text_of(clip), settings.tokenizer, settings.truncation_side, settings.text_len
            )
            atomic_write_bytes(out / "text" / f"{clip.clip_id}.npy", npy_bytes(ids))
    except Exception as e:  # noqa: BLE001 - any failure fails this clip only; the run goes on
        remove_outputs(out, clip.clip_id)
        return clip.clip_id, str(e) if isinstance(e, RawFileError) else f"{type(e).__name__}: {e}"
    return clip.clip_id, None


def _reading(path: Path | None, modality: str, read):
    """Run `read(path)`; any failure becomes a RawFileError naming the file."""
    if path is None:
        raise RuntimeError(f"no {modality} source for this clip")
    if not path.is_file():
        raise RawFileError(path, "missing")
    try:
        return read(path)
    except RawFileError:
        raise
    # decoder errors come in many types: name the file either way
    except Exception as e:  # noqa: BLE001
        raise RawFileError(path, f"corrupt or unreadable ({type(e).__name__}: {e})") from e


def _text_of(clip: Clip) -> str:
    if isinstance(clip.text, Path):
        return _reading(clip.text, "text", read_text).strip()
    if clip.text is None:
        raise RuntimeError("no text for this clip")
    return clip.text
