"""Image sources for semi-supervised training: named datasets, image folders and arrays.

Everything ends up in one shape (see ``notes/contracts.md``): images as uint8 ``(H, W, C)``
arrays with ``C`` in {1, 3}, labels as int64 with ``-1`` for unknown. An :class:`SSLDataset`
holds the labeled pool (``train``), an optional ``test`` set and optional
``extra_unlabeled`` images; the labeled/unlabeled split of ``train`` is made separately
(:mod:`semimatch.data.splits`), so the same dataset serves every ``num_labels`` setting.

Named datasets are read from the on-disk layouts torchvision uses; torchvision's dataset classes
are only called to *download* missing files (``download=True``), because they verify MD5
checksums on every load (slow for SVHN-extra and impossible for a user's trimmed copy).

Horizontal-flip policy (``DatasetInfo.hflip``, the weak view's flip; override with
``hflip=`` on any dataset): on for CIFAR-10/100 and STL-10 (as FixMatch), on for
Fashion-MNIST (garments are mirror-symmetric); off for SVHN (as FixMatch), MNIST and digits
(a mirrored digit is a different glyph); on by default for image folders and arrays.
"""

from __future__ import annotations

import abc
import difflib
import gzip
import os
import pickle
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from semimatch.log import logger

__all__ = [
    "DATASETS",
    "ArraySource",
    "DatasetInfo",
    "ImageSource",
    "LazyImageSource",
    "SSLDataset",
    "default_root",
    "from_arrays",
    "load_dataset",
    "read_idx",
]

#: Images whose (target) longest side is at most this are decoded once and kept in memory.
SMALL_IMAGE_MAX_SIDE = 96


# --------------------------------------------------------------------------------------------
# Core types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: classes, geometry and the normalisation the model wrapper applies.

    ``mean``/``std`` are per channel in [0, 1] pixel units; ``hflip`` says whether the weak view
    may flip horizontally.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool


class ImageSource(abc.ABC):
    """Indexable collection of same-sized uint8 ``(H, W, C)`` images with int64 labels."""

    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abc.abstractmethod
    def __getitem__(self, i: int) -> np.ndarray:
        """Image ``i`` as a uint8 ``(H, W, C)`` array."""

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` shared by every image."""

    def as_array(self) -> np.ndarray | None:
        """All images as one ``(N, H, W, C)`` uint8 array if held in memory, else ``None``."""
        return None

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices`` stacked into a new ``(n, H, W, C)`` uint8 array."""
        idx = np.asarray(indices, dtype=np.int64)
        arr = self.as_array()
        if arr is not None:
            return arr[idx]
        out = np.empty((len(idx), *self.image_shape), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = self[int(i)]
        return out


class ArraySource(ImageSource):
    """Images held in memory as one ``(N, H, W, C)`` uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(
                f"images: expected a uint8 (N, H, W, C) array with C in {{1, 3}}, got "
                f"{images.dtype} {images.shape}; use from_arrays() to convert other layouts"
            )
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"labels: {labels.shape[0]} labels for {images.shape[0]} images; "
                "pass one label per image (-1 = unknown)"
            )
        self.images = images
        self.labels = labels

    def __getitem__(self, i: int) -> np.ndarray:
        return self.images[i]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        h, w, c = self.images.shape[1:]
        return int(h), int(w), int(c)

    def as_array(self) -> np.ndarray:
        return self.images


class LazyImageSource(ImageSource):
    """Image files decoded on access, converted to ``channels`` and fitted to ``size``.

    Used for image folders whose images are larger than ``SMALL_IMAGE_MAX_SIDE``: keeping
    them decoded would not fit in memory, and DataLoader workers decode them in parallel.
    """

    def __init__(
        self, paths: Sequence[str], labels: np.ndarray, size: tuple[int, int], channels: int
    ) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != self.labels.shape[0]:
            raise ValueError(f"labels: {len(self.labels)} labels for {len(self.paths)} paths")
        self.size = (int(size[0]), int(size[1]))
        self.channels = int(channels)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.paths[i]
        try:
            return decode_image(path, self.size, self.channels)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three on bad files
            raise ValueError(
                f"cannot read image {path}: {err}; fix or remove the file and reload the "
                "dataset (skip_corrupt=True only checks file headers for large images)"
            ) from err

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.size[0], self.size[1], self.channels


class _STLBinarySource(ImageSource):
    """STL-10 ``*_X.bin`` images read through a memory map (the unlabeled split is 2.7 GB).

    The file stores each image as ``(C, W, H)`` (column-major); ``__getitem__`` returns HWC.
    The map is reopened lazily so pickling (DataLoader workers under ``spawn``) stays cheap.
    """

    def __init__(self, path: str, labels: np.ndarray, side: int = 96) -> None:
        self.path = path
        self.side = side
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self._map: np.ndarray | None = None

    def _images(self) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r").reshape(
                -1, 3, self.side, self.side
            )
        return self._map

    def __getitem__(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self._images()[i].transpose(2, 1, 0))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.side, self.side, 3

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        return np.ascontiguousarray(self._images()[idx].transpose(0, 3, 2, 1))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_map"] = None
        return state


@dataclass
class SSLDataset:
    """A dataset ready for splitting: labeled pool, optional test set and extra unlabeled data.

    ``train`` labels are known for the dataset's own images (``-1`` only for rows a user left
    unlabeled, e.g. :func:`from_arrays`); ``extra_unlabeled.labels`` carry ground truth where it
    exists (SVHN-extra) and ``-1`` otherwise - used only to monitor pseudo-label quality.
    """

    info: DatasetInfo
    train: ImageSource
    test: ImageSource | None
    extra_unlabeled: ImageSource | None
    #: Predefined labeled folds (indices into ``train``), e.g. STL-10's ten folds of 1,000.
    labeled_folds: tuple[np.ndarray, ...] | None = None


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def default_root() -> str:
    """Where named datasets live when ``root`` is not given: ``$SEMIMATCH_DATA`` or a cache dir."""
    env = os.environ.get("SEMIMATCH_DATA")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "semimatch", "datasets")


def _channel_stats(source: ImageSource, max_images: int = 4096) -> tuple[tuple, tuple]:
    """Per-channel mean and (population) std in [0, 1] units, over up to ``max_images`` images
    (512 for sources decoded on access, where each image costs a file decode).

    Subsamples are drawn with a fixed seed so the numbers are reproducible.
    """
    n = len(source)
    if n == 0:
        raise ValueError("cannot compute normalisation statistics of an empty image set")
    arr = source.as_array()
    if arr is None:
        max_images = min(max_images, 512)
    if arr is None or n > max_images:
        idx = np.arange(n)
        if n > max_images:
            idx = np.sort(np.random.default_rng(0).choice(n, max_images, replace=False))
        arr = source.gather(idx)
    c = arr.shape[3]
    total = np.zeros(c, dtype=np.float64)
    total_sq = np.zeros(c, dtype=np.float64)
    count = 0
    # Chunked float64 accumulation: exact enough and bounded memory for big arrays.
    for start in range(0, arr.shape[0], 1024):
        chunk = arr[start : start + 1024].reshape(-1, c).astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
        count += chunk.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel would otherwise divide by zero
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _check_labels(labels: np.ndarray, num_classes: int, what: str, allow_unknown: bool) -> None:
    low = -1 if allow_unknown else 0
    bad = (labels < low) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        allowed = f"0..{num_classes - 1}"
        if allow_unknown:
            allowed = "-1 (unknown) or " + allowed
        raise ValueError(
            f"{what}: label {int(labels[i])} at index {i} is out of range; labels must be "
            f"{allowed} for {num_classes} classes ({int(bad.sum())} bad labels in total)"
        )


def _missing(name: str, looked: Sequence[str], hint: str) -> FileNotFoundError:
    places = "\n  ".join(looked)
    return FileNotFoundError(
        f"dataset {name!r} not found; looked for:\n  {places}\n"
        f"Pass download=True (CLI: --download) to download it with torchvision, or {hint}"
    )


def _download_with_torchvision(name: str, factory: Callable[[], Any]) -> None:
    """Run a torchvision dataset constructor with ``download=True`` and translate its errors."""
    try:
        factory()
    except Exception as err:  # network errors come as URLError, RuntimeError, OSError, ...
        raise RuntimeError(
            f"downloading {name!r} with torchvision failed: {err}. Check the network connection "
            "or download the files by hand into the root directory"
        ) from err


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (torchvision's python pickle layout)
# --------------------------------------------------------------------------------------------
_CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "num_classes": 10,
        # FixMatch's and USB's constants.
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2471, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "num_classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}

_CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


def _read_cifar_batches(paths: Sequence[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as err:
            raise ValueError(
                f"cannot read CIFAR batch file {path}: {err}; delete it and pass download=True"
            ) from err
        images.append(data.transpose(0, 2, 3, 1))  # CHW -> HWC
        labels.append(lab)
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)


def _load_cifar(name: str, root: str, download: bool, hflip: bool | None) -> SSLDataset:
    spec = _CIFAR[name]
    base = os.path.join(root, spec["folder"])
    files = [os.path.join(base, f) for f in spec["train"] + spec["test"]]
    if not all(os.path.isfile(f) for f in files):
        if not download:
            raise _missing(name, files, f"put the extracted '{spec['folder']}' folder in {root}")
        from torchvision import datasets as tvd

        cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
        _download_with_torchvision(name, lambda: cls(root, train=True, download=True))
    n_train = len(spec["train"])
    x_train, y_train = _read_cifar_batches(files[:n_train], spec["label_key"])
    x_test, y_test = _read_cifar_batches(files[n_train:], spec["label_key"])
    c = spec["num_classes"]
    meta_file, meta_key = spec["meta"]
    names: tuple[str, ...] = _CIFAR10_CLASSES if c == 10 else tuple(str(i) for i in range(c))
    meta_path = os.path.join(base, meta_file)
    if os.path.isfile(meta_path):
        with open(meta_path, "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        if len(meta.get(meta_key, ())) == c:
            names = tuple(str(n) for n in meta[meta_key])
    for lab, what in ((y_train, "train"), (y_test, "test")):
        _check_labels(lab, c, f"{name} {what} labels", allow_unknown=False)
    info = DatasetInfo(
        name, c, names, (32, 32), 3, spec["mean"], spec["std"], True if hflip is None else hflip
    )
    return SSLDataset(info, ArraySource(x_train, y_train), ArraySource(x_test, y_test), None)


def _load_cifar10(root: str, download: bool, hflip: bool | None = None) -> SSLDataset:
    return _load_cifar("cifar10", root, download, hflip)


def _load_cifar100(root: str, download: bool, hflip: bool | None = None) -> SSLDataset:
    return _load_cifar("cifar100", root, download, hflip)


# --------------------------------------------------------------------------------------------
# SVHN (.mat files)
# --------------------------------------------------------------------------------------------
def _read_svhn(path: str) -> tuple[np.ndarray, np.ndarray]:
    from scipy import io as sio

    try:
        mat = sio.loadmat(path)
        x = np.ascontiguousarray(np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2))
        y = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except (ValueError, KeyError, OSError) as err:
        raise ValueError(
            f"cannot read SVHN file {path}: {err}; delete it and pass download=True"
        ) from err
    y[y == 10] = 0  # SVHN stores digit 0 as label 10
    return x, y


def _load_svhn(
    root: str, download: bool, extra: bool = False, hflip: bool | None = None
) -> SSLDataset:
    splits = ["train", "test"] + (["extra"] if extra else [])
    files = {s: os.path.join(root, f"{s}_32x32.mat") for s in splits}
    missing = [s for s, f in files.items() if not os.path.isfile(f)]
    if missing:
        if not download:
            raise _missing("svhn", list(files.values()), f"put the .mat files in {root}")
        from torchvision import datasets as tvd

        for s in missing:
            _download_with_torchvision("svhn", lambda s=s: tvd.SVHN(root, split=s, download=True))
    x_train, y_train = _read_svhn(files["train"])
    x_test, y_test = _read_svhn(files["test"])
    extra_src = ArraySource(*_read_svhn(files["extra"])) if extra else None
    for lab, what in ((y_train, "train"), (y_test, "test")):
        _check_labels(lab, 10, f"svhn {what} labels", allow_unknown=False)
    info = DatasetInfo(
        "svhn",
        10,
        tuple(str(i) for i in range(10)),
        (32, 32),
        3,
        (0.4380, 0.4440, 0.4730),  # USB's constants, like the other named datasets'
        (0.1751, 0.1771, 0.1744),
        False if hflip is None else hflip,
    )
    return SSLDataset(info, ArraySource(x_train, y_train), ArraySource(x_test, y_test), extra_src)


# --------------------------------------------------------------------------------------------
# STL-10 (binary files)
# --------------------------------------------------------------------------------------------
_STL_CLASSES = (
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
)  # fmt: skip


def _load_stl10(root: str, download: bool, hflip: bool | None = None) -> SSLDataset:
    base = os.path.join(root, "stl10_binary")
    names = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"]
    files = {n: os.path.join(base, n) for n in names}
    if not all(os.path.isfile(f) for f in files.values()):
        if not download:
            raise _missing("stl10", list(files.values()), f"extract stl10_binary into {root}")
        from torchvision import datasets as tvd

        _download_with_torchvision("stl10", lambda: tvd.STL10(root, split="test", download=True))

    def labeled(split: str) -> ArraySource:
        y = np.fromfile(files[f"{split}_y.bin"], dtype=np.uint8).astype(np.int64) - 1
        src = _STLBinarySource(files[f"{split}_X.bin"], np.full(len(y), -1))
        n_img = os.path.getsize(src.path) // (3 * 96 * 96)
        if n_img != len(y) or os.path.getsize(src.path) % (3 * 96 * 96):
            raise ValueError(
                f"STL-10 {split} files disagree: {src.path} holds {n_img} images but "
                f"{files[f'{split}_y.bin']} has {len(y)} labels; re-download with download=True"
            )
        _check_labels(y, 10, f"stl10 {split} labels", allow_unknown=False)
        return ArraySource(src.gather(np.arange(len(y))), y)

    unl_path = files["unlabeled_X.bin"]
    n_unl, rem = divmod(os.path.getsize(unl_path), 3 * 96 * 96)
    if rem:
        raise ValueError(f"{unl_path} is truncated ({rem} stray bytes); re-download it")
    class_names = _STL_CLASSES
    names_file = os.path.join(base, "class_names.txt")
    if os.path.isfile(names_file):
        with open(names_file) as f:
            read = tuple(line.strip() for line in f if line.strip())
        if len(read) == 10:
            class_names = read
    info = DatasetInfo(
        "stl10",
        10,
        class_names,
        (96, 96),
        3,
        (0.4409, 0.4279, 0.3868),
        (0.2683, 0.2610, 0.2687),
        True if hflip is None else hflip,
    )
    extra = _STLBinarySource(unl_path, np.full(n_unl, -1, dtype=np.int64))
    train = labeled("train")
    return SSLDataset(info, train, labeled("test"), extra, _read_stl_folds(base, len(train.labels)))


def _read_stl_folds(base: str, num_train: int) -> tuple[np.ndarray, ...] | None:
    """``fold_indices.txt``: one line per fold, space-separated 0-based indices into train."""
    path = os.path.join(base, "fold_indices.txt")
    if not os.path.isfile(path):
        return None
    folds = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                idx = np.array([int(t) for t in line.split()], dtype=np.int64)
            except ValueError:
                raise ValueError(
                    f"{path} line {lineno} is not a list of integer indices; re-download it"
                ) from None
            if idx.min() < 0 or idx.max() >= num_train:
                raise ValueError(
                    f"{path} line {lineno} indexes image {int(idx.max())} but train_X.bin holds "
                    f"{num_train}; the fold file belongs to other files - re-download"
                )
            folds.append(idx)
    return tuple(folds) or None


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX files, gzipped or not)
# --------------------------------------------------------------------------------------------
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not, into a numpy array.

    Layout: two zero bytes, a type code, the number of dimensions, the dimensions as
    big-endian uint32, then the data in C order (big-endian).
    """
    path = str(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"cannot read IDX file {path}: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"IDX file {path} is truncated or padded: header says shape {shape} "
            f"({expected} bytes of data) but it holds {len(raw) - header}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find_idx(directory: str, prefix: str, kind: str) -> str | None:
    """Path of ``{prefix}-{kind}-idx?-ubyte`` (or the ``.idx`` spelling), raw or ``.gz``."""
    rank = "3" if kind == "images" else "1"
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            p = os.path.join(directory, f"{prefix}-{kind}{sep}idx{rank}-ubyte{ext}")
            if os.path.isfile(p):
                return p
    return None


_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_MNIST_LIKE = {
    "mnist": {
        "tv_class": "MNIST",
        "classes": tuple(str(i) for i in range(10)),
        "mean": (0.1307,),
        "std": (0.3081,),
        "hflip": False,
        "system": ["/usr/share/datasets/mnist"],
    },
    "fashion_mnist": {
        "tv_class": "FashionMNIST",
        "classes": _FASHION_CLASSES,
        "mean": (0.2860,),
        "std": (0.3530,),
        "hflip": True,
        "system": ["/usr/share/datasets/fashion-mnist"],
    },
}


def _load_mnist_like(name: str, root: str | None, download: bool, hflip: bool | None) -> SSLDataset:
    spec = _MNIST_LIKE[name]
    base = root if root is not None else default_root()
    # A plain directory of IDX files, torchvision's <root>/<Class>/raw layout, and (when no
    # root is given) the system-wide copies Debian's dataset packages install.
    candidates = [base, os.path.join(base, spec["tv_class"], "raw")]
    if root is None:
        candidates += spec["system"]

    def find() -> dict[str, str] | None:
        for d in candidates:
            found = {
                f"{p}_{k}": _find_idx(d, "train" if p == "train" else "t10k", k)
                for p in ("train", "test")
                for k in ("images", "labels")
            }
            if all(found.values()):
                return found  # type: ignore[return-value]
        return None

    files = find()
    if files is None:
        if not download:
            looked = [os.path.join(d, "train-images-idx3-ubyte[.gz] etc.") for d in candidates]
            raise _missing(name, looked, "point root= at a directory holding the 4 IDX files")
        from torchvision import datasets as tvd

        cls = getattr(tvd, spec["tv_class"])
        for train in (True, False):
            _download_with_torchvision(name, lambda t=train: cls(base, train=t, download=True))
        files = find()
        if files is None:
            raise FileNotFoundError(f"torchvision downloaded {name!r} but no IDX files in {base}")

    def part(p: str) -> ArraySource:
        x = read_idx(files[f"{p}_images"])
        y = read_idx(files[f"{p}_labels"]).astype(np.int64)
        if x.ndim != 3 or x.dtype != np.uint8 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{name} {p} IDX files do not match: images {x.dtype} {x.shape} "
                f"({files[f'{p}_images']}), labels {y.shape} ({files[f'{p}_labels']})"
            )
        _check_labels(y, 10, f"{name} {p} labels", allow_unknown=False)
        return ArraySource(np.ascontiguousarray(x[..., None]), y)

    train, test = part("train"), part("test")
    info = DatasetInfo(
        name,
        10,
        spec["classes"],
        train.image_shape[:2],
        1,
        spec["mean"],
        spec["std"],
        spec["hflip"] if hflip is None else hflip,
    )
    return SSLDataset(info, train, test, None)


def _load_mnist(root: str | None, download: bool, hflip: bool | None = None) -> SSLDataset:
    return _load_mnist_like("mnist", root, download, hflip)


def _load_fashion_mnist(root: str | None, download: bool, hflip: bool | None = None) -> SSLDataset:
    return _load_mnist_like("fashion_mnist", root, download, hflip)


# --------------------------------------------------------------------------------------------
# scikit-learn digits
# --------------------------------------------------------------------------------------------
#: Size and seed of the fixed digits test split (stratified; 360 of 1797 images, ~20%).
DIGITS_TEST_SIZE = 360
DIGITS_SPLIT_SEED = 0


def _load_digits(hflip: bool | None = None) -> SSLDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are 0..16; scale to the full uint8 range so the usual ops apply.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_SIZE,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    train = ArraySource(np.ascontiguousarray(images[idx_train]), labels[idx_train])
    test = ArraySource(np.ascontiguousarray(images[idx_test]), labels[idx_test])
    mean, std = _channel_stats(train)
    info = DatasetInfo(
        "digits",
        10,
        tuple(str(i) for i in range(10)),
        (8, 8),
        1,
        mean,
        std,
        False if hflip is None else hflip,
    )
    return SSLDataset(info, train, test, None)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La"}


def _image_extensions() -> set[str]:
    """Extensions of the formats Pillow can read (it also registers write-only ones: .pdf)."""
    from PIL import Image

    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _fit(im: Any, size: tuple[int, int] | None, channels: int) -> np.ndarray:
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
    """Decode the file at ``path`` with :func:`_fit`."""
    from PIL import Image

    with Image.open(path) as im:
        return _fit(im, size, channels)


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


def _source(records: list[tuple], size: tuple[int, int], channels: int) -> ImageSource:
    """An image folder's ``_FolderReader`` records as a source: small images stay decoded in
    memory, large ones are decoded on access."""
    labels = np.asarray([r[1] for r in records], dtype=np.int64)
    if max(size) > SMALL_IMAGE_MAX_SIDE:
        return LazyImageSource([r[0] for r in records], labels, size, channels)
    x = np.empty((len(records), *size, channels), dtype=np.uint8)
    for i, r in enumerate(records):
        x[i] = r[2]  # broadcasting copies a 1-channel image into all 3 (= PIL L->RGB)
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

    def read(self, paths: list[str], labels: list[int], root: str) -> list[tuple]:
        """(path, label, array or None, is_gray) for each readable file.

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
                        arr = _fit(im, self.size, self.channels or (1 if gray else 3))
                    else:
                        im.verify()  # cheap structural check (CRCs for PNG); decoded later
                        arr = None
            except _SizeMismatch:
                raise
            except (OSError, ValueError, SyntaxError) as err:
                self._bad(p, err)  # UnidentifiedImageError and truncation are OSErrors
                continue
            out.append((p, y, arr, gray))
        return out


def _load_imagefolder(
    root: str | None,
    download: bool,
    unlabeled_dir: str | None = None,
    test_dir: str | None = None,
    image_size: int | Sequence[int] | None = None,
    skip_corrupt: bool = False,
    channels: int | None = None,
    hflip: bool | None = None,
) -> SSLDataset:
    """``root/<class>/<image>`` (+ optional unlabeled and test folders) as an SSLDataset."""
    if root is None:
        raise ValueError("root: imagefolder needs root= pointing at a folder of class folders")
    if download:
        raise ValueError("download: imagefolder reads a local folder; there is nothing to download")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"root: image folder {root} does not exist")
    root = os.path.abspath(root)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels: must be 1, 3 or None (auto), got {channels!r}")
    size: tuple[int, int] | None = None
    if image_size is not None:
        s = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(s) != 2 or not all(isinstance(v, int) and v > 0 for v in s):
            raise ValueError(
                f"image_size: expected a positive int or (height, width), got {image_size!r}"
            )
        size = (int(s[0]), int(s[1]))

    unl_root = _resolve_dir(unlabeled_dir, root, "unlabeled_dir") if unlabeled_dir else None
    test_root = _resolve_dir(test_dir, root, "test_dir") if test_dir else None
    exclude = {p for p in (unl_root, test_root) if p}
    exts = _image_extensions()

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
    reader = _FolderReader(skip_corrupt, size, channels)

    sets = {"train": _scan_labeled(root, classes, "root", exclude, every_class_filled=True)}
    if test_root:
        sets["test"] = _scan_labeled(test_root, classes, "test_dir", exclude)
    if unl_root:
        files = _list_images(unl_root, exts)
        if not files:
            raise ValueError(f"unlabeled_dir: no image files found under {unl_root}")
        sets["unlabeled"] = (files, [-1] * len(files))

    records = {key: reader.read(paths, labels, root) for key, (paths, labels) in sets.items()}
    train_classes = {r[1] for r in records["train"]}
    if len(train_classes) < len(classes):
        empty = [classes[c] for c in range(len(classes)) if c not in train_classes]
        raise ValueError(f"root: class folders {empty} hold no readable images")
    all_records = [r for recs in records.values() for r in recs]
    if channels is None:
        channels = 1 if all(r[3] for r in all_records) else 3
    if size is None:
        size = reader.first[1] if reader.first else (0, 0)

    sources = {key: _source(recs, size, channels) for key, recs in records.items()}
    reader.warn_skipped()
    if len(set(sources["train"].labels.tolist())) < 2:
        raise ValueError(f"root: fewer than 2 classes with readable images under {root}")
    mean, std = _channel_stats(sources["train"])
    info = DatasetInfo(
        "imagefolder",
        len(classes),
        tuple(classes),
        size,
        channels,
        mean,
        std,
        True if hflip is None else hflip,
    )
    return SSLDataset(info, sources["train"], sources.get("test"), sources.get("unlabeled"))


# --------------------------------------------------------------------------------------------
# In-memory arrays (scikit-learn convention)
# --------------------------------------------------------------------------------------------
def _to_uint8_images(images: Any, what: str) -> np.ndarray:
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{what}: expected shape (N, H, W) or (N, H, W, C), got {x.shape}; flattened "
            "images must be reshaped, e.g. X.reshape(-1, 8, 8)"
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
        raise ValueError(f"{what}: expected shape ({n},) - one label per image - got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{what}: labels must be integers (-1 = unlabeled)")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{what}: labels must be integers 0..C-1 (-1 = unlabeled), got dtype {y.dtype}; "
            "encode string labels first, e.g. with sklearn.preprocessing.LabelEncoder"
        )
    return y.astype(np.int64)


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
    x = _to_uint8_images(images, "images")
    y = _to_labels(labels, x.shape[0], "labels")
    xt = yt = None
    if (test_images is None) != (test_labels is None):
        raise ValueError("test_images/test_labels: pass both or neither")
    if test_images is not None:
        xt = _to_uint8_images(test_images, "test_images")
        yt = _to_labels(test_labels, xt.shape[0], "test_labels")
        if xt.shape[1:] != x.shape[1:]:
            raise ValueError(
                f"test_images: shape {xt.shape[1:]} per image differs from images {x.shape[1:]}"
            )
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"num_classes={num_classes} disagrees with {len(class_names)} class_names"
            )
        num_classes = len(class_names)
    if num_classes is None:
        top = max(int(y.max()), int(yt.max()) if yt is not None else -1)
        num_classes = top + 1
    if num_classes < 2:
        raise ValueError(
            f"labels: need at least 2 classes, got {num_classes}; label classes 0..C-1 "
            "and mark unlabeled rows with -1"
        )
    _check_labels(y, num_classes, "labels", allow_unknown=True)
    if yt is not None:
        _check_labels(yt, num_classes, "test_labels", allow_unknown=False)
    if not (y >= 0).any():
        raise ValueError("labels: every label is -1; label at least one image per class")
    train = ArraySource(x, y)
    info = info_for_source(name, train, num_classes, class_names, hflip, mean, std)
    test = ArraySource(xt, yt) if xt is not None else None
    return SSLDataset(info, train, test, None)


def info_for_source(
    name: str,
    train: ImageSource,
    num_classes: int,
    class_names: Sequence[str] | None,
    hflip: bool,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> DatasetInfo:
    """DatasetInfo of user-provided images; mean/std computed from ``train`` when not given."""
    if mean is None or std is None:
        m, s = _channel_stats(train)
        mean = m if mean is None else mean
        std = s if std is None else std
    h, w, c = train.image_shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std: need {c} values (one per channel), got {mean} / {std}")
    return DatasetInfo(
        name,
        int(num_classes),
        tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes)),
        (int(h), int(w)),
        int(c),
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        bool(hflip),
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
_LOADERS: dict[str, tuple[Callable[..., SSLDataset], tuple[str, ...]]] = {
    "cifar10": (_load_cifar10, ("hflip",)),
    "cifar100": (_load_cifar100, ("hflip",)),
    "svhn": (_load_svhn, ("extra", "hflip")),
    "stl10": (_load_stl10, ("hflip",)),
    "mnist": (_load_mnist, ("hflip",)),
    "fashion_mnist": (_load_fashion_mnist, ("hflip",)),
    "imagefolder": (
        _load_imagefolder,
        ("unlabeled_dir", "test_dir", "image_size", "skip_corrupt", "channels", "hflip"),
    ),
    "digits": (_load_digits, ("hflip",)),
}

#: Names :func:`load_dataset` accepts.
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def load_dataset(
    name: str, root: str | os.PathLike | None = None, download: bool = False, **options: Any
) -> SSLDataset:
    """Load a dataset by name (one of :data:`DATASETS`) as an :class:`SSLDataset`.

    ``root`` defaults to :func:`default_root` (``imagefolder`` requires it; ``digits`` ignores
    it). Options: ``hflip`` (all; overrides the dataset's flip policy), ``extra`` (svhn: add
    the extra split as unlabeled data), and for ``imagefolder``: ``unlabeled_dir``,
    ``test_dir``, ``image_size`` (int or (H, W); required when images differ in size),
    ``skip_corrupt`` (skip unreadable files with a warning), ``channels`` (1 or 3; default:
    1 if every image is grayscale).
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _LOADERS:
        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown dataset {name!r}; {hint}valid names: {', '.join(DATASETS)} "
            "(for arrays in memory use semimatch.data.from_arrays)"
        )
    fn, allowed = _LOADERS[key]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"dataset {key!r} does not take option(s) {unknown}; it accepts: {', '.join(allowed)}"
        )
    if key == "digits":
        if root is not None or download:
            raise ValueError(
                "digits ships with scikit-learn: root (data_root) and download do not apply; "
                "drop them"
            )
        return fn(**options)
    # "~/data" from a config file or the API means the home folder, as it does in a shell.
    for opt in ("unlabeled_dir", "test_dir"):
        if options.get(opt) is not None:
            options[opt] = os.path.expanduser(os.fspath(options[opt]))
    root = None if root is None else os.path.expanduser(os.fspath(root))
    if key in ("mnist", "fashion_mnist", "imagefolder"):
        return fn(root, download, **options)
    return fn(root if root is not None else default_root(), download, **options)
