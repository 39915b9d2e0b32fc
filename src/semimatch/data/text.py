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

Labels: ``""``, ``None`` and ``-1`` mean unlabeled; other labels are class indices when every
one of them is a non-negative integer, else class names (sorted, unless ``class_names`` fixes
the order). Bad rows (an empty or non-string text, a label of the test set unknown to training,
a label that mixes names and numbers) raise a ``ValueError`` naming the file and row;
``skip_bad=True`` skips them instead and logs how many. Nothing is dropped silently.

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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from semimatch.data.sources import DatasetInfo, SampleSource, SSLDataset
from semimatch.data.text_readers import RawRow, read_rows, read_text_folder
from semimatch.log import logger

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TextEncoding",
    "TextSample",
    "TextSource",
    "TokenInput",
    "from_texts",
    "load_text",
    "load_tokenizer",
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
    """Make ``tokenizer`` the one :func:`load_tokenizer` returns for ``name`` in this process
    (a tokenizer built in memory, e.g. by a test, or one the engine already loaded)."""
    _TOKENIZERS[str(name)] = tokenizer


def load_tokenizer(name: str) -> Any:
    """The tokenizer called ``name``: a registered one, else ``semimatch.models.hf``'s
    ``load_tokenizer`` when it exists, else ``AutoTokenizer.from_pretrained`` (a local folder
    never touches the network; a missing one says where it looked)."""
    if name in _TOKENIZERS:
        return _TOKENIZERS[name]
    if not name:
        raise ValueError("this text dataset names no tokenizer; tokenize it first")
    try:  # the hf: backbones' loader, when present, says where it looked
        from semimatch.models.hf import load_tokenizer as hf_load_tokenizer
    except ImportError:
        hf_load_tokenizer = None
    if hf_load_tokenizer is not None:
        _TOKENIZERS[name] = hf_load_tokenizer(name)
        return _TOKENIZERS[name]
    from transformers import AutoTokenizer

    local = os.path.isdir(os.path.expanduser(name))
    try:
        tok = AutoTokenizer.from_pretrained(os.path.expanduser(name), local_files_only=local)
    except (OSError, ValueError) as err:
        where = f"the folder {name}" if local else f"the Hugging Face cache and hub for {name!r}"
        raise ValueError(f"tokenizer {name!r}: cannot load it from {where}: {err}") from err
    _TOKENIZERS[name] = tok
    return tok


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
    tokenizer ``info.tokenizer`` names, as training encoded its texts."""
    if isinstance(texts, str):
        raise ValueError("texts: expected a list of strings, got one string; wrap it in a list")
    texts = (
        list(np.asarray(texts, dtype=object).reshape(-1)) if not isinstance(texts, list) else texts
    )
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts: item {bad[0]} is a {type(texts[bad[0]]).__name__}, not a string")
    tok = load_tokenizer(info.tokenizer)
    enc = make_encoding(tok, info.max_length, info.tokenizer)
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


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
def _is_unlabeled(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v.strip() in ("", "-1")
    return not isinstance(v, bool) and isinstance(v, (int, np.integer)) and int(v) == -1


def _as_index(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


class _Rows:
    """Checked rows of one file or list: texts, raw labels, augmentations (bad rows raise or,
    with ``skip_bad``, are counted)."""

    def __init__(self, rows: list[RawRow], skip_bad: bool, what: str) -> None:
        self.texts: list[str] = []
        self.raw: list[Any] = []
        self.where: list[str] = []
        self.augs: list[tuple[str, ...]] = []
        self.skipped: list[str] = []
        for r in rows:
            problem = None
            if not isinstance(r.text, str):
                problem = f"the text is a {type(r.text).__name__}, not a string"
            elif not r.text.strip():
                problem = "empty text"
            elif any(not isinstance(a, str) or not a.strip() for a in r.augs):
                problem = "an empty or non-string augmentation"
            if problem:
                if not skip_bad:
                    raise ValueError(f"{r.where}: {problem}; fix the row or pass skip_bad=True")
                self.skipped.append(f"{r.where}: {problem}")
                continue
            self.texts.append(r.text)
            self.raw.append(r.label)
            self.where.append(r.where)
            self.augs.append(tuple(r.augs))
        if self.skipped:
            logger.warning(
                f"{what}: skipped {len(self.skipped)} bad row(s) (skip_bad), e.g. {self.skipped[0]}"
            )
        if not self.texts:
            raise ValueError(f"{what}: no texts")


def _classes_of(rows: list[_Rows], class_names: Sequence[str] | None) -> tuple[str, ...]:
    """Class names from the labeled rows of the training sets (module docstring)."""
    if class_names is not None:
        return tuple(str(c) for c in class_names)
    labeled = [(v, w) for r in rows for v, w in zip(r.raw, r.where) if not _is_unlabeled(v)]
    numeric = [(v, w) for v, w in labeled if _as_index(v) is not None]
    if numeric and len(numeric) < len(labeled):
        name = next((v, w) for v, w in labeled if _as_index(v) is None)
        raise ValueError(
            f"{name[1]}: label {name[0]!r} is a name but {numeric[0][1]} has the number "
            f"{numeric[0][0]!r}; use class names or class indices, not both (or pass class_names=)"
        )
    if numeric:
        return tuple(str(c) for c in range(max(_as_index(v) for v, _ in numeric) + 1))
    return tuple(sorted({str(v).strip() for v, _ in labeled}))


def _labels(rows: _Rows, classes: tuple[str, ...], numeric: bool | None, test: bool) -> np.ndarray:
    """Class indices of ``rows`` (``numeric``: the labels are indices, else names; with
    ``class_names`` given, ``numeric=None``: a name, else an index)."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(rows.raw), dtype=np.int64)
    for j, (v, w) in enumerate(zip(rows.raw, rows.where)):
        if _is_unlabeled(v):
            if test:
                raise ValueError(f"{w}: a test text without a label; every test text needs one")
            out[j] = -1
            continue
        idx = _as_index(v) if numeric is True else lookup.get(str(v).strip())
        if idx is None and numeric is None:
            idx = _as_index(v)
        if idx is None or not 0 <= idx < len(classes):
            which = "the test set" if test else "this file"
            raise ValueError(
                f"{w}: label {v!r} in {which} is unknown to training (classes: "
                f"{', '.join(classes)})"
            )
        out[j] = idx
    return out


def _read(
    path: str | os.PathLike, labeled: bool, text_column: str, label_column: str
) -> list[RawRow]:
    path = os.fspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return read_text_folder(path, labeled)
    return read_rows(path, text_column, label_column)


def _text_info(name: str, classes: tuple[str, ...]) -> DatasetInfo:
    if len(classes) < 2:
        raise ValueError(
            f"labels: need at least 2 classes, got {list(classes)}; label texts of each class"
        )
    return DatasetInfo(name, len(classes), classes, (), 2, (), (), False, kind="text")


def _dataset(
    train: _Rows,
    test: _Rows | None,
    unlabeled: _Rows | None,
    class_names: Sequence[str] | None,
    name: str,
) -> SSLDataset:
    classes = _classes_of([train], class_names)
    numeric: bool | None = None
    if class_names is None:
        numeric = all(_is_unlabeled(v) or _as_index(v) is not None for v in train.raw)
    y = _labels(train, classes, numeric, test=False)
    if not (y >= 0).any():
        raise ValueError(f"{name}: every text is unlabeled; label at least one text per class")

    def source(rows: _Rows, labels: np.ndarray) -> TextSource:
        return TextSource(rows.texts, labels, rows.augs if any(rows.augs) else None)

    tsrc = source(test, _labels(test, classes, numeric, test=True)) if test else None
    usrc = None
    if unlabeled is not None:
        uy = np.full(len(unlabeled.texts), -1, dtype=np.int64)  # ground truth is not used
        usrc = source(unlabeled, uy)
    return SSLDataset(_text_info(name, classes), source(train, y), tsrc, usrc)


def _carve_test(ds: SSLDataset, test_size: int, seed: int) -> SSLDataset:
    """Move a seeded class-balanced ``test_size`` of the labeled texts to the test set (the
    draw of :func:`~semimatch.data.splits.balanced_split`)."""
    from semimatch.data.splits import balanced_split

    if ds.test is not None:
        raise ValueError("test_size: the data has a test set already; drop test_size or test")
    c = ds.info.num_classes
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < c:
        raise ValueError(
            f"test_size: expected an integer >= {c} (one text per class), got {test_size!r}"
        )
    if test_size % c:
        raise ValueError(f"test_size: {test_size} is not divisible by the {c} classes")
    counts = np.bincount(ds.train.labels[ds.train.labels >= 0], minlength=c)
    if counts.min() <= test_size // c:
        raise ValueError(
            f"test_size: {test_size // c} test texts per class would leave class "
            f"{ds.info.class_names[int(counts.argmin())]!r} ({int(counts.min())} labeled texts) "
            "none to train on; lower test_size"
        )
    carve = balanced_split(ds.train.labels, c, test_size, seed, False)
    src: TextSource = ds.train  # type: ignore[assignment]

    def part(idx: np.ndarray) -> TextSource:
        augs = [src.augmentations[i] for i in idx] if src.augmentations else None
        return TextSource([src.texts[i] for i in idx], src.labels[idx], augs)

    return dataclasses.replace(ds, train=part(carve.unlabeled), test=part(carve.labeled))


def load_text(
    path: str | os.PathLike,
    test: str | os.PathLike | None = None,
    unlabeled: str | os.PathLike | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    test_size: int | None = None,
    test_seed: int = 0,
    skip_bad: bool = False,
    name: str = "text",
) -> SSLDataset:
    """A text dataset (``kind="text"``) from files or folders (module docstring).

    ``path``: the labeled pool - a CSV/TSV/JSONL/USB-JSON file (optionally gzipped) or a folder
    ``root/<class>/*.txt``; rows without a label join the unlabeled pool. ``test``: held-out
    labeled texts in the same forms (labels must be known to training); or ``test_size``: carve
    a class-balanced test set of that many texts out of ``path`` with ``test_seed``.
    ``unlabeled``: extra unlabeled texts (a file, whose labels are ignored, or a folder of
    ``.txt``). The texts are not tokenized yet: :func:`tokenize_dataset` does it once.
    """
    train = _Rows(_read(path, True, text_column, label_column), skip_bad, os.fspath(path))
    tst = None
    if test is not None:
        tst = _Rows(_read(test, True, text_column, label_column), skip_bad, os.fspath(test))
    unl = None
    if unlabeled is not None:
        unl = _Rows(
            _read(unlabeled, False, text_column, label_column), skip_bad, os.fspath(unlabeled)
        )
    ds = _dataset(train, tst, unl, class_names, name)
    if test_size is not None:
        ds = _carve_test(ds, test_size, test_seed)
    return ds


def from_texts(
    texts: Sequence[str],
    labels: Any,
    test_texts: Sequence[str] | None = None,
    test_labels: Any = None,
    name: str = "texts",
    class_names: Sequence[str] | None = None,
    *,
    augmentations: Sequence[Sequence[str]] | None = None,
    tokenizer: Any = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    strong: str | None = None,
) -> SSLDataset:
    """In-memory texts as a text :class:`SSLDataset` (the Python API's and the estimator's
    door). ``labels``: class indices with ``-1`` for unlabeled texts, or names with ``None``/
    ``""`` for unlabeled ones (module docstring); ``augmentations[i]``: precomputed strong views
    of ``texts[i]``. With ``tokenizer`` the dataset comes back tokenized
    (:func:`tokenize_dataset` with ``max_length`` and ``strong``)."""
    if isinstance(texts, str):
        raise ValueError("texts: expected a list of strings, got one string")
    texts = list(texts)
    labels = list(np.asarray(labels, dtype=object).reshape(-1))
    if len(labels) != len(texts):
        raise ValueError(f"labels: {len(labels)} labels for {len(texts)} texts")
    augs = [()] * len(texts) if augmentations is None else [tuple(a) for a in augmentations]
    if len(augs) != len(texts):
        raise ValueError(f"augmentations: {len(augs)} entries for {len(texts)} texts")
    rows = [RawRow(t, y, a, f"texts[{i}]") for i, (t, y, a) in enumerate(zip(texts, labels, augs))]
    tst = None
    if (test_texts is None) != (test_labels is None):
        raise ValueError("test_texts/test_labels: pass both or neither")
    if test_texts is not None:
        tl = list(np.asarray(test_labels, dtype=object).reshape(-1))
        if len(tl) != len(test_texts):
            raise ValueError(f"test_labels: {len(tl)} labels for {len(test_texts)} texts")
        tst = _Rows(
            [RawRow(t, y, (), f"test_texts[{i}]") for i, (t, y) in enumerate(zip(test_texts, tl))],
            False,
            "test_texts",
        )
    ds = _dataset(_Rows(rows, False, "texts"), tst, None, class_names, name)
    if tokenizer is not None:
        ds = tokenize_dataset(ds, tokenizer, max_length, strong=strong)
    return ds


def tokenize_dataset(
    dataset: SSLDataset,
    tokenizer: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
    *,
    name: str | None = None,
    strong: str | None = None,
) -> SSLDataset:
    """``dataset`` with every text tokenized once by ``tokenizer`` (any callable with the
    Hugging Face tokenizer interface), ``info.tokenizer``/``info.max_length`` recorded and the
    text views of :func:`~semimatch.data.text_views.text_views` (``strong``: the strong view's
    name; default: the precomputed augmentations when the data has them, else
    :data:`~semimatch.data.text_views.DEFAULT_STRONG`). ``name`` (default: the tokenizer's
    ``name_or_path``) is what :func:`load_tokenizer` finds it by, for prediction."""
    from semimatch.data.text_views import text_views

    if dataset.info.kind != "text":
        raise ValueError(f"tokenize_dataset: a {dataset.info.kind} dataset has no texts")
    name = name or str(getattr(tokenizer, "name_or_path", "") or "tokenizer")
    register_tokenizer(name, tokenizer)
    enc = make_encoding(tokenizer, max_length, name)

    def tok(src: Any) -> TextSource | None:
        return None if src is None else src.tokenize(tokenizer, enc)

    train, test, extra = tok(dataset.train), tok(dataset.test), tok(dataset.extra_unlabeled)
    has_augs = any(s is not None and s.has_augmentations for s in (train, extra))
    info = dataclasses.replace(dataset.info, tokenizer=name, max_length=int(max_length))
    views = text_views(strong, precomputed=has_augs)
    return dataclasses.replace(
        dataset, info=info, train=train, test=test, extra_unlabeled=extra, views=views
    )
