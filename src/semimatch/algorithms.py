"""Semi-supervised methods as compositions, not class hierarchies.

An algorithm is: a sample weighting function lambda(p), an optional distribution alignment, which
view the unlabeled loss is computed on (the strong view for FixMatch/SoftMatch, the weak view
itself for Pseudo-Label), and the unlabeled loss weight ``lambda_u``; members of the family that
need more say so as plain attributes the step reads (``pseudo_from``, ``soft_targets``,
``labeled_probs``, ``extra_loss``, ``warmup``/``end_warmup``, ``sample_indices``).  The table
``ALGORITHMS`` at the bottom is the only place that knows algorithm names, and each builder's
signature the only place that declares its options (``Config``, the command line and validation
read it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from semimatch.alignment import DistributionAlignment, UniformAlignment
from semimatch.options import (
    AlgorithmSpec,
    Option,
    OptionSpec,
    algorithm_options,
    docstring_args,
)
from semimatch.weighting import (
    SHAPES,
    AdaMatchThreshold,
    DashThreshold,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    SoftMatchWeighting,
    UDAWeighting,
    check_momentum,
    check_num_classes,
)

__all__ = [
    "ALGORITHMS",
    "OPTIONS",
    "AlgorithmName",
    "AlgorithmSpec",
    "Option",
    "OptionSpec",
    "SSLAlgorithm",
    "Weighting",
    "adamatch",
    "algorithm_options",
    "build_algorithm",
    "dash",
    "docstring_args",
    "fixmatch",
    "flexmatch",
    "freematch",
    "pseudolabel",
    "softmatch",
    "supervised",
    "uda",
]


@runtime_checkable
class Weighting(Protocol):
    """What the training step needs from a weighting function (or an alignment)."""

    def update(self, probs: torch.Tensor) -> None: ...

    def __call__(self, probs: torch.Tensor) -> torch.Tensor: ...


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
    ) -> None:
        super().__init__()
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
                "(SSLBatch.u_idx; train_step(..., u_idx=))"
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
        return text


# --------------------------------------------------------------------------------------------
# The algorithms.  A builder's keyword-only parameters are the algorithm's options: their names,
# types, defaults and the ``Args:`` text of the docstring are the one declaration that
# ``build_algorithm`` validates against and ``semimatch.config.Config`` turns into fields (so
# also command-line flags, config.json keys and ``--help`` text).
# --------------------------------------------------------------------------------------------
def supervised(num_classes: int) -> SSLAlgorithm:
    """Labeled data only, same recipe (the baseline).

    Args:
        num_classes: number of classes.
    """
    return SSLAlgorithm(None, name="supervised")


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


def fixmatch(num_classes: int, *, tau: float = 0.95, lambda_u: float = 1.0) -> SSLAlgorithm:
    """Step weighting at tau on the weak view, loss on the strong view.

    Args:
        num_classes: number of classes.
        tau: confidence threshold.
        lambda_u: unlabeled loss weight.
    """
    return SSLAlgorithm(FixedThreshold(tau), lambda_u=lambda_u, name="fixmatch")


def flexmatch(
    num_classes: int,
    *,
    num_unlabeled: int | None = None,
    tau: float = 0.95,
    threshold_warmup: bool = True,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Curriculum class-wise thresholds tau * M(beta(c)), M(x) = x / (2 - x) (USB code).

    Args:
        num_classes: number of classes.
        tau: confidence threshold, the ceiling of the per-class thresholds (USB p_cutoff 0.95).
        threshold_warmup: threshold warmup: the samples never selected count in the normaliser
            of the learning effect (USB thresh_warmup True).
        lambda_u: unlabeled loss weight.
    """
    if num_unlabeled is None:  # a data input (options.DATA_INPUTS): the engine passes it
        raise ValueError(
            "flexmatch needs num_unlabeled, the unlabeled pool size (its per-sample memory): "
            "build_algorithm('flexmatch', C, num_unlabeled=len(pool)); training passes it"
        )
    weighting = FlexMatchThreshold(num_classes, num_unlabeled, tau=tau, warmup=threshold_warmup)
    return SSLAlgorithm(weighting, lambda_u=lambda_u, name="flexmatch")  # sample_indices


def softmatch(
    num_classes: int,
    *,
    stat_momentum: float = 0.999,
    n_sigma: float = 2.0,
    per_class: bool = False,
    uniform_alignment: bool = True,
    ua_momentum: float | None = None,
    ua_init: Literal["batch", "uniform"] = "batch",
    stats_on: Literal["aligned", "raw"] = "aligned",
    shape: Literal["gaussian", "linear", "quadratic"] = "gaussian",
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Truncated-Gaussian weighting + Uniform Alignment (USB-code defaults).

    Args:
        num_classes: number of classes.
        stat_momentum: EMA momentum of the Gaussian statistics (paper 0.999).
        n_sigma: width of the Gaussian in std units (USB code 2, paper equation 1).
        per_class: per-class mean/variance.
        uniform_alignment: Uniform Alignment.
        ua_momentum: EMA momentum of p_model; None = stat_momentum.
        ua_init: p_model starts at the first batch's mean (batch, USB code) or at the uniform
            distribution (uniform, TorchSSL).
        stats_on: statistics on aligned (USB code) or raw (paper) probabilities.
        shape: lambda(p) below the mean, for the paper's ablation: gaussian (the paper's),
            or semimatch's linear / quadratic with the same width and truncation point.
        lambda_u: unlabeled loss weight.
    """
    if ua_momentum is not None:
        if not uniform_alignment:
            raise ValueError("ua_momentum has no effect with uniform_alignment=False")
        check_momentum(ua_momentum, "ua_momentum")
    if ua_init != "batch" and not uniform_alignment:
        raise ValueError("ua_init has no effect with uniform_alignment=False")
    check_momentum(stat_momentum, "stat_momentum")  # named as the user spelled it
    if shape not in SHAPES:
        raise ValueError(f"shape must be one of {SHAPES}; got {shape!r}")
    weighting = SoftMatchWeighting(
        num_classes, momentum=stat_momentum, n_sigma=n_sigma, per_class=per_class, shape=shape
    )
    alignment = (
        UniformAlignment(
            num_classes, stat_momentum if ua_momentum is None else ua_momentum, init=ua_init
        )
        if uniform_alignment
        else None
    )
    return SSLAlgorithm(
        weighting, alignment, stats_on=stats_on, lambda_u=lambda_u, name="softmatch"
    )


def freematch(
    num_classes: int,
    *,
    stat_momentum: float = 0.999,
    lambda_e: float = 0.001,
    use_quantile: bool = False,
    clip_thresh: bool = False,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Self-adaptive class-wise thresholds + the self-adaptive fairness loss (USB-code defaults).

    Args:
        num_classes: number of classes.
        stat_momentum: EMA momentum of the global threshold, p_model and the label histogram
            (USB ema_p 0.999).
        lambda_e: weight of the self-adaptive fairness loss (USB ent_loss_ratio; CIFAR-10-40
            0.001).
        use_quantile: the 0.8-quantile of the batch confidence instead of its mean (USB option).
        clip_thresh: clip the global threshold to at most 0.95 (USB option).
        lambda_u: unlabeled loss weight.
    """
    check_momentum(stat_momentum, "stat_momentum")
    if not lambda_e >= 0:
        raise ValueError(f"lambda_e must be >= 0; got {lambda_e}")
    weighting = FreeMatchThreshold(
        num_classes, momentum=stat_momentum, use_quantile=use_quantile, clip=clip_thresh
    )
    return SSLAlgorithm(
        weighting,
        lambda_u=lambda_u,
        name="freematch",
        extra_loss=weighting.fairness_loss,
        extra_loss_weight=lambda_e,
    )


def adamatch(
    num_classes: int,
    *,
    tau: float = 0.95,
    stat_momentum: float = 0.999,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Relative threshold (tau x mean labeled confidence) + distribution alignment (USB code).

    Args:
        num_classes: number of classes.
        tau: relative confidence threshold, times the mean confidence of the weak labeled batch.
        stat_momentum: EMA momentum of the distribution alignment's p_model and p_target (USB
            ema_p 0.999).
        lambda_u: unlabeled loss weight.
    """
    check_momentum(stat_momentum, "stat_momentum")
    return SSLAlgorithm(
        AdaMatchThreshold(tau),
        DistributionAlignment(num_classes, momentum=stat_momentum, target="model"),
        lambda_u=lambda_u,
        name="adamatch",
        pseudo_from="aligned",
        labeled_probs=True,
    )


def uda(
    num_classes: int,
    *,
    tau: float = 0.8,
    temperature: float = 0.4,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
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
    """
    return SSLAlgorithm(
        UDAWeighting(tau, temperature), lambda_u=lambda_u, name="uda", soft_targets=True
    )


def dash(
    num_classes: int,
    *,
    temperature: float = 0.5,
    dash_gamma: float = 1.27,
    dash_c: float = 1.0001,
    rho_min: float = 0.05,
    rho_period: int = 10 * 1024,
    dash_warmup: int = 2048,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Threshold on the per-sample loss, decayed over training, after a supervised warm-up.

    Args:
        num_classes: number of classes.
        temperature: sharpening temperature T of the soft targets softmax(weak logits / T)
            (uda: USB 0.4; dash: USB 0.5).
        dash_gamma: decay factor gamma of the loss threshold rho (USB 1.27).
        dash_c: scale C of the loss threshold rho = C gamma^-k rho_init (USB 1.0001).
        rho_min: floor of the loss threshold; hard pseudo-labels once reached (USB 0.05).
        rho_period: iterations between two decays of rho (USB 10 epochs = 10240).
        dash_warmup: supervised iterations before rho_init is set from the labeled loss (USB
            num_wu_iter 2048).
        lambda_u: unlabeled loss weight.
    """
    if isinstance(dash_warmup, bool) or not isinstance(dash_warmup, int) or dash_warmup < 0:
        raise ValueError(f"dash_warmup must be an integer >= 0; got {dash_warmup!r}")
    weighting = DashThreshold(
        gamma=dash_gamma, C=dash_c, rho_min=rho_min, period=rho_period, temperature=temperature
    )
    return SSLAlgorithm(
        weighting,
        lambda_u=lambda_u,
        name="dash",
        soft_targets=True,
        warmup=dash_warmup,
        end_warmup=weighting.set_rho_init,
    )


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "supervised": AlgorithmSpec(supervised),
    "pseudolabel": AlgorithmSpec(pseudolabel),
    "fixmatch": AlgorithmSpec(fixmatch),
    "flexmatch": AlgorithmSpec(flexmatch),
    "softmatch": AlgorithmSpec(softmatch),
    "freematch": AlgorithmSpec(freematch),
    "adamatch": AlgorithmSpec(adamatch),
    "dash": AlgorithmSpec(dash),
    "uda": AlgorithmSpec(uda),
}

#: The algorithm names, as a type (``Config.algorithm``).
AlgorithmName = Literal[tuple(ALGORITHMS)]  # type: ignore[valid-type]

#: The options of all algorithms (``semimatch.config.Config`` has one field per entry).
OPTIONS: dict[str, Option] = algorithm_options(ALGORITHMS)


def build_algorithm(
    name: str, num_classes: int, *, num_unlabeled: int | None = None, **options: Any
) -> SSLAlgorithm:
    """Build a named algorithm; an option the algorithm does not use is an error, not ignored.
    ``num_unlabeled`` (pool size, a data input) goes to the builders that declare it."""
    if name not in ALGORITHMS:
        import difflib

        hint = difflib.get_close_matches(name, ALGORITHMS, n=1)
        raise ValueError(
            f"unknown algorithm {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Valid: {', '.join(ALGORITHMS)}"
        )
    check_num_classes(num_classes)
    spec = ALGORITHMS[name]
    spec.check(name, options)
    data = {"num_unlabeled": num_unlabeled} if "num_unlabeled" in spec.data_inputs else {}
    return spec.build(num_classes, **data, **options)
