"""Tiny raw copies of the five datasets, in their distributed layouts, made from scratch for the
tests.

WAVs come from the `wave` module, videos are encoded with PyAV (MPEG-4 part 2 in MP4/AVI, FLV1 in
FLV, AAC or MP2 audio at 22.05 kHz so that resampling is exercised), images from PIL, and the
RoBERTa-style tokenizer is a byte-level BPE trained on the fixtures' own sentences. Each class has
its own colour and tone, so the data is learnable, but the tests only check that the whole path
runs.
"""
from __future__ import annotations

import pickle
import wave
from pathlib import Path

import av
import numpy as np
from PIL import Image

SIZE = (64, 48)         # width, height of fixture videos and images
VIDEO_FPS = 8
AUDIO_RATE = 22050      # of the audio inside videos; WAVs are 16 kHz like CREMA-D's and IEMOCAP's
SENTENCES = [
    "I am so happy to see you today",
    "this is the worst news I have ever heard",
    "please leave me alone right now",
    "we are going to the market later",
    "what a funny joke that was",
    "the weather is nice and calm",
    "excuse me, where is the station",
]


def colour(k: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.random.default_rng(k).integers(30, 226, size=3))


def tone(t: np.ndarray, k: int) -> np.ndarray:
    return 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t) + 0.02 * np.random.default_rng(
        k
    ).standard_normal(len(t))


def write_wav(path: Path, seconds: float, k: int, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = tone(np.arange(int(seconds * rate)) / rate, k)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_video(
    path: Path, seconds: float, k: int, codec: str = "mpeg4", audio_codec: str | None = None
) -> None:
    """A clip of a colour that brightens over time; with `audio_codec`, a tone in an audio
    stream."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        v = container.add_stream(codec, rate=VIDEO_FPS)
        v.width, v.height, v.pix_fmt = *SIZE, "yuv420p"
        a = (
            container.add_stream(audio_codec, rate=AUDIO_RATE, layout="mono")
            if audio_codec
            else None
        )
        base = np.array(colour(k), dtype=np.float32)
        for i in range(int(seconds * VIDEO_FPS)):
            img = np.clip(base * (0.7 + 0.3 * i / (seconds * VIDEO_FPS)), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(
                np.broadcast_to(img, (SIZE[1], SIZE[0], 3)).copy(), format="rgb24"
            )
            container.mux(v.encode(frame))
        container.mux(v.encode())
        if a is not None:
            samples = tone(np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE, k).astype(np.float32)
            step = a.codec_context.frame_size or 1024
            for start in range(0, len(samples), step):
                frame = av.AudioFrame.from_ndarray(
                    samples[None, start : start + step], format="flt", layout="mono"
                )
                frame.sample_rate, frame.pts = AUDIO_RATE, start
                container.mux(a.encode(frame))
            container.mux(a.encode())


def write_image(path: Path, k: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(k + 100).integers(-20, 20, size=(SIZE[1], SIZE[0], 3))
    Image.fromarray(np.clip(np.array(colour(k)) + noise, 0, 255).astype(np.uint8)).save(
        path, quality=90
    )


def make_tokenizer(directory: Path) -> Path:
    """A RoBERTa tokenizer (byte-level BPE, <s> <pad> </s> <unk> <mask> = ids 0-4) saved like
    roberta-base's."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 3, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(directory))
    RobertaTokenizerFast(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt")
    ).save_pretrained(str(directory))
    return directory


# ---- datasets in their distributed layouts
# ------------------------------------------------------------------------

CREMAD_CODES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def make_cremad(root: Path, clips: int = 10) -> Path:
    for i in range(clips):
        k = i % len(CREMAD_CODES)
        stem = f"{1001 + i // len(CREMAD_CODES)}_IEO_{CREMAD_CODES[k]}_HI"
        write_wav(root / "AudioWAV" / f"{stem}.wav", 1.2, k)
        write_video(root / "VideoFlash" / f"{stem}.flv", 2.5, k, codec="flv")
    return root


AVE_CATEGORIES = ("Church bell", "Bark", "Acoustic guitar", "Frying (food)")


def make_ave(root: Path, clips: int = 10) -> Path:
    """Official split files: the last clip is the test set, the one before it validation, the rest
    training; the first video is annotated a second time (another event, in the validation split),
    as 45 AVE videos are."""
    header = "Category&VideoID&Quality&StartTime&EndTime\n"
    rows = {"train": [], "val": [], "test": []}
    for i in range(clips):
        k = i % len(AVE_CATEGORIES)
        video_id = f"-vid{i:02d}_x"  # YouTube ids may start with "-"
        write_video(root / "AVE" / f"{video_id}.mp4", 3.0, k, audio_codec="aac")
        split = "test" if i == clips - 1 else "val" if i == clips - 2 else "train"
        rows[split].append(f"{AVE_CATEGORIES[k]}&{video_id}&good&0&3\n")
    rows["val"].append(f"{AVE_CATEGORIES[1]}&-vid00_x&good&1&2\n")
    (root / "Annotations.txt").write_text(
        header + "".join(r for split in rows.values() for r in split)
    )
    for split, name in (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt")):
        (root / name).write_text("".join(rows[split]))
    return root


MVSA_PAIRS = {
    "negative": ("negative,negative", "negative,neutral"),
    "neutral": ("neutral,neutral",),
    "positive": ("positive,positive", "neutral,positive"),
}


def _mvsa_tweets(clips: int) -> list[tuple[str, str, str]]:
    """(tweet id, `text,image` labels, the tweet's sentiment) of the usable tweets."""
    sentiments = list(MVSA_PAIRS)
    rows = []
    for i in range(clips):
        sentiment = sentiments[i % len(sentiments)]
        options = MVSA_PAIRS[sentiment]
        rows.append((str(i + 1), options[(i // len(sentiments)) % len(options)], sentiment))
    return rows


def tweet_sentiments(clips: int) -> dict[str, str]:
    return {tweet: sentiment for tweet, _, sentiment in _mvsa_tweets(clips)}


def make_mvsa(root: Path, clips: int = 10) -> Path:
    """`clips` usable tweets, then two whose text and image contradict each other."""
    lines = ["ID\ttext,image"]
    for tweet, pair, sentiment in _mvsa_tweets(clips):
        k = list(MVSA_PAIRS).index(sentiment)
        lines.append(f"{tweet}\t{pair}")
        write_image(root / "data" / f"{tweet}.jpg", k)
        text = f"{SENTENCES[k]} #{sentiment} \u2764 http://t.co/x{tweet}"
        (root / "data" / f"{tweet}.txt").write_text(text)
    tweet = clips
    for _ in range(2):  # contradicting pairs: dropped by the MVSA labelling rule
        tweet += 1
        lines.append(f"{tweet}\tpositive,negative")
        write_image(root / "data" / f"{tweet}.jpg", 0)
        (root / "data" / f"{tweet}.txt").write_text("mixed feelings")
    (root / "labelResultAll.txt").write_text("\n".join(lines) + "\n")
    return root


# two dialogs: every code of the five classes, ten `neu` (so a stratified split has a test clip), a
# `hap` (dropped by default, a sixth class by option) and an `xxx` (never kept) each
IEMOCAP_DIALOGS = (("ang", "neu", "sad", "neu", "exc", "neu", "neu", "hap", "xxx"),
                   ("fru", "neu", "neu", "neu", "neu", "neu", "neu", "hap", "xxx"))


def make_iemocap(root: Path) -> Path:
    """Session1 with the two dialogs of IEMOCAP_DIALOGS; the third utterance of each is short."""
    session = root / "Session1"
    for d, dialog in enumerate(("Ses01F_impro01", "Ses01M_script01_1")):
        write_video(session / "dialog" / "avi" / "DivX" / f"{dialog}.avi", 15.0, d)
        evaluation, transcript, t = [], [], 0.5
        codes = IEMOCAP_DIALOGS[d]
        for k, code in enumerate(codes):
            utterance = f"{dialog}_{'FM'[k % 2]}{k:03d}"
            length = (
                0.4 if k == 2 else 1.2
            )  # a 0.4 s utterance has fewer 2 fps slots than frames kept
            evaluation.append(
                f"[{t:.4f} - {t + length:.4f}]\t{utterance}\t{code}\t[2.5000, 2.5000, 2.5000]"
            )
            transcript.append(
                f"{utterance} [{t:08.4f}-{t + length:08.4f}]: {SENTENCES[k % len(SENTENCES)]}"
            )
            write_wav(session / "sentences" / "wav" / dialog / f"{utterance}.wav", length, k)
            t += length + 0.3
        (session / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "EmoEvaluation" / f"{dialog}.txt").write_text(
            "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            + "\n\n".join(evaluation)
            + "\n"
        )
        (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
        (session / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(
            "\n".join(transcript) + "\n"
        )
    return root


def make_urfunny(root: Path, clips: int = 10) -> Path:
    labels, language = {}, {}
    for i in range(clips):
        humorous = i % 2
        write_video(root / "urfunny2_videos" / f"{i}.mp4", 2.0, humorous, audio_codec="mp2")
        labels[i] = humorous
        language[i] = {"punchline_sentence": SENTENCES[4] if humorous else SENTENCES[5],
                       "context_sentences": SENTENCES[:1 + i % 4], "punchline_features": None}
    (root / "humor_label_sdk.pkl").write_bytes(pickle.dumps(labels))
    (root / "language_sdk.pkl").write_bytes(pickle.dumps(language))
    return root


MAKERS = {"cremad": make_cremad, "ave": make_ave, "mvsa": make_mvsa, "iemocap": make_iemocap,
          "urfunny": make_urfunny}
