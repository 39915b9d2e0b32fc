"""Named datasets: CIFAR-10/100, SVHN, STL-10, MNIST, Fashion-MNIST and scikit-learn's digits.

Images end up as uint8 ``(H, W, C)`` arrays with ``C`` in {1, 3} and int64 labels (see
:mod:`semimatch.data.sources`). Named datasets are read from the on-disk layouts torchvision
uses; torchvision's dataset classes are only called to *download* missing files
(``download=True``), because they verify MD5 checksums on every load (slow for SVHN-extra and
impossible for a user's trimmed copy). :func:`load_dataset` also dispatches ``imagefolder`` to
:func:`semimatch.data.folders.load_imagefolder`.

Horizontal-flip policy (``ImageSpec.hflip``, the weak view's flip; override with
``hflip=`` on any dataset): on for CIFAR-10/100 and STL-10 (as FixMatch), on for
Fashion-MNIST (garments are mirror-symmetric); off for SVHN (as FixMatch), MNIST and digits
(a mirrored digit is a different glyph); on by default for image folders and arrays.
"""

from __future__ import annotations

import difflib
import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from semimatch.data.folders import load_imagefolder
from semimatch.data.sources import (
    ArraySource,
    DatasetInfo,
    ImageSpec,
    SSLDataset,
    STLBinarySource,
    channel_stats,
    check_labels,
)

__all__ = ["DATASETS", "default_root", "load_dataset", "read_idx"]


def default_root() -> str:
    """Where named datasets live when ``root`` is not given: ``$SEMIMATCH_DATA`` or a cache dir."""
    env = os.environ.get("SEMIMATCH_DATA")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "semimatch", "datasets")


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
        check_labels(lab, c, f"{name} {what} labels", allow_unknown=False)
    flip = True if hflip is None else hflip
    info = DatasetInfo(name, c, names, ImageSpec((32, 32), 3, spec["mean"], spec["std"], flip))
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
        check_labels(lab, 10, f"svhn {what} labels", allow_unknown=False)
    info = DatasetInfo(
        "svhn",
        10,
        tuple(str(i) for i in range(10)),
        ImageSpec(
            (32, 32),
            3,
            (0.4380, 0.4440, 0.4730),  # USB's constants, like the other named datasets'
            (0.1751, 0.1771, 0.1744),
            False if hflip is None else hflip,
        ),
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
        src = STLBinarySource(files[f"{split}_X.bin"], np.full(len(y), -1))
        n_img = os.path.getsize(src.path) // (3 * 96 * 96)
        if n_img != len(y) or os.path.getsize(src.path) % (3 * 96 * 96):
            raise ValueError(
                f"STL-10 {split} files disagree: {src.path} holds {n_img} images but "
                f"{files[f'{split}_y.bin']} has {len(y)} labels; re-download with download=True"
            )
        check_labels(y, 10, f"stl10 {split} labels", allow_unknown=False)
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
        ImageSpec(
            (96, 96),
            3,
            (0.4409, 0.4279, 0.3868),
            (0.2683, 0.2610, 0.2687),
            True if hflip is None else hflip,
        ),
    )
    extra = STLBinarySource(unl_path, np.full(n_unl, -1, dtype=np.int64))
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
        check_labels(y, 10, f"{name} {p} labels", allow_unknown=False)
        return ArraySource(np.ascontiguousarray(x[..., None]), y)

    train, test = part("train"), part("test")
    info = DatasetInfo(
        name,
        10,
        spec["classes"],
        ImageSpec(
            train.image_shape[:2],
            1,
            spec["mean"],
            spec["std"],
            spec["hflip"] if hflip is None else hflip,
        ),
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
    mean, std = channel_stats(train)
    info = DatasetInfo(
        "digits",
        10,
        tuple(str(i) for i in range(10)),
        ImageSpec((8, 8), 1, mean, std, False if hflip is None else hflip),
    )
    return SSLDataset(info, train, test, None)


def _load_text_files(
    root: str | None,
    download: bool,
    unlabeled_dir: str | None = None,
    test_dir: str | None = None,
    skip_corrupt: bool = False,
    **options: Any,
) -> SSLDataset:
    """``text``: ``root`` is a text file or a folder of class folders of ``.txt`` files, the
    options those of :func:`semimatch.data.text_datasets.load_text` (``test_dir``/``unlabeled_dir``:
    a test / unlabeled file or folder; ``skip_corrupt``: skip bad rows with a count)."""
    from semimatch.data.text_datasets import load_text

    if root is None:
        raise ValueError(
            "root: text needs root= (--data-root) at a CSV/TSV/JSONL/USB-JSON file, a folder "
            "root/<class>/*.txt, or USB's NLP folder data/<dataset>/ with train.json and "
            "test.json (what the USB NLP presets such as ag_news-40-softmatch read)"
        )
    if download:
        raise ValueError("download: text reads local files; there is nothing to download")
    return load_text(root, test_dir, unlabeled_dir, skip_corrupt=skip_corrupt, **options)


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
        load_imagefolder,
        ("unlabeled_dir", "test_dir", "image_size", "skip_corrupt", "channels", "hflip"),
    ),
    "digits": (_load_digits, ("hflip",)),
    "text": (
        _load_text_files,
        (
            "unlabeled_dir",
            "test_dir",
            "skip_corrupt",
            "text_column",
            "label_column",
            "header",
            "label_kind",
            "class_names",
            "test_size",
            "test_seed",
        ),
    ),
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
    1 if every image is grayscale). ``text``: ``root`` is a CSV/TSV/JSONL/USB-JSON file or a
    folder ``root/<class>/*.txt``; ``test_dir``/``unlabeled_dir`` name test / unlabeled files
    or folders, ``skip_corrupt`` skips bad rows, and ``text_column``, ``label_column``,
    ``header``, ``label_kind``, ``class_names``, ``test_size``, ``test_seed`` are those of
    :func:`semimatch.data.text_datasets.load_text`.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in _LOADERS:
        close = difflib.get_close_matches(key, DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown dataset {name!r}; {hint}valid names: {', '.join(DATASETS)} "
            "(for arrays in memory use semimatch.data.from_arrays or from_features)"
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
    if key in ("mnist", "fashion_mnist", "imagefolder", "text"):
        return fn(root, download, **options)
    return fn(root if root is not None else default_root(), download, **options)
