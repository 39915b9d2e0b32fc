"""The training step shared by every algorithm (reference, "Shared recipe" and "SoftMatch").

    L = mean_B H(y, f(weak(x))) + lambda_u * (1/(mu B)) * sum_i w_i H(y_hat_i, f(student(u_i)))

One function for all methods: the algorithm decides the weights (and the student view), and
says as plain attributes what else it needs: pseudo-labels from the raw or the aligned
probabilities (``pseudo_from``), soft targets ``t`` from its weighting (``soft_targets``: the
unlabeled term is then ``-sum_k t_k log_softmax(student)_k``), the labeled probabilities for its
update (``labeled_probs``), an extra loss term on the student logits (``extra_loss``, weighted by
``extra_loss_weight``), a supervised warm-up (``warmup``, ``end_warmup``) and the unlabeled
rows' pool indices (``sample_indices``: FlexMatch's per-sample memory).

It returns the loss and a dict of *sums* (counts, weight sums, per-class sums, a confidence
histogram).  Sums accumulate on the device without host synchronisation and all-reduce exactly
under DDP; ``semimatch.metrics.summarize`` turns them into quantity/quality/accuracy.
"""

from __future__ import annotations

from typing import get_args

import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.algorithms import SSLAlgorithm
from semimatch.config import ForwardMode
from semimatch.two_pass import two_pass_forward

__all__ = ["train_step", "CONF_BINS", "FORWARD_MODES"]

FORWARD_MODES: tuple[str, ...] = get_args(ForwardMode)

CONF_BINS = 50  # histogram bins over [0, 1] of the confidence the weighting function sees


def train_step(
    model: nn.Module,
    algorithm: SSLAlgorithm,
    x_lb: torch.Tensor,
    y_lb: torch.Tensor,
    u_weak: torch.Tensor | None = None,
    u_strong: torch.Tensor | None = None,
    u_true: torch.Tensor | None = None,
    forward_mode: ForwardMode = "joint",
    iteration: int | None = None,
    u_idx: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Compute the loss of one step and its metric sums.

    Args:
        model: maps an image batch to logits (N, C).
        x_lb: labeled batch (weak view).
        y_lb: its labels.
        u_weak: unlabeled weak view.
        u_strong: unlabeled strong view (only when the algorithm's student view is the strong
            one).
        u_true: ground truth of the unlabeled batch, ``-1`` where unknown.  Used **only** for the
            quality metrics; the loss never reads it.
        forward_mode: ``"joint"`` (default) runs one forward over ``cat(x_lb, u_weak,
            u_strong)`` so BatchNorm sees the joint batch, as in the papers: the exact gradient.
            ``"two-pass"`` (opt-in, less memory) gives the same values with a no-grad pass over
            the joint batch and a grad pass over the labeled and strong images that reuses the
            joint BN statistics (``semimatch.two_pass``); its backward estimates the weak rows'
            BN-statistics path from the labeled rows (an approximation, BENCHMARKS.md 1b).
            ``"split"`` runs the weak view alone without grad, which changes the BN batch
            statistics (it lost accuracy, BENCHMARKS.md); both of its forwards update the BN
            running statistics, as USB's ``use_cat=False`` forwards do.
        iteration: the 0-based iteration, for an algorithm with a supervised warm-up (Dash):
            before ``algorithm.warmup`` the step is supervised only (the labeled batch alone,
            as a supervised run); at ``algorithm.warmup`` the (global) mean labeled loss of
            this batch, under the model the warm-up left, goes to ``algorithm.end_warmup``
            before the weights.  ``None``: no warm-up.
        u_idx: the unlabeled rows' indices in the unlabeled pool (``SSLBatch.u_idx``, global
            under torchrun); required by an algorithm with ``sample_indices`` (FlexMatch),
            which gets them as ``indices=``; the others never read them.

    Returns:
        ``(loss, sums)``: the scalar loss and a dict of detached tensors (see ``metric_sums``).
    """
    if x_lb.shape[0] != y_lb.shape[0]:
        raise ValueError(f"x_lb has {x_lb.shape[0]} images but y_lb has {y_lb.shape[0]} labels")
    if forward_mode not in FORWARD_MODES:
        raise ValueError(f"forward_mode must be one of {FORWARD_MODES}; got {forward_mode!r}")
    n_lb = x_lb.shape[0]

    # An empty unlabeled shard (possible on one rank) still takes the unlabeled path, so every
    # rank joins the all-reduces of the weighting/alignment statistics.
    if algorithm.supervised_at(iteration) or u_weak is None:
        logits_lb = model(x_lb)
        sup_loss = F.cross_entropy(logits_lb.float(), y_lb)
        return sup_loss, metric_sums(algorithm, logits_lb, y_lb, sup_loss, None)

    if algorithm.uses_strong and (u_strong is None or u_strong.shape != u_weak.shape):
        raise ValueError("this algorithm needs a strong view u_strong with the shape of u_weak")
    n_ulb = u_weak.shape[0]

    if algorithm.student_view == "weak":
        # Pseudo-Label: the loss is on the weak view's own logits (with gradient); the targets
        # come from the same logits, detached.
        logits = model(torch.cat([x_lb, u_weak]))
        logits_lb, logits_student = logits[:n_lb], logits[n_lb:]
        logits_weak = logits_student.detach()
    elif forward_mode in ("joint", "two-pass"):
        x = torch.cat([x_lb, u_weak, u_strong])
        if forward_mode == "joint":
            logits = model(x)
        else:  # same values, BN sees the joint batch; no backward over the weak view
            # The weak labeled rows stand in for the weak unlabeled rows' path through the BN
            # statistics (same distribution; semimatch.two_pass).
            logits = two_pass_forward(
                model, x, no_grad=slice(n_lb, n_lb + n_ulb), stand_in=slice(0, n_lb)
            )
        logits_lb = logits[:n_lb]
        logits_weak = logits[n_lb : n_lb + n_ulb].detach()
        logits_student = logits[n_lb + n_ulb :]
    else:
        with torch.no_grad():
            logits_weak = model(u_weak)
        logits = model(torch.cat([x_lb, u_strong]))
        logits_lb, logits_student = logits[:n_lb], logits[n_lb:]

    sup_loss = F.cross_entropy(logits_lb.float(), y_lb)
    if algorithm.ends_warmup_at(iteration):
        algorithm.end_warmup(_global_mean(sup_loss.detach(), n_lb))
    probs = torch.softmax(logits_weak.float(), dim=1)
    probs_lb = torch.softmax(logits_lb.detach().float(), dim=1) if algorithm.labeled_probs else None
    # Pseudo-labels from the raw probabilities, unless the algorithm says aligned (AdaMatch).
    indices = u_idx if algorithm.sample_indices else None
    weights, confidence, pseudo, targets = algorithm.label(probs, probs_lb, indices)
    if targets is None:
        per_sample = F.cross_entropy(logits_student.float(), pseudo, reduction="none")
    else:  # soft targets (UDA, Dash): -sum_k t_k log_softmax(student)_k
        log_q = torch.log_softmax(logits_student.float(), dim=1)
        per_sample = -(targets.detach().float() * log_q).sum(dim=1)
    # Mean over *all* mu*B unlabeled samples, not only the weighted ones (reference).
    unsup_loss = (weights.detach() * per_sample).sum() / max(n_ulb, 1)
    loss = sup_loss + algorithm.lambda_u * unsup_loss
    extra = None
    if algorithm.extra_loss is not None:  # FreeMatch's fairness loss: gradient via the student
        extra = algorithm.extra_loss(logits_student, weights.detach())
        loss = loss + algorithm.extra_loss_weight * extra
    unlabeled = (weights, confidence, pseudo, u_true, unsup_loss, extra)
    return loss, metric_sums(algorithm, logits_lb, y_lb, sup_loss, unlabeled)


def _global_mean(loss: torch.Tensor, n: int) -> torch.Tensor:
    """The mean of a per-process mean ``loss`` over ``n`` rows, over every process's rows."""
    total, count = dist.all_reduce_sums(
        loss.float().reshape(1) * n, torch.tensor([float(n)], device=loss.device)
    )
    return (total / count.clamp(min=1.0)).squeeze(0)


@torch.no_grad()
def metric_sums(
    algorithm: SSLAlgorithm,
    logits_lb: torch.Tensor,
    y_lb: torch.Tensor,
    sup_loss: torch.Tensor,
    unlabeled: tuple | None,
) -> dict[str, torch.Tensor]:
    """Fixed-shape sums describing one step (all float32, on the logits' device).

    Keys: ``n_lb, sup_loss_sum, lb_correct`` for the labeled batch; for the unlabeled batch
    ``n_ulb, unsup_loss_sum, weight_sum, full_weight, known, correct, weight_known,
    weight_correct`` and per predicted class ``class_count, class_weight, class_known,
    class_correct``; and ``conf_hist`` (CONF_BINS bins over [0, 1]).  An algorithm with an
    extra loss term (FreeMatch) also has ``extra_loss_sum`` (the term times ``n_ulb``); the keys
    are the same at every step of one algorithm, warm-up included.
    """
    device, num_classes = logits_lb.device, logits_lb.shape[1]
    f32 = dict(device=device, dtype=torch.float32)
    n_lb = torch.tensor(float(y_lb.shape[0]), **f32)
    sums = {
        "n_lb": n_lb,
        "sup_loss_sum": sup_loss.detach().float() * n_lb,
        "lb_correct": (logits_lb.argmax(dim=1) == y_lb).sum().float(),
    }
    zeros_c = torch.zeros(num_classes, **f32)
    if unlabeled is None:
        for key in (
            "n_ulb",
            "unsup_loss_sum",
            "weight_sum",
            "full_weight",
            "known",
            "correct",
            "weight_known",
            "weight_correct",
        ):
            sums[key] = torch.zeros((), **f32)
        for key in ("class_count", "class_weight", "class_known", "class_correct"):
            sums[key] = zeros_c.clone()
        sums["conf_hist"] = torch.zeros(CONF_BINS, **f32)
        if algorithm.extra_loss is not None:
            sums["extra_loss_sum"] = torch.zeros((), **f32)
        return sums

    weights, confidence, pseudo, u_true, unsup_loss, *rest = unlabeled
    extra = rest[0] if rest else None
    w = weights.detach().float()
    n_ulb = w.shape[0]
    if u_true is None:
        u_true = torch.full_like(pseudo, -1)
    known = (u_true >= 0).float()
    correct = (pseudo == u_true).float() * known
    lam = algorithm.lambda_max
    sums.update(
        n_ulb=torch.tensor(float(n_ulb), **f32),
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
    if algorithm.extra_loss is not None:
        value = torch.zeros((), **f32) if extra is None else extra.detach().float()
        sums["extra_loss_sum"] = value * n_ulb
    return sums
