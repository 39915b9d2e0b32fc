"""Tiny text models and corpora for the text tests (``tiny_bert_dir`` in conftest.py is the
session's tiny BERT; tests that need their own variant call ``write_tiny_bert``)."""

from __future__ import annotations

from pathlib import Path

#: The WordPiece vocabulary of the tiny BERT (``tiny_bert_dir``): special tokens, then words.
TINY_BERT_VOCAB = [
    *("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "an", "of", "in", "on", "to"),
    *("is", "was", "and", "world", "sport", "business", "science", "news", "team", "game"),
    *("market", "price", "stock", "company", "win", "lose", "cat", "dog", "##s", "##ing", "##ed"),
]


def write_tiny_bert(
    folder: Path,
    num_layers: int = 2,
    seed: int = 0,
    dropout: float = 0.1,
    max_positions: int = 64,
) -> Path:
    """Save a randomly initialised tiny BERT (hidden 16, ``num_layers`` layers, 2 heads, BERT's
    hidden and attention ``dropout``, ``max_positions`` token positions) with
    ``save_pretrained`` and a WordPiece ``vocab.txt`` into ``folder``; nothing is downloaded."""
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=len(TINY_BERT_VOCAB),
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.BertModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(TINY_BERT_VOCAB) + "\n", encoding="utf-8")
    return folder


#: Words that make each class of the tiny text corpus (``write_text_corpus``); all are in
#: ``TINY_BERT_VOCAB``, so the tiny BERT tokenizes them without [UNK].
CORPUS_WORDS = {
    "world": ("world", "news", "price"),
    "sport": ("sport", "team", "game", "win", "lose"),
    "business": ("business", "company", "stock", "market"),
    "science": ("science", "cat", "dog"),
}
_FILLER = ("the", "a", "an", "of", "in", "on", "to", "is", "was", "and")


def text_corpus(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` short texts cycling through the 4 classes of ``CORPUS_WORDS``, and their labels:
    each text mixes class words and filler words (a separable, not trivial, task)."""
    import random

    rng = random.Random(seed)
    names = list(CORPUS_WORDS)
    texts, labels = [], []
    for i in range(n):
        c = names[i % len(names)]
        words = [rng.choice(CORPUS_WORDS[c] + _FILLER) for _ in range(rng.randint(3, 12))]
        texts.append(" ".join(words))
        labels.append(c)
    return texts, labels


def write_text_corpus(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A CSV ``text,label`` of ``text_corpus(n, seed)``."""
    import csv

    texts, labels = text_corpus(n, seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return path
