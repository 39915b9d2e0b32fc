"""Tests of semimatch.models.wrn: the WideResNets' sizes, layer conventions and init."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semimatch.models import WideResNet, count_parameters, wrn_28_2, wrn_28_8, wrn_37_2

#: The ``bn_layers`` fixture (conftest): a model's BatchNorm layers.
BNLayers = Callable[[nn.Module], list[nn.Module]]


def test_wrn_28_2_has_exactly_the_paper_parameter_count(wrn28_2: WideResNet) -> None:
    assert count_parameters(wrn28_2) == 1_467_610
    assert wrn28_2.depth == 28
    # Only the stem changes with the channel count: 9 * 16 * (3 - 1) fewer weights.
    assert count_parameters(wrn_28_2(10, in_channels=1)) == 1_467_610 - 9 * 16 * 2


def test_wrn_28_8_and_37_2_parameter_counts() -> None:
    # Verified against the USB/TorchSSL definitions (wrn.py, wrn_var.py) with bias-free convs.
    big = wrn_28_8(100)
    assert count_parameters(big) == 23_401_012
    assert big.depth == 28
    # Still classifies at a tiny size thanks to global pooling.
    assert big(torch.randn(2, 3, 8, 8)).shape == (2, 100)
    stl = wrn_37_2(10)
    assert count_parameters(stl) == 5_929_434
    assert stl.depth == 37
    assert stl.num_features == 256


def test_wrn_conventions(wrn28_2: WideResNet, bn_layers: BNLayers) -> None:
    convs = [m for m in wrn28_2.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 28
    assert all(c.bias is None for c in convs)
    bns = bn_layers(wrn28_2)
    assert all(bn.momentum == 0.001 and bn.eps == 0.001 for bn in bns)
    acts = [m for m in wrn28_2.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, nn.ReLU) for m in wrn28_2.modules())
    assert wrn28_2.fc.bias is not None


def test_wrn_initialisation(bn_layers: BNLayers) -> None:
    torch.manual_seed(0)
    model = wrn_28_2(10)
    for bn in bn_layers(model):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert torch.all(model.fc.bias == 0)
    # kaiming normal, fan_out, gain sqrt(2): std = sqrt(2 / (out_channels * k * k)).
    w = model.blocks[2][1].conv2.weight  # 128 -> 128, 3x3: 147k samples
    assert w.std().item() == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.02)
    # xavier normal: std = sqrt(2 / (fan_in + fan_out)).
    big = wrn_28_8(100)
    assert big.fc.weight.std().item() == pytest.approx((2 / (512 + 100)) ** 0.5, rel=0.05)


def test_every_wrn_parameter_gets_a_gradient(wrn28_2: WideResNet) -> None:
    # Some PyTorch ports leave the first block's bn1 of groups 2 and 3 unused (dead params).
    model = wrn_28_2(10)
    loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert dead == []


def test_wrn_rejects_bad_input_clearly(wrn28_2: WideResNet) -> None:
    with pytest.raises(ValueError, match="InputNormalizer"):
        wrn28_2(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        wrn28_2(torch.zeros(2, 1, 32, 32))
