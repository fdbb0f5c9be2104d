"""What each dataset is: modalities, classes, sample counts and prepared shapes (thesis Sec. 1.5,
4.1).

The prepared on-disk layout, shared by real (``mmhpc prepare``) and synthetic (``mmhpc data synth``)
data:

    <root>/manifest.json               dataset, modalities, classes, shapes, split counts,
    size+sha256 per file <root>/labels.csv                  clip_id,label
    <root>/splits/{train,val,test}.txt clip ids, one per line <root>/audio/<clip_id>.npy
    float32 Kaldi filterbank [frames, mel_bins] <root>/visual/<clip_id>/<k>.jpg    RGB frames, k = 0
    .. frames-1 <root>/text/<clip_id>.npy          int64 [2, max_len]: input ids, attention mask
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shapes:
    audio: tuple[int, int]   # filterbank frames x mel bins
    frames: int              # visual frames per clip
    image: int               # square image side
    text_len: int            # token ids per sample
    vocab: int               # token-id range of the synthetic text


FULL = Shapes(audio=(1024, 128), frames=3, image=224, text_len=128, vocab=50265)
TINY = Shapes(audio=(32, 32), frames=3, image=16, text_len=16, vocab=512)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    modalities: tuple[str, ...]
    classes: tuple[str, ...]
    num_samples: int          # real dataset size, used by the `full` synthetic preset
    split: str                # "official" (AVE) or "random 80/10/10"
    frames: int = 3           # MVSA has one image per sample
    tiny_samples: int = 600
    text_len: int = 128  # token ids per text in the thesis code: MVSA 256, IEMOCAP and UR-FUNNY 128
    size_source: str = (
        ""  # where num_samples comes from when sources disagree (the run record's provenance)
    )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def shapes(self, preset: str) -> Shapes:
        base = FULL if preset == "full" else TINY
        return Shapes(
            base.audio,
            self.frames,
            base.image,
            self.text_len if preset == "full" else base.text_len,
            base.vocab,
        )

    def samples(self, preset: str) -> int:
        return self.num_samples if preset == "full" else self.tiny_samples


# The 28 AVE event categories as spelled in its Annotations.txt, sorted: a class index is the
# category's rank.
_AVE_CLASSES = tuple(
    sorted(
        (
            "Church bell",
            "Male speech, man speaking",
            "Bark",
            "Fixed-wing aircraft, airplane",
            "Race car, auto racing",
            "Female speech, woman speaking",
            "Helicopter",
            "Violin, fiddle",
            "Flute",
            "Ukulele",
            "Frying (food)",
            "Truck",
            "Shofar",
            "Motorcycle",
            "Acoustic guitar",
            "Train horn",
            "Clock",
            "Banjo",
            "Goat",
            "Baby cry, infant cry",
            "Bus",
            "Chainsaw",
            "Cat",
            "Horse",
            "Toilet flush",
            "Rodents, rats, mice",
            "Accordion",
            "Mandolin",
        )
    )
)

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in (
        DatasetSpec(
            "cremad",
            "CREMA-D",
            ("audio", "visual"),
            ("anger", "disgust", "fear", "happy", "neutral", "sad"),
            7442,
            "random 80/10/10",
        ),
        DatasetSpec(
            "ave", "AVE", ("audio", "visual"), _AVE_CLASSES, 4143, "official", tiny_samples=840
        ),
        DatasetSpec(
            "mvsa",
            "MVSA",
            ("visual", "text"),
            ("negative", "neutral", "positive"),
            5129,
            "random 80/10/10",
            frames=1,
            text_len=256,
        ),
        # the thesis' five classes, `hap` dropped (ang 1,103 + exc 1,041 + fru 1,849 + neu 1,708 +
        # sad 1,084)
        DatasetSpec(
            "iemocap",
            "IEMOCAP",
            ("audio", "visual", "text"),
            ("angry", "excited", "frustrated", "neutral", "sad"),
            6785,
            "stratified 80/10/10 per class",
        ),
        # the code base's UR-FUNNY v2 files: 10,166 samples; the thesis (Sec. 4.1) and the AMST
        # paper say 16,514
        DatasetSpec(
            "urfunny",
            "UR-FUNNY",
            ("audio", "visual", "text"),
            ("not_humorous", "humorous"),
            10166,
            "random 80/10/10",
            size_source="code base as run: code/data/UR-FUNNY/ur_funny_info.txt, 10,166 "
            "samples (8,132 / "
            "1,016 / 1,018); thesis Sec. 4.1 and AMST paper Sec. 4: 16,514",
        ),
    )
}

SPLITS = ("train", "val", "test")
