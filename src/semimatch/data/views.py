"""Weak and strong views, per modality: what the training stream makes of a sample.

A :class:`Views` object holds a modality's two views and says how they run:

* :class:`SampleViews` (``batched=False``): per-sample callables ``(sample, rng) -> sample``
  run in the loader's workers; the sample at global position ``g`` of view ``v`` of stream ``s``
  gets ``rng = numpy.random.default_rng([seed, s, v, g])``. Images with ``augment="pil"`` (the
  PIL pipelines of :mod:`semimatch.data.augment`, or a user's callables).
* :class:`BatchViews` (``batched=True``): modules ``(batch, generator) -> batch`` applied to a
  whole per-rank batch on ``augment_device``, with a CPU ``torch.Generator`` seeded from
  ``(seed, k, rank, view)``. Images with ``augment="batched"``
  (:mod:`semimatch.data.batched_augment`) and feature vectors (:class:`FeatureViews`).

Both keep a batch a pure function of (seed, iteration) (``semimatch.data.loaders``). Text views
(per-sample, on token ids) live in :mod:`semimatch.data.text_views`.

Feature views (FixMatch's weak/strong idea moved to a feature space; the same math as the
estimator's former per-sample ``FeaturePerturbation``), on standardised vectors ``z``:

- weak:   ``z + weak_noise * e``                    (``e ~ N(0, I)``)
- strong: ``m * z + strong_noise * e``, ``m_j ~ Bernoulli(1 - strong_dropout)``: a zeroed
  standardised feature sits at its mean ("feature missing").

Each is one batched draw per view (``torch.rand`` for the mask, then ``torch.randn``).
"""

from __future__ import annotations

import abc
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from semimatch.data.sources import DatasetInfo

__all__ = [
    "BatchViews",
    "FeatureNoise",
    "FeatureViews",
    "SampleViews",
    "Views",
    "image_views",
]

#: A per-sample view: ``(sample, rng) -> sample`` (images: uint8 ``(H, W, C)``).
SampleView = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class Views(abc.ABC):
    """A modality's weak and strong views (module docstring)."""

    #: True: ``weak``/``strong`` are batched modules ``(x, generator) -> x``; False: per-sample
    #: callables ``(sample, rng) -> sample`` run in loader workers.
    batched: ClassVar[bool]
    weak: Any
    strong: Any

    def to(self, device: str | torch.device) -> Views:
        """Move batched views' state to ``device`` (no-op for per-sample views); ``self``."""
        return self

    def fit(self, pool: Any) -> Views:
        """Fit views that learn from the unlabeled pool (``pool[i]`` is a stored sample; UDA's
        TF-IDF text view); the training stream calls it once before its first batch and uses
        the views it returns (a fitted copy, or ``self`` when nothing learns: the default)."""
        return self

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weak={self.weak!r}, strong={self.strong!r})"


class SampleViews(Views):
    """Per-sample views ``(sample, rng) -> sample``, run in the loader's workers."""

    batched: ClassVar[bool] = False

    def __init__(self, weak: SampleView, strong: SampleView) -> None:
        self.weak, self.strong = weak, strong


class BatchViews(Views):
    """Batched views: modules ``(batch, generator) -> batch`` on ``augment_device``."""

    batched: ClassVar[bool] = True

    def __init__(self, weak: nn.Module, strong: nn.Module) -> None:
        self.weak, self.strong = weak, strong

    def to(self, device: str | torch.device) -> BatchViews:
        self.weak.to(device)
        self.strong.to(device)
        return self


def image_views(
    info: DatasetInfo,
    augment: str = "pil",
    strong_variant: str = "fixmatch",
    pad_frac: float = 0.125,
    weak: SampleView | None = None,
    strong: SampleView | None = None,
) -> Views:
    """The image views: FixMatch's weak (flip + crop) and strong (RandAugment + Cutout) views,
    as PIL per-image pipelines (``augment="pil"``; ``weak``/``strong`` replace them) or as
    batched tensor ops (``augment="batched"``)."""
    from semimatch.data.augment import StrongAugment, WeakAugment

    if strong_variant == "ctaugment":  # its rates change every step: the training process's
        if augment != "batched" or weak is not None or strong is not None:
            raise ValueError("strong_variant='ctaugment' runs batched: use augment='batched'")
        from semimatch.data.batched_augment import BatchedWeakAugment
        from semimatch.data.ctaugment import CTAugment

        size, hflip = info.spec.image_size, info.spec.hflip
        return BatchViews(
            BatchedWeakAugment(size, hflip, pad_frac=pad_frac),
            CTAugment(size, hflip, pad_frac=pad_frac),
        )
    if augment == "batched":
        if weak is not None or strong is not None:
            raise ValueError(
                "weak_view/strong_view are per-image callables (img, rng) -> "
                "img; they need augment='pil', not 'batched'"
            )
        from semimatch.data.batched_augment import BatchedStrongAugment, BatchedWeakAugment

        return BatchViews(
            BatchedWeakAugment(info.spec.image_size, info.spec.hflip, pad_frac=pad_frac),
            BatchedStrongAugment(
                info.spec.image_size, info.spec.hflip, variant=strong_variant, pad_frac=pad_frac
            ),
        )
    return SampleViews(
        weak or WeakAugment(info.spec.image_size, info.spec.hflip, pad_frac),
        strong or StrongAugment(info.spec.image_size, info.spec.hflip, strong_variant, pad_frac),
    )


class FeatureNoise(nn.Module):
    """One feature-space view of a float ``(N, D)`` batch: ``m * x + noise * e`` (module
    docstring); ``m`` keeps each entry with probability ``1 - dropout``, ``e ~ N(0, I)``.

    Both draws come from ``generator`` (CPU; the stream seeds it per (seed, k, rank, view)) as
    one ``(N, D)`` tensor each, the mask first, and are moved to ``x``'s device.
    """

    def __init__(self, noise: float, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise >= 0:
            raise ValueError(f"noise must be a number >= 0; got {noise!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.noise, self.dropout = float(noise), float(dropout)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(
                f"FeatureNoise: expected a float (N, D) batch, got {x.dtype} {x.shape}"
            )
        shape, dev = x.shape, x.device
        if self.dropout > 0:
            keep = torch.rand(shape, generator=generator) >= self.dropout
            x = x * keep.to(dev)
        if self.noise > 0:
            x = x + self.noise * torch.randn(shape, generator=generator, dtype=x.dtype).to(dev)
        return x

    def extra_repr(self) -> str:
        return f"noise={self.noise}, dropout={self.dropout}"


class FeatureViews(BatchViews):
    """The feature-vector views: weak ``FeatureNoise(weak_noise)``, strong
    ``FeatureNoise(strong_noise, strong_dropout)``, in units of each feature's std."""

    def __init__(
        self, weak_noise: float = 0.1, strong_noise: float = 0.5, strong_dropout: float = 0.5
    ) -> None:
        super().__init__(FeatureNoise(weak_noise), FeatureNoise(strong_noise, strong_dropout))
