"""Shared checks of the weighting functions: probabilities, momenta, class counts, thresholds."""

from __future__ import annotations

import torch

__all__ = [
    "NonFiniteError",
    "check_probs",
    "check_momentum",
    "check_num_classes",
    "check_tau",
    "check_lambda_max",
    "sharpen",
]


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
