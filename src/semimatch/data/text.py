"""Text as a data modality: :class:`TextSource`, one-time tokenization and the text datasets.

* :func:`load_text` reads a file (:mod:`semimatch.data.text_readers`: CSV/TSV/JSONL, optionally
  gzipped, USB's NLP JSON with its ``aug_0``/``aug_1`` back-translations) or a folder
  ``root/<class>/*.txt``, with optional ``test`` and ``unlabeled`` files or folders, or carves a
  seeded class-balanced test set out of the file (``test_size``; AG News' 7,600 texts);
  ``load_dataset("text", root=..., test_dir=..., unlabeled_dir=...)`` calls it.
* :func:`from_texts` wraps in-memory lists of strings (labels: ints with ``-1`` = unlabeled, or
  names with ``None``/``""`` = unlabeled).
* :func:`tokenize_dataset` tokenizes every text **once** with a Hugging Face tokenizer (any
  callable with its interface) and caches the ids as flat int32 arrays; training, evaluation
  and prediction then only index and pad. Until then a text source holds strings only.

Labels: ``""``, ``None`` and ``-1`` mean unlabeled; other labels are class indices when they
are exactly the integers 0..C-1, else class names (sorted, numerically for integer names, unless
``class_names`` fixes the order; ``label_kind`` says which instead, see
:mod:`semimatch.data.text_datasets`). Bad rows (an empty or non-string text, undecodable bytes,
a label of the test set unknown to training, a label that mixes names and numbers) raise a
``ValueError`` naming the file and row; ``skip_corrupt=True`` skips them instead and logs how
many. Nothing is dropped silently.

Batches (:func:`stack_texts`): int64 ``(N, 2, L)``, row ``[:, 0]`` the input ids and
``[:, 1]`` the attention mask, ``L`` the longest sequence of the batch (special tokens
included) capped by ``max_length`` - dynamic padding. One tensor rather than two so the step
concatenates the labeled, weak and strong views along dim 0 as it does images: the training
stream pads the three views of a step to one common ``L`` (:func:`stack_text_views`). Text
models take this packed tensor (``models.hf.HFClassifier`` does); :class:`TokenInput` adapts a
module whose forward takes ``(input_ids, attention_mask)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from semimatch.data.sources import DatasetInfo, SampleSource, SSLDataset, TextSpec

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TextEncoding",
    "TextSample",
    "TextSource",
    "TokenInput",
    "has_augmentations",
    "tokenizer_named",
    "register_tokenizer",
    "stack_text_views",
    "stack_texts",
    "texts_to_model_input",
    "tokenize_dataset",
]

#: Tokens per text (special tokens included) unless told otherwise; USB uses 512, a CPU run
#: rarely needs more than 128 (AG News: 99% of texts are shorter).
DEFAULT_MAX_LENGTH = 128


# --------------------------------------------------------------------------------------------
# Tokenized samples
# --------------------------------------------------------------------------------------------
class TextSample(NamedTuple):
    """One tokenized text: content ids without special tokens (int32, truncated to the
    encoding's content length), where each word starts in them (int32, ascending; a word is
    the tokenizer's pre-tokenized word, or each token for tokenizers without word ids) and the
    precomputed strong views' content ids (USB's ``aug_0``/``aug_1``; may be empty)."""

    ids: np.ndarray
    word_starts: np.ndarray
    augs: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class TextEncoding:
    """How content ids become a model sequence: ``prefix + content + suffix`` (e.g. BERT's
    ``[CLS] ... [SEP]``), at most ``max_length`` tokens, padded with ``pad_id``."""

    name: str
    max_length: int
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    pad_id: int

    @property
    def content_length(self) -> int:
        """Content tokens that fit next to the special tokens."""
        return self.max_length - len(self.prefix) - len(self.suffix)


class _Ragged:
    """Variable-length int32 sequences as one flat array + offsets (cheap to pickle)."""

    def __init__(self, seqs: Sequence[Any]) -> None:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        flat = [np.asarray(s, dtype=np.int32) for s in seqs]
        self.flat = np.concatenate(flat) if flat else np.zeros(0, np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]


class TextSource(SampleSource):
    """Texts with int64 labels (``-1`` = unknown) and optional precomputed augmentations.

    ``texts[i]`` is a string; ``augmentations[i]`` a tuple of strings (USB's back-translations,
    kept as strong views). After :meth:`tokenize` (a new source) ``source[i]`` is a
    :class:`TextSample` and ``encoding`` says how to assemble and pad it.
    """

    kind: ClassVar[str] = "text"
    dtype: ClassVar[np.dtype] = np.dtype(object)

    def __init__(
        self,
        texts: Sequence[str],
        labels: Any,
        augmentations: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.texts = [str(t) for t in texts]
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.labels) != len(self.texts):
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.texts)} texts")
        if augmentations is not None and len(augmentations) != len(self.texts):
            raise ValueError(
                f"augmentations: {len(augmentations)} entries for {len(self.texts)} texts"
            )
        self.augmentations = None if augmentations is None else [tuple(a) for a in augmentations]
        self.encoding: TextEncoding | None = None
        self._ids: _Ragged | None = None
        self._starts: _Ragged | None = None
        self._augs: _Ragged | None = None
        self._aug_offsets: np.ndarray | None = None

    @property
    def has_augmentations(self) -> bool:
        """Whether some text brings precomputed strong views."""
        return bool(self.augmentations) and any(self.augmentations)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return ()

    def __getitem__(self, i: int) -> TextSample:
        if self._ids is None:
            raise ValueError(
                "this text source is not tokenized yet; call semimatch.data.tokenize_dataset"
                "(dataset, tokenizer) (the engine does it with the backbone's tokenizer)"
            )
        i = int(i)
        augs: tuple[np.ndarray, ...] = ()
        if self._augs is not None:
            a, b = self._aug_offsets[i], self._aug_offsets[i + 1]
            augs = tuple(self._augs[j] for j in range(a, b))
        return TextSample(self._ids[i], self._starts[i], augs)

    def gather(self, indices: Sequence[int] | np.ndarray) -> list[TextSample]:  # type: ignore[override]
        """The tokenized samples at ``indices`` (a list: texts differ in length)."""
        return [self[int(i)] for i in np.asarray(indices, dtype=np.int64)]

    def tokenize(self, tokenizer: Any, encoding: TextEncoding) -> TextSource:
        """A tokenized copy of this source (texts and augmentations encoded once)."""
        out = TextSource(self.texts, self.labels, self.augmentations)
        ids, starts = encode_texts(tokenizer, self.texts, encoding)
        out._ids, out._starts, out.encoding = _Ragged(ids), _Ragged(starts), encoding
        if self.has_augmentations:
            flat_augs = [t for augs in self.augmentations for t in augs]
            counts = [len(a) for a in self.augmentations]
            out._aug_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            out._augs = _Ragged(encode_texts(tokenizer, flat_augs, encoding)[0])
        return out


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------
_TOKENIZERS: dict[str, Any] = {}


def register_tokenizer(name: str, tokenizer: Any) -> None:
    """Make ``tokenizer`` the one :func:`tokenizer_named` returns for ``name`` in this process
    (a tokenizer built in memory, e.g. by a test, or one the engine already loaded)."""
    _TOKENIZERS[str(name)] = tokenizer


def tokenizer_named(name: str) -> Any:
    """The tokenizer a text dataset names (``info.tokenizer``): the one registered under
    ``name`` in this process (:func:`register_tokenizer`), else the one
    :func:`semimatch.models.hf.load_tokenizer` loads from that name or folder (a local folder
    never touches the network; a missing one says where it looked), kept for the next call."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if not name:
        raise ValueError("this text dataset names no tokenizer; tokenize it first")
    from semimatch.models.hf import load_tokenizer

    _TOKENIZERS[name] = load_tokenizer(name)
    return _TOKENIZERS[name]


def _ids_of(out: Any) -> list[list[int]]:
    ids = out["input_ids"] if not hasattr(out, "input_ids") else out.input_ids
    return [list(map(int, s)) for s in ids]


def make_encoding(tokenizer: Any, max_length: int, name: str) -> TextEncoding:
    """The special tokens ``tokenizer`` adds around a text, found by encoding one word with and
    without them, and its pad id (0 when it has none)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise ValueError(f"max_length: expected an integer >= 3, got {max_length!r}")
    (full,) = _ids_of(tokenizer(["a"]))
    (plain,) = _ids_of(tokenizer(["a"], add_special_tokens=False))
    at = next(
        (i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None
    )
    if not plain or at is None:
        raise ValueError(
            f"tokenizer {name!r}: cannot find the text between its special tokens ({full} vs "
            f"{plain}); pass a Hugging Face tokenizer"
        )
    pad = getattr(tokenizer, "pad_token_id", None)
    enc = TextEncoding(
        name, int(max_length), tuple(full[:at]), tuple(full[at + len(plain) :]), int(pad or 0)
    )
    if enc.content_length < 1:
        raise ValueError(f"max_length: {max_length} leaves no room next to the special tokens")
    return enc


def encode_texts(
    tokenizer: Any, texts: Sequence[str], encoding: TextEncoding, chunk: int = 2048
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Content ids (truncated to ``encoding.content_length``) and word starts of ``texts``.

    Word starts come from the tokenizer's ``word_ids`` (fast tokenizers); without them every
    token is a word.
    """
    ids_out: list[np.ndarray] = []
    starts_out: list[np.ndarray] = []
    cap = encoding.content_length
    for a in range(0, len(texts), chunk):
        part = list(texts[a : a + chunk])
        out = tokenizer(part, add_special_tokens=False)
        for j, seq in enumerate(_ids_of(out)):
            ids = np.asarray(seq[:cap], dtype=np.int32)
            try:
                words = out.word_ids(j)[: len(ids)]
            except (AttributeError, ValueError, TypeError):
                words = None
            if words is None or any(w is None for w in words):
                starts = np.arange(len(ids), dtype=np.int32)
            else:
                w = np.asarray(words)
                starts = np.flatnonzero(np.r_[True, w[1:] != w[:-1]]).astype(np.int32)
                starts = starts[: len(ids)] if len(ids) else starts[:0]
            ids_out.append(ids)
            starts_out.append(starts)
    return ids_out, starts_out


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
def _content(sample: Any) -> np.ndarray:
    return sample.ids if isinstance(sample, TextSample) else np.asarray(sample)


def stack_text_views(
    groups: Sequence[Sequence[Any]], encoding: TextEncoding | None
) -> list[torch.Tensor]:
    """Each group of samples (content id arrays or :class:`TextSample`, the original text) as
    an int64 ``(n, 2, L)`` tensor (module docstring), all padded to one common ``L``: the
    longest assembled sequence over the groups, at most ``max_length``."""
    if encoding is None:
        raise ValueError("text samples need a tokenized source (tokenize_dataset) to be batched")
    cap = encoding.content_length
    pre = np.asarray(encoding.prefix, np.int64)
    suf = np.asarray(encoding.suffix, np.int64)
    seqs = [[np.concatenate([pre, _content(s)[:cap], suf]) for s in g] for g in groups]
    longest = max((len(s) for g in seqs for s in g), default=len(pre) + len(suf))
    out = []
    for g in seqs:
        x = torch.full((len(g), 2, longest), encoding.pad_id, dtype=torch.int64)
        x[:, 1] = 0
        for i, s in enumerate(g):
            x[i, 0, : len(s)] = torch.from_numpy(s)
            x[i, 1, : len(s)] = 1
        out.append(x)
    return out


def stack_texts(samples: Sequence[Any], encoding: TextEncoding | None) -> torch.Tensor:
    """One batch of text samples as int64 ``(N, 2, L)`` padded to its own longest sequence."""
    return stack_text_views([samples], encoding)[0]


def texts_to_model_input(texts: Any, info: DatasetInfo) -> torch.Tensor:
    """Raw strings -> the int64 ``(N, 2, L)`` batch a text model takes, tokenized with the
    tokenizer ``info.spec.tokenizer`` names, as training encoded its texts."""
    if isinstance(texts, str):
        raise ValueError("texts: expected a list of strings, got one string; wrap it in a list")
    texts = (
        list(np.asarray(texts, dtype=object).reshape(-1)) if not isinstance(texts, list) else texts
    )
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts: item {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string")
    tok = tokenizer_named(info.spec.tokenizer)
    enc = make_encoding(tok, info.spec.max_length, info.spec.tokenizer)
    return stack_texts(encode_texts(tok, texts, enc)[0], enc)


class TokenInput(nn.Module):
    """Wrap ``model`` (taking ``(input_ids, attention_mask)``) so it takes the packed int64
    ``(N, 2, L)`` text batch; ``model`` stays the ``model`` attribute (checkpoint keys
    ``model.*``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != 2:
            raise ValueError(f"TokenInput: expected an (N, 2, L) token batch, got {tuple(x.shape)}")
        return self.model(x[:, 0], x[:, 1])


def has_augmentations(dataset: SSLDataset) -> bool:
    """Whether the training texts bring precomputed strong views (USB's ``aug_0``/``aug_1``)."""
    sources = (dataset.train, dataset.extra_unlabeled)
    return any(getattr(s, "has_augmentations", False) for s in sources if s is not None)


def tokenize_dataset(
    dataset: SSLDataset,
    tokenizer: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    name: str | None = None,
    strong: str | None = None,
) -> SSLDataset:
    """``dataset`` with every text tokenized once by ``tokenizer`` (any callable with the
    Hugging Face tokenizer interface), ``info.spec`` (tokenizer, max_length) recorded and the
    text views of :func:`~semimatch.data.text_views.text_views` (``strong``: the strong view's
    name; default: the precomputed augmentations when the data has them, else
    :data:`~semimatch.data.text_views.DEFAULT_STRONG`). ``name`` (default: the tokenizer's
    ``name_or_path``) is what :func:`tokenizer_named` finds it by, for prediction."""
    from semimatch.data.text_views import text_views

    if dataset.info.kind != "text":
        raise ValueError(f"tokenize_dataset: a {dataset.info.kind} dataset has no texts")
    name = name or str(getattr(tokenizer, "name_or_path", "") or "tokenizer")
    register_tokenizer(name, tokenizer)
    enc = make_encoding(tokenizer, max_length, name)

    def tok(src: Any) -> TextSource | None:
        return None if src is None else src.tokenize(tokenizer, enc)

    train, test, extra = tok(dataset.train), tok(dataset.test), tok(dataset.extra_unlabeled)
    has_augs = has_augmentations(dataclasses.replace(dataset, train=train, extra_unlabeled=extra))
    info = dataclasses.replace(dataset.info, spec=TextSpec(name, int(max_length)))
    views = text_views(strong, precomputed=has_augs)
    return dataclasses.replace(
        dataset, info=info, train=train, test=test, extra_unlabeled=extra, views=views,
        val=tok(dataset.val),
    )  # fmt: skip
