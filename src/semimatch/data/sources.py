"""Sample sources and the dataset they make up: what every modality's data looks like.

A *source* is an indexable collection of same-shaped samples with int64 labels (``-1`` =
unknown: a sample whose label is not given). Each modality has its own source type and sample
layout:

* ``kind="image"``: :class:`ImageSource`, uint8 ``(H, W, C)`` images with ``C`` in {1, 3}
  (:class:`ArraySource` in memory, :class:`LazyImageSource` decoded from files on access,
  :class:`STLBinarySource` memory-mapped);
* ``kind="features"``: :class:`FeatureSource`, float32 ``(D,)`` feature vectors in memory;
* ``kind="text"``: :class:`~semimatch.data.text.TextSource`, strings tokenized once into
  variable-length token ids (a *ragged* modality: samples have no common shape).

An :class:`SSLDataset` holds the labeled pool (``train``), an optional ``test`` set and optional
``extra_unlabeled`` samples; its :class:`DatasetInfo` says what the samples are: the classes,
which every modality has, and one spec of the modality's own (:class:`ImageSpec`,
:class:`FeatureSpec`, :class:`TextSpec`). The
labeled/unlabeled split of ``train`` is made separately (:mod:`semimatch.data.splits`), so the
same dataset serves every ``num_labels`` setting. How a modality's samples become views and
model inputs lives in :mod:`semimatch.data.modalities`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from semimatch.data.views import Views

__all__ = [
    "KINDS",
    "SMALL_IMAGE_MAX_SIDE",
    "ArraySource",
    "DatasetInfo",
    "FeatureSource",
    "ImageRecord",
    "ImageSource",
    "LazyImageSource",
    "SSLDataset",
    "STLBinarySource",
    "SampleSource",
    "channel_stats",
    "check_every_class_labeled",
    "check_labels",
    "info_for_source",
]

#: Images whose (target) longest side is at most this are decoded once and kept in memory.
SMALL_IMAGE_MAX_SIDE = 96


@dataclass(frozen=True)
class ImageSpec:
    """Images: ``image_size`` (H, W), ``channels`` C, ``mean``/``std`` per channel in [0, 1]
    pixel units (the model wrapper normalises), ``hflip``: whether the weak view may flip
    horizontally."""

    image_size: tuple[int, ...]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    kind: ClassVar[str] = "image"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.channels), *(int(s) for s in self.image_size))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (*(int(s) for s in self.image_size), int(self.channels))


@dataclass(frozen=True)
class FeatureSpec:
    """Feature vectors: ``dim`` features D per sample, ``mean``/``std`` the per-feature
    standardisation the data layer applies to raw inputs (stored samples are standardised)."""

    dim: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: ClassVar[str] = "features"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.dim),)

    sample_shape = input_shape


@dataclass(frozen=True)
class TextSpec:
    """Texts: ``tokenizer`` names the tokenizer (a Hugging Face name or folder, ``""`` before
    tokenization), ``max_length`` caps the tokens per text, special tokens included (0 before
    tokenization). A batch row is ``(input_ids, attention_mask)``; texts differ in length, so
    a stored sample has no fixed shape."""

    tokenizer: str = ""
    max_length: int = 0
    kind: ClassVar[str] = "text"

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (2, int(self.max_length))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return ()


#: Each modality's part of a ``DatasetInfo``, by ``DatasetInfo.kind``.
SPECS: dict[str, type[ImageSpec] | type[FeatureSpec] | type[TextSpec]] = {
    "image": ImageSpec,
    "features": FeatureSpec,
    "text": TextSpec,
}
#: The modalities a dataset may hold (``DatasetInfo.kind``).
KINDS = tuple(SPECS)
ModalitySpec = ImageSpec | FeatureSpec | TextSpec


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its name and classes, which every modality has, and ``spec``, what
    its modality needs to know (:class:`ImageSpec`, :class:`FeatureSpec`, :class:`TextSpec`)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    spec: ModalitySpec

    def __post_init__(self) -> None:
        if not isinstance(self.spec, tuple(SPECS.values())):
            raise ValueError(
                f"DatasetInfo.spec: must be one of {', '.join(t.__name__ for t in SPECS.values())}"
                f", got {type(self.spec).__name__}"
            )

    @property
    def kind(self) -> str:
        """The modality of the samples: one of :data:`KINDS`."""
        return self.spec.kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample as the model takes it: ``(C, H, W)`` for images, ``(D,)`` for features,
        ``(2, max_length)`` at most for text (batches are padded to their longest text)."""
        return self.spec.input_shape

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One sample as a source stores it: ``(H, W, C)`` for images, ``(D,)`` for features,
        ``()`` for text (token sequences differ in length)."""
        return self.spec.sample_shape

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a run folder keeps (``dataset.json``); :meth:`from_dict` reads it."""
        shared = {"name": self.name, "num_classes": self.num_classes}
        return {**shared, "class_names": list(self.class_names), "kind": self.kind,
                "spec": dataclasses.asdict(self.spec)}  # fmt: skip

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling; an estimator pickled before the modality specs holds the flat form."""
        if "spec" not in state:
            state = vars(DatasetInfo.from_dict(dict(state)))
        for k, v in state.items():
            object.__setattr__(self, k, v)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetInfo:
        """A ``DatasetInfo`` from :meth:`to_dict`'s form, or from the flat one that run
        folders written before the modality specs hold (every field at the top level;
        ``kind`` absent before text: images)."""

        def tuples(m: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in m.items()}

        d = tuples(d)
        kind = d.pop("kind", "image")
        if kind not in SPECS:
            raise ValueError(f"DatasetInfo.kind: must be one of {KINDS}, got {kind!r}")
        shared = {k: d.pop(k) for k in ("name", "num_classes", "class_names")}
        if "spec" in d:
            return cls(**shared, spec=SPECS[kind](**tuples(d["spec"])))
        if kind == "features":  # the flat form kept D in ``channels``
            return cls(**shared, spec=FeatureSpec(d["channels"], d["mean"], d["std"]))
        names = [f.name for f in dataclasses.fields(SPECS[kind])]
        return cls(**shared, spec=SPECS[kind](**{k: d[k] for k in names if k in d}))


class SampleSource(abc.ABC):
    """Indexable collection of same-shaped samples of one modality with int64 labels."""

    #: The modality of the samples (``DatasetInfo.kind``).
    kind: ClassVar[str]
    #: The dtype of every sample.
    dtype: ClassVar[np.dtype]
    labels: np.ndarray
    #: How the modality's ``stack`` turns samples into tensors, when the source decides it
    #: (text: the :class:`~semimatch.data.text.TextEncoding` of its tokenizer); else ``None``.
    encoding: Any = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @abc.abstractmethod
    def __getitem__(self, i: int) -> np.ndarray:
        """Sample ``i`` as an array of shape :attr:`sample_shape`."""

    @property
    @abc.abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """The shape shared by every sample."""

    def as_array(self) -> np.ndarray | None:
        """All samples as one ``(N, *sample_shape)`` array if held in memory, else ``None``."""
        return None

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Samples at ``indices`` stacked into a new ``(n, *sample_shape)`` array."""
        idx = np.asarray(indices, dtype=np.int64)
        arr = self.as_array()
        if arr is not None:
            return arr[idx]
        out = np.empty((len(idx), *self.sample_shape), dtype=self.dtype)
        for j, i in enumerate(idx):
            out[j] = self[int(i)]
        return out


class SubsetSource(SampleSource):
    """The samples ``indices`` of ``base``, in that order (a validation set carved from the
    training set: ``Split.val``)."""

    def __init__(self, base: SampleSource, indices: np.ndarray) -> None:
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.kind, self.dtype = base.kind, base.dtype  # type: ignore[misc]
        self.labels = base.labels[self.indices]
        self.encoding = base.encoding

    def __getitem__(self, i: int) -> np.ndarray:
        return self.base[int(self.indices[i])]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.base.sample_shape

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.base.gather(self.indices[np.asarray(indices, dtype=np.int64)])


class ImageSource(SampleSource):
    """Indexable collection of same-sized uint8 ``(H, W, C)`` images with int64 labels."""

    kind: ClassVar[str] = "image"
    dtype: ClassVar[np.dtype] = np.dtype(np.uint8)

    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` shared by every image."""

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.image_shape)


def _one_label_per_sample(labels: Any, n: int, samples: str, sample: str) -> np.ndarray:
    """``labels`` as int64 ``(n,)``; a count that differs from the samples' is an error."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise ValueError(
            f"labels: {labels.shape[0]} labels for {n} {samples}; "
            f"pass one label per {sample} (-1 = unknown)"
        )
    return labels


class FeatureSource(SampleSource):
    """Feature vectors held in memory as one float32 ``(N, D)`` array (already standardised:
    the samples are what the model sees; see :func:`semimatch.data.arrays.from_features`)."""

    kind: ClassVar[str] = "features"
    dtype: ClassVar[np.dtype] = np.dtype(np.float32)

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        if features.dtype != np.float32 or features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(
                f"features: expected a float32 (N, D) array with D >= 1, got {features.dtype} "
                f"{features.shape}; use from_features() to convert other inputs"
            )
        self.features = features
        self.labels = _one_label_per_sample(labels, len(features), "feature vectors", "row")

    def __getitem__(self, i: int) -> np.ndarray:
        return self.features[i]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (int(self.features.shape[1]),)

    def as_array(self) -> np.ndarray:
        return self.features


@dataclass(frozen=True)
class ImageRecord:
    """One readable image file of an image folder, as the folder reader found it.

    ``array`` holds the decoded uint8 ``(H, W, C)`` image when it is small enough to keep in
    memory (else ``None``: decoded on access); ``gray`` says the file itself is grayscale.
    """

    path: str
    label: int
    array: np.ndarray | None
    gray: bool


class ArraySource(ImageSource):
    """Images held in memory as one ``(N, H, W, C)`` uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(
                f"images: expected a uint8 (N, H, W, C) array with C in {{1, 3}}, got "
                f"{images.dtype} {images.shape}; use from_arrays() to convert other layouts"
            )
        self.images = images
        self.labels = _one_label_per_sample(labels, len(images), "images", "image")

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
        from semimatch.data.folders import decode_image  # folders builds these sources

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


class STLBinarySource(ImageSource):
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

    Every source holds samples of ``info.kind`` (images or feature vectors).

    ``train`` labels are known for the dataset's own images (``-1`` only for rows a user left
    unlabeled, e.g. :func:`from_arrays`); ``extra_unlabeled.labels`` carry ground truth where it
    exists (SVHN-extra) and ``-1`` otherwise - used only to monitor pseudo-label quality.
    """

    info: DatasetInfo
    train: SampleSource
    test: SampleSource | None
    extra_unlabeled: SampleSource | None
    #: Predefined labeled folds (indices into ``train``), e.g. STL-10's ten folds of 1,000.
    labeled_folds: tuple[np.ndarray, ...] | None = None
    #: The weak/strong views this data asks for (e.g. the feature noise of
    #: :func:`~semimatch.data.arrays.from_features`); ``None``: the modality's default views.
    views: Views | None = None
    #: How text labels were read: ``"index"`` (0..C-1) or ``"name"``
    #: (:mod:`~semimatch.data.text_datasets`); ``None`` for data whose labels are indices.
    label_kind: str | None = None
    #: Labeled samples that choose the best checkpoint instead of the test set (``val_dir``,
    #: USB's ``dev.json``); ``None``: none, or carved from ``train`` (``Split.val``).
    val: SampleSource | None = None


def channel_stats(source: ImageSource, max_images: int = 4096) -> tuple[tuple, tuple]:
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


def check_labels(labels: np.ndarray, num_classes: int, what: str, allow_unknown: bool) -> None:
    """Raise a ValueError naming the first label outside ``0..num_classes-1`` (or ``-1``)."""
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


def check_every_class_labeled(labels: Sequence[np.ndarray | None], num_classes: int) -> None:
    """Refuse a class of ``0..num_classes-1`` that no label names, where ``num_classes`` was
    inferred as the largest label + 1: 1-based labels (1..C) would otherwise train C + 1
    classes with an empty class 0 and no word said."""
    seen = np.zeros(num_classes, dtype=bool)
    for y in labels:
        if y is not None:
            seen[y[(y >= 0) & (y < num_classes)]] = True
    if not seen.all():
        missing = int(np.flatnonzero(~seen)[0])
        raise ValueError(
            f"labels: class {missing} has no labeled sample, yet the number of classes is taken "
            f"from the largest label ({num_classes - 1}); labels are class indices 0..C-1 "
            "(subtract 1 from 1-based labels), or pass num_classes or class_names if a class "
            "really has no labeled sample"
        )


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
        m, s = channel_stats(train)
        mean = m if mean is None else mean
        std = s if std is None else std
    h, w, c = train.image_shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std: need {c} values (one per channel), got {mean} / {std}")
    return DatasetInfo(
        name,
        int(num_classes),
        tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes)),
        ImageSpec(
            (int(h), int(w)),
            int(c),
            tuple(float(v) for v in mean),
            tuple(float(v) for v in std),
            bool(hflip),
        ),
    )
