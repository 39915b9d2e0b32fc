"""Tests of semimatch.models.cnn: SmallCNN and MLP."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semimatch.models import MLP, InputNormalizer, SmallCNN, build_model, count_parameters

#: The ``bn_layers`` fixture (conftest): a model's BatchNorm layers.
BNLayers = Callable[[nn.Module], list[nn.Module]]


def test_small_models_conventions(bn_layers: BNLayers) -> None:
    for model in (SmallCNN(10, 1), MLP(64, 10)):
        assert all(bn.momentum == 0.1 for bn in bn_layers(model))
        acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
        assert acts and all(a.negative_slope == 0.1 for a in acts)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert all(c.bias is None for c in convs)
    assert count_parameters(SmallCNN(10, 3)) < 300_000
    assert count_parameters(SmallCNN(10, 1)) == 72_666


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


def test_mlp_rejects_bad_input_clearly() -> None:
    with pytest.raises(ValueError, match="in_features=12"):
        MLP(10, 3)(torch.zeros(2, 12))
    with pytest.raises(ValueError, match="floating"):
        MLP(10, 3)(torch.zeros(2, 10, dtype=torch.int64))
