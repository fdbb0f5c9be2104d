"""IEMOCAP as distributed (Busso et al., 2008; sail.usc.edu/iemocap), for each n in 1..5:

    Session{n}/dialog/EmoEvaluation/<dialog>.txt       `[6.2901 -
    8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[...]`
    Session{n}/sentences/wav/<dialog>/<utterance>.wav  one WAV per utterance
    Session{n}/dialog/avi/DivX/<dialog>.avi            one video per dialog
    Session{n}/dialog/transcriptions/<dialog>.txt      `Ses01F_impro01_F000 [006.2901-008.2357]:
    Excuse me.`

A sample is an utterance with the consensus code ang, exc, fru, neu or sad (angry, excited,
frustrated, neutral, sad), the thesis' five classes: its code base keeps exactly these (AMST
`code/data/IEMOCAP/split_iemo_dataset.py`), dropping `hap` rather than merging it into `exc`. The
option classes=six keeps `hap` as a sixth class (happy). Other codes (xxx, sur, fea, dis, oth) are
skipped. The split is stratified per class, as that script does. Audio is the utterance's WAV, text
its transcription (128 tokens), frames are taken at 2 fps from the utterance's time window of the
dialog video. The two-modal variant (audio, visual) is the same prepared data read with
`data.modalities=[audio,visual]`.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from mmhpc.data.prepare.raw import Clip, Discovery, Media, PrepareError, RawFormat, read_text
from mmhpc.data.specs import DATASETS

EMOTION_CODES = {
    "ang": "angry",
    "exc": "excited",
    "fru": "frustrated",
    "neu": "neutral",
    "sad": "sad",
}
SIX_CLASSES = tuple(sorted([*EMOTION_CODES.values(), "happy"]))  # option classes=six: `hap` kept
_EVALUATION = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)")
_TRANSCRIPT = re.compile(r"^(\S+)\s+\[[^\]]*\]:\s?(.*)$")


def transcripts(path: Path) -> dict[str, str]:
    """utterance id -> its words, from a dialog's transcription file."""
    lines = (_TRANSCRIPT.match(line) for line in read_text(path).splitlines())
    return {m.group(1): m.group(2).strip() for m in lines if m}


def find(raw: Path, classes: str = "five") -> Discovery:
    codes = {**EMOTION_CODES, "hap": "happy"} if classes == "six" else EMOTION_CODES
    names = SIX_CLASSES if classes == "six" else DATASETS["iemocap"].classes
    sessions = sorted(p for p in raw.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise PrepareError(
            f"{raw}: no Session1..Session5 directories; is --raw the IEMOCAP_full_release "
            "directory?"
        )
    clips, skipped, failed = [], Counter(), {}
    for session in sessions:
        for evaluation in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            if evaluation.name.startswith("."):
                continue  # resource forks of copies made on macOS
            dialog = evaluation.stem
            transcription = session / "dialog" / "transcriptions" / f"{dialog}.txt"
            words = transcripts(transcription) if transcription.is_file() else {}
            video = session / "dialog" / "avi" / "DivX" / f"{dialog}.avi"
            for m in filter(None, map(_EVALUATION.match, read_text(evaluation).splitlines())):
                start, end, utterance, code = (
                    float(m.group(1)),
                    float(m.group(2)),
                    m.group(3),
                    m.group(4),
                )
                if code not in codes:
                    skipped[f"emotion code {code} is not one of {sorted(codes)}"] += 1
                    continue
                if utterance not in words:
                    failed[utterance] = (f"{transcription}: missing" if not transcription.is_file()
                                         else f"{transcription}: no line for {utterance}")
                    continue
                clips.append(Clip(utterance, names.index(codes[code]),
                                  audio=session / "sentences" / "wav" / dialog / f"{utterance}.wav",
                                  visual=Media(video, start, end), text=words[utterance]))
    return Discovery(clips, skipped, failed=failed, classes=names)


FORMAT = RawFormat(
    "iemocap", find, fps=2.0, split="stratified", options={"classes": ("five", "six")}
)
