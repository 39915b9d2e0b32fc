"""Sample weighting functions lambda(p) over the weak-view confidence (SoftMatch, section 3).

A weighting function is a small ``nn.Module`` with the protocol

    weighting.update(probs)      # update running statistics from a batch (N, C) of probabilities
    weights = weighting(probs)   # (N,) weights in [0, lambda_max]

Running state lives in registered buffers, so ``state_dict``, ``.to(device)``, checkpoints and
DDP need no special code.  Any object with this protocol can be passed to the training step
(see ``semimatch.algorithms``); ``describe()`` is optional and feeds the logs and reports.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from semimatch.distributed import all_reduce_sums

__all__ = [
    "FixedThreshold",
    "SoftMatchWeighting",
    "NonFiniteError",
    "check_probs",
    "check_momentum",
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


class FixedThreshold(nn.Module):
    """FixMatch's step: ``w = lambda_max * 1[max_c p >= tau]`` (reference, FixMatch weight)."""

    def __init__(self, tau: float = 0.95, lambda_max: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1]; got {tau}")
        if lambda_max <= 0:
            raise ValueError(f"lambda_max must be > 0; got {lambda_max}")
        self.tau = float(tau)
        self.lambda_max = float(lambda_max)

    def update(self, probs: torch.Tensor) -> None:
        """A fixed threshold has no running statistics."""
        check_probs(probs)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        return (probs.max(dim=1).values >= self.tau).to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {"type": "fixed", "tau": self.tau}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lambda_max={self.lambda_max}"


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
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.momentum = check_momentum(momentum)
        if not n_sigma > 0:
            raise ValueError(f"n_sigma must be > 0; got {n_sigma}")
        if lambda_max <= 0:
            raise ValueError(f"lambda_max must be > 0; got {lambda_max}")
        self.n_sigma = float(n_sigma)
        self.per_class = bool(per_class)
        self.lambda_max = float(lambda_max)
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
        gauss = torch.exp(-((q - mu) ** 2) / (2 * var.clamp(min=1e-12) / self.n_sigma**2))
        w = torch.where(q >= mu, torch.ones_like(q), gauss) * self.lambda_max
        return w.to(probs.dtype)

    def describe(self) -> dict:
        mean = self.mean.tolist()
        std = [math.sqrt(max(v, 0.0)) for v in self.var.tolist()]
        if not self.per_class:
            mean, std = mean[0], std[0]
        return {"type": "softmatch", "mean": mean, "std": std, "n_sigma": self.n_sigma}

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, momentum={self.momentum}, "
            f"n_sigma={self.n_sigma}, per_class={self.per_class}"
        )
