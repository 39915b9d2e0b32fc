"""SoftMatch (Chen et al., ICLR 2023): a truncated Gaussian weighting of the confidence and
Uniform Alignment; its ablation's linear and quadratic shapes.

Reference: ``shared/docs/reference.md``, "SoftMatch" steps 1-3.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch.distributed import all_reduce_sums
from semimatch.methods.alignment import UniformAlignment
from semimatch.methods.blocks import (
    check_lambda_max,
    check_momentum,
    check_num_classes,
    check_probs,
    recorded_lambda_max,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.freematch import STAT_MOMENTUM
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["SHAPES", "SoftMatchWeighting", "softmatch"]

Shape = Literal["gaussian", "linear", "quadratic"]
SHAPES: tuple[str, ...] = ("gaussian", "linear", "quadratic")


class SoftMatchWeighting(nn.Module):
    """SoftMatch's truncated Gaussian weighting (reference, SoftMatch steps 2-3).

    ``w = lambda_max`` if ``q >= mu_t``, else
    ``lambda_max * exp(-(q - mu_t)^2 / (2 * var_t / n_sigma^2))``, where ``q = max_c p`` and
    ``mu_t, var_t`` are EMAs (momentum m) of the batch mean and *unbiased* variance of ``q``,
    initialised to ``1/C`` and ``1.0``.

    ``per_class=True`` keeps C means and variances indexed by the predicted class
    ``argmax_c p``; a class absent from a batch keeps its state, and a class predicted for a
    single sample updates its mean but keeps its variance (the unbiased variance of one value
    is undefined).  The same rule applies to the global statistics of a batch of one.

    Under torch.distributed the batch statistics are those of the **global** batch: counts,
    sums and sums of squares (centred on the running mean, for float32 accuracy) are all-reduced.

    ``shape`` selects lambda(p) below the mean, for the ablation of the weighting function.
    Every shape is ``lambda_max`` for ``q >= mu_t`` and has the same width
    ``s = sigma_t / n_sigma``; with ``d = mu_t - q > 0``:

    - ``"gaussian"`` (default: the paper's truncated Gaussian): ``exp(-d^2 / (2 s^2))``;
    - ``"quadratic"``: ``max(0, 1 - d^2 / (2 s^2))``, the Gaussian's second-order expansion;
    - ``"linear"``: ``max(0, 1 - d / (sqrt(2) s))``, zero at the same point ``d = sqrt(2) s``.

    The paper's ablation compares linear and quadratic alternatives; neither USB nor TorchSSL
    ships them, so these two are semimatch's instantiation (same truncation point and width,
    only the decay differs), not a transcription of the paper's formulas.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        n_sigma: float = 2.0,
        per_class: bool = False,
        lambda_max: float = 1.0,
        shape: Shape = "gaussian",
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.momentum = check_momentum(momentum)
        if not n_sigma > 0:
            raise ValueError(f"n_sigma must be > 0; got {n_sigma}")
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}; got {shape!r}")
        self.n_sigma = float(n_sigma)
        self.per_class = bool(per_class)
        self.lambda_max = check_lambda_max(lambda_max)
        self.shape = shape
        size = self.num_classes if self.per_class else 1
        self.register_buffer("mean", torch.full((size,), 1.0 / self.num_classes))
        self.register_buffer("var", torch.ones(size))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """EMA update from the (global) batch: ``mu_t = m mu_{t-1} + (1-m) mu_b`` (same for var)."""
        check_probs(probs, self.num_classes)
        q, cls = probs.float().max(dim=1)
        groups = self.mean.numel()
        index = cls if self.per_class else torch.zeros_like(cls)
        # Centre on the running mean so that sum-of-squares stays accurate in float32.
        d = q - self.mean[index].float()
        sums = torch.zeros(3, groups, device=q.device, dtype=torch.float32)
        sums[0].index_add_(0, index, torch.ones_like(d))
        sums[1].index_add_(0, index, d)
        sums[2].index_add_(0, index, d * d)
        (sums,) = all_reduce_sums(sums)
        n, s, ss = sums
        safe_n = n.clamp(min=1.0)
        batch_mean_d = s / safe_n
        batch_var = (ss - s * batch_mean_d) / (n - 1).clamp(min=1.0)
        m = self.momentum
        self.mean.copy_(
            torch.where(n > 0, m * self.mean + (1 - m) * (self.mean + batch_mean_d), self.mean)
        )
        self.var.copy_(
            torch.where(n > 1, m * self.var + (1 - m) * batch_var.clamp(min=0.0), self.var)
        )

    def forward(self, probs: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Weights of the rows of ``probs`` (confidence ``q = max_c p``).

        ``classes``: with ``per_class``, the class whose statistics each row is weighed
        against; default ``argmax_c p``.  Pass the argmax of the probabilities the statistics
        were updated with when those differ from ``probs`` (statistics on raw probabilities,
        weights on aligned ones), so a row is grouped by one class index in both.
        """
        check_probs(probs, self.num_classes)
        q, cls = probs.float().max(dim=1)
        if classes is not None:
            if classes.shape != cls.shape:
                raise ValueError(f"classes must have shape {tuple(cls.shape)}; got {classes.shape}")
            cls = classes
        mu = self.mean[cls] if self.per_class else self.mean.expand_as(q)
        var = self.var[cls] if self.per_class else self.var.expand_as(q)
        # Guard var -> 0 (a batch of identical confidences) against division by zero.
        if self.shape == "gaussian":
            below = torch.exp(-((q - mu) ** 2) / (2 * var.clamp(min=1e-12) / self.n_sigma**2))
        else:
            # u = d / (sqrt(2) s), so that the Gaussian is exp(-u^2).
            u = (mu - q) / torch.sqrt(2 * var.clamp(min=1e-12) / self.n_sigma**2)
            below = (1 - u if self.shape == "linear" else 1 - u * u).clamp(min=0.0)
        w = torch.where(q >= mu, torch.ones_like(q), below) * self.lambda_max
        return w.to(probs.dtype)

    def describe(self) -> dict:
        mean = self.mean.tolist()
        std = [math.sqrt(max(v, 0.0)) for v in self.var.tolist()]
        if not self.per_class:
            mean, std = mean[0], std[0]
        info = {
            "type": "softmatch",
            "mean": mean,
            "std": std,
            "n_sigma": self.n_sigma,
            "lambda_max": self.lambda_max,
        }
        if self.shape != "gaussian":
            info["shape"] = self.shape
        return info

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, momentum={self.momentum}, "
            f"n_sigma={self.n_sigma}, per_class={self.per_class}, shape={self.shape!r}"
        )


def _lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """Truncated Gaussian (or the ablation's linear / quadratic) below the running mean."""
    mean = np.atleast_1d(np.asarray(state["mean"], dtype=np.float64))[:, None]
    var = np.atleast_1d(np.asarray(state["std"], dtype=np.float64))[:, None] ** 2
    width2 = 2 * np.maximum(var, 1e-12) / float(state["n_sigma"]) ** 2
    shape = state.get("shape", "gaussian")
    if shape == "gaussian":
        below = np.exp(-((q[None, :] - mean) ** 2) / width2)
    else:
        u = (mean - q[None, :]) / np.sqrt(width2)
        below = np.clip(1 - u if shape == "linear" else 1 - u * u, 0.0, None)
    return recorded_lambda_max(state) * np.where(q[None, :] >= mean, 1.0, below)


PRESETS = MethodPresets(
    {
        "algorithm": "softmatch",
        "stat_momentum": 0.999,
        "n_sigma": 2.0,
        "uniform_alignment": True,
        "stats_on": "aligned",
    },
    nlp=True,
)


@register_method(
    formulas={"softmatch": (("mean", "std", "n_sigma"), _lambda)},
    budget=(STAT_MOMENTUM,),
    presets=PRESETS,
)
def softmatch(
    num_classes: int,
    *,
    stat_momentum: float = 0.999,
    n_sigma: float = 2.0,
    per_class: bool = False,
    uniform_alignment: bool = True,
    ua_momentum: float | None = None,
    ua_init: Literal["batch", "uniform"] = "batch",
    stats_on: Literal["aligned", "raw"] = "aligned",
    shape: Literal["gaussian", "linear", "quadratic"] = "gaussian",
    lambda_u: float = 1.0,
    unsup_warmup: float = 0.0,
    rampup_shape: Literal["sigmoid", "linear"] = "linear",
) -> SSLAlgorithm:
    """Truncated-Gaussian weighting + Uniform Alignment (USB-code defaults).

    Args:
        num_classes: number of classes.
        stat_momentum: EMA momentum of the Gaussian statistics (paper 0.999).
        n_sigma: width of the Gaussian in std units (USB code 2, paper equation 1).
        per_class: per-class mean/variance.
        uniform_alignment: Uniform Alignment.
        ua_momentum: EMA momentum of p_model; None = stat_momentum.
        ua_init: p_model starts at the first batch's mean (batch, USB code) or at the uniform
            distribution (uniform, TorchSSL).
        stats_on: statistics on aligned (USB code) or raw (paper) probabilities.
        shape: lambda(p) below the mean, for the paper's ablation: gaussian (the paper's),
            or semimatch's linear / quadratic with the same width and truncation point.
        lambda_u: unlabeled loss weight.
        unsup_warmup: opt-in, not in the paper: ramp the unlabeled weight from 0 to lambda_u
            over this share of the iteration budget (0: none, the paper's).
        rampup_shape: the ramp's shape, linear or sigmoid exp(-5 (1 - t)^2).
    """
    if ua_momentum is not None:
        if not uniform_alignment:
            raise ValueError("ua_momentum has no effect with uniform_alignment=False")
        check_momentum(ua_momentum, "ua_momentum")
    if ua_init != "batch" and not uniform_alignment:
        raise ValueError("ua_init has no effect with uniform_alignment=False")
    check_momentum(stat_momentum, "stat_momentum")  # named as the user spelled it
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}; got {shape!r}")
    weighting = SoftMatchWeighting(
        num_classes, momentum=stat_momentum, n_sigma=n_sigma, per_class=per_class, shape=shape
    )
    alignment = (
        UniformAlignment(
            num_classes, stat_momentum if ua_momentum is None else ua_momentum, init=ua_init
        )
        if uniform_alignment
        else None
    )
    return SSLAlgorithm(
        weighting,
        alignment,
        stats_on=stats_on,
        lambda_u=lambda_u,
        name="softmatch",
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
    )
