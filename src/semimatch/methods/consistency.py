"""The weighted pseudo-label consistency composition most methods are: ``SSLAlgorithm``.

An algorithm is: a sample weighting function lambda(p), an optional distribution alignment, which
view the unlabeled loss is computed on (the strong view for FixMatch/SoftMatch, the weak view
itself for Pseudo-Label), and the unlabeled loss weight ``lambda_u``; members of the family that
need more say so as plain attributes (``pseudo_from``, ``soft_targets``, ``labeled_probs``,
``extra_loss``, ``warmup``/``end_warmup``, ``sample_indices``).  The training step
(``semimatch.training.step.train_step``) reads only what every method has: ``needs`` (which views,
the sample indices, the iteration), ``supervised_at`` and ``loss(outputs)``; a method that is not
this composition subclasses it (or provides the same members) and overrides those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.methods.blocks import Weighting, rampup

__all__ = ["Needs", "SSLAlgorithm", "StepOutputs", "UnlabeledResult"]


@dataclass(frozen=True)
class Needs:
    """What a method needs from the training step and the data stream.

    ``unlabeled``: it trains on unlabeled data (False: supervised only); ``strong_views``: the
    strong views of each unlabeled row the stream draws and the step forwards (0: the student is
    the weak view itself, Pseudo-Label); ``sample_indices``: the unlabeled rows' pool indices
    (``StepOutputs.u_idx``); ``iteration``: the 0-based iteration and the iteration budget
    (``StepOutputs.iteration``, ``StepOutputs.iterations``: a ramp-up); ``teacher``: the
    teacher's logits on the weak unlabeled view (``StepOutputs.logits_teacher``: the weight EMA
    in train mode, without gradient, BatchNorm statistics untouched; Mean Teacher); ``model``:
    the model and the weak unlabeled inputs (``StepOutputs.model``, ``StepOutputs.u_weak``) for
    the method's own extra forwards (VAT's perturbations); such a method perturbs the inputs,
    so it needs floating-point inputs (not token ids).
    """

    unlabeled: bool = True
    strong_views: int = 1
    sample_indices: bool = False
    iteration: bool = False
    teacher: bool = False
    model: bool = False
    #: The strong views are drawn with the weak augmentation (MixMatch's K = 2 weak views, as
    #: USB's MixMatch dataset gives them).
    strong_as_weak: bool = False
    #: False: the method forwards the model itself (``own_step``; MixMatch forwards mixed
    #: inputs), the step only hands it the views.
    forward: bool = True
    #: The backbone's features of every row (``StepOutputs.feats_*``) and the method's heads
    #: (``StepOutputs.heads``): the method has ``make_heads(num_features) -> nn.Module``, which
    #: ``semimatch.methods.heads.attach_heads`` hangs on the model (CoMatch's projection).
    features: bool = False
    #: The method turns the inputs by quarter turns (ReMixMatch's rotation head): square images
    #: only.
    spatial: bool = False
    #: Forwards of the unlabeled rows with gradient beyond one per view (ReMixMatch's unmixed and
    #: rotated first strong view: 2), for the memory pre-flight's activation count.
    extra_forwards: int = 0
    #: The labeled rows' positions in the labeled set (``StepOutputs.lb_idx``: global, the same
    #: under any world size; SimMatch's labeled memory bank).
    labeled_indices: bool = False
    #: The weight EMA's model itself and the labeled inputs (``StepOutputs.teacher_model``,
    #: ``StepOutputs.x_lb``) for the method's own teacher forwards (SimMatch's bank embeddings);
    #: without the EMA (``--ema-decay 0``) the teacher is the live model, as an EMA of decay 0 is.
    teacher_model: bool = False
    #: Rows per labeled row that the method's own forward adds to the step's views, with
    #: gradient (CRMatch's four rotations of B weak images: 4), for the memory pre-flight.
    extra_rows: int = 0


@dataclass
class StepOutputs:
    """What the step hands a method: the model's outputs on the views it needs, and context.

    ``logits_lb``: the labeled rows' logits (with gradient); ``sup_loss``: their mean
    cross-entropy; ``logits_weak``: the weak unlabeled view's logits, detached;
    ``logits_student``: one (with gradient) per strong view, or the weak view's own logits
    when the method needs no strong view; ``u_idx``/``iteration``/``iterations`` (the budget)/
    ``logits_teacher``/``model``/``u_weak``: as the method's ``needs`` say (else possibly None).
    With ``needs.features``: ``feats_lb`` (with gradient), ``feats_weak`` (detached, as the
    weak logits) and ``feats_student`` (one per student view, with gradient) are the rows'
    feature vectors, and ``heads`` the method's heads on the model.  ``lb_idx``,
    ``teacher_model`` and ``x_lb``: as ``needs.labeled_indices``/``needs.teacher_model`` say.
    """

    logits_lb: torch.Tensor
    y_lb: torch.Tensor
    sup_loss: torch.Tensor
    logits_weak: torch.Tensor
    logits_student: tuple[torch.Tensor, ...]
    u_idx: torch.Tensor | None = None
    iteration: int | None = None
    iterations: int | None = None
    logits_teacher: torch.Tensor | None = None
    model: nn.Module | None = None
    u_weak: torch.Tensor | None = None
    feats_lb: torch.Tensor | None = None
    feats_weak: torch.Tensor | None = None
    feats_student: tuple[torch.Tensor, ...] | None = None
    heads: nn.Module | None = None
    lb_idx: torch.Tensor | None = None
    teacher_model: nn.Module | None = None
    x_lb: torch.Tensor | None = None

    def global_sup_loss(self) -> torch.Tensor:
        """The mean labeled loss over every process's rows (all-reduced under torchrun)."""
        n = self.y_lb.shape[0]
        total, count = dist.all_reduce_sums(
            self.sup_loss.detach().float().reshape(1) * n,
            torch.tensor([float(n)], device=self.sup_loss.device),
        )
        return (total / count.clamp(min=1.0)).squeeze(0)


class UnlabeledResult(NamedTuple):
    """A method's unlabeled part of one step, for the metric sums (``step.metric_sums``).

    ``weights`` (N,), ``confidence`` (N,) the max probability the weighting saw, ``pseudo``
    (N,) the pseudo-labels, ``unsup_loss`` the weighted mean unlabeled loss, ``extra`` the
    extra loss term (or None), ``sup_loss`` the labeled loss the method used when it is not the
    step's ``StepOutputs.sup_loss`` (UDA's training-signal annealing; None: the step's).
    """

    weights: torch.Tensor
    confidence: torch.Tensor
    pseudo: torch.Tensor
    unsup_loss: torch.Tensor
    extra: torch.Tensor | None = None
    sup_loss: torch.Tensor | None = None


class SSLAlgorithm(nn.Module):
    """A composition ``(alignment, weighting, student_view, lambda_u)`` and what else the step
    must do for it.

    Holding the weighting and the alignment as submodules puts their running state in
    ``algorithm.state_dict()``, so checkpoints and ``.to(device)`` cover it.

    Args:
        weighting: lambda(p) with ``update``/``__call__``; ``None`` means supervised only.
        alignment: applied to the weak-view probabilities before the weighting (update, then
            apply).
        student_view: ``"strong"`` (FixMatch, SoftMatch) or ``"weak"`` (Pseudo-Label: the loss
            is on the weak view's own logits, so no strong augmentation is computed).
        stats_on: ``"aligned"`` (USB code, default) or ``"raw"`` (paper, TorchSSL): which
            probabilities update the weighting's running statistics.  Weights are always
            computed from the aligned probabilities.
        lambda_u: weight of the unlabeled loss.
        pseudo_from: which probabilities give the pseudo-label ``argmax``: ``"raw"`` (every
            method but AdaMatch; SoftMatch aligns only for the weights) or ``"aligned"``
            (AdaMatch).
        soft_targets: the unlabeled loss uses the weighting's ``target(probs)`` (N, C) soft
            targets, ``-sum_k t_k log_softmax(student)_k``, instead of ``argmax`` (UDA, Dash).
        labeled_probs: the alignment's and the weighting's ``update`` take
            ``probs_lb=softmax(labeled weak logits)`` (detached) as well (AdaMatch).
        extra_loss: an extra loss term ``extra_loss(logits_student, weights) -> scalar``,
            computed after the weights (its state already updated), with the student logits'
            gradient; added as ``extra_loss_weight * extra_loss`` (FreeMatch's fairness loss).
        extra_loss_weight: its weight (FreeMatch's lambda_e).
        warmup: the first ``warmup`` iterations are supervised only (Dash).
        end_warmup: called once with the (global) mean labeled loss of the first iteration
            after the warm-up, before that iteration's weights (Dash's ``set_rho_init``).
        unsup_warmup: the unlabeled term's weight ramps from 0 to ``lambda_u`` over this share of
            the iteration budget (``blocks.rampup``; 0: no ramp, the papers' weighting methods).
        rampup_shape: the ramp's shape, ``"linear"`` or ``"sigmoid"``.
        sample_indices: the weighting's ``update`` and ``__call__`` take ``indices=``, the
            unlabeled rows' indices in the unlabeled pool (FlexMatch's per-sample memory); its
            ``num_unlabeled`` (the pool size) is recorded in checkpoints.  ``None``: the
            weighting's own ``sample_indices`` attribute says (``FlexMatchThreshold``: True).
    """

    def __init__(
        self,
        weighting: Weighting | None,
        alignment: Weighting | None = None,
        student_view: Literal["strong", "weak"] = "strong",
        stats_on: Literal["aligned", "raw"] = "aligned",
        lambda_u: float = 1.0,
        name: str = "custom",
        *,
        pseudo_from: Literal["raw", "aligned"] = "raw",
        soft_targets: bool = False,
        labeled_probs: bool = False,
        extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        extra_loss_weight: float = 0.0,
        warmup: int = 0,
        end_warmup: Callable[[torch.Tensor], None] | None = None,
        sample_indices: bool | None = None,
        unsup_warmup: float = 0.0,
        rampup_shape: Literal["linear", "sigmoid"] = "linear",
    ) -> None:
        super().__init__()
        _check_composition(
            weighting, alignment, student_view, stats_on, lambda_u, pseudo_from, soft_targets,
            extra_loss, extra_loss_weight, warmup,
        )  # fmt: skip
        # Plain attributes for non-Module weightings (any object with the protocol works).
        self.weighting = weighting
        self.alignment = alignment
        self.student_view = student_view
        self.stats_on = stats_on
        self.lambda_u = float(lambda_u)
        self.name = name
        self.pseudo_from = pseudo_from
        self.soft_targets = bool(soft_targets)
        self.labeled_probs = bool(labeled_probs)
        self.extra_loss = extra_loss
        self.extra_loss_weight = float(extra_loss_weight)
        self.warmup = int(warmup)
        self._end_warmup = end_warmup
        if not 0.0 <= unsup_warmup <= 1.0:
            raise ValueError(f"unsup_warmup must be in [0, 1]; got {unsup_warmup}")
        if rampup_shape not in ("sigmoid", "linear"):
            raise ValueError(f"rampup_shape must be 'sigmoid' or 'linear'; got {rampup_shape!r}")
        self.unsup_warmup = float(unsup_warmup)
        self.rampup_shape = rampup_shape
        declared = getattr(weighting, "sample_indices", False)
        self.sample_indices = bool(declared if sample_indices is None else sample_indices)
        if end_warmup is not None:
            # The warm-up's state is a buffer, so a checkpoint holds it (only for algorithms
            # with a warm-up: the others' state_dict is unchanged).
            self.register_buffer("warmed_up", torch.tensor(False))

    @property
    def uses_unlabeled(self) -> bool:
        return self.weighting is not None

    @property
    def uses_strong(self) -> bool:
        return self.uses_unlabeled and self.student_view == "strong"

    @property
    def num_unlabeled(self) -> int | None:
        """The unlabeled pool size the per-sample state is for (``None``: no such state)."""
        return getattr(self.weighting, "num_unlabeled", None) if self.sample_indices else None

    @property
    def lambda_max(self) -> float:
        return float(getattr(self.weighting, "lambda_max", 1.0))

    def supervised_at(self, iteration: int | None) -> bool:
        """Whether iteration ``iteration`` (0-based) trains on the labeled batch only."""
        return not self.uses_unlabeled or (iteration is not None and iteration < self.warmup)

    @property
    def has_warmup_end(self) -> bool:
        """Whether this algorithm must be told when its warm-up ends (``end_warmup``)."""
        return self._end_warmup is not None

    def ends_warmup_at(self, iteration: int | None) -> bool:
        """Whether iteration ``iteration`` is the first after the warm-up."""
        return self.has_warmup_end and iteration == self.warmup

    @torch.no_grad()
    def end_warmup(self, labeled_loss: torch.Tensor) -> None:
        """Once, at the first iteration after the warm-up, before its weights: hand the mean
        labeled loss of the model after the warm-up to the weighting (Dash's rho_init)."""
        if self._end_warmup is None:
            raise RuntimeError(f"{self.name} has no warm-up to end")
        self._end_warmup(labeled_loss)
        self.warmed_up.fill_(True)

    @property
    def needs(self) -> Needs:
        """What this composition needs from the step and the data stream."""
        return Needs(
            unlabeled=self.uses_unlabeled,
            strong_views=1 if self.uses_strong else 0,
            sample_indices=self.sample_indices,
            iteration=self.warmup > 0 or self.has_warmup_end or self.unsup_warmup > 0,
        )

    @property
    def has_extra_loss(self) -> bool:
        """Whether the step's sums carry ``extra_loss_sum`` (the same keys at every step)."""
        return self.extra_loss is not None

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        """The step's loss from its outputs: the supervised loss, plus ``lambda_u`` times the
        weighted unlabeled loss, plus the extra term (reference "Shared recipe")."""
        if self.ends_warmup_at(out.iteration):
            self.end_warmup(out.global_sup_loss())
        probs = torch.softmax(out.logits_weak.float(), dim=1)
        probs_lb = (
            torch.softmax(out.logits_lb.detach().float(), dim=1) if self.labeled_probs else None
        )
        # Pseudo-labels from the raw probabilities, unless the algorithm says aligned (AdaMatch).
        indices = out.u_idx if self.sample_indices else None
        weights, confidence, pseudo, targets = self.label(probs, probs_lb, indices)
        student = out.logits_student[0]
        if targets is None:
            per_sample = F.cross_entropy(student.float(), pseudo, reduction="none")
        else:  # soft targets (UDA, Dash): -sum_k t_k log_softmax(student)_k
            log_q = torch.log_softmax(student.float(), dim=1)
            per_sample = -(targets.detach().float() * log_q).sum(dim=1)
        # Mean over *all* mu*B unlabeled samples, not only the weighted ones (reference).
        unsup_loss = (weights.detach() * per_sample).sum() / max(student.shape[0], 1)
        # The opt-in ramp of the unlabeled weight; without one the factor is exactly 1.
        loss = out.sup_loss + self.lambda_u * self.ramp(out) * unsup_loss
        extra = None
        if self.extra_loss is not None:  # FreeMatch's fairness loss: gradient via the student
            extra = self.extra_loss(student, weights.detach())
            loss = loss + self.extra_loss_weight * extra
        return loss, UnlabeledResult(weights, confidence, pseudo, unsup_loss, extra)

    def ramp(self, step: Any) -> float:
        """The unlabeled weight's ramp-up factor at ``step``'s iteration (``StepOutputs`` or
        ``StepInfo``: its ``iteration`` and ``iterations``; ``blocks.rampup``): 1 without a
        ramp (``unsup_warmup`` 0)."""
        return rampup(step.iteration, step.iterations, self.unsup_warmup, self.rampup_shape)

    @torch.no_grad()
    def weigh(
        self,
        probs: torch.Tensor,
        probs_lb: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference order: align (update, then apply) -> update statistics -> weight.

        Returns ``(weights, confidence)`` where ``confidence`` is the max of the probabilities
        the weighting function saw (logged as the confidence histogram).
        """
        weights, confidence, _ = self._weigh(probs, probs_lb, indices)
        return weights, confidence

    @torch.no_grad()
    def label(
        self,
        probs: torch.Tensor,
        probs_lb: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``weigh``, then the pseudo-labels and (with ``soft_targets``) the soft targets.

        Returns ``(weights, confidence, pseudo, targets)``: ``pseudo = argmax`` of the raw or
        the aligned probabilities (``pseudo_from``); ``targets`` is ``None`` for hard
        pseudo-labels, else the weighting's ``target`` of those probabilities, (N, C).
        ``indices``: the rows' unlabeled-pool indices, required with ``sample_indices``.
        """
        weights, confidence, aligned = self._weigh(probs, probs_lb, indices)
        source = aligned if self.pseudo_from == "aligned" else probs
        pseudo = source.argmax(dim=1)
        targets = self.weighting.target(source) if self.soft_targets else None  # type: ignore[union-attr]
        return weights, confidence, pseudo, targets

    def _weigh(
        self, probs: torch.Tensor, probs_lb: torch.Tensor | None, indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.weighting is not None
        if self.labeled_probs and probs_lb is None:
            raise ValueError(
                f"{self.name} needs probs_lb: softmax of the weak labeled logits (detached)"
            )
        if self.sample_indices and indices is None:
            raise ValueError(
                f"{self.name} needs indices: the unlabeled rows' indices in the unlabeled pool "
                "(SSLBatch.u_idx; train_step(..., info=StepInfo(u_idx=...)))"
            )
        extra = {"probs_lb": probs_lb} if self.labeled_probs else {}
        if self.sample_indices:
            extra["indices"] = indices
        aligned = probs
        if self.alignment is not None:
            self.alignment.update(probs, **extra)
            aligned = self.alignment(probs)
        stats = aligned if self.stats_on == "aligned" else probs
        self.weighting.update(stats, **extra)
        if stats is not aligned and getattr(self.weighting, "per_class", False):
            # Per-class statistics grouped by the raw argmax are looked up by the raw argmax
            # too: one class index per row for the update and the weight.
            weights = self.weighting(aligned, classes=stats.float().max(dim=1).indices)
        else:
            weights = self.weighting(aligned)
        return weights, aligned.max(dim=1).values, aligned

    def describe(self) -> dict[str, Any]:
        """Weighting/alignment state for the logs (``{"type": "none"}`` when supervised)."""
        if self.weighting is None:
            return {"weighting": {"type": "none"}, "p_model": None}
        describe = getattr(self.weighting, "describe", None)
        info = describe() if callable(describe) else {"type": type(self.weighting).__name__}
        if not self.weights_defined():  # in the warm-up: its state is not in use yet
            info = {"type": info.get("type"), "warmup": True}
        p_model = getattr(self.alignment, "p_model", None)
        return {"weighting": info, "p_model": None if p_model is None else p_model.tolist()}

    def weights_defined(self) -> bool:
        """False while a warm-up has not yet given the weighting what it needs (Dash's rho)."""
        if self.weighting is None:
            return False
        return not self.has_warmup_end or bool(self.warmed_up)

    def extra_repr(self) -> str:
        text = (
            f"name={self.name!r}, student_view={self.student_view!r}, "
            f"stats_on={self.stats_on!r}, lambda_u={self.lambda_u}"
        )
        if self.pseudo_from != "raw":
            text += f", pseudo_from={self.pseudo_from!r}"
        if self.soft_targets:
            text += ", soft_targets=True"
        if self.labeled_probs:
            text += ", labeled_probs=True"
        if self.extra_loss is not None:
            text += f", extra_loss_weight={self.extra_loss_weight}"
        if self.warmup:
            text += f", warmup={self.warmup}"
        if self.unsup_warmup:
            text += f", unsup_warmup={self.unsup_warmup}, rampup_shape={self.rampup_shape!r}"
        return text


def _check_composition(
    weighting: Weighting | None,
    alignment: Weighting | None,
    student_view: str,
    stats_on: str,
    lambda_u: float,
    pseudo_from: str,
    soft_targets: bool,
    extra_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    extra_loss_weight: float,
    warmup: int,
) -> None:
    """Refuse a composition whose parts cannot work together (``SSLAlgorithm``'s arguments)."""
    if weighting is not None and not isinstance(weighting, Weighting):
        raise ValueError(
            "weighting must have update(probs) and __call__(probs) -> weights; "
            f"got {type(weighting).__name__}"
        )
    if student_view not in ("strong", "weak"):
        raise ValueError(f"student_view must be 'strong' or 'weak'; got {student_view!r}")
    if stats_on not in ("aligned", "raw"):
        raise ValueError(f"stats_on must be 'aligned' or 'raw'; got {stats_on!r}")
    if stats_on == "raw" and alignment is None:
        raise ValueError(
            "stats_on='raw' only differs from 'aligned' with an alignment; "
            "enable uniform alignment or leave stats_on='aligned'"
        )
    if lambda_u < 0:
        raise ValueError(f"lambda_u must be >= 0; got {lambda_u}")
    if pseudo_from not in ("raw", "aligned"):
        raise ValueError(f"pseudo_from must be 'raw' or 'aligned'; got {pseudo_from!r}")
    if soft_targets and not callable(getattr(weighting, "target", None)):
        raise ValueError("soft_targets needs a weighting with a target(probs) method")
    if extra_loss is not None and not callable(extra_loss):
        raise ValueError("extra_loss must be callable (logits_student, weights) -> loss")
    if extra_loss_weight < 0:
        raise ValueError(f"extra_loss_weight must be >= 0; got {extra_loss_weight}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an integer >= 0; got {warmup!r}")
