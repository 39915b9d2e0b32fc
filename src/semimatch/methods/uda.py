"""UDA's confidence-masked, sharpened consistency (Xie et al., NeurIPS 2020).

The weighting is the confidence mask ``w = lambda_max * 1[max_c p >= tau]`` (USB: tau = 0.8);
the target is **soft**: ``sharpen(p, T) = softmax(weak logits / T)`` (USB: T = 0.4), and the
consistency loss is on the strong view:

    L_u = (1/(mu B)) * sum_i w_i * H(sharpen(p_i, T), softmax(strong logits_i))

with ``H(t, q) = -sum_k t_k log q_k``.  ``UDAWeighting.target(probs)`` gives the targets; the
step must use them instead of ``argmax p`` (soft cross-entropy).

Paper vs code: the paper writes the consistency term as a KL divergence to the sharpened
target, which differs from USB's cross-entropy by the target's entropy, a constant for the
gradient (the target carries no gradient).  USB 0.3.2's config sets T = 0.4, but its code hands
the pseudo-label hook probabilities with ``softmax=False``, which returns them unchanged: its
targets are ``p`` itself, i.e. ``temperature=1`` here (read in semilearn's ``uda.py`` and
``hooks/pseudo_label.py``).

Training-signal annealing (TSA, paper section 3.3) masks the *labeled* loss: at progress
``t/T`` (0-based iteration over the budget) the threshold is ``eta_t = alpha_t (1 - 1/C) + 1/C``
(``tsa_threshold``) and a labeled row whose correct-class probability exceeds ``eta_t`` is left
out; the loss is the mean over the rows kept (the authors' code, google-research/uda:
``sum(mask * CE) / max(sum(mask), 1)``).  USB's code differs in both: it keeps the rows whose
*largest* probability is ``<= eta_t`` and averages over *all* B rows (``--tsa-mask usb``).
USB's configs: ``tsa_schedule: none`` for classic-CV (the default here), ``exp`` for NLP.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.methods.blocks import check_lambda_max, check_probs, check_tau, sharpen
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import fixed_lambda
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["UDA", "UDAWeighting", "tsa_threshold", "uda"]

TSASchedule = Literal["none", "linear", "exp", "log"]


class UDAWeighting(nn.Module):
    """UDA: mask ``lambda_max * 1[max_c p >= tau]`` and soft targets ``sharpen(p, T)``."""

    def __init__(self, tau: float = 0.8, temperature: float = 0.4, lambda_max: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.tau = check_tau(tau)
        self.temperature = float(temperature)
        self.lambda_max = check_lambda_max(lambda_max)

    def update(self, probs: torch.Tensor) -> None:
        """No running statistics."""
        check_probs(probs)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        return (probs.max(dim=1).values >= self.tau).to(probs.dtype) * self.lambda_max

    def target(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C) soft targets ``sharpen(p, T)`` for the strong view's cross-entropy."""
        check_probs(probs)
        return sharpen(probs, self.temperature)

    def describe(self) -> dict:
        return {
            "type": "uda",
            "tau": self.tau,
            "temperature": self.temperature,
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return f"tau={self.tau}, temperature={self.temperature}, lambda_max={self.lambda_max}"


def tsa_threshold(schedule: TSASchedule, progress: float, num_classes: int) -> float:
    """UDA's training-signal annealing: labeled rows with ``max p > eta_t`` are left out.

    ``eta_t = alpha_t (1 - 1/C) + 1/C`` with ``alpha_t`` = progress (linear),
    ``exp(5 (progress - 1))`` (exp) or ``1 - exp(-5 progress)`` (log); ``"none"``: 1 (keep all).
    ``progress`` = iteration / total iterations.  USB keeps rows with ``max p <= eta_t``.
    """
    if schedule == "none":
        return 1.0
    if schedule == "linear":
        alpha = progress
    elif schedule == "exp":
        alpha = math.exp((progress - 1) * 5)
    elif schedule == "log":
        alpha = 1 - math.exp(-progress * 5)
    else:
        raise ValueError(f"schedule must be 'none', 'linear', 'exp' or 'log'; got {schedule!r}")
    return alpha * (1 - 1 / num_classes) + 1 / num_classes


class UDA(SSLAlgorithm):
    """UDA's composition, with training-signal annealing of the labeled loss when
    ``tsa_schedule`` is not ``"none"`` (module docstring; ``"none"``: the step's loss as is)."""

    def __init__(
        self,
        weighting: UDAWeighting,
        num_classes: int,
        *,
        lambda_u: float = 1.0,
        tsa_schedule: TSASchedule = "none",
        tsa_mask: Literal["paper", "usb"] = "paper",
        num_iterations: int | None = None,
    ) -> None:
        super().__init__(weighting, lambda_u=lambda_u, name="uda", soft_targets=True)
        tsa_threshold(tsa_schedule, 0.0, max(num_classes, 2))  # refuses an unknown schedule
        if tsa_mask not in ("paper", "usb"):
            raise ValueError(f"tsa_mask must be 'paper' or 'usb'; got {tsa_mask!r}")
        if tsa_schedule != "none" and (num_iterations is None or num_iterations < 1):
            raise ValueError(
                "uda's tsa_schedule anneals over the iteration budget: build it with "
                "num_iterations=K (build_algorithm('uda', C, num_iterations=K, ...)); training "
                "passes it"
            )
        self.num_classes = int(num_classes)
        self.tsa_schedule = tsa_schedule
        self.tsa_mask = tsa_mask
        self.num_iterations = num_iterations

    @property
    def needs(self) -> Needs:
        """The composition's needs, and the iteration when the labeled loss is annealed."""
        needs = super().needs
        return needs if self.tsa_schedule == "none" else replace(needs, iteration=True)

    def annealed_sup_loss(
        self, logits_lb: torch.Tensor, y_lb: torch.Tensor, iteration: int
    ) -> torch.Tensor:
        """The labeled loss without the rows above ``eta_t`` (module docstring)."""
        assert self.num_iterations is not None
        eta = tsa_threshold(self.tsa_schedule, iteration / self.num_iterations, self.num_classes)
        logits = logits_lb.float()
        per_row = F.cross_entropy(logits, y_lb, reduction="none")
        probs = torch.softmax(logits.detach(), dim=1)
        if self.tsa_mask == "usb":  # USB: max_c p <= eta_t kept, mean over all B rows
            keep = (probs.max(dim=1).values <= eta).to(per_row.dtype)
            return (per_row * keep).mean()
        correct = probs.gather(1, y_lb[:, None]).squeeze(1)
        keep = (correct <= eta).to(per_row.dtype)  # the paper removes p(y*|x) > eta_t
        # Over the global batch under torchrun: the rows kept by every process, scaled by the
        # world size because DDP averages the processes' gradients (two processes equal one).
        kept = keep.sum()
        if dist.is_distributed():
            kept = dist.all_reduce_sum(kept.detach()) / dist.get_world_size()
        return (per_row * keep).sum() / kept.clamp(min=1.0 / dist.get_world_size())

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        if self.tsa_schedule == "none":
            return super().loss(out)
        if out.iteration is None:
            raise ValueError(
                "uda with tsa_schedule needs the iteration (train_step(..., info=StepInfo(k)))"
            )
        sup = self.annealed_sup_loss(out.logits_lb, out.y_lb, out.iteration)
        loss, result = super().loss(replace(out, sup_loss=sup))
        return loss, result._replace(sup_loss=sup)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.tsa_schedule != "none":
            text += f", tsa_schedule={self.tsa_schedule!r}, tsa_mask={self.tsa_mask!r}"
        return text


@register_method(
    formulas={"uda": (("tau",), fixed_lambda)},
    presets=MethodPresets(
        {
            "algorithm": "uda",
            "tau": 0.8,
            "temperature": 0.4,
            "lambda_u": 1.0,
            "tsa_schedule": "none",
        },
        source="usb",
        nlp=True,
        nlp_values={"tsa_schedule": "exp"},  # every USB NLP UDA config
    ),
)
def uda(
    num_classes: int,
    *,
    tau: float = 0.8,
    temperature: float = 0.4,
    lambda_u: float = 1.0,
    tsa_schedule: TSASchedule = "none",
    tsa_mask: Literal["paper", "usb"] = "paper",
    num_iterations: int | None = None,
) -> UDA:
    """Confidence mask + sharpened soft targets, consistency on the strong view.

    The paper sharpens with T = 0.4, as USB's config says; USB 0.3.2's code passes
    probabilities to its pseudo-label hook with ``softmax=False``, which returns them unchanged,
    so its targets are ``p`` (``temperature=1`` here).

    Args:
        num_classes: number of classes.
        tau: confidence threshold of the mask (USB p_cutoff 0.8).
        temperature: sharpening temperature T of the soft targets softmax(weak logits / T)
            (uda: USB 0.4; dash: USB 0.5).
        lambda_u: unlabeled loss weight.
        tsa_schedule: training-signal annealing of the labeled loss, alpha_t of eta_t =
            alpha_t (1 - 1/C) + 1/C: none (USB classic-CV), linear, exp (USB NLP) or log.
        tsa_mask: which labeled rows annealing leaves out: paper (correct-class probability
            above eta_t, mean over the rows kept) or usb (largest probability above eta_t,
            mean over all rows).
        num_iterations: the iteration budget the annealing runs over (training passes it).
    """
    return UDA(
        UDAWeighting(tau, temperature),
        num_classes,
        lambda_u=lambda_u,
        tsa_schedule=tsa_schedule,
        tsa_mask=tsa_mask,
        num_iterations=num_iterations,
    )
