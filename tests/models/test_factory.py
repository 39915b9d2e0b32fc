"""Tests of semimatch.models.factory: build_model, its registry errors, BN momentum, adapters."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import nn

from semimatch.models import MODELS, SmallCNN, build_model, count_parameters, set_bn_momentum

#: The ``bn_layers`` fixture (conftest): a model's BatchNorm layers.
BNLayers = Callable[[nn.Module], list[nn.Module]]


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [
        ("wrn_28_2", 3, 32),
        ("wrn_28_2", 1, 28),
        ("wrn_28_2", 1, 8),
        ("wrn_37_2", 3, 96),
        ("wrn_37_2", 1, 8),
        ("cnn", 1, 8),
        ("cnn", 1, 28),
        ("cnn", 3, 32),
        ("cnn", 3, 5),
    ],
)
def test_output_shapes(name: str, channels: int, size: int) -> None:
    model = build_model(name, 7, in_channels=channels, image_size=(size, size))
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    assert out.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, size, size + 3)).shape == (1, 7)


def test_mlp_shapes_and_flattening() -> None:
    model = build_model("mlp", 4, in_features=12, hidden=(16,))
    assert model(torch.randn(5, 12)).shape == (5, 4)
    assert model(torch.randn(5, 3, 2, 2)).shape == (5, 4)  # NCHW is flattened
    assert count_parameters(model) == 12 * 16 + 2 * 16 + 16 * 4 + 4
    # On images (--backbone mlp) the input is the flattened C*H*W pixels.
    on_images = build_model("mlp", 10, in_channels=1, image_size=(8, 8))
    assert on_images.in_features == 64 and on_images(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_bn_momentum_setting(bn_layers: BNLayers) -> None:
    model = build_model("wrn_28_2", 10, bn_momentum=0.05)
    bns = bn_layers(model)
    assert len(bns) == 2 * 12 + 1 and all(bn.momentum == 0.05 for bn in bns)
    assert set_bn_momentum(model, 0.2) == 25
    assert all(bn.momentum == 0.2 for bn in bns)
    assert all(bn.momentum == 0.3 for bn in bn_layers(build_model("cnn", 10, bn_momentum=0.3)))
    mlp = build_model("mlp", 10, in_features=8, bn_momentum=0.01)
    assert all(bn.momentum == 0.01 for bn in bn_layers(mlp))
    # None keeps each model's own default.
    assert all(bn.momentum == 0.001 for bn in bn_layers(build_model("wrn_28_2", 10)))
    assert set_bn_momentum(nn.Linear(2, 2), 0.1) == 0
    for bad in (0.0, 1.5, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="momentum"):
            set_bn_momentum(model, bad)
        with pytest.raises(ValueError, match="bn_momentum"):
            build_model("cnn", 10, bn_momentum=bad)


def test_bn_momentum_governs_running_stats() -> None:
    model = SmallCNN(3, 1, bn_momentum=0.5)
    bn = model.features[1]
    model(torch.randn(8, 1, 8, 8) + 3.0)
    # running = (1 - m) * 0 + m * batch_mean, batch_mean != 0 for shifted inputs.
    first = bn.running_mean.clone()
    assert first.abs().sum() > 0
    set_bn_momentum(model, 1.0)
    x = torch.randn(8, 1, 8, 8)
    model(x)
    with torch.no_grad():
        batch_mean = model.features[0](x).mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, batch_mean, rtol=1e-4, atol=1e-5)


def test_registry_names_and_errors() -> None:
    assert MODELS == ("wrn_28_2", "wrn_28_8", "wrn_37_2", "cnn", "mlp")
    with pytest.raises(ValueError, match=r"Did you mean 'wrn_28_2'\?.*Valid names: wrn_28_2"):
        build_model("wrn_28_22", 10)
    with pytest.raises(ValueError, match="Did you mean 'cnn'"):
        build_model("CNN", 10)
    with pytest.raises(ValueError, match="Did you mean .wrn_37_2."):
        build_model("WRN-37-2", 10)
    with pytest.raises(ValueError, match="Valid names"):
        build_model("resnet:resnet18", 10)
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        build_model("torchvision:resnet81", 10)
    with pytest.raises(ValueError, match="in_features must be a positive int"):
        build_model("mlp", 10, in_features=0)
    with pytest.raises(ValueError, match=r"unexpected option\(s\) \['widht'\].*'width'"):
        build_model("cnn", 10, widht=8)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("cnn", 1)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("cnn", 10, in_channels=0)
    with pytest.raises(ValueError, match="image_size"):
        build_model("cnn", 10, image_size=(32,))
    with pytest.raises(ValueError, match="weights"):
        build_model("torchvision:resnet18", 10, weights="DEFAULT")


def test_torchvision_adapter_one_channel(bn_layers: BNLayers) -> None:
    model = build_model(
        "torchvision:resnet18", 10, in_channels=1, image_size=(28, 28), bn_momentum=0.01
    )
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 10
    assert all(bn.momentum == 0.01 for bn in bn_layers(model))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    rgb = build_model("torchvision:resnet18", 10)
    assert rgb.conv1.in_channels == 3
    assert all(bn.momentum == 0.1 for bn in bn_layers(rgb))  # torchvision's own default


def test_torchvision_adapter_rejects_unsupported_size() -> None:
    with pytest.raises(ValueError, match="cannot process images of shape"):
        build_model("torchvision:squeezenet1_1", 10, image_size=(8, 8))


def test_timm_adapter() -> None:
    pytest.importorskip("timm")
    model = build_model("timm:resnet18", 10, in_channels=1, image_size=(32, 32))
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed")
def test_timm_missing_gives_clear_error() -> None:
    with pytest.raises(ImportError, match="pip install timm"):
        build_model("timm:resnet18", 10)
