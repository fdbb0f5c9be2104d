"""`mmhpc prepare`: a real dataset's local raw copy -> the prepared layout of `mmhpc.data.specs`.

    prepare("cremad", raw="/data/CREMA-D", out="/data/prepared/cremad", jobs=8)
    prepare("iemocap", raw=..., out=..., tokenizer=..., options={"classes": "six"})

Clips are prepared in a process pool. A rerun skips every clip whose outputs exist (they are written
atomically, so existing means complete), and a raw file that is missing or corrupt fails its clip
only:
the others are prepared, the failures are listed in `prepare_errors.json` and left out of the
splits,
and the manifest is written for what was prepared. Each dataset's raw layout is in its module (and
in
README.md next to this file).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from mmhpc.atomic import atomic_write_text, is_temporary
from mmhpc.data.manifest import write_manifest
from mmhpc.data.prepare import audio, ave, cremad, iemocap, mvsa, text, urfunny, video
from mmhpc.data.prepare.clip_writer import TMP_MARK, Settings, is_prepared, prepare_clip
from mmhpc.data.prepare.raw import Clip, PrepareError, RawFormat, is_safe_id
from mmhpc.data.specs import DATASETS, FULL, SPLITS, Shapes
from mmhpc.data.splits import random_split, stratified_split, write_split_files
from mmhpc.errors import problem

RAW_FORMATS: dict[str, RawFormat] = {
    m.FORMAT.name: m.FORMAT for m in (cremad, ave, mvsa, iemocap, urfunny)
}
RECIPE_FILE = ".prepare.json"   # hidden: not a data file of the manifest
ERRORS_FILE = "prepare_errors.json"
PREPARE_VERSION = 2  # 2: whole frame resized to 224 x 224; per-dataset token length; options

__all__ = ["RAW_FORMATS", "PrepareError", "PrepareReport", "prepare"]


@dataclass
class PrepareReport:
    dataset: str
    root: Path
    prepared: int = 0                                     # clips written by this run
    reused: int = 0                                       # clips already prepared by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # clip id -> error naming the raw file
    skipped: Counter = field(default_factory=Counter)  # reason -> samples the dataset's rules drop

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self, shown: int = 20) -> str:
        lines = [f"{self.dataset}: {self.prepared} clips prepared, {self.reused} already prepared, "
                 f"{len(self.failed)} failed, {sum(self.skipped.values())} skipped -> {self.root}"]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.most_common()]
        lines += [f"  FAILED {clip}: {error}" for clip, error in list(self.failed.items())[:shown]]
        if len(self.failed) > shown:
            lines.append(
                f"  ... and {len(self.failed) - shown} more failures in {self.root / ERRORS_FILE}"
            )
        return "\n".join(lines)


def prepare(dataset: str, raw: str | Path, out: str | Path, jobs: int = 1, seed: int = 0,
            tokenizer: str | Path | None = None, progress: bool = True,
            options: dict[str, str] | None = None) -> PrepareReport:
    """Prepare `dataset` from its raw copy `raw` into `out`; see the module docstring. `options` are
    the dataset's choices beside the thesis recipe (`RawFormat.options`, e.g. IEMOCAP
    classes=six)."""
    if dataset not in RAW_FORMATS:
        raise PrepareError(problem("dataset", f"invalid value {dataset!r}", sorted(RAW_FORMATS)))
    fmt, spec = RAW_FORMATS[dataset], DATASETS[dataset]
    raw, out = Path(raw), Path(out)
    chosen = fmt.chosen(options)
    if not raw.is_dir():
        raise PrepareError(f"--raw {raw}: not a directory")
    if "text" in spec.modalities and tokenizer is None:
        raise PrepareError(
            f"{dataset} has text: give --tokenizer, a local RoBERTa tokenizer directory"
        )
    found = fmt.find(raw, **chosen)  # before --out is touched: a wrong --raw leaves nothing behind
    settings = Settings(
        spec.modalities,
        spec.frames,
        fmt.fps,
        str(tokenizer) if "text" in spec.modalities else None,
        found.text_truncation,
        fmt.text_len,
    )
    recipe = _recipe(dataset, settings, chosen)
    out.mkdir(parents=True, exist_ok=True)
    _claim(out, recipe)
    _remove_temporaries(out)

    report = PrepareReport(dataset, out, failed=dict(found.failed), skipped=found.skipped)
    clips = _prepare_clips(report, found, settings, jobs, progress)
    labels = {c.clip_id: c.label for c in clips if c.clip_id not in report.failed}
    _prune(out, set(labels))
    split = "official" if found.official_splits else fmt.split
    _write_splits(report, _splits(found, clips, split, seed), labels)
    source = {"kind": "prepared", "raw": str(raw.resolve()), "split": split, "seed": seed,
              "options": chosen, "recipe": recipe, "failed": len(report.failed),
              "skipped": dict(report.skipped)}
    _write_manifest(out, spec, fmt, found.classes, source)
    return report


def _prepare_clips(report: PrepareReport, found, settings: Settings, jobs: int,
                   progress: bool) -> list[Clip]:
    """Prepare the usable clips not yet prepared (in `jobs` processes); returns the usable ones."""
    out = report.root
    clips = _usable(found.clips, report.failed)
    todo = [c for c in clips if not is_prepared(out, c.clip_id, settings)]
    report.reused = len(clips) - len(todo)
    for clip_id, error in _run(todo, out, settings, jobs, progress, report.dataset):
        if error is None:
            report.prepared += 1
        else:
            report.failed[clip_id] = error
    return clips


def _write_splits(report: PrepareReport, splits: dict[str, list[str]], labels: dict) -> None:
    """The split files and the failures file; PrepareError when a split came out empty."""
    out = report.root
    counts = write_split_files(out, splits, labels)
    (out / ERRORS_FILE).write_text(
        json.dumps({"failed": report.failed, "skipped": dict(report.skipped)}, indent=1)
    )
    empty = [s for s in SPLITS if not counts[s]]
    if empty:  # no manifest: training refuses the directory instead of failing on an empty split
        sizes = ", ".join(f"{s} {counts[s]}" for s in SPLITS)
        raise PrepareError(
            f"--out {out}: split {', '.join(empty)} came out empty ({len(labels)} clips prepared: "
            f"{sizes}); the raw copy is too small to split, or most of its clips failed (see "
            f"{out / ERRORS_FILE}); nothing was trained on, no manifest written"
        )


def _write_manifest(out: Path, spec, fmt, classes, source: dict) -> None:
    recipe = source["recipe"]
    vocab = recipe["text"]["vocab"] if "text" in recipe else FULL.vocab
    shapes = Shapes(
        audio=(audio.FRAMES, audio.MEL_BINS),
        frames=spec.frames,
        image=video.IMAGE_SIZE,
        text_len=fmt.text_len,
        vocab=vocab,
    )
    write_manifest(out, replace(spec, classes=classes or spec.classes), shapes, source=source)


def _splits(found, clips: list[Clip], split: str, seed: int) -> dict[str, list[str]]:
    """The official split, or one drawn over every clip found (failed ones included: repairing a
    file and preparing again adds its clip without moving any other clip)."""
    if split == "official":
        return found.official_splits
    if split == "stratified":  # clips that failed before decoding have no label and are left out
        return stratified_split({c.clip_id: c.label for c in clips}, seed)
    return random_split([c.clip_id for c in clips] + list(found.failed), seed)


def _usable(clips: list[Clip], failed: dict[str, str]) -> list[Clip]:
    """The clips that can be prepared; ids that cannot be file names, or that repeat, fail (into
    `failed`)."""
    usable, seen = [], set(failed)
    for clip in clips:
        if not is_safe_id(clip.clip_id):
            failed[clip.clip_id] = f"clip id {clip.clip_id!r} cannot be a file name"
        elif clip.clip_id in seen:
            failed.setdefault(clip.clip_id, "clip id found twice in the raw copy")
        else:
            usable.append(clip)
        seen.add(clip.clip_id)
    return usable


def _recipe(dataset: str, settings: Settings, options: dict[str, str]) -> dict:
    """Everything that decides the bytes of a clip's outputs and its labels; a resumed run must use
    the same."""
    recipe = {"version": PREPARE_VERSION, "dataset": dataset, "options": options,
              "visual": video.recipe(settings.fps, settings.frames)}
    if "audio" in settings.modalities:
        recipe["audio"] = audio.recipe()
    if "text" in settings.modalities:
        recipe["text"] = text.recipe(
            settings.tokenizer, settings.truncation_side, settings.text_len
        )
    return recipe


def _claim(out: Path, recipe: dict) -> None:
    """Refuse to mix clips of two recipes (another dataset, tokenizer or version) in one
    directory."""
    path = out / RECIPE_FILE
    if path.exists():
        if _comparable(json.loads(path.read_text())) != _comparable(recipe):
            raise PrepareError(
                f"--out {out} was prepared with another recipe ({path}); use a new --out, "
                "or delete it to start over"
            )
    elif any(out.iterdir()):
        raise PrepareError(f"--out {out} is not empty and was not made by `mmhpc prepare`")
    atomic_write_text(path, json.dumps(recipe, indent=1))


def _comparable(recipe: dict) -> dict:
    """The recipe without the tokenizer's location: it may move on disk, what counts is its
    vocabulary."""
    recipe = dict(recipe)
    if "text" in recipe:
        recipe["text"] = {k: v for k, v in recipe["text"].items() if k != "tokenizer"}
    return recipe


def _run(clips: list[Clip], out: Path, settings: Settings, jobs: int, progress: bool, dataset: str):
    """Yield (clip id, error or None) as clips finish, over `jobs` processes."""
    bar = tqdm(total=len(clips), desc=f"prepare {dataset}", unit="clip", disable=not progress)
    try:
        if jobs <= 1 or len(clips) <= 1:
            _init_worker()
            for clip in clips:
                yield prepare_clip(clip, out, settings)
                bar.update()
            return
        # fork: workers start at once and inherit the loaded tokenizer; they touch no accelerator
        with ProcessPoolExecutor(
            jobs, mp_context=get_context("fork"), initializer=_init_worker
        ) as pool:
            futures = [pool.submit(prepare_clip, clip, out, settings) for clip in clips]
            try:
                for future in as_completed(futures):
                    yield future.result()
                    bar.update()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: what finished is kept
                raise
    finally:
        bar.close()


def _init_worker() -> None:
    import torch

    # one process per core: threads inside a worker would only compete with the other workers
    torch.set_num_threads(1)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _remove_temporaries(out: Path) -> None:
    """Half-written files of a run that was killed (hidden names, ignored by the manifest
    anyway)."""
    for dirpath, _, names in os.walk(out):
        for name in names:
            if is_temporary(name) or (name.startswith(".") and TMP_MARK in name):
                (Path(dirpath) / name).unlink(missing_ok=True)


def _prune(out: Path, keep: set[str]) -> None:
    """Remove outputs of clips not prepared (failed now, or gone from the raw copy since an earlier
    run), so the manifest lists exactly the prepared clips."""
    for modality in ("audio", "text"):
        for p in (out / modality).glob("*.npy"):
            if p.stem not in keep:
                p.unlink()
    for d in (out / "visual").glob("*"):
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d)
