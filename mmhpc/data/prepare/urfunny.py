"""UR-FUNNY v2 as distributed (Hasan et al., EMNLP 2019; github.com/ROC-HCI/UR-FUNNY):

    urfunny2_videos/<id>.mp4   context and punchline of one sample; the audio is the video's audio
    stream
    humor_label_sdk.pkl        {id: 0 or 1}
    language_sdk.pkl           {id: {"punchline_sentence": str, "context_sentences": [str, ...],
    ...}}

The label is 1 = humorous, 0 = not humorous. The text is the punchline sentence, as the thesis code
base tokenises it (AMST `code/data/UR-FUNNY/gen_urfunny_txt.py`), in 128 tokens. The option
text=context puts the context sentences before it, joined with spaces; such a text longer than 128
tokens loses its beginning, so the punchline stays.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from mmhpc.data.prepare.raw import Clip, Discovery, Media, PrepareError, RawFormat, require_file
from mmhpc.data.specs import DATASETS


def load_pickle(path: Path):
    """The SDK pickles; those written by Python 2 need latin-1 (as the UR-FUNNY repository loads
    them)."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:
            f.seek(0)
            return pickle.load(f, encoding="latin1")


def sample_text(language: dict, text: str = "punchline") -> str:
    context = language.get("context_sentences", []) if text == "context" else []
    return " ".join([*context, language.get("punchline_sentence", "")]).strip()


def find(raw: Path, text: str = "punchline") -> Discovery:
    labels = load_pickle(require_file(raw / "humor_label_sdk.pkl", "UR-FUNNY labels"))
    language = load_pickle(require_file(raw / "language_sdk.pkl", "UR-FUNNY texts"))
    if not isinstance(labels, dict) or not isinstance(language, dict):
        raise PrepareError(
            f"{raw}: humor_label_sdk.pkl and language_sdk.pkl must each hold a dict keyed by id"
        )
    classes = DATASETS["urfunny"].classes
    clips, failed = [], {}
    for key in sorted(labels, key=str):
        clip_id = str(key)
        if key not in language:
            failed[clip_id] = f"{raw / 'language_sdk.pkl'}: no entry for {clip_id}"
            continue
        video = raw / "urfunny2_videos" / f"{clip_id}.mp4"
        clips.append(
            Clip(
                clip_id,
                classes.index("humorous" if int(labels[key]) else "not_humorous"),
                audio=video,
                visual=Media(video),
                text=sample_text(language[key], text),
            )
        )
    return Discovery(clips, failed=failed, text_truncation="left" if text == "context" else "right")


FORMAT = RawFormat("urfunny", find, fps=1.0, options={"text": ("punchline", "context")})
