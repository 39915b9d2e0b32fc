"""Data: datasets, labeled/unlabeled splits, augmentations and training/eval loaders.

``load_dataset`` / ``from_arrays`` give an :class:`SSLDataset`; a :class:`Split` picks its
labeled and unlabeled indices; :class:`TrainStream` turns both into seeded, sharded
:class:`SSLBatch` es and :func:`eval_batches` into un-augmented test batches.
"""

from semimatch.data.adapters import TorchImageSource, from_torch
from semimatch.data.datasets import (
    DATASETS,
    ArraySource,
    DatasetInfo,
    ImageSource,
    LazyImageSource,
    SSLDataset,
    default_root,
    from_arrays,
    load_dataset,
    read_idx,
)
from semimatch.data.loaders import SSLBatch, TrainStream, eval_batches
from semimatch.data.splits import (
    Split,
    balanced_split,
    fold_split,
    given_split,
    load_split,
    long_tailed_counts,
    long_tailed_split,
    save_split,
    split_summary,
)

__all__ = [
    "DATASETS",
    "ArraySource",
    "DatasetInfo",
    "ImageSource",
    "LazyImageSource",
    "SSLBatch",
    "SSLDataset",
    "TorchImageSource",
    "Split",
    "TrainStream",
    "balanced_split",
    "default_root",
    "eval_batches",
    "fold_split",
    "from_arrays",
    "from_torch",
    "given_split",
    "load_dataset",
    "load_split",
    "long_tailed_counts",
    "long_tailed_split",
    "read_idx",
    "save_split",
    "split_summary",
]
