"""Text -> RoBERTa token ids and attention mask, int64 [2, max_len], from a LOCAL tokenizer
directory.

The tokenizer is the one `save_pretrained()` wrote (e.g. roberta-base's tokenizer files copied by
hand); nothing is downloaded. Texts are padded to max_len tokens and truncated to it, <s> ... </s>
included: 256 for MVSA, 128 for IEMOCAP and UR-FUNNY, as the thesis code base tokenises them
(`RawFormat.text_len`).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from mmhpc.data.prepare.raw import PrepareError


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str, truncation_side: str = "right"):
    """One tokenizer per process (each pool worker loads its own once)."""
    from transformers import AutoTokenizer

    if (
        not (Path(path) / "tokenizer_config.json").is_file()
        and not (Path(path) / "tokenizer.json").is_file()
    ):
        raise PrepareError(
            f"--tokenizer {path}: not a tokenizer directory (no tokenizer_config.json or "
            "tokenizer.json); save one with save_pretrained() and point at it"
        )
    return AutoTokenizer.from_pretrained(
        path, local_files_only=True, truncation_side=truncation_side
    )


def recipe(path: str, truncation_side: str, max_len: int) -> dict:
    tok = load_tokenizer(path, truncation_side)
    vocab = json.dumps(sorted(tok.get_vocab().items()))
    return {
        "tokenizer": str(path),
        "vocab": len(tok),
        "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        "max_len": max_len,
        "truncation_side": truncation_side,
    }


def token_ids(text: str, path: str, truncation_side: str, max_len: int) -> np.ndarray:
    """int64 [2, max_len]: input ids (padded with the tokenizer's pad id) and attention mask."""
    enc = load_tokenizer(path, truncation_side)(
        text, max_length=max_len, padding="max_length", truncation=True
    )
    return np.array([enc["input_ids"], enc["attention_mask"]], dtype=np.int64)
