"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017): consistency to the weight-averaged teacher.

    L = mean_B H(y, f(x)) + lambda_u r(k) (1/(N C)) sum_i ||softmax f_s(v_i) - softmax f_t(u_i)||^2

with ``f_t`` the teacher, the exponential moving average of the student ``f_s``'s weights
(the engine's weight EMA, ``--ema-decay``, USB ``ema_m`` 0.999), run in train mode (its own
dropout and batch statistics) without gradient and without touching its BatchNorm running
statistics (USB: ``ema.apply_shadow`` and ``freeze_bn`` around the teacher forward); ``r(k)``
the ramp-up.  The teacher sees the weak view, the student a second draw of the weak
augmentation (the paper, and USB's dataset: its ``x_ulb_s`` for ``meanteacher`` is a weak view;
``second_view="strong"``: the strong view instead); ``lambda_u`` 50 (USB).

Paper vs USB: the paper's ramp-up is ``exp(-5 (1 - t)^2)`` (default here; USB: ``linear``).
USB 0.3.2's ``meanteacher.py`` takes the student logits from the *teacher's* outputs
(``logits_x_ulb_s = outs_x_ulb_w['logits']``), so its unlabeled loss is the teacher against
itself: zero, without gradient; USB's published Mean Teacher rows train on the labeled loss
only.  Here the student's own second view is the student.
"""

from __future__ import annotations

from typing import Literal

import torch

from semimatch.methods.classic import ClassicConsistency, mean_rows, mse_consistency
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["MeanTeacher", "meanteacher"]


class MeanTeacher(ClassicConsistency):
    """Squared difference of the student's second-view probabilities to the teacher's."""

    teacher = True

    def unlabeled(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor, None]:
        assert out.logits_teacher is not None  # needs.teacher: the step forwards the teacher
        target = torch.softmax(out.logits_teacher.float(), dim=1)
        return mean_rows(mse_consistency(out.logits_student[0], target)), target, None


PRESETS = MethodPresets(
    {"algorithm": "meanteacher", "lambda_u": 50.0, "unsup_warmup": 0.4,
     "rampup_shape": "linear", "uratio": 1},
    source="usb",
    note="; USB's linear ramp-up over 40% of the budget, uratio 1; the student's second weak "
    "view is the student (USB 0.3.2's code compares the teacher with itself)",
)  # fmt: skip


@register_method(presets=PRESETS)
def meanteacher(
    num_classes: int,
    *,
    lambda_u: float = 50.0,
    unsup_warmup: float = 0.4,
    rampup_shape: Literal["sigmoid", "linear"] = "sigmoid",
    second_view: Literal["weak", "strong"] = "weak",
) -> MeanTeacher:
    """Squared-error consistency of the student's second view to the EMA teacher's weak view.

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
    return MeanTeacher(
        "meanteacher",
        student_view="strong",
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
        second_view=second_view,
    )
