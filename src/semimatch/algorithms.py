"""Semi-supervised methods as compositions, not class hierarchies.

An algorithm is: a sample weighting function lambda(p), an optional distribution alignment, which
view the unlabeled loss is computed on (the strong view for FixMatch/SoftMatch, the weak view
itself for Pseudo-Label), and the unlabeled loss weight ``lambda_u``.  The table ``ALGORITHMS``
at the bottom is the only place that knows algorithm names, and each builder's signature the
only place that declares its options (``Config``, the command line and validation read it).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
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

__all__ = [
    "ALGORITHMS",
    "OPTIONS",
    "AlgorithmName",
    "AlgorithmSpec",
    "Option",
    "OptionSpec",
    "SSLAlgorithm",
    "Weighting",
    "algorithm_options",
    "build_algorithm",
    "docstring_args",
    "fixmatch",
    "pseudolabel",
    "softmatch",
    "supervised",
]


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
        lambda_u: unlabeled loss weight.
    """
    if ua_momentum is not None:
        if not uniform_alignment:
            raise ValueError("ua_momentum has no effect with uniform_alignment=False")
        check_momentum(ua_momentum, "ua_momentum")
    if ua_init != "batch" and not uniform_alignment:
        raise ValueError("ua_init has no effect with uniform_alignment=False")
    check_momentum(stat_momentum, "stat_momentum")  # named as the user spelled it
    weighting = SoftMatchWeighting(
        num_classes, momentum=stat_momentum, n_sigma=n_sigma, per_class=per_class
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


# --------------------------------------------------------------------------------------------
# Reading the declaration.
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptionSpec:
    """One keyword parameter of a builder: what ``Config`` needs to make a field of it."""

    name: str
    type: Any  # the resolved annotation, e.g. ``float`` or ``Literal["batch", "uniform"]``
    default: Any
    help: str  # the builder docstring's ``Args:`` entry


def docstring_args(fn: Callable[..., Any]) -> dict[str, str]:
    """The entries of a Google-style ``Args:`` section, as ``{name: one-line text}``."""
    lines = inspect.getdoc(fn)
    entries: dict[str, str] = {}
    if not lines:
        return entries
    inside, name = False, None
    for line in lines.splitlines():
        if not inside:
            inside = line.strip() == "Args:"
            continue
        if line and not line.startswith(" "):  # the next section (Returns:, Raises:, ...)
            break
        match = re.match(r"^ {4}(\w+)(?: \([^)]*\))?: ?(.*)$", line)
        if match:
            name = match[1]
            entries[name] = match[2].strip()
        elif name is not None and line.strip():  # an indented continuation line
            entries[name] += " " + line.strip()
    return entries


@dataclass(frozen=True)
class AlgorithmSpec:
    """A named composition: its builder ``build(num_classes, *, option=default, ...)``.

    The builder's keyword-only parameters are the options the algorithm accepts (anything else
    is an error); each needs a type annotation, a default and an ``Args:`` line in the
    builder's docstring, checked here when the table is made.  The docstring's first line is
    the summary.
    """

    build: Callable[..., SSLAlgorithm]

    def __post_init__(self) -> None:
        params = list(inspect.signature(self.build).parameters.values())
        if not params or params[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise TypeError(f"{self.build.__name__} must take num_classes first")
        for p in params[1:]:
            if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is p.empty:
                raise TypeError(
                    f"{self.build.__name__}: option {p.name!r} must be keyword-only with a default"
                )
        self.option_specs()  # missing annotations or docstring entries fail here, at import

    @property
    def options(self) -> frozenset[str]:
        """The option names (the builder's keyword-only parameters)."""
        return frozenset(self.option_specs())

    @property
    def summary(self) -> str:
        """The first line of the builder's docstring."""
        return (inspect.getdoc(self.build) or "").splitlines()[0].rstrip(".")

    def option_specs(self) -> dict[str, OptionSpec]:
        """Each option's type, default and help text, in the builder's parameter order."""
        hints = typing.get_type_hints(self.build)
        docs = docstring_args(self.build)
        specs = {}
        for p in list(inspect.signature(self.build).parameters.values())[1:]:
            if p.name not in hints or p.name not in docs:
                raise TypeError(
                    f"{self.build.__name__}: option {p.name!r} needs a type annotation and an "
                    "Args: entry in the docstring"
                )
            specs[p.name] = OptionSpec(p.name, hints[p.name], p.default, docs[p.name])
        return specs

    def check(self, name: str, options: Mapping[str, Any]) -> None:
        """Refuse an option this algorithm does not take (it would silently do nothing)."""
        unused = set(options) - self.options
        if unused:
            raise ValueError(
                f"option(s) {sorted(unused)} have no effect with algorithm {name!r}; "
                f"it accepts {sorted(self.options) or 'no options'}"
            )


@dataclass(frozen=True)
class Option:
    """An option across the algorithms that take it (one ``Config`` field)."""

    name: str
    type: Any
    defaults: dict[str, Any]  # {algorithm: the builder's default}
    helps: dict[str, str]  # {algorithm: the builder's Args: text}


def algorithm_options(registry: Mapping[str, AlgorithmSpec]) -> dict[str, Option]:
    """The union of the algorithms' options, in first-declared order.

    One name means one thing: builders whose parameters of the same name have different types
    are an error (raised when the registry is read, i.e. at import).
    """
    union: dict[str, Option] = {}
    for algo, spec in registry.items():
        for name, option in spec.option_specs().items():
            known = union.setdefault(name, Option(name, option.type, {}, {}))
            if option.type != known.type:
                raise TypeError(
                    f"option {name!r} is {option.type} in {algo!r} but {known.type} in "
                    f"{next(iter(known.defaults))!r}: one name, one type"
                )
            known.defaults[algo] = option.default
            known.helps[algo] = option.help
    return union


ALGORITHMS: dict[str, AlgorithmSpec] = {
    "supervised": AlgorithmSpec(supervised),
    "pseudolabel": AlgorithmSpec(pseudolabel),
    "fixmatch": AlgorithmSpec(fixmatch),
    "softmatch": AlgorithmSpec(softmatch),
}

#: The algorithm names, as a type (``Config.algorithm``).
AlgorithmName = Literal[tuple(ALGORITHMS)]  # type: ignore[valid-type]

#: The options of all algorithms (``semimatch.config.Config`` has one field per entry).
OPTIONS: dict[str, Option] = algorithm_options(ALGORITHMS)


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
    spec.check(name, options)
    return spec.build(num_classes, **options)
