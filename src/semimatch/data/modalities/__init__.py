"""Modalities: one object per kind of sample, which the rest of semimatch asks instead of the
kind.

* ``image`` (:mod:`.image`): uint8 NCHW batches; the model is wrapped in ``InputNormalizer``.
* ``features`` (:mod:`.features`): float32 ``(N, D)`` batches, standardised by the data layer.
* ``text`` (:mod:`.text`): int64 ``(N, 2, L)`` token batches for an ``hf:`` encoder.

:class:`~.base.Modality` lists the questions (stacking, views, config checks and derived
defaults, the backbone, what a run folder keeps, what ``evaluate``/``predict`` read). A new
modality is one subclass in a module here, added to :data:`MODALITIES` and to
``DatasetInfo``'s kinds (``semimatch.data.sources.KINDS``), plus its source type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from semimatch.data.modalities.base import Modality
from semimatch.data.modalities.features import FeatureModality
from semimatch.data.modalities.image import ImageModality
from semimatch.data.modalities.text import TextModality
from semimatch.data.sources import DatasetInfo, SSLDataset

if TYPE_CHECKING:
    from semimatch.config import Config

__all__ = ["MODALITIES", "check_config", "modality", "to_model_input", "wrap_model"]

MODALITIES: dict[str, Modality] = {
    m.kind: m for m in (ImageModality(), FeatureModality(), TextModality())
}


def modality(kind: str | DatasetInfo) -> Modality:
    """The :class:`Modality` of ``kind`` (a ``DatasetInfo.kind`` or a ``DatasetInfo``)."""
    key = kind.kind if isinstance(kind, DatasetInfo) else kind
    if key not in MODALITIES:
        raise ValueError(f"unknown data kind {key!r}; known: {', '.join(MODALITIES)}")
    return MODALITIES[key]


def check_config(cfg: Config, data: SSLDataset) -> None:
    """Options and backbones of one modality given with data of another would silently do
    nothing: refused; then the data's modality checks its own (``Modality.check_config``)."""
    from semimatch.config import ConfigError

    info, own = data.info, modality(data.info)
    for other in MODALITIES.values():
        if other is own:
            continue
        given = [n for n in other.options if getattr(cfg, n) is not None]
        if given:
            raise ConfigError(
                f"{', '.join(given)} shape {other.kind} inputs; {info.name} holds {info.kind} "
                "data - drop them"
            )
        if other.backbone_prefix and str(cfg.backbone or "").startswith(other.backbone_prefix):
            raise ConfigError(
                f"backbone={cfg.backbone!r} is {other.backbone_noun}; {info.name} holds "
                f"{info.kind} data - choose an image backbone (see --backbone in `semimatch "
                "train --help`)"
            )
    if cfg.strong_augment == "ctaugment" and own.kind != "image":
        raise ConfigError(
            f"--strong-augment ctaugment augments images; {info.name} holds {info.kind} data - "
            "drop --strong-augment"
        )
    own.check_config(cfg, data)


def to_model_input(inputs: Any, info: DatasetInfo) -> torch.Tensor:
    """A user's raw inputs as the model's input tensor for data described by ``info`` (CPU).

    Images ``(N, H, W[, C])``, uint8 or float in [0, 1], of the training size and channels ->
    uint8 NCHW; feature vectors ``(N, D)`` -> float32 ``(N, D)`` standardised with
    ``info.spec.mean``/``std``; a list of strings -> int64 ``(N, 2, L)`` token ids and attention
    mask, tokenized by ``info.spec.tokenizer`` (``semimatch.data.text.tokenizer_named``). Wrong
    shapes raise a ValueError saying what the model takes.
    """
    return modality(info).to_model_input(inputs, info)


def wrap_model(model: nn.Module, info: DatasetInfo) -> nn.Module:
    """The network that trains and predicts: ``model`` plus the input normalisation of
    ``info``'s modality (images: ``InputNormalizer``; features and text: ``model`` itself,
    taking the standardised vectors / the packed ``(N, 2, L)`` token batch)."""
    return modality(info).wrap_model(model, info)
