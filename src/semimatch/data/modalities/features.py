"""Feature vectors: float32 ``(D,)`` samples, float32 ``(N, D)`` batches, standardised.

The data layer standardises (:func:`semimatch.data.arrays.standardize` with
``FeatureSpec.mean/std``), so the model takes the batch as it is and is not wrapped; the views
are batched (Gaussian noise, :class:`~semimatch.data.views.FeatureViews`) and the backbone an
MLP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from semimatch.data.arrays import standardize, to_feature_matrix
from semimatch.data.modalities.base import Derive, Modality
from semimatch.data.sources import DatasetInfo
from semimatch.data.views import FeatureViews, Views

if TYPE_CHECKING:
    from semimatch.config import Config
    from semimatch.models.pretrained import InputSpec

__all__ = ["FeatureModality"]


class FeatureModality(Modality):
    kind = "features"
    dtype = torch.float32
    noun = "feature vectors"
    layout = "(D,)"
    milder_strong_view: ClassVar[str] = (
        "try smaller strong-view noise (from_features' strong noise)"
    )

    def stack(self, samples: Any, encoding: Any = None) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))

    def default_views(
        self,
        info: DatasetInfo,
        augment: str = "batched",
        strong_variant: str = "fixmatch",
        pad_frac: float = 0.125,
        weak: Any = None,
        strong: Any = None,
    ) -> Views:
        if weak is not None or strong is not None:
            raise ValueError(
                "weak_view/strong_view are per-image callables; feature vectors have "
                "batched views: pass them with the data (from_features(weak_noise=...)) or views="
            )
        return FeatureViews()

    def to_model_input(self, inputs: Any, info: DatasetInfo) -> torch.Tensor:
        """Raw ``(N, D)`` feature vectors -> standardised float32 ``(N, D)`` (as in training)."""
        x = to_feature_matrix(inputs, "X", dim=info.spec.dim)
        return torch.from_numpy(standardize(x, info.spec.mean, info.spec.std))

    def derive_backbone(self, info: DatasetInfo, derive: Derive) -> None:
        derive("backbone", "mlp", f"{info.spec.dim} features per sample")

    def build_backbone(
        self, cfg: Config, info: DatasetInfo, spec: InputSpec | None, training: bool
    ) -> nn.Module:
        from semimatch.config import ConfigError
        from semimatch.models import build_model

        if cfg.backbone != "mlp":
            raise ConfigError(
                f"backbone={cfg.backbone!r} takes images; feature vectors train with "
                "backbone='mlp' (the default for them) or your own model (model=)"
            )
        return build_model("mlp", info.num_classes, in_features=info.spec.dim, image_size=(1, 1))
