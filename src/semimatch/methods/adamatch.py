"""AdaMatch (Berthelot et al., ICLR 2022): a threshold relative to the labeled batch's confidence
and distribution alignment; pseudo-labels from the aligned probabilities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.distributed import all_reduce_sums
from semimatch.methods.alignment import DistributionAlignment
from semimatch.methods.blocks import (
    check_lambda_max,
    check_momentum,
    check_probs,
    check_tau,
    step_lambda,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.freematch import STAT_MOMENTUM
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["AdaMatchThreshold", "adamatch"]


class AdaMatchThreshold(nn.Module):
    """AdaMatch's relative confidence threshold (Berthelot et al., ICLR 2022).

    ``w = lambda_max * 1[q >= tau * mean_i max_c p_lb(i)]``: tau times the mean confidence of
    the weak **labeled** batch.  **The step must pass the labeled probabilities**:
    ``update(probs, probs_lb=softmax(logits_lb))``; the threshold is kept in the buffer
    ``threshold`` (starts at tau; an empty global labeled batch keeps it).

    Paper vs code (the paper as recalled, its text not re-read here): the paper takes the
    labeled confidences from its random logit interpolation and uses tau = 0.9; USB uses the
    labeled logits of the joint forward and tau = 0.95 (and the per-process labeled batch
    under DDP; here the global one).  AdaMatch weighs and
    pseudo-labels the **aligned** unlabeled probabilities (``semimatch.methods.alignment.
    DistributionAlignment``), unlike SoftMatch.
    """

    threshold: torch.Tensor

    def __init__(self, tau: float = 0.95, lambda_max: float = 1.0) -> None:
        super().__init__()
        self.tau = check_tau(tau)
        self.lambda_max = check_lambda_max(lambda_max)
        self.register_buffer("threshold", torch.tensor(self.tau))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, probs_lb: torch.Tensor | None = None) -> None:
        check_probs(probs)
        if probs_lb is None:
            raise ValueError(
                "AdaMatchThreshold.update needs probs_lb: softmax of the weak labeled logits"
            )
        check_probs(probs_lb, probs.shape[1], name="probs_lb")
        conf = probs_lb.float().max(dim=1).values
        count = torch.tensor([float(conf.shape[0])], dtype=conf.dtype, device=conf.device)
        total, count = all_reduce_sums(conf.sum().reshape(1), count)
        new = total / count.clamp(min=1.0) * self.tau
        self.threshold.copy_(torch.where(count > 0, new, self.threshold).squeeze(0))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        q = probs.float().max(dim=1).values
        return (q >= self.threshold).to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {
            "type": "adamatch",
            "tau": self.tau,
            "threshold": float(self.threshold),
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lambda_max={self.lambda_max}"


def _lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """``lambda_max * 1[q >= tau * mean labeled confidence]``."""
    return step_lambda(state["threshold"], q, state)


PRESETS = MethodPresets(
    {"algorithm": "adamatch", "tau": 0.95, "stat_momentum": 0.999, "lambda_u": 1.0},
    source="usb",
    nlp=True,
)


@register_method(
    formulas={"adamatch": (("threshold",), _lambda)}, budget=(STAT_MOMENTUM,), presets=PRESETS
)
def adamatch(
    num_classes: int,
    *,
    tau: float = 0.95,
    stat_momentum: float = 0.999,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Relative threshold (tau x mean labeled confidence) + distribution alignment (USB code).

    Args:
        num_classes: number of classes.
        tau: relative confidence threshold, times the mean confidence of the weak labeled batch.
        stat_momentum: EMA momentum of the distribution alignment's p_model and p_target (USB
            ema_p 0.999).
        lambda_u: unlabeled loss weight.
    """
    check_momentum(stat_momentum, "stat_momentum")
    return SSLAlgorithm(
        AdaMatchThreshold(tau),
        DistributionAlignment(num_classes, momentum=stat_momentum, target="model"),
        lambda_u=lambda_u,
        name="adamatch",
        pseudo_from="aligned",
        labeled_probs=True,
    )
