"""AVE as distributed (Tian et al., ECCV 2018; github.com/YapengTian/AVE-ECCV18):

    AVE/<VideoID>.mp4                     10 s videos; the audio is the video's own audio stream
    Annotations.txt                       Category&VideoID&Quality&StartTime&EndTime, first line a
    header trainSet.txt, valSet.txt, testSet.txt the official split, same format (a header line is
    tolerated)

The class is the Category (index in the sorted category names of `specs.py`); the whole 10 s video
is one sample, as in the classification setting of the thesis' code base (StartTime/EndTime localise
the event and are not used). A sample is a row of a split file, so the 45 videos annotated twice
(two events) stay two samples with their own label and split, as the official lists have them: 4,143
rows, 4,097 videos. The second row of a video gets the clip id `<VideoID>.2`. A split row missing
from Annotations.txt is skipped.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from mmhpc.data.prepare.raw import (
    Clip,
    Discovery,
    Media,
    PrepareError,
    RawFormat,
    read_text,
    require_file,
)
from mmhpc.data.specs import DATASETS, SPLITS

SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
_HEADER = "Category&VideoID"


def read_annotations(path: Path) -> list[tuple[str, str]]:
    """(category, video id) per line of an AVE annotation or split file."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip() or line.startswith(_HEADER):
            continue
        fields = line.strip().split("&")
        if len(fields) != 5:
            raise PrepareError(
                f"{path}:{number}: expected Category&VideoID&Quality&StartTime&EndTime, got "
                f"{line!r}"
            )
        rows.append((fields[0].strip(), fields[1].strip()))
    return rows


def find(raw: Path) -> Discovery:
    classes = DATASETS["ave"].classes
    annotated = set(read_annotations(require_file(raw / "Annotations.txt", "AVE annotations")))
    splits = {split: [] for split in SPLITS}
    clips, listed, rows = [], set(), Counter()
    skipped = Counter()
    for split in SPLITS:
        listing = require_file(raw / SPLIT_FILES[split], f"AVE official {split} split")
        for category, video_id in read_annotations(listing):
            rows[video_id] += 1
            clip_id = video_id if rows[video_id] == 1 else f"{video_id}.{rows[video_id]}"
            listed.add((category, video_id))
            if (category, video_id) not in annotated:
                skipped["in a split file but not in Annotations.txt"] += 1
            elif category not in classes:
                skipped[f"category not one of the 28 AVE classes: {category}"] += 1
            else:
                video = raw / "AVE" / f"{video_id}.mp4"
                clips.append(
                    Clip(clip_id, classes.index(category), audio=video, visual=Media(video))
                )
                splits[split].append(clip_id)
    skipped["annotated but in no split file"] += len(annotated - listed)
    return Discovery(clips, +skipped, official_splits=splits)


FORMAT = RawFormat("ave", find, fps=1.0)
