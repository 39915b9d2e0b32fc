"""twinmatch: a method that needs two strong views and the unlabeled rows' pool indices.

The pseudo-label of the weak view (kept at confidence >= tau) trains both strong views (the
mean of the two cross-entropies); a per-sample buffer counts how often each unlabeled sample
was seen, written from the indices the step hands over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.registry import register_method


class TwinViews(SSLAlgorithm):
    """FixMatch's weights, the loss averaged over two strong views, a per-sample visit count."""

    def __init__(self, num_unlabeled: int, tau: float, lambda_u: float) -> None:
        super().__init__(FixedThreshold(tau), lambda_u=lambda_u, name="twinmatch")
        self.register_buffer("visits", torch.zeros(num_unlabeled, dtype=torch.long))

    @property
    def needs(self) -> Needs:
        return Needs(strong_views=2, sample_indices=True)

    @property
    def num_unlabeled(self) -> int:
        return self.visits.numel()

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        assert len(out.logits_student) == 2 and out.u_idx is not None
        self.visits.index_add_(0, out.u_idx, torch.ones_like(out.u_idx))
        probs = torch.softmax(out.logits_weak.float(), dim=1)
        weights, confidence = self.weigh(probs)
        pseudo = probs.argmax(dim=1)
        per_sample = sum(
            F.cross_entropy(s.float(), pseudo, reduction="none") for s in out.logits_student
        ) / len(out.logits_student)
        unsup = (weights * per_sample).sum() / max(pseudo.shape[0], 1)
        return out.sup_loss + self.lambda_u * unsup, UnlabeledResult(
            weights, confidence, pseudo, unsup
        )


@register_method()
def twinmatch(
    num_classes: int, *, num_unlabeled: int | None = None, tau: float = 0.95, lambda_u: float = 1.0
) -> SSLAlgorithm:
    """FixMatch on two strong views, with a per-sample visit count.

    Args:
        num_classes: number of classes.
        tau: confidence threshold.
        lambda_u: unlabeled loss weight.
    """
    if num_unlabeled is None:
        raise ValueError("twinmatch needs num_unlabeled (training passes it)")
    return TwinViews(num_unlabeled, tau, lambda_u)
