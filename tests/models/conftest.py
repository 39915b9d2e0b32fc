"""Shared fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from semimatch.models import WideResNet, wrn_28_2

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def wrn28_2() -> WideResNet:
    torch.manual_seed(0)
    return wrn_28_2(10)


@pytest.fixture
def bn_layers() -> Callable[[nn.Module], list[nn.Module]]:
    """The BatchNorm layers of a model (any kind: 1d/2d, sync)."""
    return lambda model: [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
