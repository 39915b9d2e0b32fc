"""UDA's confidence-masked, sharpened consistency (Xie et al., NeurIPS 2020).

The weighting is the confidence mask ``w = lambda_max * 1[max_c p >= tau]`` (USB: tau = 0.8);
the target is **soft**: ``sharpen(p, T) = softmax(weak logits / T)`` (USB: T = 0.4), and the
consistency loss is on the strong view:

    L_u = (1/(mu B)) * sum_i w_i * H(sharpen(p_i, T), softmax(strong logits_i))

with ``H(t, q) = -sum_k t_k log q_k``.  ``UDAWeighting.target(probs)`` gives the targets; the
step must use them instead of ``argmax p`` (soft cross-entropy).

Paper vs code: the paper writes the consistency term as a KL divergence to the sharpened
target, which differs from USB's cross-entropy by the target's entropy, a constant for the
gradient (the target carries no gradient).  USB 0.3.2's config sets T = 0.4, but its code hands
the pseudo-label hook probabilities with ``softmax=False``, which returns them unchanged: its
targets are ``p`` itself, i.e. ``temperature=1`` here (read in semilearn's ``uda.py`` and
``hooks/pseudo_label.py``).  UDA's training-signal annealing (TSA) masks the
*labeled* loss (``tsa_threshold``, off by default in USB's classic-CV configs).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from semimatch.methods.blocks import check_lambda_max, check_probs, check_tau, sharpen
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.fixmatch import fixed_lambda
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["UDAWeighting", "tsa_threshold", "uda"]


class UDAWeighting(nn.Module):
    """UDA: mask ``lambda_max * 1[max_c p >= tau]`` and soft targets ``sharpen(p, T)``."""

    def __init__(self, tau: float = 0.8, temperature: float = 0.4, lambda_max: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.tau = check_tau(tau)
        self.temperature = float(temperature)
        self.lambda_max = check_lambda_max(lambda_max)

    def update(self, probs: torch.Tensor) -> None:
        """No running statistics."""
        check_probs(probs)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        return (probs.max(dim=1).values >= self.tau).to(probs.dtype) * self.lambda_max

    def target(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C) soft targets ``sharpen(p, T)`` for the strong view's cross-entropy."""
        check_probs(probs)
        return sharpen(probs, self.temperature)

    def describe(self) -> dict:
        return {
            "type": "uda",
            "tau": self.tau,
            "temperature": self.temperature,
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return f"tau={self.tau}, temperature={self.temperature}, lambda_max={self.lambda_max}"


def tsa_threshold(
    schedule: Literal["none", "linear", "exp", "log"], progress: float, num_classes: int
) -> float:
    """UDA's training-signal annealing: labeled rows with ``max p > eta_t`` are left out.

    ``eta_t = alpha_t (1 - 1/C) + 1/C`` with ``alpha_t`` = progress (linear),
    ``exp(5 (progress - 1))`` (exp) or ``1 - exp(-5 progress)`` (log); ``"none"``: 1 (keep all).
    ``progress`` = iteration / total iterations.  USB keeps rows with ``max p <= eta_t``.
    """
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        alpha = progress
    elif schedule == "exp":
        alpha = math.exp((progress - 1) * 5)
    elif schedule == "log":
        alpha = 1 - math.exp(-progress * 5)
    else:
        raise ValueError(f"schedule must be 'none', 'linear', 'exp' or 'log'; got {schedule!r}")
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


@register_method(
    formulas={"uda": (("tau",), fixed_lambda)},
    presets=MethodPresets(
        {"algorithm": "uda", "tau": 0.8, "temperature": 0.4, "lambda_u": 1.0}, source="usb"
    ),
)
def uda(
    num_classes: int,
    *,
    tau: float = 0.8,
    temperature: float = 0.4,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Confidence mask + sharpened soft targets, consistency on the strong view.

    The paper sharpens with T = 0.4, as USB's config says; USB 0.3.2's code passes
    probabilities to its pseudo-label hook with ``softmax=False``, which returns them unchanged,
    so its targets are ``p`` (``temperature=1`` here).

    Args:
        num_classes: number of classes.
        tau: confidence threshold of the mask (USB p_cutoff 0.8).
        temperature: sharpening temperature T of the soft targets softmax(weak logits / T)
            (uda: USB 0.4; dash: USB 0.5).
        lambda_u: unlabeled loss weight.
    """
    return SSLAlgorithm(
        UDAWeighting(tau, temperature), lambda_u=lambda_u, name="uda", soft_targets=True
    )
