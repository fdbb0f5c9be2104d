"""CREMA-D as distributed (github.com/CheyneyComputerScience/CREMA-D):

    AudioWAV/<ActorID>_<Sentence>_<EMO>_<Level>.wav     e.g. 1001_DFA_ANG_XX.wav (16 kHz mono)
    VideoFlash/<same stem>.flv                          (an .mp4 of the same stem is accepted too)

The label is the emotion code EMO. A clip is every stem found in either folder; a stem whose WAV or
video is missing fails with the missing file named. The repository keeps its media in Git LFS: a
copy downloaded as a ZIP holds small LFS pointer files instead, which stops the preparation with a
message to clone with git-lfs (rather than one "corrupt" error per clip).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmhpc.data.prepare.raw import Clip, Discovery, Media, PrepareError, RawFormat
from mmhpc.data.specs import DATASETS

EMOTION_CODES = {
    "ANG": "anger",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
VIDEO_SUFFIXES = (".flv", ".mp4")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def lfs_pointers(paths) -> list[Path]:
    """The files among `paths` that are Git LFS pointers (a few hundred bytes of text) instead of
    media."""
    found = []
    for p in paths:
        try:
            if p.stat().st_size < 1024 and p.read_bytes().startswith(LFS_POINTER):
                found.append(p)
        except OSError:
            pass  # unreadable: its clip fails with the file named
    return found


def find(raw: Path) -> Discovery:
    audio_dir, video_dir = raw / "AudioWAV", raw / "VideoFlash"
    if not audio_dir.is_dir() and not video_dir.is_dir():
        raise PrepareError(
            f"{raw}: neither AudioWAV/ nor VideoFlash/ found; is --raw the CREMA-D directory?"
        )
    videos = {}
    for suffix in VIDEO_SUFFIXES:  # the .flv wins when both exist
        for p in sorted(video_dir.glob(f"*{suffix}")):
            videos.setdefault(p.stem, p)
    wavs = sorted(audio_dir.glob("*.wav"))
    pointers = lfs_pointers([*wavs, *videos.values()])
    if pointers:
        raise PrepareError(
            f"{pointers[0]}: a Git LFS pointer file, not media ({len(pointers)} such files under "
            f"{raw}); the copy was downloaded without Git LFS (e.g. as a ZIP). "
            "Clone it with git-lfs: "
            "`git lfs install && git clone "
            "https://github.com/CheyneyComputerScience/CREMA-D.git` "
            "(or `git lfs pull` in the existing clone)"
        )
    stems = sorted({p.stem for p in wavs} | set(videos))
    classes = DATASETS["cremad"].classes
    clips, skipped = [], Counter()
    for stem in stems:
        parts = stem.split("_")
        if len(parts) != 4 or parts[2] not in EMOTION_CODES:
            skipped[
                "file name not <Actor>_<Sentence>_<EMO>_<Level> with EMO in "
                f"{sorted(EMOTION_CODES)}"
            ] += 1
            continue
        video = videos.get(stem, video_dir / f"{stem}{VIDEO_SUFFIXES[0]}")
        clips.append(
            Clip(
                stem,
                classes.index(EMOTION_CODES[parts[2]]),
                audio=audio_dir / f"{stem}.wav",
                visual=Media(video),
            )
        )
    return Discovery(clips, skipped)


FORMAT = RawFormat("cremad", find, fps=1.0)
