"""Adapters from other data containers to an :class:`SSLDataset`.

:func:`from_torch` takes ``torch.utils.data.Dataset`` s whose items are ``(image, label)`` (the
torchvision convention; unlabeled datasets may also yield bare images) and turns them into
:class:`ImageSource` s of uint8 ``(H, W, C)`` images (the layout of ``semimatch.data.sources``):

* images of at most ``SMALL_IMAGE_MAX_SIDE`` px per side are converted once and held in memory
  (an :class:`ArraySource`); larger ones are converted on access (:class:`TorchImageSource`), so a
  folder of photos is never decoded into memory all at once;
* accepted image types: ``PIL.Image`` (mode ``L`` -> 1 channel, ``RGB`` -> 3; other modes are
  converted to RGB, or to ``L`` for 16-bit/float gray modes), ``torch.Tensor`` in the torchvision
  layout ``(C, H, W)`` or ``(H, W)``, ``numpy`` arrays in the PIL layout ``(H, W, C)`` or
  ``(H, W)``; uint8 values are pixels 0..255, floats must lie in [0, 1] (``ToTensor`` output).

The datasets should yield *un-augmented* images: in-memory conversion freezes one draw of any
random transform. Augmentation belongs to the training stream (``semimatch.train(...,
weak_view=..., strong_view=...)`` for custom callables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from semimatch.data.sources import (
    SMALL_IMAGE_MAX_SIDE,
    ArraySource,
    ImageSource,
    SSLDataset,
    check_every_class_labeled,
    info_for_source,
)

__all__ = ["TorchImageSource", "from_torch", "to_hwc_uint8"]


# --------------------------------------------------------------------------------------------
# Single items
# --------------------------------------------------------------------------------------------
def to_hwc_uint8(image: Any, what: str = "image") -> np.ndarray:
    """One image (PIL, tensor ``(C, H, W)``/``(H, W)``, array ``(H, W, C)``/``(H, W)``) as a uint8
    ``(H, W, C)`` array with ``C`` in {1, 3}."""
    channels_first = False
    if hasattr(image, "mode") and hasattr(image, "convert"):  # a PIL image, without importing PIL
        if image.mode not in ("L", "RGB"):
            gray = image.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F")
            image = image.convert("L" if gray else "RGB")
        arr = np.asarray(image)
    elif _is_tensor(image):
        arr = image.detach().cpu().numpy()
        channels_first = True
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise ValueError(
            f"{what}: expected a PIL image, a torch tensor or a numpy array, got "
            f"{type(image).__name__}; return one of these from the dataset's __getitem__"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    elif arr.ndim == 3 and channels_first:
        arr = arr.transpose(1, 2, 0)  # torchvision (C, H, W) -> (H, W, C)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        layout = "(C, H, W) or (H, W) for tensors" if channels_first else "(H, W, C) or (H, W)"
        raise ValueError(
            f"{what}: image of shape {tuple(image.shape)} is not {layout} with 1 or 3 channels; "
            "convert it in the dataset's transform (e.g. torchvision.transforms.Grayscale)"
        )
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(
                f"{what}: float images must lie in [0, 1] (got {arr.min():.3g}..{arr.max():.3g}); "
                "drop Normalize from the dataset's transform (the model normalises itself)"
            )
        return np.ascontiguousarray(np.rint(arr * 255.0).astype(np.uint8))
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(
                f"{what}: integer pixels must lie in 0..255, got {arr.min()}..{arr.max()}"
            )
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise ValueError(f"{what}: unsupported pixel dtype {arr.dtype}; use uint8 or float in [0, 1]")


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _to_label(value: Any, what: str) -> int:
    if _is_tensor(value):
        if value.numel() != 1:
            raise ValueError(
                f"{what}: label must be a scalar, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float)):
        raise ValueError(
            f"{what}: label must be an integer class index (-1 = unknown), got "
            f"{value!r}; map class names to 0..C-1 in the dataset"
        )
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{what}: label {value!r} is not an integer class index")
    return int(value)


def _split_item(item: Any, what: str, need_label: bool) -> tuple[Any, int]:
    """``(image, label)`` of a dataset item; bare images get label -1 where allowed."""
    if isinstance(item, (tuple, list)):
        if len(item) < 1:
            raise ValueError(f"{what}: empty item")
        if len(item) == 1:
            image, label = item[0], None
        else:
            image, label = item[0], item[1]
    elif isinstance(item, dict):
        image, label = item.get("image"), item.get("label")
        if image is None:
            raise ValueError(f"{what}: dict items need an 'image' key (and 'label')")
    else:
        image, label = item, None
    if label is None:
        if need_label:
            raise ValueError(
                f"{what}: the item has no label; labeled and test datasets must "
                "yield (image, label)"
            )
        return image, -1
    return image, _to_label(label, what)


# --------------------------------------------------------------------------------------------
# Lazy source
# --------------------------------------------------------------------------------------------
class TorchImageSource(ImageSource):
    """A torch ``Dataset`` read on access, each image converted to uint8 ``(H, W, C)``.

    ``labels`` are read once up front (from a ``targets`` attribute when the dataset has one,
    else by a pass over the items). Every image must have ``image_shape``; one that does not is a
    ``ValueError`` naming its index.
    """

    def __init__(
        self,
        dataset: Any,
        labels: np.ndarray,
        image_shape: tuple[int, int, int],
        name: str = "dataset",
    ) -> None:
        self.dataset = dataset
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._shape = tuple(int(s) for s in image_shape)
        self.name = name

    def __getitem__(self, i: int) -> np.ndarray:
        what = f"{self.name}[{i}]"
        image, _ = _split_item(self.dataset[int(i)], what, need_label=False)
        arr = to_hwc_uint8(image, what)
        if arr.shape != self._shape:
            raise ValueError(_size_message(what, arr.shape, self._shape))
        return arr

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self._shape  # type: ignore[return-value]


def _size_message(what: str, got: tuple, expected: tuple) -> str:
    return (
        f"{what}: image is {tuple(got)} (H, W, C) but the first image is {tuple(expected)}; "
        "all images must have one size - add e.g. torchvision.transforms.Resize((H, W)) "
        "(and Grayscale/RGB conversion) to the dataset's transform"
    )


# --------------------------------------------------------------------------------------------
# Whole datasets
# --------------------------------------------------------------------------------------------
def _targets(dataset: Any, n: int) -> np.ndarray | None:
    """Labels from a ``targets`` attribute (torchvision datasets), if it looks right."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        arr = np.asarray(targets.cpu() if _is_tensor(targets) else targets)
    except (TypeError, ValueError):
        return None
    if arr.ndim != 1 or arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        return None
    return arr.astype(np.int64)


def _convert(
    dataset: Any,
    what: str,
    need_label: bool,
    in_memory: bool | None,
    shape: tuple[int, int, int] | None,
) -> ImageSource:
    """Convert one dataset; ``shape`` (from an earlier dataset) is the required image shape."""
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"{what}: expected a map-style torch Dataset (with __len__ and "
            f"__getitem__), got {type(dataset).__name__}"
        )
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{what}: the dataset is empty")
    first, _ = _split_item(dataset[0], f"{what}[0]", need_label)
    first = to_hwc_uint8(first, f"{what}[0]")
    if shape is not None and first.shape != shape:
        raise ValueError(_size_message(f"{what}[0]", first.shape, shape))
    shape = first.shape
    keep = max(shape[:2]) <= SMALL_IMAGE_MAX_SIDE if in_memory is None else in_memory
    targets = _targets(dataset, n) if not keep else None
    if targets is not None:
        # Lazy with known labels: no pass over the images (a mismatched size fails on access).
        return TorchImageSource(dataset, targets, shape, what)
    labels = np.empty(n, dtype=np.int64)
    images = np.empty((n, *shape), dtype=np.uint8) if keep else None
    for i in range(n):
        image, labels[i] = _split_item(dataset[i], f"{what}[{i}]", need_label)
        if images is not None:
            arr = first if i == 0 else to_hwc_uint8(image, f"{what}[{i}]")
            if arr.shape != shape:
                raise ValueError(_size_message(f"{what}[{i}]", arr.shape, shape))
            images[i] = arr
    if images is not None:
        return ArraySource(images, labels)
    return TorchImageSource(dataset, labels, shape, what)


def from_torch(
    labeled: Any,
    unlabeled: Any = None,
    test: Any = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    *,
    name: str = "torch",
    hflip: bool = True,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    in_memory: bool | None = None,
) -> SSLDataset:
    """An :class:`SSLDataset` from torch ``Dataset`` s of ``(image, label)`` items.

    Args:
        labeled: the labeled pool (becomes ``SSLDataset.train``); label ``-1`` marks an
            unlabeled item. With ``num_labels=None`` in the config (the default) training uses
            exactly these labels; a balanced ``num_labels`` split draws from them instead.
        unlabeled: extra unlabeled images (``extra_unlabeled``); items may be bare images or
            ``(image, label)``, where labels are kept only to monitor pseudo-label accuracy.
        test: the test set (labels required).
        num_classes: number of classes; default ``len(class_names)``, else the dataset's
            ``classes`` attribute, else ``max(label) + 1``.
        class_names: class names (default: ``labeled.classes`` if present, else "0".."C-1").
        hflip: whether the weak view may flip horizontally.
        mean: per-channel mean in [0, 1] units (default: statistics of ``labeled``).
        std: per-channel standard deviation in [0, 1] units (default: statistics of
            ``labeled``).
        in_memory: force (True) or forbid (False) holding the images in memory; default
            decides by size (<= ``SMALL_IMAGE_MAX_SIDE`` px per side: in memory).
    """
    train = _convert(labeled, "labeled", True, in_memory, None)
    shape = train.image_shape
    extra = (
        _convert(unlabeled, "unlabeled", False, in_memory, shape) if unlabeled is not None else None
    )
    test_src = _convert(test, "test", True, in_memory, shape) if test is not None else None

    if class_names is None and getattr(labeled, "classes", None) is not None:
        classes = list(labeled.classes)
        if num_classes is None or num_classes == len(classes):
            class_names = [str(c) for c in classes]
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} disagrees with {len(class_names)} "
                "class_names; pass one name per class"
            )
        num_classes = len(class_names)
    inferred = num_classes is None
    if inferred:
        tops = [int(train.labels.max())]
        if test_src is not None:
            tops.append(int(test_src.labels.max()))
        num_classes = max(tops) + 1
    if num_classes < 2:
        raise ValueError(f"num_classes: need at least 2 classes, got {num_classes}")
    for what, src, low in (("labeled", train, -1), ("test", test_src, 0), ("unlabeled", extra, -1)):
        if src is None:
            continue
        bad = (src.labels < low) | (src.labels >= num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            allowed = ("-1 (unknown) or " if low < 0 else "") + f"0..{num_classes - 1}"
            raise ValueError(
                f"{what}[{i}]: label {int(src.labels[i])} is out of range; labels "
                f"must be {allowed} for num_classes={num_classes}"
            )
    if not (train.labels >= 0).any():
        raise ValueError("labeled: every label is -1; label at least one image per class")
    if inferred:
        check_every_class_labeled([train.labels, test_src and test_src.labels], num_classes)

    info = info_for_source(name, train, num_classes, class_names, hflip, mean, std)
    return SSLDataset(info, train, test_src, extra)
