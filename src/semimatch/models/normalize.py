"""``InputNormalizer``: a model wrapper that takes the pipeline's raw uint8 (or [0, 1] float)
images and normalises them per channel in one fused multiply-add; ``ResizeInput``: one that
resizes them to a pretrained backbone's resolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["InputNormalizer", "ResizeInput"]


class InputNormalizer(nn.Module):
    """Wrap ``model`` so it takes raw images: uint8 NCHW in [0, 255] or float NCHW in [0, 1].

    Computes ``(x / 255 - mean) / std`` per channel (``x - mean) / std`` for float input) as one
    fused multiply-add with buffers, so ``.to(device)`` moves them and checkpoints keep them.
    The result has the buffers' dtype (float32 unless the wrapper was cast) and the input's
    memory format (channels_last stays channels_last); under ``torch.autocast`` the wrapped
    model's convolutions then run in the autocast dtype.

    Args:
        model: module taking float NCHW images.
        mean: per-channel mean in [0, 1] pixel units (``ImageSpec.mean``).
        std: per-channel standard deviation in [0, 1] pixel units (``ImageSpec.std``).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"InputNormalizer: model must be an nn.Module, got {type(model)}")
        mean_t = torch.as_tensor(mean, dtype=torch.float64).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float64).flatten()
        if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(
                f"InputNormalizer: mean and std must be non-empty and of equal length (one value "
                f"per channel), got {len(mean_t)} and {len(std_t)}"
            )
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            raise ValueError(
                f"InputNormalizer: mean must be finite and std finite and > 0, got mean="
                f"{mean_t.tolist()}, std={std_t.tolist()}"
            )
        self.model = model
        self.in_channels = mean_t.numel()
        shape = (1, -1, 1, 1)
        # y = x * scale + shift; computed in float64 then stored as float32.
        self.register_buffer("scale_uint8", (1.0 / (255.0 * std_t)).float().view(shape))
        self.register_buffer("scale_float", (1.0 / std_t).float().view(shape))
        self.register_buffer("shift", (-mean_t / std_t).float().view(shape))

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean in [0, 1] units."""
        return tuple((-self.shift / self.scale_float).flatten().tolist())

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel standard deviation in [0, 1] units."""
        return tuple((1.0 / self.scale_float).flatten().tolist())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised float tensor the wrapped model sees."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"InputNormalizer: input must be a torch.Tensor, got {type(x)}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"InputNormalizer: input must have shape (N, {self.in_channels}, H, W) (NCHW, "
                f"{self.in_channels} channels as mean/std), got {tuple(x.shape)}"
            )
        if x.dtype == torch.uint8:
            scale = self.scale_uint8
        elif x.is_floating_point():
            scale = self.scale_float
        else:
            raise ValueError(
                f"InputNormalizer: input dtype must be uint8 (0-255) or floating point (0-1), "
                f"got {x.dtype}"
            )
        # .to keeps the memory format; addcmul is one elementwise pass (no temporaries).
        return torch.addcmul(self.shift, x.to(self.shift.dtype), scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model on the normalised images."""
        return self.model(self.normalize(x))

    def extra_repr(self) -> str:
        mean = ", ".join(f"{v:.4f}" for v in self.mean)
        std = ", ".join(f"{v:.4f}" for v in self.std)
        return f"mean=({mean}), std=({std})"


class ResizeInput(nn.Module):
    """Wrap ``model`` so every batch is resized to ``size`` (H, W) first: the resolution that
    pretrained weights were trained at (``pretrained.input_spec``).

    ``F.interpolate`` on the float batch with the weights' ``interpolation`` (bilinear/bicubic,
    ``align_corners=False`` like torchvision's tensor ``Resize``; nearest), antialiased when a side
    shrinks (as PIL and torchvision's ``antialias=True`` do).  Augmentation stays at the data's
    native resolution; only the model's input is resized (the cheapest place: one interpolation
    of the batch, no bigger images in the augmentation pipeline).  Resizing and the per-channel
    affine normalisation commute (interpolation weights sum to 1), so it may sit inside
    ``InputNormalizer``.  Unlike torchvision's PIL pipeline the resized values are not rounded
    to uint8 nor clamped.
    """

    def __init__(self, model: nn.Module, size: Sequence[int], interpolation: str) -> None:
        super().__init__()
        modes = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest"}
        if interpolation not in modes:
            raise ValueError(
                f"ResizeInput: interpolation must be one of {', '.join(modes)}, got "
                f"{interpolation!r}"
            )
        if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
            raise ValueError(f"ResizeInput: size must be (height, width) > 0, got {size!r}")
        self.model = model
        self.size = (int(size[0]), int(size[1]))
        self.mode = modes[interpolation]

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (float NCHW) at ``size`` (unchanged when it is already)."""
        if tuple(x.shape[-2:]) == self.size:
            return x
        shrinks = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
        if self.mode == "nearest":
            return nn.functional.interpolate(x, size=self.size, mode="nearest")
        return nn.functional.interpolate(
            x, size=self.size, mode=self.mode, align_corners=False, antialias=shrinks
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the wrapped model on the resized batch."""
        return self.model(self.resize(x))

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode}"
