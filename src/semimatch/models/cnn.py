"""Small CPU-friendly backbones: ``SmallCNN`` for small images and ``MLP`` for feature vectors.

Both use BatchNorm + LeakyReLU(0.1) like the WRN (reference "Shared recipe": Backbones) but
default to BatchNorm momentum 0.1: they are meant for runs of a few hundred to a few thousand
iterations, where the paper's 0.001 leaves the running statistics near their initial values
(reference "Short budgets").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.models.wrn import LEAKY_SLOPE, check_image_input

__all__ = ["SmallCNN", "MLP"]

DEFAULT_BN_MOMENTUM = 0.1


def _conv_bn_act(in_ch: int, out_ch: int, bn_momentum: float) -> list[nn.Module]:
    return [
        # No conv bias: the following BatchNorm's shift makes it redundant.
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch, momentum=bn_momentum),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    ]


def _init(module: nn.Module) -> None:
    # Same scheme as the WRN, so switching backbones does not change the starting point's scale.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _check_common(name: str, num_classes: int, bn_momentum: float, drop_rate: float) -> None:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 < bn_momentum <= 1.0:
        raise ValueError(f"{name}: bn_momentum must be in (0, 1], got {bn_momentum!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"{name}: drop_rate must be in [0, 1), got {drop_rate!r}")


class SmallCNN(nn.Module):
    """Three stages of two 3x3 conv-BN-LeakyReLU layers (width w, 2w, 4w), 2x2 max-pooling
    between stages, global average pooling, linear head.

    With ``width=16`` (default): 72,954 parameters (3 channels, 10 classes; 72,666 for 1
    channel), about 7.4 MMAC per 28x28 image and 0.6 MMAC per 8x8 image, i.e. a 960-image
    FixMatch step on 28x28 takes well under a second on 2 CPU cores (faster in channels_last).
    ``width=32`` (288k parameters) costs ~4x more. Pooling uses ``ceil_mode`` so any size
    >= 1 px works (8x8 digits run at 8 -> 4 -> 2 px).

    Args:
        num_classes: size of the linear head.
        in_channels: image channels.
        width: channels of the first stage.
        bn_momentum: BatchNorm momentum (PyTorch convention).
        drop_rate: dropout before the linear head.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 16,
        bn_momentum: float = DEFAULT_BN_MOMENTUM,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_common("SmallCNN", num_classes, bn_momentum, drop_rate)
        for arg, value in (("in_channels", in_channels), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SmallCNN: {arg} must be a positive int, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        w = width
        self.features = nn.Sequential(
            *_conv_bn_act(in_channels, w, bn_momentum),
            *_conv_bn_act(w, w, bn_momentum),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_act(w, 2 * w, bn_momentum),
            *_conv_bn_act(2 * w, 2 * w, bn_momentum),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_bn_act(2 * w, 4 * w, bn_momentum),
            *_conv_bn_act(4 * w, 4 * w, bn_momentum),
        )
        self.drop_rate = drop_rate
        self.fc = nn.Linear(4 * w, num_classes)
        self.num_features = 4 * w
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features (N, num_features) before the linear head."""
        check_image_input(x, self.in_channels, "SmallCNN")
        return torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) from float NCHW images."""
        feats = self.forward_features(x)
        if self.drop_rate > 0:
            feats = F.dropout(feats, p=self.drop_rate, training=self.training)
        return self.fc(feats)


class MLP(nn.Module):
    """Multi-layer perceptron for (N, in_features) float vectors: [Linear-BN-LeakyReLU] x L,
    then a linear head. Inputs with more dimensions are flattened from dim 1.

    Args:
        in_features: length of each input vector (e.g. C*H*W for flattened images).
        num_classes: size of the linear head.
        hidden: widths of the hidden layers.
        bn_momentum: BatchNorm momentum (PyTorch convention).
        drop_rate: dropout after each hidden layer.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        bn_momentum: float = DEFAULT_BN_MOMENTUM,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        _check_common("MLP", num_classes, bn_momentum, drop_rate)
        if not isinstance(in_features, int) or isinstance(in_features, bool) or in_features < 1:
            raise ValueError(
                f"MLP: in_features must be a positive int (the length of each input vector), "
                f"got {in_features!r}"
            )
        hidden = tuple(hidden)
        if not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
            raise ValueError(f"MLP: hidden must be a sequence of positive ints, got {hidden!r}")
        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        prev = in_features
        for h in hidden:
            # No bias before BatchNorm: its shift makes it redundant.
            layers += [
                nn.Linear(prev, h, bias=False),
                nn.BatchNorm1d(h, momentum=bn_momentum),
                nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
            ]
            if drop_rate > 0:
                layers.append(nn.Dropout(drop_rate))
            prev = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)
        self.num_features = prev
        _init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden representation (N, num_features) before the linear head."""
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"MLP: input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2:
            raise ValueError(
                f"MLP: input must have shape (N, {self.in_features}), got {tuple(x.shape)}"
            )
        if x.dim() > 2:
            x = torch.flatten(x, 1)
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"MLP: input has {x.shape[1]} features but the model was built with "
                f"in_features={self.in_features}; rebuild it with in_features={x.shape[1]}"
            )
        if not x.is_floating_point():
            raise ValueError(
                f"MLP: input dtype must be floating point, got {x.dtype}; use x.float()"
            )
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) from float feature vectors."""
        return self.fc(self.forward_features(x))
