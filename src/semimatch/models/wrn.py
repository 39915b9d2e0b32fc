"""FixMatch-style Wide ResNet (reference "Shared recipe": Backbones).

Pre-activation basic blocks, BatchNorm with momentum 0.001 (PyTorch convention, i.e. the
TensorFlow decay 0.999 of the FixMatch code) and eps 0.001, LeakyReLU slope 0.1, bias-free
convolutions, global average pooling and a linear head with bias.

Block semantics follow the authors' TensorFlow code (google-research/fixmatch,
``libml/models.py``): the residual branch always starts from ``act = lrelu(bn(x))``; the
shortcut takes the raw ``x`` except in the very first block of the network
(``activate_before_residual``), where it takes ``act``. The popular PyTorch ports differ
slightly (TorchSSL feeds the *raw* input to ``conv1`` in the first block of groups 2 and 3,
leaving that block's ``bn1`` unused; USB activates the shortcut of every first block); all
variants have the same parameters, so parameter counts and checkpoint shapes agree.

Named networks count their convolution layers, shortcuts included:
WRN-28-k = 3 groups x 4 blocks (CIFAR, SVHN), WRN-37-2 = 4 groups x 4 blocks with a stride-2
first group (STL-10 96x96, as USB's ``wrn_var_37_2``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideResNet", "wrn_28_2", "wrn_28_8", "wrn_37_2"]

BN_MOMENTUM = 0.001
BN_EPS = 0.001
LEAKY_SLOPE = 0.1


def check_image_input(x: torch.Tensor, in_channels: int, model_name: str) -> None:
    """Raise ValueError unless ``x`` is a float NCHW batch with ``in_channels`` channels.

    Metadata checks only (no device sync), so they are free inside the training loop.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{model_name}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(
            f"{model_name}: input must have shape (N, {in_channels}, H, W) (float NCHW images), "
            f"got {tuple(x.shape)}; convert the images or build the model with the matching "
            "in_channels"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"{model_name}: input dtype must be floating point, got {x.dtype}; wrap the model in "
            "semimatch.models.InputNormalizer to feed uint8 images"
        )


class _BasicBlock(nn.Module):
    """Pre-activation residual block: ``shortcut(x) + conv2(act(bn2(conv1(act(bn1(x))))))``."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        stride: int,
        activate_before_residual: bool,
        bn_momentum: float,
        drop_rate: float,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum, eps=BN_EPS)
        self.relu1 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum, eps=BN_EPS)
        self.relu2 = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.activate_before_residual = activate_before_residual
        # A 1x1 projection is needed whenever the identity cannot be added (width or stride change).
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In-place activations on fresh BatchNorm outputs: BN's backward needs its input, not
        # its output, so this is safe and saves a full activation copy per layer.
        act = self.relu1(self.bn1(x))
        residual = act if self.activate_before_residual else x
        if self.shortcut is not None:
            residual = self.shortcut(residual)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return residual + self.conv2(out)


class WideResNet(nn.Module):
    """FixMatch Wide ResNet; ``forward`` maps float NCHW images to logits (N, num_classes).

    Args:
        num_classes: size of the linear head.
        in_channels: image channels (1 or 3 usually; any positive number works).
        widen_factor: k of WRN-d-k; group g has ``16 * k * 2**g`` channels.
        blocks_per_group: residual blocks per group (4 for WRN-28 and WRN-37).
        num_groups: number of groups; every group after the first halves the resolution.
        first_stride: stride of the first group (1 for 32x32 inputs, 2 for STL-10's 96x96).
        bn_momentum: BatchNorm momentum, PyTorch convention (0.001 = TF decay 0.999).
        drop_rate: dropout between the two convolutions of each block (0 in FixMatch).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widen_factor: int = 2,
        blocks_per_group: int = 4,
        num_groups: int = 3,
        first_stride: int = 1,
        bn_momentum: float = BN_MOMENTUM,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        for arg, value in (
            ("num_classes", num_classes),
            ("in_channels", in_channels),
            ("widen_factor", widen_factor),
            ("blocks_per_group", blocks_per_group),
            ("num_groups", num_groups),
            ("first_stride", first_stride),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"WideResNet: {arg} must be a positive int, got {value!r}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"WideResNet: bn_momentum must be in (0, 1], got {bn_momentum!r}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"WideResNet: drop_rate must be in [0, 1), got {drop_rate!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        widths = [16 * widen_factor * 2**g for g in range(num_groups)]
        # Conv layers incl. shortcuts: stem + 2 per block + one projection per group.
        self.depth = 1 + 2 * blocks_per_group * num_groups + num_groups

        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        groups = []
        in_planes = 16
        for g, width in enumerate(widths):
            blocks = []
            for b in range(blocks_per_group):
                first = b == 0
                blocks.append(
                    _BasicBlock(
                        in_planes if first else width,
                        width,
                        stride=(first_stride if g == 0 else 2) if first else 1,
                        # Only the network's first block activates its shortcut input (TF code).
                        activate_before_residual=first and g == 0,
                        bn_momentum=bn_momentum,
                        drop_rate=drop_rate,
                    )
                )
            groups.append(nn.Sequential(*blocks))
            in_planes = width
        self.blocks = nn.Sequential(*groups)
        self.bn = nn.BatchNorm2d(in_planes, momentum=bn_momentum, eps=BN_EPS)
        self.relu = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        self._init_weights()

    def _init_weights(self) -> None:
        # Same scheme as the FixMatch PyTorch ports (TorchSSL / USB), so training dynamics match.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally pooled features (N, num_features) before the linear head."""
        check_image_input(x, self.in_channels, "WideResNet")
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        # Global pooling makes any input size >= 1 px valid; flatten copes with channels_last.
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) from float NCHW images."""
        return self.fc(self.forward_features(x))


def wrn_28_2(
    num_classes: int, in_channels: int = 3, bn_momentum: float = BN_MOMENTUM, drop_rate: float = 0.0
) -> WideResNet:
    """WRN-28-2 (1,467,610 parameters for 10 classes), the CIFAR-10/SVHN backbone."""
    return WideResNet(num_classes, in_channels, 2, 4, 3, 1, bn_momentum, drop_rate)


def wrn_28_8(
    num_classes: int, in_channels: int = 3, bn_momentum: float = BN_MOMENTUM, drop_rate: float = 0.0
) -> WideResNet:
    """WRN-28-8 (23.4M parameters for 100 classes), the CIFAR-100 backbone of FixMatch."""
    return WideResNet(num_classes, in_channels, 8, 4, 3, 1, bn_momentum, drop_rate)


def wrn_37_2(
    num_classes: int,
    in_channels: int = 3,
    bn_momentum: float = BN_MOMENTUM,
    drop_rate: float = 0.0,
    first_stride: int = 2,
) -> WideResNet:
    """WRN-37-2, the STL-10 backbone: 4 groups of 4 blocks (32-256 channels).

    ``first_stride=2`` as in USB/TorchSSL (96 -> 48 px before the first group); the FixMatch TF
    code uses 1, which quadruples the compute at the same parameter count.
    """
    return WideResNet(num_classes, in_channels, 2, 4, 4, first_stride, bn_momentum, drop_rate)
