"""Image folders: scanning ``root/<class>/<image>``, decoding and fitting images, skipping
corrupt files and checking sizes.

Small images (target side <= ``SMALL_IMAGE_MAX_SIDE``) are decoded once into an
:class:`~semimatch.data.sources.ArraySource`; larger ones are only checked while scanning and
decoded on access (:class:`~semimatch.data.sources.LazyImageSource`). :func:`decode_image` and
:func:`fit_image` are the one decoding path shared by training, evaluation folders
(:func:`labeled_folder`) and prediction (:func:`load_images`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from semimatch.data.sources import (
    SMALL_IMAGE_MAX_SIDE,
    ArraySource,
    DatasetInfo,
    ImageRecord,
    ImageSource,
    ImageSpec,
    LazyImageSource,
    SSLDataset,
    channel_stats,
)
from semimatch.log import logger

__all__ = [
    "decode_image",
    "fit_image",
    "image_files",
    "labeled_folder",
    "load_imagefolder",
    "load_images",
]

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}


def _image_extensions() -> set[str]:
    """Extensions of the formats Pillow can read (it also registers write-only ones: .pdf)."""
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def fit_image(im: Any, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """An open PIL image as uint8 ``(H, W, channels)``, fitted to ``size`` = (H, W) if given.

    Fitting keeps the aspect ratio: scale so the image covers ``size``, then centre-crop
    (``PIL.ImageOps.fit``); same-aspect images are simply resized.
    """
    from PIL import Image, ImageOps

    if size is not None and im.format == "JPEG":
        # Let libjpeg decode at a reduced scale (>= the target) - much faster for photos.
        im.draft("RGB" if channels == 3 else "L", (size[1], size[0]))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    im = im.convert("RGB" if channels == 3 else "L")
    if size is not None and im.size != (size[1], size[0]):
        im = ImageOps.fit(im, (size[1], size[0]), method=Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def decode_image(path: str, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """Decode the file at ``path`` with :func:`fit_image`."""
    from PIL import Image

    with Image.open(path) as im:
        return fit_image(im, size, channels)


def image_files(directory: str | os.PathLike) -> list[str]:
    """The image files under ``directory`` (recursively, sorted; hidden entries skipped)."""
    return _list_images(os.fspath(directory), _image_extensions())


def labeled_folder(
    root: str | os.PathLike,
    class_names: Sequence[str],
    image_size: tuple[int, int],
    channels: int,
    skip_corrupt: bool = False,
) -> ImageSource:
    """The images under ``root/<class>/``, labeled by the position of ``<class>`` in
    ``class_names`` (a trained run's classes; a folder may hold only some of them) and read
    as training reads an image folder (same decoding, same ``skip_corrupt``): held-out images
    for a run that has none.
    """
    root = os.fspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"test_dir: no directory at {root}")
    paths, labels = _scan_labeled(root, list(class_names), "test_dir")
    size = (int(image_size[0]), int(image_size[1]))
    reader = _FolderReader(skip_corrupt, size, channels)
    records = reader.read(paths, labels, root)
    reader.warn_skipped()
    if not records:
        raise ValueError(f"test_dir: no readable images under {root}")
    return _source(records, size, channels)


def _source(records: list[ImageRecord], size: tuple[int, int], channels: int) -> ImageSource:
    """An image folder's records as a source: small images stay decoded in memory, large ones
    are decoded on access."""
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    if max(size) > SMALL_IMAGE_MAX_SIDE:
        return LazyImageSource([r.path for r in records], labels, size, channels)
    x = np.empty((len(records), *size, channels), dtype=np.uint8)
    for i, r in enumerate(records):
        x[i] = r.array  # broadcasting copies a 1-channel image into all 3 (= PIL L->RGB)
    return ArraySource(x, labels)


def _class_dirs(directory: str, exclude: Collection[str] = ()) -> list[str]:
    """The class folders of ``directory`` (sorted; hidden and ``exclude``d folders skipped)."""
    return sorted(
        d
        for d in os.listdir(directory)
        if not d.startswith(".")
        and os.path.isdir(os.path.join(directory, d))
        and os.path.abspath(os.path.join(directory, d)) not in exclude
    )


def _scan_labeled(
    directory: str,
    classes: list[str],
    what: str,
    exclude: Collection[str] = (),
    every_class_filled: bool = False,
) -> tuple[list[str], list[int]]:
    """Image paths under ``directory/<class>/`` and their indices in ``classes``."""
    paths: list[str] = []
    labels: list[int] = []
    names = _class_dirs(directory, exclude)
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise ValueError(
            f"{what}: class folders {unknown} in {directory} are not among the training "
            f"classes {classes}"
        )
    exts = _image_extensions()
    for name in names:
        files = _list_images(os.path.join(directory, name), exts)
        if not files and every_class_filled:
            raise ValueError(
                f"{what}: class folder {os.path.join(directory, name)} holds no image files"
            )
        paths += files
        labels += [classes.index(name)] * len(files)
    if not paths:
        raise ValueError(
            f"{what}: no image files found under {directory}; expected {directory}/<class>/<image>"
        )
    return paths, labels


def _list_images(directory: str, exts: set[str]) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith(".") and os.path.splitext(fn)[1].lower() in exts:
                out.append(os.path.join(dirpath, fn))
    return out


def _resolve_dir(path: str, root: str, what: str) -> str:
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(root, path)]
    for c in candidates:
        if os.path.isdir(c):
            return os.path.abspath(c)
    raise FileNotFoundError(f"{what}: no directory at {' or '.join(candidates)}")


class _SizeMismatch(ValueError):
    """Images differ in size and no ``image_size`` was given (not a corrupt file)."""


class _FolderReader:
    """Reads image files in one pass: small ones are decoded, large ones only checked.

    Opening each file once matters: for 32 px JPEGs, PIL's header parsing costs as much as
    decoding. Unreadable files raise, or are collected when ``skip_corrupt`` is set.
    """

    def __init__(
        self, skip_corrupt: bool, size: tuple[int, int] | None, channels: int | None
    ) -> None:
        self.skip_corrupt = skip_corrupt
        self.size, self.channels = size, channels
        self.skipped: list[str] = []
        self.first: tuple[str, tuple[int, int]] | None = None  # (path, (H, W)) of the 1st image

    def warn_skipped(self) -> None:
        if self.skipped:
            logger.warning(
                f"skipped {len(self.skipped)} unreadable image file(s) (skip_corrupt), "
                f"e.g. {self.skipped[0]}"
            )

    def _bad(self, path: str, err: Exception) -> None:
        if not self.skip_corrupt:
            raise ValueError(
                f"cannot read image {path}: {err}; fix or remove the file, or pass "
                "skip_corrupt=True to skip unreadable images"
            ) from err
        self.skipped.append(path)

    def _check_same_size(self, path: str, hw: tuple[int, int], root: str) -> None:
        if self.size is not None:
            return
        if self.first is None:
            self.first = (path, hw)
        elif self.first[1] != hw:
            (p0, (h0, w0)), (h, w) = self.first, hw
            raise _SizeMismatch(
                f"image_size: images under {root} differ in size ({p0} is {h0}x{w0}, {path} "
                f"is {h}x{w}, height x width); pass image_size= (e.g. image_size=32) to "
                "resize them to a common size"
            )

    def read(self, paths: list[str], labels: list[int], root: str) -> list[ImageRecord]:
        """An :class:`ImageRecord` for each readable file.

        Arrays are decoded when the target size is small; with ``channels`` unset they keep 1
        channel for grayscale files and 3 otherwise (merged later).
        """
        from PIL import Image

        out = []
        for p, y in zip(paths, labels, strict=True):
            try:
                with Image.open(p) as im:
                    hw = (im.size[1], im.size[0])
                    gray = im.mode in _GRAY_MODES
                    self._check_same_size(p, hw, root)
                    target = self.size or hw
                    if max(target) <= SMALL_IMAGE_MAX_SIDE:
                        arr = fit_image(im, self.size, self.channels or (1 if gray else 3))
                    else:
                        im.verify()  # cheap structural check (CRCs for PNG); decoded later
                        arr = None
            except _SizeMismatch:
                raise
            except (OSError, ValueError, SyntaxError) as err:
                self._bad(p, err)  # UnidentifiedImageError and truncation are OSErrors
                continue
            out.append(ImageRecord(p, y, arr, gray))
        return out


def _image_size_arg(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``image_size`` (None, an int or (H, W)) as (H, W) or None."""
    if image_size is None:
        return None
    s = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(s) != 2 or not all(isinstance(v, int) and v > 0 for v in s):
        raise ValueError(
            f"image_size: expected a positive int or (height, width), got {image_size!r}"
        )
    return int(s[0]), int(s[1])


def _folder_classes(root: str, exclude: Collection[str]) -> list[str]:
    """The class folders of ``root``; at least two, or a ValueError saying what to do."""
    classes = _class_dirs(root, exclude)
    if not classes:
        raise ValueError(
            f"root: no class folders in {root}; expected root/<class>/<image> "
            "(put images without labels in a separate folder and pass unlabeled_dir=)"
        )
    if len(classes) < 2:
        raise ValueError(
            f"root: found a single class folder ({classes[0]!r}) in {root}; classification "
            "needs at least 2 class folders"
        )
    return classes


def load_imagefolder(
    root: str | None,
    download: bool,
    unlabeled_dir: str | None = None,
    test_dir: str | None = None,
    image_size: int | Sequence[int] | None = None,
    skip_corrupt: bool = False,
    channels: int | None = None,
    hflip: bool | None = None,
) -> SSLDataset:
    """``root/<class>/<image>`` (+ optional unlabeled and test folders) as an SSLDataset
    (``load_dataset("imagefolder", ...)``; the options are documented there)."""
    if root is None:
        raise ValueError("root: imagefolder needs root= pointing at a folder of class folders")
    if download:
        raise ValueError("download: imagefolder reads a local folder; there is nothing to download")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root: image folder {root} does not exist")
    root = os.path.abspath(root)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels: must be 1, 3 or None (auto), got {channels!r}")
    size = _image_size_arg(image_size)
    unl_root = _resolve_dir(unlabeled_dir, root, "unlabeled_dir") if unlabeled_dir else None
    test_root = _resolve_dir(test_dir, root, "test_dir") if test_dir else None
    exclude = {p for p in (unl_root, test_root) if p}
    classes = _folder_classes(root, exclude)
    reader = _FolderReader(skip_corrupt, size, channels)

    sets = {"train": _scan_labeled(root, classes, "root", exclude, every_class_filled=True)}
    if test_root:
        sets["test"] = _scan_labeled(test_root, classes, "test_dir", exclude)
    if unl_root:
        files = _list_images(unl_root, _image_extensions())
        if not files:
            raise ValueError(f"unlabeled_dir: no image files found under {unl_root}")
        sets["unlabeled"] = (files, [-1] * len(files))

    records = {key: reader.read(paths, labels, root) for key, (paths, labels) in sets.items()}
    train_classes = {r.label for r in records["train"]}
    if len(train_classes) < len(classes):
        empty = [classes[c] for c in range(len(classes)) if c not in train_classes]
        raise ValueError(f"root: class folders {empty} hold no readable images")
    if channels is None:
        channels = 1 if all(r.gray for recs in records.values() for r in recs) else 3
    if size is None:
        size = reader.first[1] if reader.first else (0, 0)

    sources = {key: _source(recs, size, channels) for key, recs in records.items()}
    reader.warn_skipped()
    if len(set(sources["train"].labels.tolist())) < 2:
        raise ValueError(f"root: fewer than 2 classes with readable images under {root}")
    mean, std = channel_stats(sources["train"])
    flip = True if hflip is None else hflip
    spec = ImageSpec(size, channels, mean, std, flip)
    info = DatasetInfo("imagefolder", len(classes), tuple(classes), spec)
    return SSLDataset(info, sources["train"], sources.get("test"), sources.get("unlabeled"))


# Prediction fits every image to the model's input as training did (cover, centre-crop); past
# these limits that changes the picture enough to be worth a warning.
MAX_CROPPED_AREA = 0.25  # a centre crop that drops more than a quarter of the image
MAX_UPSCALE = 4.0  # an image enlarged more than 4x per side is mostly interpolation


def load_images(paths: list[str | os.PathLike], size: tuple[int, int], channels: int) -> np.ndarray:
    """Read image files into a uint8 (N, H, W, C) array at the model's size and channels.

    Decoded exactly as an image folder is for training (scale to cover ``size``, centre-crop,
    bicubic): a model must see at prediction the pixels it would have seen in training.  One
    warning per call names the images this changes a lot (a crop losing more than 25% of the
    area, or an upscale of more than 4x).
    """
    from PIL import Image, UnidentifiedImageError

    size = (int(size[0]), int(size[1]))
    out, shapes = [], []
    for p in paths:
        try:
            with Image.open(os.path.expanduser(os.fspath(p))) as im:
                shapes.append((im.size[1], im.size[0]))  # before the JPEG draft shrinks it
                arr = fit_image(im, size, channels)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {p} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"{p} is a folder; pass image files") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        out.append(arr)
    _warn_about_fitting([os.fspath(p) for p in paths], shapes, size)
    return np.stack(out) if out else np.zeros((0, size[0], size[1], channels), np.uint8)


def _were(n: int) -> str:
    return f"{n} {'was' if n == 1 else 'were'}"


def _warn_about_fitting(
    paths: list[str], shapes: list[tuple[int, int]], size: tuple[int, int]
) -> None:
    """One warning for the images that fitting to ``size`` = (H, W) crops or enlarges a lot."""
    H, W = size
    cropped: list[tuple[float, str, int, int]] = []
    upscaled: list[tuple[float, str, int, int]] = []
    for path, (h, w) in zip(paths, shapes):
        aspect, target = w / h, W / H
        lost = 1 - min(aspect, target) / max(aspect, target)  # area the centre crop drops
        if lost > MAX_CROPPED_AREA:
            cropped.append((lost, path, h, w))
        scale = max(H / h, W / w)  # the cover scale fit_image applies
        if scale > MAX_UPSCALE:
            upscaled.append((scale, path, h, w))
    if not cropped and not upscaled:
        return
    parts = []
    if cropped:
        lost, path, h, w = max(cropped)
        parts.append(
            f"{_were(len(cropped))} centre-cropped to its aspect ratio, losing more than "
            f"{MAX_CROPPED_AREA:.0%} of their area (up to {lost:.0%}: {path} is {h}x{w})"
        )
    if upscaled:
        scale, path, h, w = max(upscaled)
        parts.append(
            f"{_were(len(upscaled))} enlarged more than {MAX_UPSCALE:g}x (up to {scale:.3g}x: "
            f"{path} is {h}x{w})"
        )
    logger.warning(
        f"predict: the model takes {H}x{W} images (height x width, the size it was trained "
        f"at); of the {len(paths)} image(s), {' and '.join(parts)}. Predictions on them may be "
        f"poor; crop or resize the images to {H}x{W} yourself to choose what the model sees"
    )
