"""Tests of semimatch.models: WRN/CNN/MLP backbones, registry, adapters, InputNormalizer."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semimatch.models import (
    MLP,
    MODELS,
    InputNormalizer,
    SmallCNN,
    WideResNet,
    build_model,
    count_parameters,
    set_bn_momentum,
    wrn_28_2,
    wrn_28_8,
    wrn_37_2,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def wrn28_2() -> WideResNet:
    torch.manual_seed(0)
    return wrn_28_2(10)


def _bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------- parameter counts


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


# ----------------------------------------------------------------------------- shapes


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


# ----------------------------------------------------------------------------- layer conventions


def test_wrn_conventions(wrn28_2: WideResNet) -> None:
    convs = [m for m in wrn28_2.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 28
    assert all(c.bias is None for c in convs)
    bns = _bn_layers(wrn28_2)
    assert all(bn.momentum == 0.001 and bn.eps == 0.001 for bn in bns)
    acts = [m for m in wrn28_2.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.1 for a in acts)
    assert not any(isinstance(m, nn.ReLU) for m in wrn28_2.modules())
    assert wrn28_2.fc.bias is not None


def test_wrn_initialisation() -> None:
    torch.manual_seed(0)
    model = wrn_28_2(10)
    for bn in _bn_layers(model):
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


def test_small_models_conventions() -> None:
    for model in (SmallCNN(10, 1), MLP(64, 10)):
        assert all(bn.momentum == 0.1 for bn in _bn_layers(model))
        acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
        assert acts and all(a.negative_slope == 0.1 for a in acts)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.bias is None for c in convs)
    assert count_parameters(SmallCNN(10, 3)) < 300_000
    assert count_parameters(SmallCNN(10, 1)) == 72_666


# ----------------------------------------------------------------------------- BN momentum


def test_bn_momentum_setting() -> None:
    model = build_model("wrn_28_2", 10, bn_momentum=0.05)
    bns = _bn_layers(model)
    assert len(bns) == 2 * 12 + 1 and all(bn.momentum == 0.05 for bn in bns)
    assert set_bn_momentum(model, 0.2) == 25
    assert all(bn.momentum == 0.2 for bn in bns)
    assert all(bn.momentum == 0.3 for bn in _bn_layers(build_model("cnn", 10, bn_momentum=0.3)))
    mlp = build_model("mlp", 10, in_features=8, bn_momentum=0.01)
    assert all(bn.momentum == 0.01 for bn in _bn_layers(mlp))
    # None keeps each model's own default.
    assert all(bn.momentum == 0.001 for bn in _bn_layers(build_model("wrn_28_2", 10)))
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


# ----------------------------------------------------------------------------- registry errors


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


def test_models_reject_bad_input_clearly(wrn28_2: WideResNet) -> None:
    with pytest.raises(ValueError, match="InputNormalizer"):
        wrn28_2(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        wrn28_2(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="in_features=12"):
        MLP(10, 3)(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="floating"):
        MLP(10, 3)(torch.zeros(2, 10, dtype=torch.int64))


# ----------------------------------------------------------------------------- adapters


def test_torchvision_adapter_one_channel() -> None:
    model = build_model(
        "torchvision:resnet18", 10, in_channels=1, image_size=(28, 28), bn_momentum=0.01
    )
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 10
    assert all(bn.momentum == 0.01 for bn in _bn_layers(model))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    rgb = build_model("torchvision:resnet18", 10)
    assert rgb.conv1.in_channels == 3
    assert all(bn.momentum == 0.1 for bn in _bn_layers(rgb))  # torchvision's own default


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


# ----------------------------------------------------------------------------- InputNormalizer

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)


def test_input_normalizer_matches_manual_normalisation() -> None:
    torch.manual_seed(0)
    model = SmallCNN(10, 3).eval()
    wrapped = InputNormalizer(model, MEAN, STD)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    manual = (x.float() / 255.0 - mean) / std
    torch.testing.assert_close(wrapped.normalize(x), manual, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(manual), rtol=1e-4, atol=1e-5)
        # float input in [0, 1] gives the same result as the uint8 path
        torch.testing.assert_close(wrapped(x.float() / 255.0), wrapped(x), rtol=1e-4, atol=1e-5)
    assert wrapped.mean == pytest.approx(MEAN) and wrapped.std == pytest.approx(STD)


def test_input_normalizer_buffers_follow_module() -> None:
    wrapped = InputNormalizer(SmallCNN(10, 1), (0.5,), (0.25,))
    assert {"scale_uint8", "scale_float", "shift"} <= set(wrapped.state_dict())
    wrapped = wrapped.double()
    out = wrapped(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8))
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        wrapped.normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)),
        torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64),
    )


def test_input_normalizer_errors() -> None:
    wrapped = InputNormalizer(SmallCNN(10, 3), MEAN, STD)
    with pytest.raises(ValueError, match="3 channels"):
        wrapped(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        wrapped(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="equal length"):
        InputNormalizer(SmallCNN(10, 3), MEAN, STD[:2])
    with pytest.raises(ValueError, match="std"):
        InputNormalizer(SmallCNN(10, 3), MEAN, (0.2, 0.0, 0.2))


def test_channels_last_forward_equals_contiguous(wrn28_2: WideResNet) -> None:
    torch.manual_seed(0)
    wrapped = InputNormalizer(wrn_28_2(10), MEAN, STD)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for train in (False, True):
        wrapped.train(train)
        with torch.no_grad():
            ref = wrapped(x)
            wrapped.to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            assert wrapped.normalize(x_cl).is_contiguous(memory_format=torch.channels_last)
            out = wrapped(x_cl)
            wrapped.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_close_to_fp32() -> None:
    torch.manual_seed(0)
    wrapped = InputNormalizer(wrn_28_2(10), MEAN, STD).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        ref = wrapped(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = wrapped(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05
    assert torch.equal(out.float().argmax(1), ref.argmax(1))


# ----------------------------------------------------------------------------- learning


def test_small_cnn_learns_digits_quickly() -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = torch.tensor(digits.images[:, None] * (255 / 16), dtype=torch.uint8)
    labels = torch.tensor(digits.target)
    torch.manual_seed(0)
    model = InputNormalizer(
        build_model("cnn", 10, in_channels=1, image_size=(8, 8)), (0.3,), (0.4,)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(0)
    train, test = np.arange(1200), np.arange(1200, len(labels))
    for _ in range(50):
        idx = torch.from_numpy(rng.choice(train, 64))
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    assert acc > 0.9
