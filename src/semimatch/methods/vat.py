"""Virtual Adversarial Training (Miyato et al., TPAMI 2018), with entropy minimisation.

    L = mean_B H(y, f(x)) + lambda_u * r(k) * LDS + lambda_ent * mean_i H(p(y | u_i))
    LDS = mean_i KL(p(y | u_i) || p(y | u_i + r_adv,i)),   r_adv = eps g / ||g||,
    g = grad_r KL(p(y | u) || p(y | u + r)) at r = xi d / ||d||,  d ~ N(0, I)

(one power iteration, norms per sample over all input dimensions; ``p(y | u)`` detached in the
KL, with gradient in the entropy).  The step forwards the weak view (the student's own logits,
``needs.strong_views = 0``) and hands the method the model (``needs.model``) for the two
perturbed forwards, which leave the BatchNorm running statistics untouched (USB's
``freeze_bn``).  The perturbed forwards cost about two more forwards and one more backward of
the unlabeled batch.

Paper vs USB 0.3.2 (``vat.py``): both use xi = 1e-6, eps = 6 (CIFAR-10) and one power
iteration.  The paper trains VAT+EntMin with weight 1 and no ramp-up (defaults here); USB
weights the entropy 0.06 (``ent_loss_ratio``) and ramps the LDS linearly over 40% of the budget
(the presets).  USB normalises ``d`` and ``g`` only for 3- and 4-dimensional inputs (feature
vectors are left unnormalised); here always, as the paper.  USB's NLP VAT perturbs word
embeddings (``vat_embed``), which needs access inside the encoder: refused on texts.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from semimatch.methods.blocks import frozen_bn
from semimatch.methods.classic import ClassicConsistency, kl_logits, mean_rows, wide
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.registry import MethodPresets, register_method
from semimatch.models import InputNormalizer

__all__ = ["VAT", "adversarial_direction", "perturbable", "vat"]


def _unit(d: torch.Tensor) -> torch.Tensor:
    """``d / ||d||`` per sample over every dimension but the first (USB's 1e-16 guard)."""
    norm = d.flatten(1).norm(dim=1).reshape(-1, *([1] * (d.dim() - 1)))
    return d / (norm + 1e-16)


def adversarial_direction(
    model: nn.Module, x: torch.Tensor, logits: torch.Tensor, xi: float
) -> torch.Tensor:
    """The unit direction ``g / ||g||`` of one power iteration from ``d ~ N(0, I)``.

    Only the perturbation gets a gradient (``torch.autograd.grad``): the model's ``.grad`` are
    untouched."""
    r = (xi * _unit(torch.randn_like(x))).requires_grad_(True)
    with torch.enable_grad():
        kl = mean_rows(kl_logits(logits.detach(), model(x + r)))
        (g,) = torch.autograd.grad(kl, r)
    return _unit(g)


def perturbable(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """``(forward, z)`` with ``forward(z) == model(x)`` and ``z`` the continuous input to
    perturb: the normalised images (the space of USB's and the paper's eps) for a model that
    normalises inside (``InputNormalizer``), the feature vectors themselves otherwise.  The
    extra forwards bypass a ``DistributedDataParallel`` wrapper (no gradient synchronisation
    of their own: the loss's backward goes through the step's forward)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    if isinstance(model, InputNormalizer):
        return model.model, model.normalize(x)
    if not x.is_floating_point():
        raise ValueError(
            "--algorithm vat perturbs the inputs and cannot run on token ids; pick another "
            "--algorithm for texts"
        )
    return model, x


class VAT(ClassicConsistency):
    """LDS on the weak view at the adversarial perturbation, plus entropy minimisation."""

    uses_model = True

    def __init__(self, *, vat_eps: float, vat_xi: float, **kw) -> None:
        super().__init__("vat", student_view="weak", **kw)
        if not vat_eps > 0 or not vat_xi > 0:
            raise ValueError(f"vat_eps and vat_xi must be > 0; got {vat_eps}, {vat_xi}")
        self.vat_eps, self.vat_xi = float(vat_eps), float(vat_xi)

    def unlabeled(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert out.model is not None and out.u_weak is not None  # needs.model: the step's
        model, x = perturbable(out.model, out.u_weak)
        logits = out.logits_student[0]  # the weak view's own logits, with gradient
        target = logits.detach()
        with frozen_bn(model):
            direction = adversarial_direction(model, x, target, self.vat_xi)
            lds = mean_rows(kl_logits(target, model(x + self.vat_eps * direction)))
        log_q = torch.log_softmax(wide(logits), dim=1)
        entropy = mean_rows(-(log_q.exp() * log_q).sum(dim=1))
        return lds, torch.softmax(wide(target), dim=1), entropy

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, vat_eps={self.vat_eps}, vat_xi={self.vat_xi}"


PRESETS = MethodPresets(
    {"algorithm": "vat", "lambda_u": 1.0, "unsup_warmup": 0.4, "rampup_shape": "linear",
     "entropy_weight": 0.06, "vat_eps": 6.0, "uratio": 1},
    source="usb",
    note="; USB's entropy weight 0.06 and linear ramp-up over 40% of the budget, uratio 1",
)  # fmt: skip


@register_method(presets=PRESETS)
def vat(
    num_classes: int,
    *,
    lambda_u: float = 1.0,
    vat_eps: float = 6.0,
    vat_xi: float = 1e-6,
    entropy_weight: float = 1.0,
    unsup_warmup: float = 0.0,
    rampup_shape: Literal["sigmoid", "linear"] = "linear",
) -> VAT:
    """Virtual adversarial consistency on the weak view, plus entropy minimisation.

    Args:
        num_classes: number of classes.
        lambda_u: unlabeled loss weight (pimodel: USB 10; meanteacher: USB 50; vat: 1).
        vat_eps: norm eps of the adversarial perturbation, per sample (paper and USB: 6).
        vat_xi: norm xi of the power iteration's probe perturbation (paper and USB: 1e-6).
        entropy_weight: weight of the entropy of the unlabeled predictions (VAT+EntMin: paper
            1, USB ent_loss_ratio 0.06; 0: plain VAT).
        unsup_warmup: share of the iteration budget over which the unlabeled loss ramps up from
            0 to 1 (USB unsup_warm_up 0.4; 0: no ramp-up).
        rampup_shape: shape of the ramp-up, sigmoid exp(-5 (1 - t)^2) (the papers) or linear
            (USB).
    """
    return VAT(
        vat_eps=vat_eps,
        vat_xi=vat_xi,
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
        extra_loss_weight=entropy_weight,
    )
