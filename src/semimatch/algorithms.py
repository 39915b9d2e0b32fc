"""Semi-supervised methods as compositions, not class hierarchies.

An algorithm is: a sample weighting function lambda(p), an optional distribution alignment, which
view the unlabeled loss is computed on (the strong view for FixMatch/SoftMatch, the weak view
itself for Pseudo-Label), and the unlabeled loss weight ``lambda_u``.  The table ``ALGORITHMS``
at the bottom is the only place that knows algorithm names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from semimatch.alignment import UniformAlignment
from semimatch.weighting import (
    FixedThreshold,
    SoftMatchWeighting,
    check_momentum,
    check_num_classes,
)

__all__ = ["ALGORITHMS", "SSLAlgorithm", "Weighting", "build_algorithm", "AlgorithmSpec"]


@runtime_checkable
class Weighting(Protocol):
    """What the training step needs from a weighting function (or an alignment)."""

    def update(self, probs: torch.Tensor) -> None: ...

    def __call__(self, probs: torch.Tensor) -> torch.Tensor: ...


class SSLAlgorithm(nn.Module):
    """A composition ``(alignment, weighting, student_view, lambda_u)``.

    Holding the weighting and the alignment as submodules puts their running state in
    ``algorithm.state_dict()``, so checkpoints and ``.to(device)`` cover it.

    Args:
        weighting: lambda(p) with ``update``/``__call__``; ``None`` means supervised only.
        alignment: applied to the weak-view probabilities before the weighting (update, then
            apply); pseudo-labels always come from the raw probabilities.
        student_view: ``"strong"`` (FixMatch, SoftMatch) or ``"weak"`` (Pseudo-Label: the loss
            is on the weak view's own logits, so no strong augmentation is computed).
        stats_on: ``"aligned"`` (USB code, default) or ``"raw"`` (paper, TorchSSL): which
            probabilities update the weighting's running statistics.  Weights are always
            computed from the aligned probabilities.
        lambda_u: weight of the unlabeled loss.
    """

    def __init__(
        self,
        weighting: Weighting | None,
        alignment: Weighting | None = None,
        student_view: Literal["strong", "weak"] = "strong",
        stats_on: Literal["aligned", "raw"] = "aligned",
        lambda_u: float = 1.0,
        name: str = "custom",
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
        # Plain attributes for non-Module weightings (any object with the protocol works).
        self.weighting = weighting
        self.alignment = alignment
        self.student_view = student_view
        self.stats_on = stats_on
        self.lambda_u = float(lambda_u)
        self.name = name

    @property
    def uses_unlabeled(self) -> bool:
        return self.weighting is not None

    @property
    def uses_strong(self) -> bool:
        return self.uses_unlabeled and self.student_view == "strong"

    @property
    def lambda_max(self) -> float:
        return float(getattr(self.weighting, "lambda_max", 1.0))

    @torch.no_grad()
    def weigh(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference order: align (update, then apply) -> update statistics -> weight.

        Returns ``(weights, confidence)`` where ``confidence`` is the max of the probabilities
        the weighting function saw (logged as the confidence histogram).
        """
        assert self.weighting is not None
        aligned = probs
        if self.alignment is not None:
            self.alignment.update(probs)
            aligned = self.alignment(probs)
        stats = aligned if self.stats_on == "aligned" else probs
        self.weighting.update(stats)
        if stats is not aligned and getattr(self.weighting, "per_class", False):
            # Per-class statistics grouped by the raw argmax are looked up by the raw argmax
            # too: one class index per row for the update and the weight.
            weights = self.weighting(aligned, classes=stats.float().max(dim=1).indices)
        else:
            weights = self.weighting(aligned)
        return weights, aligned.max(dim=1).values

    def describe(self) -> dict[str, Any]:
        """Weighting/alignment state for the logs (``{"type": "none"}`` when supervised)."""
        if self.weighting is None:
            return {"weighting": {"type": "none"}, "p_model": None}
        describe = getattr(self.weighting, "describe", None)
        info = describe() if callable(describe) else {"type": type(self.weighting).__name__}
        p_model = getattr(self.alignment, "p_model", None)
        return {"weighting": info, "p_model": None if p_model is None else p_model.tolist()}

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, student_view={self.student_view!r}, "
            f"stats_on={self.stats_on!r}, lambda_u={self.lambda_u}"
        )


@dataclass(frozen=True)
class AlgorithmSpec:
    """A named composition, and the options it accepts (anything else is a config error)."""

    build: Callable[..., SSLAlgorithm]
    options: frozenset[str]
    summary: str


def _supervised(num_classes: int) -> SSLAlgorithm:
    return SSLAlgorithm(None, name="supervised")


def _pseudolabel(num_classes: int, tau: float = 0.95, lambda_u: float = 1.0) -> SSLAlgorithm:
    return SSLAlgorithm(
        FixedThreshold(tau), student_view="weak", lambda_u=lambda_u, name="pseudolabel"
    )


def _fixmatch(num_classes: int, tau: float = 0.95, lambda_u: float = 1.0) -> SSLAlgorithm:
    return SSLAlgorithm(FixedThreshold(tau), lambda_u=lambda_u, name="fixmatch")


def _softmatch(
    num_classes: int,
    momentum: float = 0.999,
    n_sigma: float = 2.0,
    per_class: bool = False,
    uniform_alignment: bool = True,
    ua_momentum: float | None = None,
    ua_init: Literal["batch", "uniform"] = "batch",
    stats_on: Literal["aligned", "raw"] = "aligned",
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    if ua_momentum is not None:
        if not uniform_alignment:
            raise ValueError("ua_momentum has no effect with uniform_alignment=False")
        check_momentum(ua_momentum, "ua_momentum")
    if ua_init != "batch" and not uniform_alignment:
        raise ValueError("ua_init has no effect with uniform_alignment=False")
    weighting = SoftMatchWeighting(
        num_classes, momentum=momentum, n_sigma=n_sigma, per_class=per_class
    )
    alignment = (
        UniformAlignment(
            num_classes, momentum if ua_momentum is None else ua_momentum, init=ua_init
        )
        if uniform_alignment
        else None
    )
    return SSLAlgorithm(
        weighting, alignment, stats_on=stats_on, lambda_u=lambda_u, name="softmatch"
    )


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "supervised": AlgorithmSpec(
        _supervised, frozenset(), "labeled data only, same recipe (the baseline)"
    ),
    "pseudolabel": AlgorithmSpec(
        _pseudolabel,
        frozenset({"tau", "lambda_u"}),
        "hard threshold on the weak view, no strong augmentation",
    ),
    "fixmatch": AlgorithmSpec(
        _fixmatch,
        frozenset({"tau", "lambda_u"}),
        "step weighting at tau on the weak view, loss on the strong view",
    ),
    "softmatch": AlgorithmSpec(
        _softmatch,
        frozenset(
            {
                "momentum",
                "n_sigma",
                "per_class",
                "uniform_alignment",
                "ua_momentum",
                "ua_init",
                "stats_on",
                "lambda_u",
            }
        ),
        "truncated-Gaussian weighting + Uniform Alignment (USB-code defaults)",
    ),
}


def build_algorithm(name: str, num_classes: int, **options: Any) -> SSLAlgorithm:
    """Build a named algorithm; an option the algorithm does not use is an error, not ignored."""
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
    unused = set(options) - spec.options
    if unused:
        raise ValueError(
            f"option(s) {sorted(unused)} have no effect with algorithm {name!r}; "
            f"it accepts {sorted(spec.options) or 'no options'}"
        )
    return spec.build(num_classes, **options)
