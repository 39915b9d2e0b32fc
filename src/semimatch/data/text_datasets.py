"""Text datasets: :func:`load_text` (files and folders) and :func:`from_texts` (in-memory lists).

The readers (:mod:`semimatch.data.text_readers`) give raw rows; this module turns them into an
:class:`~semimatch.data.sources.SSLDataset` of :class:`~semimatch.data.text.TextSource` s:
labels ("", None and -1 are unlabeled; all non-negative integers are class indices, else class
names), rows checked with the file and row named, and an optional seeded class-balanced test set
carved out of the file.  See :mod:`semimatch.data.text` for the rules and the batch format.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from semimatch.data.sources import DatasetInfo, SSLDataset
from semimatch.data.text import DEFAULT_MAX_LENGTH, TextSource, tokenize_dataset
from semimatch.data.text_readers import RawRow, read_rows, read_text_folder
from semimatch.log import logger

__all__ = ["from_texts", "load_text"]


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


def usb_folder(
    path: str | os.PathLike, test: str | os.PathLike | None, test_size: int | None = None
) -> tuple[str | os.PathLike, str | os.PathLike | None]:
    """``(train.json, test.json)`` of USB's NLP folder ``data/<dataset>/`` (``test.json`` unless
    ``test`` or ``test_size`` is given); any other path as it is."""
    folder = os.path.expanduser(path)
    if not os.path.isfile(os.path.join(folder, "train.json")):
        return path, test
    if test is None and test_size is None:
        test = os.path.join(folder, "test.json")
        if not os.path.isfile(test):
            raise ValueError(
                f"{folder}: a USB NLP folder (it holds train.json) needs its test.json too; "
                "add it, or pass test_dir (--test-dir) or test_size (--test-size)"
            )
    return os.path.join(folder, "train.json"), test


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
    A folder holding ``train.json`` is USB's NLP folder ``data/<dataset>/`` (the USB NLP
    presets): ``train.json`` is the pool, ``test.json`` the test set (``dev.json`` is unused).
    """
    path, test = usb_folder(path, test, test_size)
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
