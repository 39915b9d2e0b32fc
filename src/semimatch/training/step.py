"""The training step shared by every method (reference, "Shared recipe" and "SoftMatch").

    L = mean_B H(y, f(weak(x))) + lambda_u * (1/(mu B)) * sum_i w_i H(y_hat_i, f(student(u_i)))

One function for all methods: the step runs the model over the views the method ``needs``
(``semimatch.methods.consistency.Needs``: how many strong views, or the weak view as the
student) in the chosen forward mode, and hands the outputs with what else it asked for (the
iteration, the unlabeled rows' pool indices: ``StepInfo``) to the method's ``loss``, which
returns the loss and its unlabeled part (weights, pseudo-labels, ...).

It returns the loss and a dict of *sums* (counts, weight sums, per-class sums, a confidence
histogram).  Sums accumulate on the device without host synchronisation and all-reduce exactly
under DDP; ``semimatch.training.metrics.summarize`` turns them into quantity/quality/accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.config import ForwardMode
from semimatch.methods.blocks import frozen_bn, train_mode
from semimatch.methods.consistency import SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.heads import heads_of, record_features, unwrap
from semimatch.training.two_pass import two_pass_forward

__all__ = ["CONF_BINS", "FORWARD_MODES", "StepInfo", "metric_sums", "train_step"]

FORWARD_MODES: tuple[str, ...] = get_args(ForwardMode)

CONF_BINS = 50  # histogram bins over [0, 1] of the confidence the weighting function sees


@dataclass(frozen=True)
class StepInfo:
    """What a step knows beyond its tensors, for the methods whose ``needs`` ask for it.

    ``iteration``: the 0-based iteration (Dash's supervised warm-up: before ``warmup`` the
    step is supervised only).  ``u_idx``: the unlabeled rows' indices in the unlabeled pool
    (``SSLBatch.u_idx``, global under torchrun; FlexMatch's per-sample memory).
    ``iterations``: the iteration budget (a ramp-up's length is a share of it).  ``teacher``: the
    weight EMA's model, for a method whose ``needs.teacher`` asks for its logits (Mean Teacher).
    ``seed``: the run's seed, for a method that draws its own randomness (MixMatch's MixUp).
    ``lb_idx``: the labeled rows' positions in the labeled set (``SSLBatch.lb_idx``; SimMatch's
    labeled memory bank).
    """

    iteration: int | None = None
    u_idx: torch.Tensor | None = None
    iterations: int | None = None
    teacher: nn.Module | None = None
    seed: int | None = None
    lb_idx: torch.Tensor | None = None


def train_step(
    model: nn.Module,
    algorithm: SSLAlgorithm,
    x_lb: torch.Tensor,
    y_lb: torch.Tensor,
    u_weak: torch.Tensor | None = None,
    u_strong: torch.Tensor | Sequence[torch.Tensor] | None = None,
    u_true: torch.Tensor | None = None,
    forward_mode: ForwardMode = "joint",
    info: StepInfo | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Compute the loss of one step and its metric sums.

    Args:
        model: maps an image batch to logits (N, C).
        algorithm: the method (``SSLAlgorithm`` or a subclass): its ``needs``,
            ``supervised_at`` and ``loss`` are all the step reads.
        x_lb: labeled batch (weak view).
        y_lb: its labels.
        u_weak: unlabeled weak view.
        u_strong: unlabeled strong view, or one per strong view the method needs (only when it
            needs one).
        u_true: ground truth of the unlabeled batch, ``-1`` where unknown.  Used **only** for the
            quality metrics; the loss never reads it.
        forward_mode: ``"joint"`` (default) runs one forward over ``cat(x_lb, u_weak,
            u_strong)`` so BatchNorm sees the joint batch, as in the papers: the exact gradient.
            ``"two-pass"`` (opt-in, less memory) gives the same values with a no-grad pass over
            the joint batch and a grad pass over the labeled and strong images that reuses the
            joint BN statistics (``semimatch.training.two_pass``); its backward estimates the weak
            rows' BN-statistics path from the labeled rows (an approximation, BENCHMARKS.md 1b).
            ``"split"`` runs the weak view alone without grad, which changes the BN batch
            statistics (it lost accuracy, BENCHMARKS.md); both of its forwards update the BN
            running statistics, as USB's ``use_cat=False`` forwards do.
        info: the iteration and the unlabeled rows' pool indices (``StepInfo``), for a method
            whose ``needs`` ask for them (Dash's warm-up, FlexMatch's memory).

    Returns:
        ``(loss, sums)``: the scalar loss and a dict of detached tensors (see ``metric_sums``).
    """
    if x_lb.shape[0] != y_lb.shape[0]:
        raise ValueError(f"x_lb has {x_lb.shape[0]} images but y_lb has {y_lb.shape[0]} labels")
    if forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {FORWARD_MODES}; got {forward_mode!r}")
    info = info or StepInfo()
    # An empty unlabeled shard (possible on one rank) still takes the unlabeled path, so every
    # rank joins the all-reduces of the weighting/alignment statistics.
    if algorithm.supervised_at(info.iteration) or u_weak is None:
        logits_lb = model(x_lb)
        sup_loss = F.cross_entropy(logits_lb.float(), y_lb)
        return sup_loss, metric_sums(algorithm, logits_lb, y_lb, sup_loss, None)
    strong = _strong_views(algorithm, u_weak, u_strong)
    if not algorithm.needs.forward:  # the method forwards the model itself (MixMatch)
        logits_lb, loss, unlabeled = algorithm.own_step(model, x_lb, y_lb, u_weak, strong, info)
        sup_loss = unlabeled.sup_loss if unlabeled.sup_loss is not None else loss
        return loss, metric_sums(algorithm, logits_lb, y_lb, sup_loss, unlabeled, u_true)
    if algorithm.needs.features and forward_mode != "joint":
        raise ValueError(
            f"{algorithm.name} reads the features of the joint forward's rows; pass "
            "--forward-mode joint"
        )
    if algorithm.needs.features:  # the same forward, its features recorded (methods.heads)
        with record_features(model) as feats:
            logits_lb, logits_weak, student = _forward(model, x_lb, u_weak, strong, forward_mode)
    else:
        logits_lb, logits_weak, student = _forward(model, x_lb, u_weak, strong, forward_mode)
    sup_loss = F.cross_entropy(logits_lb.float(), y_lb)
    out = StepOutputs(logits_lb, y_lb, sup_loss, logits_weak, student, info.u_idx, info.iteration)
    _add_needed(out, algorithm, model, u_weak, info, x_lb)
    if algorithm.needs.features:
        _add_features(out, model, torch.cat(feats), x_lb.shape[0], u_weak.shape[0], len(strong))
    loss, unlabeled = algorithm.loss(out)
    if unlabeled.sup_loss is not None:  # the method's own labeled loss (UDA's annealing)
        sup_loss = unlabeled.sup_loss
    return loss, metric_sums(algorithm, logits_lb, y_lb, sup_loss, unlabeled, u_true)


def _add_needed(
    out: StepOutputs,
    algorithm: SSLAlgorithm,
    model: nn.Module,
    u_weak: torch.Tensor,
    info: StepInfo,
    x_lb: torch.Tensor | None = None,
) -> None:
    """What beyond the standard outputs the method's ``needs`` ask for: the budget, the
    teacher's logits on the weak view, the model and the weak inputs, the labeled rows'
    positions, the teacher model and the labeled inputs."""
    needs = algorithm.needs
    out.iterations = info.iterations
    if needs.labeled_indices:
        if info.lb_idx is None:
            raise ValueError(
                f"{algorithm.name} needs the labeled rows' positions in the labeled set "
                "(SSLBatch.lb_idx; train_step(..., info=StepInfo(lb_idx=...)))"
            )
        out.lb_idx = info.lb_idx
    if needs.teacher_model:  # the EMA's model, or the live one (an EMA of decay 0)
        out.teacher_model = info.teacher if info.teacher is not None else unwrap(model)
        out.x_lb = x_lb
    if needs.teacher:
        if info.teacher is None:
            raise ValueError(
                f"{algorithm.name} needs a teacher: the weight EMA (--ema-decay > 0; "
                "train_step(..., info=StepInfo(teacher=ema.module)))"
            )
        # The teacher's own noise (train mode: batch statistics, dropout) as the student's,
        # its running statistics untouched (USB's freeze_bn around its teacher forward).
        with torch.no_grad(), train_mode(info.teacher), frozen_bn(info.teacher):
            out.logits_teacher = info.teacher(u_weak)
    if needs.model:
        out.model, out.u_weak = model, u_weak


def _add_features(
    out: StepOutputs, model: nn.Module, feats: torch.Tensor, n_lb: int, n_ulb: int, views: int
) -> None:
    """The features of the joint forward's rows (labeled, weak, each student view; Pseudo-Label's
    student is the weak view itself) and the method's heads, for ``needs.features``."""
    out.feats_lb = feats[:n_lb]
    weak = feats[n_lb : n_lb + n_ulb]
    out.feats_weak = weak.detach()
    out.feats_student = tuple(feats[n_lb + n_ulb :].split(n_ulb)) if views else (weak,)
    out.heads = heads_of(model)


def _strong_views(
    algorithm: SSLAlgorithm,
    u_weak: torch.Tensor,
    u_strong: torch.Tensor | Sequence[torch.Tensor] | None,
) -> tuple[torch.Tensor, ...]:
    """The strong views the method needs (``needs.strong_views``), checked against ``u_weak``."""
    wanted = algorithm.needs.strong_views
    if wanted == 0:
        return ()
    views = (u_strong,) if u_strong is None or isinstance(u_strong, torch.Tensor) else u_strong
    views = tuple(views)
    if len(views) != wanted or any(v is None or v.shape != u_weak.shape for v in views):
        what = "a strong view u_strong" if wanted == 1 else f"{wanted} strong views u_strong"
        raise ValueError(f"this algorithm needs {what} with the shape of u_weak")
    return views


def _forward(
    model: nn.Module,
    x_lb: torch.Tensor,
    u_weak: torch.Tensor,
    strong: tuple[torch.Tensor, ...],
    forward_mode: str,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """``(labeled logits, detached weak logits, student logits per view)`` in ``forward_mode``."""
    n_lb, n_ulb = x_lb.shape[0], u_weak.shape[0]
    if not strong:
        # Pseudo-Label: the loss is on the weak view's own logits (with gradient); the targets
        # come from the same logits, detached.
        logits = model(torch.cat([x_lb, u_weak]))
        return logits[:n_lb], logits[n_lb:].detach(), (logits[n_lb:],)
    if forward_mode in ("joint", "two-pass"):
        x = torch.cat([x_lb, u_weak, *strong])
        if forward_mode == "joint":
            logits = model(x)
        else:  # same values, BN sees the joint batch; no backward over the weak view
            # The weak labeled rows stand in for the weak unlabeled rows' path through the BN
            # statistics (same distribution; semimatch.training.two_pass).
            logits = two_pass_forward(
                model, x, no_grad=slice(n_lb, n_lb + n_ulb), stand_in=slice(0, n_lb)
            )
        logits_weak = logits[n_lb : n_lb + n_ulb].detach()
        rest = logits[n_lb + n_ulb :]
    else:
        with torch.no_grad():
            logits_weak = model(u_weak)
        logits = model(torch.cat([x_lb, *strong]))
        rest = logits[n_lb:]
    student = (rest,) if len(strong) == 1 else tuple(rest.split(n_ulb))
    return logits[:n_lb], logits_weak, student


_UNLABELED_SCALARS = (
    "n_ulb",
    "unsup_loss_sum",
    "weight_sum",
    "full_weight",
    "known",
    "correct",
    "weight_known",
    "weight_correct",
)
_UNLABELED_PER_CLASS = ("class_count", "class_weight", "class_known", "class_correct")


@torch.no_grad()
def metric_sums(
    algorithm: SSLAlgorithm,
    logits_lb: torch.Tensor,
    y_lb: torch.Tensor,
    sup_loss: torch.Tensor,
    unlabeled: UnlabeledResult | None,
    u_true: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Fixed-shape sums describing one step (all float32, on the logits' device).

    Keys: ``n_lb, sup_loss_sum, lb_correct`` for the labeled batch; for the unlabeled batch
    ``n_ulb, unsup_loss_sum, weight_sum, full_weight, known, correct, weight_known,
    weight_correct`` and per predicted class ``class_count, class_weight, class_known,
    class_correct``; and ``conf_hist`` (CONF_BINS bins over [0, 1]).  An algorithm with an
    extra loss term (FreeMatch) also has ``extra_loss_sum`` (the term times ``n_ulb``); the keys
    are the same at every step of one algorithm, warm-up included.  ``u_true``: the unlabeled
    rows' truth (-1 unknown; None: all unknown), for the quality sums only.
    """
    device = logits_lb.device
    f32 = dict(device=device, dtype=torch.float32)
    n_lb = torch.tensor(float(y_lb.shape[0]), **f32)
    sums = {
        "n_lb": n_lb,
        "sup_loss_sum": sup_loss.detach().float() * n_lb,
        "lb_correct": (logits_lb.argmax(dim=1) == y_lb).sum().float(),
    }
    zeros_c = torch.zeros(logits_lb.shape[1], **f32)
    if unlabeled is None:
        sums.update((key, torch.zeros((), **f32)) for key in _UNLABELED_SCALARS)
        sums.update((key, zeros_c.clone()) for key in _UNLABELED_PER_CLASS)
        sums["conf_hist"] = torch.zeros(CONF_BINS, **f32)
        if algorithm.has_extra_loss:
            sums["extra_loss_sum"] = torch.zeros((), **f32)
        return sums
    sums.update(_unlabeled_sums(algorithm.lambda_max, unlabeled, u_true, zeros_c))
    if algorithm.has_extra_loss:
        extra = unlabeled.extra
        value = torch.zeros((), **f32) if extra is None else extra.detach().float()
        sums["extra_loss_sum"] = value * unlabeled.weights.shape[0]
    return sums


def _unlabeled_sums(
    lam: float, unlabeled: UnlabeledResult, u_true: torch.Tensor | None, zeros_c: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The unlabeled batch's sums; weights are counted in units of ``lam`` (lambda_max)."""
    weights, confidence, pseudo, unsup_loss = unlabeled[:4]
    w = weights.detach().float()
    n_ulb = w.shape[0]
    if u_true is None:
        u_true = torch.full_like(pseudo, -1)
    known = (u_true >= 0).float()
    correct = (pseudo == u_true).float() * known
    return dict(
        n_ulb=torch.tensor(float(n_ulb), device=zeros_c.device, dtype=torch.float32),
        unsup_loss_sum=unsup_loss.detach().float() * n_ulb,
        weight_sum=w.sum() / lam,
        full_weight=(w >= lam * (1 - 1e-6)).float().sum(),
        known=known.sum(),
        correct=correct.sum(),
        weight_known=(w * known).sum() / lam,
        weight_correct=(w * correct).sum() / lam,
        class_count=zeros_c.index_add(0, pseudo, torch.ones_like(w)),
        class_weight=zeros_c.index_add(0, pseudo, w / lam),
        class_known=zeros_c.index_add(0, pseudo, known),
        class_correct=zeros_c.index_add(0, pseudo, correct),
        conf_hist=torch.histc(confidence.float(), bins=CONF_BINS, min=0.0, max=1.0),
    )
