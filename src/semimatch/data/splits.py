"""Labeled/unlabeled splits of a training set: balanced, long-tailed, a dataset's predefined
fold (STL-10), or given by the user.

A :class:`Split` holds indices into ``SSLDataset.train``. It is drawn once from a seed, saved as
``split.json`` in the run directory and reloaded on resume, so every run's labeled subset is
reproducible and auditable. All draws use ``numpy.random.default_rng(seed)`` and visit classes in
order 0..C-1, so a given (labels, arguments, seed) always gives the same indices.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SPLIT_KINDS",
    "Split",
    "balanced_split",
    "carve_validation",
    "fold_split",
    "given_split",
    "load_split",
    "long_tailed_split",
    "long_tailed_counts",
    "save_split",
    "split_summary",
]

SPLIT_KINDS = ("balanced", "long_tailed", "fold", "given")


@dataclass
class Split:
    """Indices into the training set: ``labeled`` (their labels are used) and ``unlabeled``.

    ``unlabeled`` may include the labeled indices (the papers' convention). ``meta`` holds
    per-kind details (per-class counts, the arguments of the draw) for auditing.
    """

    labeled: np.ndarray
    unlabeled: np.ndarray
    kind: str
    seed: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Labeled samples held out to choose the best checkpoint (``carve_validation``): neither
    #: their labels nor the samples themselves train.
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.labeled = _as_index_array(self.labeled, "labeled")
        self.unlabeled = _as_index_array(self.unlabeled, "unlabeled")
        self.val = _as_index_array(self.val, "val")
        if self.kind not in SPLIT_KINDS:
            raise ValueError(f"kind: must be one of {SPLIT_KINDS}, got {self.kind!r}")

    def validate(self, num_train: int) -> None:
        """Raise ``ValueError`` unless every index addresses one of ``num_train`` images."""
        for what, idx in (
            ("labeled", self.labeled),
            ("unlabeled", self.unlabeled),
            ("val", self.val),
        ):
            if idx.size and (idx.min() < 0 or idx.max() >= num_train):
                bad = int(idx.max()) if idx.max() >= num_train else int(idx.min())
                raise ValueError(
                    f"split: {what} index {bad} is outside the training set of {num_train} "
                    "images; was this split made for another dataset? Make a new split"
                )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the run directory's ``split.json`` schema)."""
        return {
            "labeled": self.labeled.tolist(),
            "unlabeled": self.unlabeled.tolist(),
            "seed": self.seed,
            "kind": self.kind,
            "meta": self.meta,
            "val": self.val.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Split:
        missing = [k for k in ("labeled", "unlabeled", "kind") if k not in d]
        if missing:
            raise ValueError(
                f"split: missing key(s) {missing}; expected {list(cls.__annotations__)}"
            )
        return cls(
            d["labeled"],
            d["unlabeled"],
            d["kind"],
            d.get("seed"),
            dict(d.get("meta", {})),
            d.get("val", []),
        )


def _as_index_array(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(
            f"split {what}: expected a 1-D list of integer indices, got {a.dtype} {a.shape}"
        )
    return a.astype(np.int64)


def _check_labels(labels: Any, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got {y.dtype} {y.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes: need at least 2 classes, got {num_classes}")
    bad = (y < -1) | (y >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels: label {int(y[i])} at index {i} is out of range for num_classes="
            f"{num_classes} (allowed: -1 = unknown, 0..{num_classes - 1})"
        )
    return y.astype(np.int64)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(seed)


def balanced_split(
    labels: Any,
    num_classes: int,
    num_labels: int,
    seed: int,
    include_labeled_in_unlabeled: bool = True,
) -> Split:
    """Draw ``num_labels / num_classes`` labeled images per class (reference: "Labeled subset").

    The unlabeled set is the whole training set (labeled images included, as in the papers)
    unless ``include_labeled_in_unlabeled=False``. Images with label -1 are never labeled.
    """
    y = _check_labels(labels, num_classes)
    seed = _check_seed(seed)
    if not isinstance(num_labels, (int, np.integer)) or num_labels <= 0:
        raise ValueError(f"num_labels: expected a positive integer, got {num_labels!r}")
    if num_labels % num_classes:
        lo = num_labels // num_classes * num_classes
        raise ValueError(
            f"num_labels: {num_labels} is not divisible by the {num_classes} classes (a balanced "
            f"split takes num_labels/C per class); use e.g. {lo or num_classes} or "
            f"{lo + num_classes}"
        )
    per_class = num_labels // num_classes
    counts = np.bincount(y[y >= 0], minlength=num_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        detail = ", ".join(f"class {c}: {counts[c]}" for c in short[:5])
        raise ValueError(
            f"num_labels: {num_labels} needs {per_class} labeled images per class but some "
            f"classes have fewer ({detail}); the most this dataset allows is "
            f"{int(counts.min()) * num_classes}"
        )
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(num_classes)]
    labeled = np.sort(np.concatenate(chosen))
    unlabeled = _unlabeled_rest(len(y), labeled, include_labeled_in_unlabeled)
    meta = {
        "num_labels": int(num_labels),
        "per_class": int(per_class),
        "num_classes": int(num_classes),
        "include_labeled_in_unlabeled": bool(include_labeled_in_unlabeled),
    }
    return Split(labeled, unlabeled, "balanced", seed, meta)


def _unlabeled_rest(n: int, labeled: np.ndarray, include: bool) -> np.ndarray:
    if include:
        return np.arange(n, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[labeled] = False
    return np.flatnonzero(mask).astype(np.int64)


def long_tailed_counts(
    head: int, gamma: float, num_classes: int, reverse: bool = False
) -> list[int]:
    """Per-class counts ``floor(head * gamma^(-c/(C-1)))`` (reference: "Imbalanced setting").

    ``reverse=True`` gives class c the count of class C-1-c. A 1e-9 slack inside the floor
    keeps exact values (e.g. 1500/100 = 15) from rounding down through float error.
    """
    counts = [
        math.floor(head * gamma ** (-c / (num_classes - 1)) + 1e-9) for c in range(num_classes)
    ]
    return counts[::-1] if reverse else counts


def long_tailed_split(
    labels: Any,
    num_classes: int,
    n1: int,
    m1: int,
    gamma: float,
    seed: int,
    reverse_unlabeled: bool = False,
) -> Split:
    """Long-tailed split: class c gets ``n_c`` labeled and ``m_c`` *other* unlabeled images.

    ``n_c = floor(n1 * gamma^(-c/(C-1)))`` and ``m_c = floor(m1 * gamma^(-c/(C-1)))``
    (reference, CIFAR-10-LT); with ``reverse_unlabeled`` ``m_c`` uses class ``C-1-c``'s
    exponent. Labeled and unlabeled sets are disjoint, as in the imbalanced-SSL literature.
    """
    y = _check_labels(labels, num_classes)
    seed = _check_seed(seed)
    for what, v in (("n1", n1), ("m1", m1)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{what}: expected a non-negative integer head size, got {v!r}")
    if n1 < 1:
        raise ValueError(f"n1: the head class needs at least one labeled image, got {n1}")
    if not gamma >= 1.0:
        raise ValueError(f"gamma: the imbalance ratio must be >= 1 (1 = balanced), got {gamma!r}")
    n_c = long_tailed_counts(n1, gamma, num_classes)
    m_c = long_tailed_counts(m1, gamma, num_classes, reverse=reverse_unlabeled)
    available = np.bincount(y[y >= 0], minlength=num_classes)
    short = [c for c in range(num_classes) if n_c[c] + m_c[c] > available[c]]
    if short:
        c = short[0]
        raise ValueError(
            f"n1/m1: class {c} needs {n_c[c]} labeled + {m_c[c]} unlabeled images but has "
            f"{available[c]} ({len(short)} classes short); lower n1 or m1"
        )
    rng = np.random.default_rng(seed)
    labeled, unlabeled = [], []
    for c in range(num_classes):
        perm = rng.permutation(np.flatnonzero(y == c))
        labeled.append(perm[: n_c[c]])
        unlabeled.append(perm[n_c[c] : n_c[c] + m_c[c]])
    meta = {
        "n1": int(n1),
        "m1": int(m1),
        "gamma": float(gamma),
        "reverse_unlabeled": bool(reverse_unlabeled),
        "labeled_per_class": n_c,
        "unlabeled_per_class": m_c,
        "num_classes": int(num_classes),
    }
    return Split(
        np.sort(np.concatenate(labeled)),
        np.sort(np.concatenate(unlabeled)),
        "long_tailed",
        seed,
        meta,
    )


def given_split(labels: Any, include_labeled_in_unlabeled: bool = True) -> Split:
    """The user's own labels: labeled = rows with ``label != -1``, unlabeled = all rows."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got {y.dtype} {y.shape}")
    if (y < -1).any():
        raise ValueError(f"labels: {int(y.min())} is not a label; use -1 for unlabeled rows")
    labeled = np.flatnonzero(y != -1).astype(np.int64)
    if labeled.size == 0:
        raise ValueError("labels: every label is -1; a given split needs some labeled images")
    unlabeled = _unlabeled_rest(len(y), labeled, include_labeled_in_unlabeled)
    meta = {"include_labeled_in_unlabeled": bool(include_labeled_in_unlabeled)}
    return Split(labeled, unlabeled, "given", None, meta)


def fold_split(
    folds: Sequence[Any],
    fold: int,
    num_train: int,
    include_labeled_in_unlabeled: bool = True,
) -> Split:
    """Label the training images of predefined fold ``fold`` (e.g. STL-10's ten folds of 1,000
    images, the FixMatch protocol); the unlabeled set is every training image, as the papers.
    """
    if not folds:
        raise ValueError("folds: this dataset defines no labeled folds")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)):
        raise ValueError(f"fold: expected an integer fold number, got {fold!r}")
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold: must be in 0..{len(folds) - 1}, got {fold}")
    labeled = np.unique(_as_index_array(folds[fold], f"fold {fold}"))
    if labeled.size == 0:
        raise ValueError(f"fold {fold} is empty")
    if labeled[0] < 0 or labeled[-1] >= num_train:
        bad = int(labeled[0]) if labeled[0] < 0 else int(labeled[-1])
        raise ValueError(
            f"fold {fold}: index {bad} is outside the training set of {num_train} images; "
            "the fold file does not belong to these training files"
        )
    unlabeled = _unlabeled_rest(num_train, labeled, include_labeled_in_unlabeled)
    meta = {
        "fold": int(fold),
        "num_folds": len(folds),
        "include_labeled_in_unlabeled": bool(include_labeled_in_unlabeled),
    }
    return Split(labeled, unlabeled, "fold", None, meta)


def carve_validation(
    split: Split,
    labels: Any,
    num_classes: int,
    size: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> Split:
    """Move a seeded, class-balanced ``size`` of ``split.labeled`` to ``split.val``.

    Class ``c`` gives ``size // C`` samples, and one more for the first ``size % C`` classes of a
    seeded class order (as equal as a size not divisible by C allows).  The validation samples
    leave the labeled set and the unlabeled pool: a checkpoint chosen on them must not have
    trained on them.  ``ValueError`` if a class would keep no labeled sample to train on (the
    class named by its ``class_names`` where given).
    """
    y = _check_labels(labels, num_classes)
    seed = _check_seed(seed)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"val_size: expected a positive integer, got {size!r}")
    rng = np.random.default_rng([seed, 2])  # its own stream: independent of the split's seed
    per_class = np.full(num_classes, size // num_classes, dtype=np.int64)
    per_class[rng.permutation(num_classes)[: size % num_classes]] += 1
    labeled_y = y[split.labeled]
    have = np.bincount(labeled_y[labeled_y >= 0], minlength=num_classes)
    short = np.flatnonzero(per_class >= have)
    if short.size:
        c = int(short[0])
        # A class is named as the user knows it ("sport"); by index where names are indices.
        name = class_names[c] if class_names is not None else str(c)
        named = f"class {c}" if name == str(c) else f"class {name!r}"
        raise ValueError(
            f"val_size: {size} validation samples take {int(per_class[c])} of the "
            f"{int(have[c])} labeled samples of {named} and would leave it none to train on; "
            "lower val_size "
            f"(at most {int((have - 1).clip(min=0).min()) * num_classes} keeps one per class) or "
            "label more samples"
        )
    chosen = [
        rng.permutation(split.labeled[labeled_y == c])[: per_class[c]] for c in range(num_classes)
    ]
    val = np.sort(np.concatenate(chosen)).astype(np.int64)
    meta = dict(split.meta, val_size=int(size), val_seed=seed, val_per_class=per_class.tolist())
    return Split(
        np.setdiff1d(split.labeled, val),
        np.setdiff1d(split.unlabeled, val),
        split.kind,
        split.seed,
        meta,
        val,
    )


def save_split(split: Split, path: str | os.PathLike) -> None:
    """Write ``split`` as JSON, atomically (a crash never leaves a half-written file)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".split-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(split.to_dict(), f, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_split(path: str | os.PathLike) -> Split:
    """Read a split written by :func:`save_split`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        with open(path) as f:
            d = json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON: {err}") from err
    if not isinstance(d, dict):
        raise ValueError(f"split file {path}: expected a JSON object, got {type(d).__name__}")
    try:
        return Split.from_dict(d)
    except ValueError as err:
        raise ValueError(f"split file {path}: {err}") from err


def split_summary(split: Split, labels: Sequence[int] | np.ndarray, num_classes: int) -> str:
    """One line for logs: kind, seed, sizes and labeled images per class."""
    y = np.asarray(labels, dtype=np.int64)
    per_class = np.bincount(y[split.labeled], minlength=num_classes)
    detail = f" {per_class.tolist()} per class" if num_classes <= 20 else ""
    how = f"fold {split.meta.get('fold')}" if split.kind == "fold" else f"seed {split.seed}"
    held = ""
    if len(split.val):
        held = (
            f", {len(split.val)} labeled held out for validation (val_size, seed "
            f"{split.meta.get('val_seed')}): {len(split.labeled)} labeled train"
        )
    return (
        f"{split.kind} split ({how}): {len(split.labeled)} labeled{detail}, "
        f"{len(split.unlabeled)} unlabeled{held}"
    )
