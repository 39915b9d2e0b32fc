"""FlexMatch (Zhang et al., NeurIPS 2021): curriculum class-wise thresholds from a per-sample
memory of the last confident prediction (the step passes each unlabeled row's pool index)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.distributed import all_gather_cat
from semimatch.methods.blocks import (
    check_lambda_max,
    check_num_classes,
    check_positive_int,
    check_probs,
    check_tau,
    step_lambda,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["FlexMatchThreshold", "flexmatch", "per_class_lambda"]


class FlexMatchThreshold(nn.Module):
    """FlexMatch's curriculum pseudo-labelling (Zhang et al., NeurIPS 2021).

    ``w = lambda_max * 1[q >= T(c)]`` with the class-wise threshold ``T(c) = M(beta(c)) * tau``,
    ``M(x) = x / (2 - x)`` (the paper's convex mapping) and the learning effect
    ``beta(c) = sigma(c) / max(max_k sigma(k), N - sum_k sigma(k))`` (threshold
    warm-up: the unused count is in the normaliser; ``warmup=False``: ``max_k sigma(k)`` only,
    the normalised learning effect).  ``sigma(c)`` counts the unlabeled samples whose memory
    ``selected_label`` holds c.

    Memory (buffer ``selected_label``, one entry per unlabeled sample, -1 = never selected):
    each update writes ``selected_label[i] = c_i`` for the batch rows with ``q_i >= tau``.
    **The stream must pass the dataset indices of the unlabeled batch**:
    ``update(probs, indices)`` with ``indices[i]`` in ``[0, num_unlabeled)`` the index of row i.

    Order (USB's): ``update`` first sets ``beta`` from the memory as it stands (i.e. after the
    previous batch), then writes this batch into the memory; ``module(probs)`` uses that
    ``beta``.  So the first batch sees ``beta = 0`` (threshold 0, every sample kept), as in USB.

    Paper vs code: the paper defines ``sigma_t(c)`` over the model's *current* predictions on
    all unlabeled data; the code (and this module) approximates it with the last confident
    prediction of each sample, which is never reset.  Comparisons are USB's ``>=``.  USB skips
    the beta update while one bucket holds all N samples (only all -1 in practice); here beta
    is computed every time (identical but for the case where all N samples are selected as one
    class).  Under torchrun USB keeps one memory per process; here the (index, class) pairs of
    the global batch are all-gathered and every rank holds the same memory.  When an index
    occurs twice in the global batch, the later row (in rank order, then row order) wins,
    deterministically.
    """

    selected_label: torch.Tensor
    beta: torch.Tensor
    #: The step must pass each unlabeled row's pool index (``SSLAlgorithm.sample_indices``).
    sample_indices = True

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int,
        tau: float = 0.95,
        warmup: bool = True,
        lambda_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.num_unlabeled = check_positive_int(num_unlabeled, "num_unlabeled")
        self.tau = check_tau(tau)
        self.warmup = bool(warmup)
        self.lambda_max = check_lambda_max(lambda_max)
        self.register_buffer("selected_label", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("beta", torch.zeros(self.num_classes))

    def learning_effect(self) -> torch.Tensor:
        """``beta(c)`` from the memory as it stands (with or without the warm-up)."""
        bucket = self.selected_label + 1  # 0: never selected, 1 + c: class c
        counts = torch.zeros(self.num_classes + 1, dtype=torch.float64, device=bucket.device)
        counts.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
        sigma = counts[1:]
        denom = counts.max() if self.warmup else sigma.max()
        return (sigma / denom.clamp(min=1.0)).to(self.beta.dtype)

    def thresholds(self) -> torch.Tensor:
        """Class-wise thresholds ``T(c) = tau * beta(c) / (2 - beta(c))`` the weights use."""
        return self.tau * (self.beta / (2.0 - self.beta))  # USB's order of operations

    @torch.no_grad()
    def update(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Refresh ``beta`` from the memory, then record this batch's confident predictions."""
        check_probs(probs, self.num_classes)
        if indices is None:
            raise ValueError(
                "FlexMatchThreshold.update needs indices: the dataset index of each unlabeled "
                "row (the unlabeled stream must carry them)"
            )
        if indices.dim() != 1 or indices.shape[0] != probs.shape[0]:
            raise ValueError(
                f"indices must have shape ({probs.shape[0]},) (one per row); "
                f"got {tuple(indices.shape)}"
            )
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor; got {indices.dtype}")
        if indices.device != probs.device:
            raise ValueError(
                f"indices are on {indices.device} but probs on {probs.device}; move them together"
            )
        if indices.device.type == "cpu" and indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_unlabeled:
                raise ValueError(
                    f"indices must lie in [0, {self.num_unlabeled}) (num_unlabeled); "
                    f"got [{lo}, {hi}]"
                )
        self.beta.copy_(self.learning_effect())
        q, cls = probs.max(dim=1)
        label = torch.where(q >= self.tau, cls, torch.full_like(cls, -1))
        pairs = all_gather_cat(torch.stack([indices.long(), label.long()], dim=1))
        index, label = pairs[:, 0], pairs[:, 1]
        # The last selected row of each index wins; unselected rows write to a dummy slot N.
        n = self.num_unlabeled
        slot = torch.where(label >= 0, index, torch.full_like(index, n))
        order = torch.arange(slot.shape[0], device=slot.device)
        winner = torch.full((n + 1,), -1, dtype=torch.long, device=slot.device)
        winner.scatter_reduce_(0, slot, order, reduce="amax")
        winner = winner[:n]
        new = label[winner.clamp(min=0)] if label.numel() else winner
        self.selected_label.copy_(torch.where(winner >= 0, new, self.selected_label))

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``lambda_max * 1[q >= T(argmax p)]``; ``indices`` is accepted and not needed."""
        check_probs(probs, self.num_classes)
        q, cls = probs.float().max(dim=1)
        return ((q >= self.thresholds()[cls]).to(probs.dtype)) * self.lambda_max

    def describe(self) -> dict:
        unused = int((self.selected_label < 0).sum())
        return {
            "type": "flexmatch",
            "tau": self.tau,
            "thresholds": self.thresholds().tolist(),
            "unused": unused,
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_unlabeled={self.num_unlabeled}, "
            f"tau={self.tau}, warmup={self.warmup}"
        )


def per_class_lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """lambda(p) of recorded class-wise thresholds: one step ``1[q >= T(c)]`` per class."""
    return step_lambda(state["thresholds"], q, state)


#: USB's classic-CV config: p_cutoff 0.95, thresh_warmup True, hard_label True, ulb_loss_ratio
#: 1.0 (its T 0.5 is unused with hard labels).
PRESETS = MethodPresets(
    {"algorithm": "flexmatch", "tau": 0.95, "threshold_warmup": True, "lambda_u": 1.0},
    source="usb",
    nlp=True,
)


@register_method(formulas={"flexmatch": (("thresholds",), per_class_lambda)}, presets=PRESETS)
def flexmatch(
    num_classes: int,
    *,
    num_unlabeled: int | None = None,
    tau: float = 0.95,
    threshold_warmup: bool = True,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Curriculum class-wise thresholds tau * M(beta(c)), M(x) = x / (2 - x) (USB code).

    Args:
        num_classes: number of classes.
        tau: confidence threshold, the ceiling of the per-class thresholds (USB p_cutoff 0.95).
        threshold_warmup: threshold warmup: the samples never selected count in the normaliser
            of the learning effect (USB thresh_warmup True).
        lambda_u: unlabeled loss weight.
    """
    if num_unlabeled is None:  # a data input (options.DATA_INPUTS): the engine passes it
        raise ValueError(
            "flexmatch needs num_unlabeled, the unlabeled pool size (its per-sample memory): "
            "build_algorithm('flexmatch', C, num_unlabeled=len(pool)); training passes it"
        )
    weighting = FlexMatchThreshold(num_classes, num_unlabeled, tau=tau, warmup=threshold_warmup)
    return SSLAlgorithm(weighting, lambda_u=lambda_u, name="flexmatch")  # sample_indices
