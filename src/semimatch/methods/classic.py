"""What the classic consistency baselines share (Pi-Model, Mean Teacher, VAT): no weighting.

They are not weighting methods: every unlabeled row counts with weight 1 (``NoWeighting``; no
lambda(p) in the report), and the unlabeled term is ramped up over the first ``unsup_warmup``
of the budget (``blocks.rampup``).  ``ClassicConsistency`` is the ``SSLAlgorithm`` they
subclass: a method says what it needs (``Needs``) and computes its loss from ``StepOutputs``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult

__all__ = ["ClassicConsistency", "NoWeighting", "kl_logits", "mean_rows", "mse_consistency", "wide"]


class NoWeighting(nn.Module):
    """Every unlabeled row counts fully, ``w = 1``: the method is not a weighting method."""

    lambda_max = 1.0

    def update(self, probs: torch.Tensor) -> None:
        """No statistics."""

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return torch.ones(probs.shape[0], dtype=probs.dtype, device=probs.device)


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 at least (float64 stays float64: the oracle tests run in float64)."""
    return t if t.dtype == torch.float64 else t.float()


def mse_consistency(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,) ``(1/C) ||softmax(student) - target||^2`` per row (Laine & Aila 2017, Algorithm 1;
    USB's ``consistency_loss(..., 'mse')``)."""
    return ((torch.softmax(wide(student), dim=1) - wide(target)) ** 2).mean(dim=1)


class ClassicConsistency(SSLAlgorithm):
    """A consistency baseline: ``loss = sup + lambda_u * ramp(k) * unsup (+ extra)``.

    Subclasses set ``student_view`` (``"strong"``: the standard step's second view is the
    student; ``"weak"``: the weak view's own logits), ``second_view`` (the second view's
    augmentation: ``"weak"``, a second draw of the weak one, as the papers and USB run Pi-Model
    and Mean Teacher, or ``"strong"``), ``teacher``/``model`` (``Needs``) and
    implement ``unlabeled(out) -> (per-row or scalar loss, target probabilities, extra)``.
    """

    teacher = False
    uses_model = False

    def __init__(
        self,
        name: str,
        *,
        student_view: Literal["strong", "weak"],
        lambda_u: float,
        unsup_warmup: float,
        rampup_shape: Literal["sigmoid", "linear"],
        extra_loss_weight: float = 0.0,
        second_view: Literal["weak", "strong"] = "strong",
    ) -> None:
        super().__init__(
            NoWeighting(),
            student_view=student_view,
            lambda_u=lambda_u,
            name=name,
            unsup_warmup=unsup_warmup,
            rampup_shape=rampup_shape,
        )
        if second_view not in ("weak", "strong"):
            raise ValueError(f"second_view must be 'weak' or 'strong'; got {second_view!r}")
        self.second_view = second_view
        if extra_loss_weight < 0:
            raise ValueError(f"extra_loss_weight must be >= 0; got {extra_loss_weight}")
        self.extra_loss_weight = float(extra_loss_weight)

    @property
    def needs(self) -> Needs:
        return Needs(
            strong_views=1 if self.student_view == "strong" else 0,
            iteration=self.unsup_warmup > 0,
            teacher=self.teacher,
            model=self.uses_model,
            strong_as_weak=self.student_view == "strong" and self.second_view == "weak",
        )

    @property
    def has_extra_loss(self) -> bool:
        return self.extra_loss_weight > 0

    def unlabeled(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(unlabeled loss (scalar), target probabilities (N, C), extra term or None)``."""
        raise NotImplementedError

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        unsup, target, extra = self.unlabeled(out)
        ramped = self.ramp(out) * unsup
        loss = out.sup_loss + self.lambda_u * ramped
        if extra is not None:
            loss = loss + self.extra_loss_weight * extra
        target = target.detach()
        confidence, pseudo = target.max(dim=1)
        weights = torch.ones_like(confidence)
        # unsup_loss is the ramped term, so the records' sup + lambda_u * unsup is the loss.
        return loss, UnlabeledResult(weights, confidence, pseudo, ramped, extra)

    def weights_defined(self) -> bool:
        """Not a weighting method: no lambda(p) to evaluate or plot."""
        return False

    def describe(self) -> dict[str, Any]:
        info = {
            "type": self.name,
            "not_a_weighting_method": True,  # the report says so instead of drawing lambda(p)
            "unsup_warmup": self.unsup_warmup,
            "rampup": self.rampup_shape,
        }
        return {"weighting": info, "p_model": None}

    def extra_repr(self) -> str:
        text = (
            f"name={self.name!r}, lambda_u={self.lambda_u}, unsup_warmup={self.unsup_warmup}, "
            f"rampup_shape={self.rampup_shape!r}"
        )
        if self.has_extra_loss:
            text += f", extra_loss_weight={self.extra_loss_weight}"
        if self.student_view == "strong":
            text += f", second_view={self.second_view!r}"
        return text


def mean_rows(per_row: torch.Tensor) -> torch.Tensor:
    """The mean over the rows (0 for an empty unlabeled shard, not NaN)."""
    return per_row.sum() / max(per_row.shape[0], 1)


def kl_logits(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(N,) ``KL(softmax(target) || softmax(logits))`` per row."""
    log_p = F.log_softmax(wide(target), dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(wide(logits), dim=1))).sum(dim=1)
