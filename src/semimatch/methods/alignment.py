"""Distribution alignment: Uniform Alignment (SoftMatch) and AdaMatch's distribution alignment.

Uniform Alignment (SoftMatch, section 3.3; reference step 1):

``p_ua = normalize(p * u / p_model)`` with ``u = 1/C`` for every class, where ``p_model`` is an
EMA (momentum m) of the batch mean of the unlabeled weak-view probabilities, initialised from the
first batch's mean (USB code; ``init="uniform"``: from ``u``, as TorchSSL).  Same
``update(probs)`` / ``__call__(probs)`` protocol as the weighting functions; the training step
calls ``update`` first, then applies the alignment.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from semimatch.distributed import all_reduce_sums
from semimatch.methods.blocks import check_momentum, check_num_classes, check_probs

__all__ = ["UniformAlignment", "DistributionAlignment"]


class UniformAlignment(nn.Module):
    """Align predictions towards a uniform class distribution.

    Args:
        num_classes: C.
        momentum: EMA momentum m of ``p_model`` (paper 0.999).
        init: ``"batch"`` (default, USB code): the first update sets ``p_model`` to the batch
            mean; ``"uniform"`` (TorchSSL): ``p_model`` starts at ``u`` and every update,
            the first included, is an EMA step.
        eps: guards the divisions (``p_model`` entries and row sums), so exact zeros in the input
            never produce NaN or inf.
    """

    p_model: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        eps: float = 1e-6,
        init: Literal["batch", "uniform"] = "batch",
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.momentum = check_momentum(momentum)
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        if init not in ("batch", "uniform"):
            raise ValueError(f"init must be 'batch' or 'uniform'; got {init!r}")
        self.eps = float(eps)
        self.init = init
        self.register_buffer("p_model", torch.full((self.num_classes,), 1.0 / self.num_classes))
        # A tensor flag (not a Python bool) so it is checkpointed and needs no host sync; a
        # uniform start counts as already initialised (the first update is an EMA step).
        self.register_buffer("initialized", torch.tensor(init == "uniform"))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """``p_model <- m p_model + (1-m) mean_batch(p)``; the first call sets it to ``mean(p)``."""
        check_probs(probs, self.num_classes)
        total = probs.float().sum(dim=0)
        count = torch.tensor([probs.shape[0]], dtype=torch.float32, device=probs.device)
        total, count = all_reduce_sums(total, count)
        batch_mean = total / count.clamp(min=1.0)
        ema = self.momentum * self.p_model + (1 - self.momentum) * batch_mean
        new = torch.where(self.initialized, ema, batch_mean)
        seen = count > 0  # an empty global batch leaves the state untouched
        self.p_model.copy_(torch.where(seen, new, self.p_model))
        self.initialized.logical_or_(seen.squeeze(0))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs, self.num_classes)
        uniform = 1.0 / self.num_classes
        aligned = probs.float() * uniform / (self.p_model + self.eps)
        aligned = aligned / aligned.sum(dim=1, keepdim=True).clamp(min=self.eps)
        return aligned.to(probs.dtype)

    def describe(self) -> dict:
        return {"type": "uniform", "p_model": self.p_model.tolist()}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, init={self.init!r}"


class DistributionAlignment(nn.Module):
    """AdaMatch's distribution alignment (Berthelot et al., ICLR 2022), as USB computes it.

    ``p_da = normalize(p * (p_target + eps) / (p_model + eps))`` where ``p_model`` is an EMA
    (momentum m) of the unlabeled batch mean (the first update sets it to the batch mean) and,
    with ``target="model"`` (AdaMatch), ``p_target`` an EMA of the **labeled** batch mean of
    the weak-view probabilities, starting at ``1/C``; ``target="uniform"`` keeps it at ``1/C``.
    **The step must pass the labeled probabilities**: ``update(probs, probs_lb=...)``.
    Statistics are those of the global batch under torchrun (USB all-gathers them).

    Paper vs code: USB's code uses these EMAs (m = 0.999); the paper (as recalled, its text
    not re-read here) aligns with the current batch's expectations ``E[p_lb] / E[p_ulb]``.
    AdaMatch's pseudo-labels and mask come from the aligned probabilities.
    """

    p_model: torch.Tensor
    p_target: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        target: Literal["model", "uniform"] = "model",
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.momentum = check_momentum(momentum)
        if target not in ("model", "uniform"):
            raise ValueError(f"target must be 'model' or 'uniform'; got {target!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        self.target = target
        self.eps = float(eps)
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.register_buffer("p_model", uniform.clone())
        self.register_buffer("p_target", uniform.clone())
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, probs_lb: torch.Tensor | None = None) -> None:
        """EMA updates of ``p_model`` (first call: the batch mean) and ``p_target``."""
        check_probs(probs, self.num_classes)
        if self.target == "model":
            if probs_lb is None:
                raise ValueError(
                    "DistributionAlignment(target='model').update needs probs_lb: softmax of "
                    "the weak labeled logits"
                )
            check_probs(probs_lb, self.num_classes, name="probs_lb")
        f32 = dict(dtype=torch.float32, device=probs.device)
        lb = probs_lb if probs_lb is not None else torch.zeros(0, self.num_classes, **f32)
        total, count, total_lb, count_lb = all_reduce_sums(
            probs.float().sum(dim=0),
            torch.tensor([float(probs.shape[0])], **f32),
            lb.float().sum(dim=0),
            torch.tensor([float(lb.shape[0])], **f32),
        )
        m = self.momentum
        mean = total / count.clamp(min=1.0)
        new = torch.where(self.initialized, m * self.p_model + (1 - m) * mean, mean)
        self.p_model.copy_(torch.where(count > 0, new, self.p_model))
        self.initialized.logical_or_((count > 0).squeeze(0))
        if self.target == "model":
            mean_lb = total_lb / count_lb.clamp(min=1.0)
            new_t = m * self.p_target + (1 - m) * mean_lb
            self.p_target.copy_(torch.where(count_lb > 0, new_t, self.p_target))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs, self.num_classes)
        aligned = probs.float() * (self.p_target + self.eps) / (self.p_model + self.eps)
        aligned = aligned / aligned.sum(dim=1, keepdim=True)
        return aligned.to(probs.dtype)

    def describe(self) -> dict:
        return {
            "type": "distribution",
            "p_model": self.p_model.tolist(),
            "p_target": self.p_target.tolist(),
        }

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, momentum={self.momentum}, target={self.target!r}"
