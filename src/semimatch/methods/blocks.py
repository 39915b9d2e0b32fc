"""What methods share: the weighting protocol, checks, ``sharpen``, lambda(p) helpers.

A weighting function is a small ``nn.Module`` with the protocol

    weighting.update(probs)      # update running statistics from a batch (N, C) of probabilities
    weights = weighting(probs)   # (N,) weights in [0, lambda_max]

Running state lives in registered buffers, so ``state_dict``, ``.to(device)``, checkpoints and
DDP need no special code; ``describe()`` (optional) feeds the logs and the report, whose
lambda(p) a method rebuilds from it with a formula (``step_lambda`` for the threshold family).
Members of the family that need more than ``probs`` say so in their signature (keywords, so the
protocol call still type-checks) and fail loudly without it (FlexMatch's ``indices``,
AdaMatch's ``probs_lb``).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "Weighting",
    "check_positive_int",
    "recorded_lambda_max",
    "step_lambda",
    "NonFiniteError",
    "check_probs",
    "check_momentum",
    "check_num_classes",
    "check_tau",
    "check_lambda_max",
    "sharpen",
]


@runtime_checkable
class Weighting(Protocol):
    """What the training step needs from a weighting function (or an alignment)."""

    def update(self, probs: torch.Tensor) -> None: ...

    def __call__(self, probs: torch.Tensor) -> torch.Tensor: ...


class NonFiniteError(ValueError):
    """Probabilities contain NaN/inf: the model diverged (the engine reports the iteration)."""


def check_probs(probs: torch.Tensor, num_classes: int | None = None, name: str = "probs") -> None:
    """Validate a batch of probabilities: shape (N, C), finite, non-negative rows summing to 1.

    Value checks read the tensor, which would force a host-device synchronisation on an
    accelerator, so they run only for CPU tensors; shape checks always run.
    """
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2:
        shape = tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__
        raise ValueError(f"{name} must be a 2-D tensor of shape (N, C); got {shape}")
    if num_classes is not None and probs.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {probs.shape[1]} columns but this module was built for "
            f"num_classes={num_classes}; pass probabilities of shape (N, {num_classes})"
        )
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got {probs.dtype}")
    if probs.device.type == "cpu" and probs.numel():
        p = probs.detach().double()
        if not torch.isfinite(p).all():
            raise NonFiniteError(f"{name} contains NaN or inf (did the model diverge?)")
        if (p < 0).any():
            raise ValueError(f"{name} must be non-negative (softmax outputs)")
        worst = (p.sum(dim=1) - 1).abs().max().item()
        if worst > 1e-3:
            raise ValueError(
                f"rows of {name} must sum to 1 (max deviation {worst:.3g}); pass softmax(logits)"
            )


def check_momentum(momentum: float, name: str = "momentum") -> float:
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {momentum}")
    return float(momentum)


def check_num_classes(num_classes: int) -> int:
    try:
        ok = float(num_classes).is_integer() and float(num_classes) >= 2
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"num_classes must be an integer >= 2; got {num_classes}")
    return int(num_classes)


def check_tau(tau: float, name: str = "tau") -> float:
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"{name} must be in (0, 1]; got {tau}")
    return float(tau)


def check_lambda_max(lambda_max: float) -> float:
    if not lambda_max > 0:
        raise ValueError(f"lambda_max must be > 0; got {lambda_max}")
    return float(lambda_max)


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise ``p^(1/T) / sum_k p_k^(1/T)``: ``softmax(logits / T)`` for ``p = softmax(logits)``.

    Computed as ``softmax(log p / T)`` (exact zeros stay zero).  UDA's and Dash's soft targets.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    work = probs if probs.dtype == torch.float64 else probs.float()
    return torch.softmax(torch.log(work) / temperature, dim=1).to(probs.dtype)


def check_positive_int(value: int, name: str) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        out = 0
    if out < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return out


def recorded_lambda_max(state: Mapping[str, Any]) -> float:
    """``lambda_max`` of a recorded weighting state (the report's lambda(p) formulas)."""
    # Recorded since the report's overlay; before that every built-in algorithm used 1.0 (no
    # builder passes lambda_max), so a record without the key was written with 1.0.
    return float(state.get("lambda_max", 1.0))


def step_lambda(thresholds: Any, q: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
    """``lambda_max * 1[q >= T]`` for a scalar T (one row) or per-class T(c) (C rows)."""
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))[:, None]
    return recorded_lambda_max(state) * (q[None, :] >= t).astype(np.float64)
