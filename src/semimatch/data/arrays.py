"""In-memory arrays (scikit-learn convention) as datasets: images and feature vectors.

* :func:`from_arrays`: images ``(N, H, W[, C])`` -> an image dataset (``kind="image"``);
* :func:`from_features`: feature vectors ``(N, D)`` -> a feature dataset (``kind="features"``)
  of standardised float32 vectors, trained on directly (no image pipeline) with the feature
  views of :mod:`semimatch.data.views`.

Two constructors rather than one that guesses from the shape: a 2-D array of small integers
is as likely a batch of flattened images as a table of features, and the two get different
views, models and normalisation. ``from_arrays`` refuses 2-D input and names ``from_features``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from semimatch.data.sources import (
    ArraySource,
    DatasetInfo,
    FeatureSource,
    FeatureSpec,
    SSLDataset,
    check_every_class_labeled,
    check_labels,
    info_for_source,
)

__all__ = ["from_arrays", "from_features", "standardize", "to_feature_matrix", "to_uint8_images"]


def to_uint8_images(images: Any, what: str = "images") -> np.ndarray:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` (uint8 0..255, other ints in 0..255 or float in
    [0, 1]) as a contiguous uint8 ``(N, H, W, C)`` array; ``what`` names the argument in errors.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{what}: expected shape (N, H, W) or (N, H, W, C), got {x.shape}; flattened "
            "images must be reshaped, e.g. X.reshape(-1, 8, 8) (for feature vectors (N, D) use "
            "from_features)"
        )
    if x.shape[3] not in (1, 3):
        hint = (
            "; it looks channels-first - pass images.transpose(0, 2, 3, 1)"
            if x.shape[1] in (1, 3)
            else ""
        )
        raise ValueError(
            f"{what}: channel axis (last) must have 1 or 3 entries, got {x.shape}{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no images")
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise ValueError(
                f"{what}: float images must lie in [0, 1] (got {x.min():.3g}..{x.max():.3g}); "
                "pass uint8 0..255 or divide by 255"
            )
        return np.ascontiguousarray(np.rint(x * 255.0).astype(np.uint8))
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"{what}: integer pixel values must lie in 0..255, got {x.min()}..{x.max()}"
            )
        return np.ascontiguousarray(x.astype(np.uint8))
    raise ValueError(f"{what}: unsupported dtype {x.dtype}; pass uint8 or float images")


def _to_labels(labels: Any, n: int, what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what}: expected shape ({n},) - one label per sample - got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{what}: labels must be integers (-1 = unlabeled)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{what}: labels must be integers 0..C-1 (-1 = unlabeled), got dtype {y.dtype}; "
            "encode string labels first, e.g. with sklearn.preprocessing.LabelEncoder"
        )
    return y.astype(np.int64)


def _classes(
    y: np.ndarray,
    yt: np.ndarray | None,
    class_names: Sequence[str] | None,
    num_classes: int | None,
) -> tuple[tuple[str, ...] | None, int]:
    """(class names, number of classes) of in-memory labels, checked (see :func:`from_arrays`)."""
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} disagrees with {len(class_names)} class_names"
            )
        num_classes = len(class_names)
    inferred = num_classes is None
    if inferred:
        top = max(int(y.max()), int(yt.max()) if yt is not None else -1)
        num_classes = top + 1
    if num_classes < 2:
        raise ValueError(
            f"labels: need at least 2 classes, got {num_classes}; label classes 0..C-1 "
            "and mark unlabeled rows with -1"
        )
    check_labels(y, num_classes, "labels", allow_unknown=True)
    if yt is not None:
        check_labels(yt, num_classes, "test_labels", allow_unknown=False)
    if not (y >= 0).any():
        raise ValueError("labels: every label is -1; label at least one sample per class")
    if inferred:
        check_every_class_labeled([y, yt], num_classes)
    return class_names, int(num_classes)


def from_arrays(
    images: Any,
    labels: Any,
    test_images: Any = None,
    test_labels: Any = None,
    name: str = "arrays",
    class_names: Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    hflip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> SSLDataset:
    """Wrap in-memory arrays (scikit-learn convention) as an :class:`SSLDataset`.

    ``images``: uint8 ``(N, H, W)`` or ``(N, H, W, C)`` (float in [0, 1] is converted);
    ``labels``: ``(N,)`` ints with ``-1`` for unlabeled rows (use
    :func:`semimatch.data.splits.given_split` to train on exactly these labels). The number
    of classes is ``len(class_names)``, else ``num_classes``, else ``max(label) + 1``.
    ``mean``/``std`` default to the statistics of ``images``.
    """
    x = to_uint8_images(images, "images")
    y = _to_labels(labels, x.shape[0], "labels")
    xt = yt = None
    if (test_images is None) != (test_labels is None):
        raise ValueError("test_images/test_labels: pass both or neither")
    if test_images is not None:
        xt = to_uint8_images(test_images, "test_images")
        yt = _to_labels(test_labels, xt.shape[0], "test_labels")
        if xt.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"test_images: shape {xt.shape[1:]} per image differs from images {x.shape[1:]}"
            )
    class_names, num_classes = _classes(y, yt, class_names, num_classes)
    train = ArraySource(x, y)
    info = info_for_source(name, train, num_classes, class_names, hflip, mean, std)
    test = ArraySource(xt, yt) if xt is not None else None
    return SSLDataset(info, train, test, None)


# --------------------------------------------------------------------------------------------
# Feature vectors
# --------------------------------------------------------------------------------------------
def to_feature_matrix(features: Any, what: str = "features", dim: int | None = None) -> np.ndarray:
    """Feature vectors as a float32 ``(N, D)`` array: numeric, finite, 2-D (``D == dim`` if
    given); ``what`` names the argument in errors."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(
            f"{what}: expected feature vectors of shape (N, D), got {x.shape}; images go "
            "through from_arrays"
        )
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: rows have {x.shape[1]} features; this model takes {dim}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ValueError(f"{what}: unsupported dtype {x.dtype}; pass numbers")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: feature values must be finite (no NaN or inf)")
    return x


def standardize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` per feature in float32: the one standardisation of training data and
    of inputs at prediction, so both see the same numbers bit for bit."""
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray((x.astype(np.float32) - m) / s)


def _feature_stats(
    x: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-feature mean and std of ``x`` where not given; a constant feature keeps scale 1."""
    d = x.shape[1]
    if mean is None:
        mean = x.mean(axis=0)
    if std is None:
        scale = x.std(axis=0)
        std = np.where(scale > 1e-12, scale, 1.0).astype(np.float32)
    mean_t = tuple(float(v) for v in np.asarray(mean, dtype=np.float32).reshape(-1))
    std_t = tuple(float(v) for v in np.asarray(std, dtype=np.float32).reshape(-1))
    if len(mean_t) != d or len(std_t) != d:
        raise ValueError(f"mean/std: need {d} values (one per feature), got {mean} / {std}")
    if not all(np.isfinite(v) and v > 0 for v in std_t):
        raise ValueError(f"std: must be finite and > 0 per feature, got {std_t}")
    return mean_t, std_t


def from_features(
    features: Any,
    labels: Any,
    test_features: Any = None,
    test_labels: Any = None,
    name: str = "features",
    class_names: Sequence[str] | None = None,
    *,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    weak_noise: float = 0.1,
    strong_noise: float = 0.5,
    strong_dropout: float = 0.5,
) -> SSLDataset:
    """Wrap feature vectors ``(N, D)`` as a feature :class:`SSLDataset` (``kind="features"``).

    The vectors are standardised per feature with ``mean``/``std`` (default: the statistics of
    ``features``; a constant feature keeps scale 1; pass ``mean=[0]*D, std=[1]*D`` to keep them
    as they are) and stored as float32; ``info.spec.mean``/``std`` record the standardisation,
    which :func:`semimatch.data.modalities.to_model_input` applies to inputs at prediction.
    ``labels``/classes as :func:`from_arrays`. The views (:class:`~semimatch.data.views.
    FeatureViews`) perturb the standardised vectors: weak ``z + weak_noise * e``, strong
    ``m * z + strong_noise * e`` with ``m`` zeroing each feature with probability
    ``strong_dropout``.
    """
    from semimatch.data.views import FeatureViews

    x = to_feature_matrix(features, "features")
    if x.shape[0] == 0:
        raise ValueError("features: no rows")
    y = _to_labels(labels, x.shape[0], "labels")
    xt = yt = None
    if (test_features is None) != (test_labels is None):
        raise ValueError("test_features/test_labels: pass both or neither")
    if test_features is not None:
        xt = to_feature_matrix(test_features, "test_features", dim=x.shape[1])
        yt = _to_labels(test_labels, xt.shape[0], "test_labels")
    class_names, num_classes = _classes(y, yt, class_names, num_classes)
    mean_t, std_t = _feature_stats(x, mean, std)
    views = FeatureViews(weak_noise, strong_noise, strong_dropout)
    info = DatasetInfo(
        name,
        num_classes,
        class_names or tuple(str(i) for i in range(num_classes)),
        FeatureSpec(int(x.shape[1]), mean_t, std_t),
    )
    train = FeatureSource(standardize(x, mean_t, std_t), y)
    test = FeatureSource(standardize(xt, mean_t, std_t), yt) if xt is not None else None
    return SSLDataset(info, train, test, None, views=views)
