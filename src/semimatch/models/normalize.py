"""``InputNormalizer``: a model wrapper that takes the pipeline's raw uint8 (or [0, 1] float)
images and normalises them per channel in one fused multiply-add."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["InputNormalizer"]


class InputNormalizer(nn.Module):
    """Wrap ``model`` so it takes raw images: uint8 NCHW in [0, 255] or float NCHW in [0, 1].

    Computes ``(x / 255 - mean) / std`` per channel (``x - mean) / std`` for float input) as one
    fused multiply-add with buffers, so ``.to(device)`` moves them and checkpoints keep them.
    The result has the buffers' dtype (float32 unless the wrapper was cast) and the input's
    memory format (channels_last stays channels_last); under ``torch.autocast`` the wrapped
    model's convolutions then run in the autocast dtype.

    Args:
        model: module taking float NCHW images.
        mean: per-channel mean in [0, 1] pixel units (``DatasetInfo.mean``).
        std: per-channel standard deviation in [0, 1] pixel units (``DatasetInfo.std``).
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
