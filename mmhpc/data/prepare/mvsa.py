"""MVSA-Single as distributed (Niu et al., MMM 2016;
mcrlab.net/research/mvsa-sentiment-analysis-...):

    data/<ID>.jpg, data/<ID>.txt     the tweet's image and text
    labelResultAll.txt               `ID<TAB>text,image`, first line a header; e.g.
    `1<TAB>positive,neutral`

The tweet's label follows Xu & Mao, "MultiSentiNet" (CIKM 2017), the rule the MVSA papers use: equal
text and image labels give that label; if one is neutral the other one is taken; a positive/negative
pair is dropped (counted as skipped, not failed). This keeps 4,511 of MVSA-Single's 5,129 pairs.
MVSA-Multiple (three annotators per line) is not supported. Texts are 256 tokens long, as the thesis
code tokenises them.
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
from mmhpc.data.specs import DATASETS

SENTIMENTS = ("negative", "neutral", "positive")


def tweet_label(text_label: str, image_label: str) -> str | None:
    """The pair's sentiment, or None for a pair whose modalities contradict each other."""
    if text_label == image_label:
        return text_label
    if "neutral" in (text_label, image_label):
        return image_label if text_label == "neutral" else text_label
    return None  # positive against negative


def find(raw: Path) -> Discovery:
    path = require_file(raw / "labelResultAll.txt", "MVSA-Single labels")
    classes = DATASETS["mvsa"].classes
    clips, skipped = [], Counter()
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "ID":
            continue
        if len(fields) != 2:
            raise PrepareError(
                f"{path}:{number}: expected `ID<TAB>text,image` (MVSA-Single), got {line!r}"
            )
        tweet, pair = fields
        labels = pair.lower().split(",")
        if len(labels) != 2 or not set(labels) <= set(SENTIMENTS):
            raise PrepareError(
                f"{path}:{number}: labels {pair!r} are not text,image from {SENTIMENTS}"
            )
        label = tweet_label(*labels)
        if label is None:
            skipped["text and image labels contradict (positive vs negative)"] += 1
            continue
        clips.append(Clip(tweet, classes.index(label), visual=Media(raw / "data" / f"{tweet}.jpg"),
                          text=raw / "data" / f"{tweet}.txt"))
    return Discovery(clips, skipped)


FORMAT = RawFormat(
    "mvsa", find, text_len=256
)  # the thesis code's length (AMST code/data/MVSA/new_extract_mvsa.py)
