"""Text datasets: :func:`load_text` (files and folders) and :func:`from_texts` (in-memory lists).

The readers (:mod:`semimatch.data.text_readers`) give raw rows; this module turns them into an
:class:`~semimatch.data.sources.SSLDataset` of :class:`~semimatch.data.text.TextSource` s:
labels ("", None and -1 are unlabeled; the others read as ``label_kind`` says, below), rows
checked with the file and row named, and an optional seeded class-balanced test set carved out
of the file.  See :mod:`semimatch.data.text` for the batch format.

``label_kind``: ``"index"`` - labels are class indices 0..C-1 (every class labeled at least
once); ``"name"`` - labels are class names (the integer 3 is the class "3"); ``None`` (auto) -
indices when the training labels are exactly the integers 0..C-1, else names, so AG News'
1..4 are four classes named "1".."4", never five with an empty class "0" (a mix of integers
and other names is refused: say which with ``label_kind``; so is a column of free text or IDs,
``FREE_TEXT_CLASSES``). With ``class_names`` given (a
trained run's classes) labels are names unless ``label_kind="index"``: an integer matches a
class only by its name, so integer labels never silently index a run's named classes. The
choice is :attr:`SSLDataset.label_kind` (a run records it in ``config.json``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from semimatch.data.sources import DatasetInfo, SSLDataset, TextSpec
from semimatch.data.text import DEFAULT_MAX_LENGTH, TextSource, tokenize_dataset
from semimatch.data.text_readers import RawRow, is_decoded, read_rows, read_text_folder
from semimatch.log import logger

__all__ = ["TEXT_FILE_OPTIONS", "LabelKind", "from_texts", "label_reason", "load_text"]

#: How labels are read: class indices 0..C-1 or class names (None: decided from the labels).
LabelKind = Literal["index", "name"]
#: The keywords of :func:`load_text` that are config fields of ``dataset='text'`` (how to read
#: its files).
TEXT_FILE_OPTIONS = (
    "text_column",
    "label_column",
    "header",
    "label_kind",
    "test_size",
    "test_seed",
)


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


def _index_or_none(v: Any) -> int | None:
    """``v`` as a class index (a non-negative integer), else None."""
    i = _as_index(v)
    return i if i is not None and i >= 0 else None


def _label_name(v: Any) -> str:
    """The class name of label ``v``: an integer (``3``, ``"03"``, ``3.0``) is ``"3"``."""
    i = _as_index(v)
    return str(i) if i is not None else str(v).strip()


def _sorted_names(names: set[str]) -> tuple[str, ...]:
    """Class names in order: numerically when every name is an integer ("2" before "10")."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def _span(values: Sequence[int]) -> str:
    values = sorted(set(values))
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


class _Rows:
    """Checked rows of one file or list: texts, raw labels, augmentations (bad rows raise or,
    with ``skip_corrupt``, are counted)."""

    def __init__(self, rows: list[RawRow], skip_corrupt: bool, what: str) -> None:
        self.texts: list[str] = []
        self.raw: list[Any] = []
        self.where: list[str] = []
        self.augs: list[tuple[str, ...]] = []
        self.skipped: list[str] = []
        for r in rows:
            problem = None
            if not isinstance(r.text, str):
                problem = f"the text is a {type(r.text).__name__}, not a string"
            elif not all(is_decoded(v) for v in (r.text, r.label, *r.augs)):
                problem = "undecodable bytes (not UTF-8)"
            elif not r.text.strip():
                problem = "empty text"
            elif any(not isinstance(a, str) or not a.strip() for a in r.augs):
                problem = "an empty or non-string augmentation"
            if problem:
                if not skip_corrupt:
                    raise ValueError(f"{r.where}: {problem}; fix the row or pass skip_corrupt=True")
                self.skipped.append(f"{r.where}: {problem}")
                continue
            self.texts.append(r.text)
            self.raw.append(r.label)
            self.where.append(r.where)
            self.augs.append(tuple(r.augs))
        if self.skipped:
            logger.warning(
                f"{what}: skipped {len(self.skipped)} bad row(s) (skip_corrupt), e.g. "
                f"{self.skipped[0]}"
            )
        if not self.texts:
            raise ValueError(f"{what}: no texts")


def _classes_of(
    rows: _Rows, class_names: Sequence[str] | None, label_kind: LabelKind | None
) -> tuple[tuple[str, ...], LabelKind]:
    """Class names and how labels read (module docstring), from the training rows' labels."""
    if label_kind not in (None, "index", "name"):
        raise ValueError(f"label_kind: expected 'index', 'name' or None (auto), got {label_kind!r}")
    if class_names is not None:
        return tuple(str(c) for c in class_names), label_kind or "name"
    labeled = [(v, w, _index_or_none(v)) for v, w in zip(rows.raw, rows.where)]
    labeled = [x for x in labeled if not _is_unlabeled(x[0])]
    if label_kind is None:
        _check_looks_like_classes(labeled)
    names = [x for x in labeled if x[2] is None]
    present = {i for _, _, i in labeled if i is not None}
    if label_kind == "name" or not labeled:
        return _sorted_names({_label_name(v) for v, _, _ in labeled}), "name"
    if label_kind == "index":
        if names:
            raise ValueError(
                f"{names[0][1]}: label {names[0][0]!r} is not a class index (label_kind=index "
                "reads labels as integers 0..C-1); pass label_kind='name' to read them as class "
                "names"
            )
        missing = [c for c in range(max(present) + 1) if c not in present]
        if missing:
            raise ValueError(
                f"labels: class index {missing[0]} has no labeled text (the labels are "
                f"{_span(list(present))}; label_kind=index reads them as indices 0..C-1); "
                "pass label_kind='name' to read them as class names"
            )
        return tuple(str(c) for c in range(max(present) + 1)), "index"
    if names and present:
        number = next(x for x in labeled if x[2] is not None)
        raise ValueError(
            f"{names[0][1]}: label {names[0][0]!r} is a name but {number[1]} has the number "
            f"{number[0]!r}; use class names or class indices, not both, or pass "
            "label_kind='name' to read every label as a class name"
        )
    if present and present == set(range(len(present))):
        return tuple(str(c) for c in range(len(present))), "index"
    return _sorted_names({_label_name(v) for v, _, _ in labeled}), "name"


#: Auto labels refuse a column with more distinct values than this and than half its labeled
#: rows: a text or ID column chosen as the label (``--label-column text``) would otherwise
#: train one class per text.  ``label_kind`` given reads any column.
FREE_TEXT_CLASSES = 100


def _check_looks_like_classes(labeled: list[tuple[Any, str, int | None]]) -> None:
    distinct = {_label_name(v) for v, _, _ in labeled}
    if len(distinct) > FREE_TEXT_CLASSES and 2 * len(distinct) > len(labeled):
        shown = ", ".join(repr(v if len(v) <= 24 else v[:21] + "...") for v in sorted(distinct)[:2])
        raise ValueError(
            f"{labeled[0][1]}: label_column holds {len(distinct)} distinct values in "
            f"{len(labeled)} labeled rows (e.g. {shown}): free text or IDs, not classes "
            f"(refused above {FREE_TEXT_CLASSES} classes with more than one class per two "
            "labeled rows); name the column of classes with label_column=, or pass "
            f"label_kind='name' if these are {len(distinct)} classes"
        )


def label_reason(kind: LabelKind, class_names: Sequence[str]) -> str:
    """Why labels read as ``kind`` (what a run records in ``config.json``'s ``auto``)."""
    if kind == "index":
        return f"the labels are exactly the integers 0..{len(class_names) - 1}: class indices"
    if class_names and all(n.lstrip("-").isdigit() for n in class_names):
        return (
            f"the integer labels {_span([int(n) for n in class_names])} are not 0..C-1: read "
            "as class names"
        )
    return "the labels are names"


def _labels(
    rows: _Rows, classes: tuple[str, ...], kind: LabelKind, test: bool, given: bool
) -> np.ndarray:
    """Class indices of ``rows``, whose labels are indices or names (``kind``); ``given``:
    ``classes`` came from the caller (a trained run's), not from these labels."""
    lookup = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(rows.raw), dtype=np.int64)
    for j, (v, w) in enumerate(zip(rows.raw, rows.where)):
        if _is_unlabeled(v):
            if test:
                raise ValueError(f"{w}: a test text without a label; every test text needs one")
            out[j] = -1
            continue
        if kind == "index":
            idx = _as_index(v)
        else:
            idx = lookup.get(str(v).strip(), lookup.get(_label_name(v)))
        if idx is None or not 0 <= idx < len(classes):
            shown = ", ".join(classes)
            if test:
                problem = f"in the test set is unknown to training (classes: {shown})"
            elif kind == "index":
                problem = f"is not a class index 0..{len(classes) - 1} (classes: {shown})"
            elif given:
                problem = f"is not one of the classes ({shown}); label the texts with these names"
            else:
                problem = f"is unknown (classes: {shown})"
            raise ValueError(f"{w}: label {v!r} {problem}")
        out[j] = idx
    return out


def _read(
    path: str | os.PathLike,
    labeled: bool,
    text_column: str,
    label_column: str,
    header: bool,
    skip_corrupt: bool,
) -> list[RawRow]:
    path = os.fspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return read_text_folder(path, labeled, skip_corrupt)
    label = label_column if labeled else None  # an unlabeled file's labels are not read
    return read_rows(path, text_column, label, header=header, skip_corrupt=skip_corrupt)


def _text_info(name: str, classes: tuple[str, ...]) -> DatasetInfo:
    if len(classes) < 2:
        raise ValueError(
            f"labels: need at least 2 classes, got {list(classes)}; label texts of each class"
        )
    return DatasetInfo(name, len(classes), classes, TextSpec())


def _dataset(
    train: _Rows,
    test: _Rows | None,
    unlabeled: _Rows | None,
    class_names: Sequence[str] | None,
    name: str,
    label_kind: LabelKind | None = None,
) -> SSLDataset:
    classes, kind = _classes_of(train, class_names, label_kind)
    given = class_names is not None
    y = _labels(train, classes, kind, test=False, given=given)
    if not (y >= 0).any():
        raise ValueError(f"{name}: every text is unlabeled; label at least one text per class")

    def source(rows: _Rows, labels: np.ndarray) -> TextSource:
        return TextSource(rows.texts, labels, rows.augs if any(rows.augs) else None)

    tsrc = source(test, _labels(test, classes, kind, test=True, given=given)) if test else None
    usrc = None
    if unlabeled is not None:
        uy = np.full(len(unlabeled.texts), -1, dtype=np.int64)  # ground truth is not used
        usrc = source(unlabeled, uy)
    info = _text_info(name, classes)
    decided = None if given else kind  # with classes given, the labels only matched them
    return SSLDataset(info, source(train, y), tsrc, usrc, label_kind=decided)


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
    header: bool = True,
    class_names: Sequence[str] | None = None,
    label_kind: LabelKind | None = None,
    test_size: int | None = None,
    test_seed: int = 0,
    skip_corrupt: bool = False,
    skip_bad: bool | None = None,
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
    ``header=False``: CSV/TSV files have no header row; ``text_column``/``label_column`` are
    then 0-based positions (default: label 0, text 1). ``label_kind``: module docstring.
    ``skip_corrupt``: skip bad rows (empty texts, undecodable bytes) with a count instead of
    stopping (``skip_bad`` is its former name).
    """
    skip = bool(skip_corrupt if skip_bad is None else skip_bad)
    path, test = usb_folder(path, test, test_size)
    given = [os.path.expanduser(p) for p in (path, test, unlabeled) if p is not None]
    if not header and all(os.path.isdir(p) for p in given):
        raise ValueError(
            f"header=False applies to CSV/TSV files; {os.fspath(path)} is a folder of .txt files"
        )
    reading = (text_column, label_column, header, skip)
    train = _Rows(_read(path, True, *reading), skip, os.fspath(path))
    tst = None
    if test is not None:
        tst = _Rows(_read(test, True, *reading), skip, os.fspath(test))
    unl = None
    if unlabeled is not None:
        unl = _Rows(_read(unlabeled, False, *reading), skip, os.fspath(unlabeled))
    ds = _dataset(train, tst, unl, class_names, name, label_kind)
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
    label_kind: LabelKind | None = None,
) -> SSLDataset:
    """In-memory texts as a text :class:`SSLDataset` (the Python API's and the estimator's
    door). ``labels``: class indices with ``-1`` for unlabeled texts, or names with ``None``/
    ``""`` for unlabeled ones, read as ``label_kind`` says (module docstring: by default
    indices only when they are exactly 0..C-1; with ``class_names``, names unless
    ``label_kind="index"``); ``augmentations[i]``: precomputed strong views of ``texts[i]``.
    With ``tokenizer`` the dataset comes back tokenized (:func:`tokenize_dataset` with
    ``max_length`` and ``strong``)."""
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
    ds = _dataset(_Rows(rows, False, "texts"), tst, None, class_names, name, label_kind)
    if tokenizer is not None:
        ds = tokenize_dataset(ds, tokenizer, max_length, strong=strong)
    return ds
