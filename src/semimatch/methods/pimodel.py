"""Pi-Model (Laine & Aila, ICLR 2017): consistency of two stochastic views of an image.

    L = mean_B H(y, f(x)) + lambda_u r(k) (1/(N C)) sum_i ||softmax f(v1_i) - softmax f(v2_i)||^2

with ``r(k)`` the ramp-up (``blocks.rampup``).  As USB 0.3.2 runs it (``pimodel.py``): the
target is the weak view's probabilities, detached, the student the strong view; the ramp is
linear over the first 40% of the budget (``unsup_warm_up`` 0.4), ``lambda_u`` 10.

Paper vs USB: the paper's ramp-up is ``exp(-5 (1 - t)^2)`` (default here, ``rampup_shape``;
USB: ``linear``); its two views are two draws of the same (weak) augmentation, both with
gradient, where USB's are the weak (target, detached) and the strong view; this module runs
USB's views (a second weak view is not yet offered).  USB forwards the labeled batch alone and
the unlabeled views with frozen BatchNorm statistics; here one joint forward (the step's
``forward_mode``), as for every method.
"""

from __future__ import annotations

from typing import Literal

import torch

from semimatch.methods.classic import ClassicConsistency, mean_rows, mse_consistency
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["PiModel", "pimodel"]


class PiModel(ClassicConsistency):
    """Squared difference of the strong view's probabilities to the weak view's (detached)."""

    def unlabeled(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor, None]:
        target = torch.softmax(out.logits_weak.float(), dim=1)
        return mean_rows(mse_consistency(out.logits_student[0], target)), target, None


PRESETS = MethodPresets(
    {"algorithm": "pimodel", "lambda_u": 10.0, "unsup_warmup": 0.4, "rampup_shape": "linear",
     "uratio": 1},
    source="usb",
    note="; USB's linear ramp-up over 40% of the budget, uratio 1",
    nlp=True,
    nlp_values={"ema_decay": 0.999},  # USB's NLP Pi-Model configs keep ema_m 0.999
)  # fmt: skip


@register_method(presets=PRESETS)
def pimodel(
    num_classes: int,
    *,
    lambda_u: float = 10.0,
    unsup_warmup: float = 0.4,
    rampup_shape: Literal["sigmoid", "linear"] = "sigmoid",
) -> PiModel:
    """Squared-error consistency of the strong view to the weak view, ramped up.

    Args:
        num_classes: number of classes.
        lambda_u: unlabeled loss weight (pimodel: USB 10; meanteacher: USB 50; vat: 1).
        unsup_warmup: share of the iteration budget over which the unlabeled loss ramps up from
            0 to 1 (USB unsup_warm_up 0.4; 0: no ramp-up).
        rampup_shape: shape of the ramp-up, sigmoid exp(-5 (1 - t)^2) (the papers) or linear
            (USB).
    """
    return PiModel(
        "pimodel",
        student_view="strong",
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
    )
