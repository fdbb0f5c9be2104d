"""CREMA-D as distributed (github.com/CheyneyComputerScience/CREMA-D):

    AudioWAV/<ActorID>_<Sentence>_<EMO>_<Level>.wav     e.g. 1001_DFA_ANG_XX.wav (16 kHz mono)
    VideoFlash/<same stem>.flv                          (an .mp4 of the same stem is accepted too)

The label is the emotion code EMO. A clip is every stem found in either folder; a stem whose WAV or
video is missing fails with the missing file named.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmhpc.data.prepare.raw import Clip, Discovery, Media, PrepareError, RawFormat
from mmhpc.data.specs import DATASETS

EMOTION_CODES = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
VIDEO_SUFFIXES = (".flv", ".mp4")


def find(raw: Path) -> Discovery:
    audio_dir, video_dir = raw / "AudioWAV", raw / "VideoFlash"
    if not audio_dir.is_dir() and not video_dir.is_dir():
        raise PrepareError(f"{raw}: neither AudioWAV/ nor VideoFlash/ found; is --raw the CREMA-D directory?")
    videos = {}
    for suffix in VIDEO_SUFFIXES:  # the .flv wins when both exist
        for p in sorted(video_dir.glob(f"*{suffix}")):
            videos.setdefault(p.stem, p)
    stems = sorted({p.stem for p in audio_dir.glob("*.wav")} | set(videos))
    classes = DATASETS["cremad"].classes
    clips, skipped = [], Counter()
    for stem in stems:
        parts = stem.split("_")
        if len(parts) != 4 or parts[2] not in EMOTION_CODES:
            skipped[f"file name not <Actor>_<Sentence>_<EMO>_<Level> with EMO in {sorted(EMOTION_CODES)}"] += 1
            continue
        video = videos.get(stem, video_dir / f"{stem}{VIDEO_SUFFIXES[0]}")
        clips.append(Clip(stem, classes.index(EMOTION_CODES[parts[2]]), audio=audio_dir / f"{stem}.wav",
                          visual=Media(video)))
    return Discovery(clips, skipped)


FORMAT = RawFormat("cremad", find, fps=1.0)
