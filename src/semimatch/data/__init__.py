"""Data: datasets of any modality, labeled/unlabeled splits, views and training/eval loaders.

``load_dataset`` / ``from_arrays`` (images) / ``from_features`` (feature vectors) /
``load_text`` and ``from_texts`` (texts, tokenized once by ``tokenize_dataset``) give an
:class:`SSLDataset`; a :class:`Split` picks its labeled and unlabeled indices;
:class:`TrainStream` turns both into seeded, sharded :class:`SSLBatch` es and
:func:`eval_batches` into un-augmented test batches.

Layout: ``sources`` (source types, ``DatasetInfo``, ``SSLDataset``), ``named`` (CIFAR, SVHN,
STL-10, MNIST, Fashion-MNIST, digits), ``folders`` (image folders), ``arrays`` (in-memory
arrays), ``text``/``text_readers``/``text_views`` (texts, their files and views), ``views``
(weak/strong views per modality), ``modalities`` (one object per kind of sample: batches,
model inputs, config checks and defaults, reloading, prediction), ``loaders`` (the streams),
``splits``, ``augment``/``batched_augment`` (image views), ``adapters`` (torch datasets).
"""

from semimatch.data.adapters import TorchImageSource, from_torch
from semimatch.data.arrays import from_arrays, from_features
from semimatch.data.loaders import SSLBatch, TrainStream, eval_batches
from semimatch.data.modalities import to_model_input, wrap_model
from semimatch.data.named import DATASETS, default_root, load_dataset, read_idx
from semimatch.data.sources import (
    ArraySource,
    DatasetInfo,
    FeatureSource,
    FeatureSpec,
    ImageSource,
    ImageSpec,
    LazyImageSource,
    SampleSource,
    SSLDataset,
    TextSpec,
)
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
from semimatch.data.text import (
    TextEncoding,
    TextSample,
    TextSource,
    TokenInput,
    register_tokenizer,
    tokenize_dataset,
    tokenizer_named,
)
from semimatch.data.text_datasets import from_texts, load_text
from semimatch.data.text_views import STRONG_TEXT_VIEWS, TextViews, text_views
from semimatch.data.views import BatchViews, FeatureViews, SampleViews, Views

__all__ = [
    "DATASETS",
    "STRONG_TEXT_VIEWS",
    "TextEncoding",
    "TextSample",
    "TextSource",
    "TextViews",
    "TokenInput",
    "from_texts",
    "load_text",
    "register_tokenizer",
    "text_views",
    "tokenize_dataset",
    "tokenizer_named",
    "ArraySource",
    "BatchViews",
    "DatasetInfo",
    "FeatureSpec",
    "ImageSpec",
    "TextSpec",
    "FeatureSource",
    "FeatureViews",
    "ImageSource",
    "LazyImageSource",
    "SSLBatch",
    "SSLDataset",
    "SampleSource",
    "SampleViews",
    "TorchImageSource",
    "Split",
    "TrainStream",
    "Views",
    "balanced_split",
    "default_root",
    "eval_batches",
    "fold_split",
    "from_arrays",
    "from_features",
    "from_torch",
    "given_split",
    "load_dataset",
    "load_split",
    "long_tailed_counts",
    "long_tailed_split",
    "read_idx",
    "save_split",
    "split_summary",
    "to_model_input",
    "wrap_model",
]
