"""Images: uint8 ``(H, W, C)`` samples, uint8 NCHW batches, normalised inside the model.

The model is wrapped in ``InputNormalizer`` (``/255``, then the per-channel mean/std of
``DatasetInfo``), so checkpoints carry the normalisation; a pretrained ``timm:``/
``torchvision:`` backbone sees its weights' resolution and normalisation instead
(``input_spec``). Prediction reads image files (and folders of them) as training decoded them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from semimatch.data.modalities.base import Derive, Modality, PredictInputs
from semimatch.data.sources import DatasetInfo, SampleSource
from semimatch.data.views import Views, image_views

if TYPE_CHECKING:
    from semimatch.config import Config
    from semimatch.models.pretrained import InputSpec

__all__ = ["ImageModality"]


class ImageModality(Modality):
    kind = "image"
    dtype = torch.uint8
    noun = "images"
    spatial = True
    per_sample_views = True
    default_augment = "pil"
    channels_last = True
    layout = "(H, W, C)"
    milder_strong_view: ClassVar[str] = (
        "try --strong-augment usb or a milder view as strong_view= (Python), e.g. one "
        "without the transforms that change your images' class"
    )

    def stack(self, samples: Any, encoding: Any = None) -> torch.Tensor:
        """uint8 NHWC -> contiguous uint8 NCHW."""
        return torch.from_numpy(np.ascontiguousarray(samples)).permute(0, 3, 1, 2).contiguous()

    def default_views(
        self,
        info: DatasetInfo,
        augment: str = "pil",
        strong_variant: str = "fixmatch",
        pad_frac: float = 0.125,
        weak: Any = None,
        strong: Any = None,
    ) -> Views:
        return image_views(info, augment, strong_variant, pad_frac, weak, strong)

    def to_model_input(self, inputs: Any, info: DatasetInfo) -> torch.Tensor:
        """uint8 (or float in [0, 1]) images ``(N, H, W[, C])`` of the training size -> uint8
        NCHW."""
        arr = np.asarray(inputs)
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

    def wrap_model(self, model: nn.Module, info: DatasetInfo) -> nn.Module:
        from semimatch.models import InputNormalizer

        return InputNormalizer(model, info.spec.mean, info.spec.std)

    def derive_backbone(self, info: DatasetInfo, derive: Derive) -> None:
        small = max(info.spec.image_size) <= 28
        why = f"{'<=' if small else '>'} 28 px images"
        derive("backbone", "cnn" if small else "wrn_28_2", why)

    def input_spec(self, cfg: Config) -> InputSpec | None:
        """The input resolution and normalisation of a pretrained ``timm:``/``torchvision:``
        backbone (``models.pretrained.input_spec``: its weights' metadata), else None.

        Pretrained weights see inputs as they were trained, at their resolution (e.g. 224 px)
        and normalised with their mean/std, so ``build_parts`` resizes every batch inside the
        model (``ResizeInput``), after augmentation at the data's native resolution.
        """
        from semimatch.config import ConfigError
        from semimatch.models.pretrained import input_spec

        name = str(cfg.backbone or "")
        if cfg.pretrained in (None, False) or not name.startswith(("timm:", "torchvision:")):
            return None  # build_parts refuses pretrained for the others
        try:
            return input_spec(name)
        except ValueError as e:
            raise ConfigError(
                f"pretrained: {e}; semimatch resizes and normalises inputs as the weights were "
                "trained, and knows that only for architectures the library has weights for"
            ) from None

    def build_backbone(
        self, cfg: Config, info: DatasetInfo, spec: InputSpec | None, training: bool
    ) -> nn.Module:
        from semimatch.models import build_model

        pretrained = {} if cfg.pretrained is None else {"pretrained": cfg.pretrained}
        size = info.spec.image_size if spec is None else spec.size
        name, C = str(cfg.backbone), info.num_classes
        return build_model(name, C, in_channels=info.spec.channels, image_size=size, **pretrained)

    def labeled_files(
        self, path: str, cfg: Config, info: DatasetInfo, reading: dict[str, Any]
    ) -> SampleSource:
        """Labeled images ``path/<class>/<image>``, decoded as training decodes images."""
        from semimatch.data.folders import labeled_folder

        if any(reading.get(k) is not None for k in ("text_column", "label_column", "header")):
            raise ValueError(
                "text_column, label_column and header read text files; this run classifies images"
            )
        skip = reading.get("skip_corrupt")
        skip = cfg.skip_corrupt if skip is None else skip
        return labeled_folder(
            path, info.class_names, info.spec.image_size, info.spec.channels, skip
        )

    def predict_inputs(self, inputs: Any, info: DatasetInfo) -> PredictInputs:
        """An image array as it is; image files and folders (a folder stands for the images
        under it, recursively, sorted) read at the model's size (``folders.load_images``)."""
        from semimatch.data.folders import image_files, load_images

        if not isinstance(inputs, (list, tuple, str, os.PathLike)):
            return PredictInputs(inputs)
        paths: list[str] = []
        for given in [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs:
            given = os.path.expanduser(os.fspath(given))
            found = image_files(given) if os.path.isdir(given) else [given]
            if not found:
                raise ValueError(f"no image files under {given}")
            paths += found
        return PredictInputs(load_images(paths, info.spec.image_size, info.spec.channels), paths)
