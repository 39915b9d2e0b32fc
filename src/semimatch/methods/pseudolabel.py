"""Pseudo-Label (Lee, 2013): a hard threshold on the weak view, the loss on the weak view itself
(no strong augmentation)."""

from __future__ import annotations

from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.fixmatch import FixedThreshold, fixed_lambda
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["pseudolabel"]


@register_method(
    formulas={"fixed": (("tau",), fixed_lambda)},
    presets=MethodPresets({"algorithm": "pseudolabel", "tau": 0.95}),
)
def pseudolabel(num_classes: int, *, tau: float = 0.95, lambda_u: float = 1.0) -> SSLAlgorithm:
    """Hard threshold on the weak view, no strong augmentation.

    Args:
        num_classes: number of classes.
        tau: confidence threshold.
        lambda_u: unlabeled loss weight.
    """
    return SSLAlgorithm(
        FixedThreshold(tau), student_view="weak", lambda_u=lambda_u, name="pseudolabel"
    )
