"""toymatch: a third-party method in one file, registered through an entry point.

Its weighting keeps a running mean of the weak-view confidence (a buffer, so checkpoints and
resume cover it) and keeps a row when its confidence reaches ``min(toy_tau, mean)``.  The
report draws its lambda(p) from the recorded threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.methods.blocks import step_lambda
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import BudgetDefault, register_method


class ToyWeighting(nn.Module):
    """``w = 1[q >= min(tau, mean q)]`` with an EMA ``mean`` of the batch confidence."""

    def __init__(self, tau: float, momentum: float) -> None:
        super().__init__()
        self.tau, self.momentum = float(tau), float(momentum)
        self.register_buffer("mean", torch.tensor(1.0))

    def update(self, probs: torch.Tensor) -> None:
        q = probs.max(dim=1).values.mean()
        self.mean.mul_(self.momentum).add_((1 - self.momentum) * q)

    def threshold(self) -> torch.Tensor:
        return torch.clamp(self.mean, max=self.tau)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs.max(dim=1).values >= self.threshold()).to(probs.dtype)

    def describe(self) -> dict:
        return {"type": "toy", "threshold": float(self.threshold()), "lambda_max": 1.0}


def _lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    return step_lambda(state["threshold"], q, state)


@register_method(
    formulas={"toy": (("threshold",), _lambda)},
    budget=(
        BudgetDefault(
            "toy_momentum",
            lambda K: 1 - 1 / max(K, 2),
            "budget of {K} iterations: 1 - 1/K",
            "derived from the iteration budget K, 1 - 1/K",
        ),
    ),
)
def toymatch(
    num_classes: int, *, toy_tau: float = 0.9, toy_momentum: float = 0.99, lambda_u: float = 1.0
) -> SSLAlgorithm:
    """A toy threshold at min(toy_tau, the running mean confidence).

    Args:
        num_classes: number of classes.
        toy_tau: the toy's ceiling of the threshold.
        toy_momentum: EMA momentum of the toy's mean confidence.
        lambda_u: unlabeled loss weight.
    """
    if not 0 < toy_tau <= 1:
        raise ValueError(f"toy_tau must be in (0, 1]; got {toy_tau}")
    return SSLAlgorithm(ToyWeighting(toy_tau, toy_momentum), lambda_u=lambda_u, name="toymatch")
