"""Modalities: per kind of sample, how stored samples and raw inputs become model tensors.

A modality is a source type (:mod:`semimatch.data.sources`), its views
(:mod:`semimatch.data.views`) and the functions here: ``stack`` (gathered samples -> the batch
tensor the stream and evaluation hand out), ``to_model_input`` (a user's raw inputs -> that
tensor, for prediction) and ``wrap_model`` (the network the engine trains: the model plus the
input normalisation it needs). A new modality (e.g. text token sequences) adds one
:class:`Modality` to :data:`MODALITIES`.

* ``image``: uint8 NCHW batches; the model is wrapped in ``InputNormalizer`` (``/255``, then
  the per-channel mean/std of ``DatasetInfo``), so checkpoints carry the normalisation.
* ``features``: float32 ``(N, D)`` batches of standardised vectors; the data layer
  standardises (:func:`semimatch.data.arrays.standardize` with ``DatasetInfo.mean/std``), so
  the model takes the batch as it is and is not wrapped.
* ``text``: int64 ``(N, 2, L)`` batches, ``[:, 0]`` input ids and ``[:, 1]`` attention mask,
  padded to the longest text of the batch (the three views of a training step to one common
  ``L``; :mod:`semimatch.data.text`). The model takes that packed tensor as it is (as the
  ``hf:`` backbones' ``HFClassifier`` does) and is not wrapped; a module whose forward takes
  ``(input_ids, attention_mask)`` can be adapted with :class:`~semimatch.data.text.TokenInput`.
  A *ragged* modality: samples differ in length, so stacking takes a list of samples and the
  source's ``encoding``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.data.arrays import standardize, to_feature_matrix
from semimatch.data.sources import DatasetInfo
from semimatch.data.views import Views, image_views

__all__ = ["MODALITIES", "Modality", "modality", "to_model_input", "wrap_model"]


@dataclass(frozen=True)
class Modality:
    """What the stream, evaluation and prediction need to know about one kind of sample."""

    kind: str
    #: dtype of the batch tensors (an empty unlabeled batch is made with it).
    dtype: torch.dtype
    #: ``(gathered samples, source.encoding)`` -> the batch tensor ``(n, *input_shape)``;
    #: fixed-shape samples come as one ``(n, *sample_shape)`` array, ragged ones as a list.
    stack: Callable[[Any, Any], torch.Tensor]
    #: ``(info, augment, strong_variant, pad_frac, weak, strong) -> Views`` when the data
    #: brings none.
    default_views: Callable[..., Views]
    #: Raw user inputs -> the batch tensor (checked against ``info``), for prediction.
    to_model_input: Callable[[Any, DatasetInfo], torch.Tensor]
    #: ``(model, info) -> network`` taking the batch tensors.
    wrap_model: Callable[[nn.Module, DatasetInfo], nn.Module]
    #: Samples differ in shape (text): gathered as lists, no common ``sample_shape``.
    ragged: bool = False
    #: ``(groups of gathered samples, encoding) -> tensors`` for the views of one training
    #: step (text pads them to one common length); ``None``: ``stack`` each group.
    stack_views: Callable[[Any, Any], list[torch.Tensor]] | None = None

    def stack_groups(self, groups: list[Any], encoding: Any) -> list[torch.Tensor]:
        """The batch tensors of one step's views (``stack_views``, else ``stack`` each)."""
        if self.stack_views is not None:
            return self.stack_views(groups, encoding)
        return [self.stack(g, encoding) for g in groups]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def _stack_images(images: np.ndarray, encoding: Any = None) -> torch.Tensor:
    """uint8 NHWC -> contiguous uint8 NCHW."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def _images_to_model_input(images: Any, info: DatasetInfo) -> torch.Tensor:
    """uint8 (or float in [0, 1]) images ``(N, H, W[, C])`` of the training size -> uint8 NCHW."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C); got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 1.0 + 1e-6):
            raise ValueError("float images must be in [0, 1]; pass uint8 for 0..255 pixels")
        arr = np.round(arr * 255).astype(np.uint8)
    x = torch.as_tensor(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
    want = info.input_shape
    if len(x) and tuple(x.shape[1:]) != want:
        raise ValueError(
            f"images are {x.shape[2]}x{x.shape[3]} with {x.shape[1]} channel(s); this model "
            f"takes {want[1]}x{want[2]} with {want[0]}: resize them first "
            "(semimatch.predict(run, [paths]) reads and resizes image files for you)"
        )
    return x


def _wrap_image_model(model: nn.Module, info: DatasetInfo) -> nn.Module:
    from semimatch.models import InputNormalizer

    return InputNormalizer(model, info.mean, info.std)


def _image_views(
    info: DatasetInfo,
    augment: str = "pil",
    strong_variant: str = "fixmatch",
    pad_frac: float = 0.125,
    weak: Any = None,
    strong: Any = None,
) -> Views:
    return image_views(info, augment, strong_variant, pad_frac, weak, strong)


# --------------------------------------------------------------------------------------------
# Feature vectors
# --------------------------------------------------------------------------------------------
def _stack_features(features: np.ndarray, encoding: Any = None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))


def _features_to_model_input(features: Any, info: DatasetInfo) -> torch.Tensor:
    """Raw ``(N, D)`` feature vectors -> standardised float32 ``(N, D)`` (as in training)."""
    x = to_feature_matrix(features, "X", dim=info.channels)
    return torch.from_numpy(standardize(x, info.mean, info.std))


def _feature_views(
    info: DatasetInfo,
    augment: str = "batched",
    strong_variant: str = "fixmatch",
    pad_frac: float = 0.125,
    weak: Any = None,
    strong: Any = None,
) -> Views:
    from semimatch.data.views import FeatureViews

    if weak is not None or strong is not None:
        raise ValueError(
            "weak_augment/strong_augment are per-image callables; feature vectors have "
            "batched views: pass them with the data (from_features(weak_noise=...)) or views="
        )
    return FeatureViews()


def _wrap_feature_model(model: nn.Module, info: DatasetInfo) -> nn.Module:
    return model  # the batches are standardised already (module docstring)


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------
def _stack_text(samples: Any, encoding: Any) -> torch.Tensor:
    from semimatch.data.text import stack_texts

    return stack_texts(samples, encoding)


def _stack_text_views(groups: Any, encoding: Any) -> list[torch.Tensor]:
    from semimatch.data.text import stack_text_views

    return stack_text_views(groups, encoding)


def _text_to_model_input(texts: Any, info: DatasetInfo) -> torch.Tensor:
    from semimatch.data.text import texts_to_model_input

    return texts_to_model_input(texts, info)


def _text_views(
    info: DatasetInfo,
    augment: str = "pil",
    strong_variant: str = "fixmatch",
    pad_frac: float = 0.125,
    weak: Any = None,
    strong: Any = None,
) -> Views:
    from semimatch.data.text_views import TextViews, text_views

    if weak is not None or strong is not None:
        base = text_views()
        return TextViews(weak or base.weak, strong or base.strong)
    return text_views()


def _wrap_text_model(model: nn.Module, info: DatasetInfo) -> nn.Module:
    return model  # text models take the packed (N, 2, L) batch (module docstring)


MODALITIES: dict[str, Modality] = {
    "image": Modality(
        "image", torch.uint8, _stack_images, _image_views, _images_to_model_input, _wrap_image_model
    ),
    "features": Modality(
        "features",
        torch.float32,
        _stack_features,
        _feature_views,
        _features_to_model_input,
        _wrap_feature_model,
    ),
    "text": Modality(
        "text",
        torch.int64,
        _stack_text,
        _text_views,
        _text_to_model_input,
        _wrap_text_model,
        ragged=True,
        stack_views=_stack_text_views,
    ),
}


def modality(kind: str | DatasetInfo) -> Modality:
    """The :class:`Modality` of ``kind`` (a ``DatasetInfo.kind`` or a ``DatasetInfo``)."""
    key = kind.kind if isinstance(kind, DatasetInfo) else kind
    if key not in MODALITIES:
        raise ValueError(f"unknown data kind {key!r}; known: {', '.join(MODALITIES)}")
    return MODALITIES[key]


def to_model_input(inputs: Any, info: DatasetInfo) -> torch.Tensor:
    """A user's raw inputs as the model's input tensor for data described by ``info`` (CPU).

    Images ``(N, H, W[, C])``, uint8 or float in [0, 1], of the training size and channels ->
    uint8 NCHW; feature vectors ``(N, D)`` -> float32 ``(N, D)`` standardised with
    ``info.mean``/``info.std``; a list of strings -> int64 ``(N, 2, L)`` token ids and attention
    mask, tokenized by ``info.tokenizer`` (``semimatch.data.text.tokenizer_named``). Wrong
    shapes raise a ValueError saying what the model takes.
    """
    return modality(info).to_model_input(inputs, info)


def wrap_model(model: nn.Module, info: DatasetInfo) -> nn.Module:
    """The network that trains and predicts: ``model`` plus the input normalisation of
    ``info``'s modality (images: ``InputNormalizer``; features and text: ``model`` itself,
    taking the standardised vectors / the packed ``(N, 2, L)`` token batch)."""
    return modality(info).wrap_model(model, info)
