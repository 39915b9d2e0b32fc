"""The text tests' tiny BERT WordPiece tokenizer, built from a vocabulary written here (no
download, no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The tiny tokenizer's vocabulary: BERT's special tokens, some words and a suffix piece.
TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "the",
    "a",
    "an",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "run",
    "runs",
    "stock",
    "market",
    "goal",
    "team",
    "game",
    "win",
    "lose",
    "bank",
    "rates",
    "rise",
    "fall",
    "new",
    "old",
    "big",
    "small",
    "##s",
    "##ing",
    "!",
    ".",
    ",",
    "play",
]


def tiny_tokenizer(folder: Path) -> Any:
    """A BERT WordPiece tokenizer (lower-casing, BERT pre-tokenizer) from ``TINY_VOCAB``."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    return BertTokenizer.from_pretrained(str(folder))
