"""Pi-Model (Laine & Aila, ICLR 2017): consistency of two stochastic views of an image.

    L = mean_B H(y, f(x)) + lambda_u r(k) (1/(N C)) sum_i ||softmax f(v1_i) - softmax f(v2_i)||^2

with ``r(k)`` the ramp-up (``blocks.rampup``).  As USB 0.3.2 runs it (``pimodel.py``): the
target is the first view's probabilities, detached, the student the second view; the ramp is
linear over the first 40% of the budget (``unsup_warm_up`` 0.4), ``lambda_u`` 10.  Both views
are draws of the *weak* augmentation, in the paper and in USB (its dataset's ``x_ulb_s`` for
``pimodel`` is a second weak view, "NOTE x_ulb_s here is weak augmentation"; for texts the same
text twice, the noise being dropout): the default, ``second_view="weak"``;
``second_view="strong"`` makes the student the strong view (``--strong-augment``).

Paper vs USB: the paper's ramp-up is ``exp(-5 (1 - t)^2)`` (default here, ``rampup_shape``;
USB: ``linear``); the paper's two views both carry gradient, where USB's target is detached
(here too).  USB forwards the labeled batch alone and the unlabeled views with frozen
BatchNorm statistics; here one joint forward (the step's ``forward_mode``), as for every method.
"""

from __future__ import annotations

from typing import Literal

import torch

from semimatch.methods.classic import ClassicConsistency, mean_rows, mse_consistency
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["PiModel", "pimodel"]


class PiModel(ClassicConsistency):
    """Squared difference of the second view's probabilities to the first view's (detached)."""

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
    second_view: Literal["weak", "strong"] = "weak",
) -> PiModel:
    """Squared-error consistency of a second view to the weak view, ramped up.

    Args:
        num_classes: number of classes.
        lambda_u: unlabeled loss weight (pimodel: USB 10; meanteacher: USB 50; vat: 1).
        unsup_warmup: share of the iteration budget over which the unlabeled loss ramps up from
            0 to 1 (USB unsup_warm_up 0.4; 0: no ramp-up).
        rampup_shape: shape of the ramp-up, sigmoid exp(-5 (1 - t)^2) (the papers) or linear
            (USB).
        second_view: the student's view of each unlabeled image: a second draw of the weak
            augmentation (the paper and USB) or the strong augmentation (--strong-augment).
    """
    return PiModel(
        "pimodel",
        student_view="strong",
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
        second_view=second_view,
    )
