"""FixMatch (Sohn et al., NeurIPS 2020): a fixed confidence threshold on the weak view, the loss
on the strong view; its step weighting ``FixedThreshold`` is shared with Pseudo-Label."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.methods.blocks import check_lambda_max, check_probs, check_tau, step_lambda
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["FixedThreshold", "fixed_lambda", "fixmatch"]


class FixedThreshold(nn.Module):
    """FixMatch's step: ``w = lambda_max * 1[max_c p >= tau]`` (reference, FixMatch weight)."""

    def __init__(self, tau: float = 0.95, lambda_max: float = 1.0) -> None:
        super().__init__()
        self.tau = check_tau(tau)
        self.lambda_max = check_lambda_max(lambda_max)

    def update(self, probs: torch.Tensor) -> None:
        """A fixed threshold has no running statistics."""
        check_probs(probs)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        return (probs.max(dim=1).values >= self.tau).to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {"type": "fixed", "tau": self.tau, "lambda_max": self.lambda_max}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lambda_max={self.lambda_max}"


def fixed_lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """lambda(p) of a recorded fixed threshold: ``lambda_max * 1[q >= tau]``."""
    return step_lambda(state["tau"], q, state)


@register_method(
    formulas={"fixed": (("tau",), fixed_lambda)},
    presets=MethodPresets({"algorithm": "fixmatch", "tau": 0.95}, nlp=True),
)
def fixmatch(num_classes: int, *, tau: float = 0.95, lambda_u: float = 1.0) -> SSLAlgorithm:
    """Step weighting at tau on the weak view, loss on the strong view.

    Args:
        num_classes: number of classes.
        tau: confidence threshold.
        lambda_u: unlabeled loss weight.
    """
    return SSLAlgorithm(FixedThreshold(tau), lambda_u=lambda_u, name="fixmatch")
