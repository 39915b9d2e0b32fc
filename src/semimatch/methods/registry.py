"""The method registry: one ``Method`` per name, a decorator to add one, the entry-point group.

A method is one module: its builder (whose keyword-only signature and docstring ``Args:`` are the
one declaration of its options: ``Config`` fields, command-line flags, ``config.json`` keys and
``--help`` text are generated from them), decorated with ``@register_method(...)``, which also
takes its lambda(p) formulas for the report, its budget-scaled defaults and its presets.

Loading (``methods()``): the modules of this package first, then every entry point of the group
``semimatch.methods`` (a third-party package declares one in its ``pyproject.toml``; loading it
imports the module, whose ``@register_method`` runs).  ``semimatch.config`` reads the registry
when it is imported to make ``Config``'s fields, so the registry is closed from then on:
``register_method`` after that is refused (its options could not become ``Config`` fields);
register through the entry point instead.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from semimatch.methods.blocks import check_num_classes

__all__ = [
    "DATA_INPUTS",
    "ENTRY_POINT_GROUP",
    "BudgetDefault",
    "LambdaFormula",
    "Method",
    "MethodPresets",
    "Option",
    "OptionSpec",
    "algorithm_options",
    "build_algorithm",
    "docstring_args",
    "lambda_formulas",
    "methods",
    "register_method",
]

#: The entry-point group a third-party package registers its methods in.
ENTRY_POINT_GROUP = "semimatch.methods"

#: The built-in methods in their order on the command line (``--algorithm`` choices); any other
#: module of this package is imported after them, so a new built-in method is one new file.
_BUILTINS = (
    "supervised",
    "pseudolabel",
    "fixmatch",
    "flexmatch",
    "softmatch",
    "freematch",
    "adamatch",
    "dash",
    "uda",
)

#: (state, q grid (n,), num_classes) -> weights (K, n): K = 1, or one row per class holding max.
LambdaFormula = Callable[[Mapping[str, Any], np.ndarray, int], np.ndarray]

#: Keyword parameters of a builder that the data or the run, not the user, supplies (FlexMatch's
#: memory size, UDA's annealing over the budget, ReMixMatch's labeled class counts, SimMatch's
#: labeled set size): not options - no ``Config`` field, flag or validation;
#: ``build_algorithm`` passes them to the builders that declare them.
DATA_INPUTS: frozenset[str] = frozenset(
    {"num_unlabeled", "num_iterations", "labeled_counts", "num_labeled"}
)


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
class BudgetDefault:
    """An option whose default follows the iteration budget K (derived by ``resolve``).

    ``value(K)`` is the default; ``why`` the reason recorded in ``cfg.auto`` (``{K}`` is
    replaced by the budget); ``help`` what ``--help`` says None means.
    """

    option: str
    value: Callable[[int], Any]
    why: str
    help: str


@dataclass(frozen=True)
class MethodPresets:
    """A method's part of the paper presets (``semimatch.presets`` holds the settings).

    ``values``: its options in every preset; ``source``: ``"paper"`` (every image setting) or
    ``"usb"`` (USB's classic-CV configs: the balanced settings only); ``note``: appended to the
    description; ``settings``: per-setting overrides (an image setting's name, e.g.
    ``"cifar10-40"``, or a USB NLP dataset's, e.g. ``"yelp_review"``); ``nlp``: it has USB NLP
    presets, with ``nlp_values`` over ``values``; ``skip``: settings without a preset (the
    source publishes none for them).
    """

    values: Mapping[str, Any]
    source: str = "paper"
    note: str = ""
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    nlp: bool = False
    nlp_values: Mapping[str, Any] = field(default_factory=dict)
    skip: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """A registered method: its builder and what else is the method's own.

    ``build(num_classes, *, option=default, ...)``: the builder's keyword-only parameters are
    the options the method accepts (anything else is an error); each needs a type annotation, a
    default and an ``Args:`` line in the builder's docstring, checked here when it is
    registered.  The docstring's first line is the summary.  It returns the module the step
    trains with (``semimatch.methods.consistency.SSLAlgorithm`` or a subclass).

    ``formulas``: lambda(p) for the report, ``{weighting type: (state keys it needs,
    formula(state, q, num_classes) -> (K, len(q)) weights)}``, the type being the weighting's
    ``describe()["type"]``.  ``budget``: options whose default scales with the iteration budget
    (``resolve`` derives them).  ``check_budget(options, iterations)``: refuses options that
    cannot work with the budget (``ValueError`` naming the flag).  ``presets``: the method's
    part of the paper presets (``semimatch.presets``).  ``all_labels``: the method trains on
    every labeled training sample (the labeled set is not drawn, the unlabeled pool unused):
    known before it is built, so the split and the config checks can ask it.
    ``extra_iterations(options) -> (n, why)``: iterations the method trains on top of the budget
    (Dash's warm-up outside it, as USB runs it); ``resolve`` adds them to ``iterations`` with
    ``why`` in ``cfg.auto``, after the budget-scaled defaults were derived from the budget.
    """

    name: str
    build: Callable[..., Any]
    formulas: Mapping[str, tuple[tuple[str, ...], LambdaFormula]] = field(default_factory=dict)
    budget: tuple[BudgetDefault, ...] = ()
    check_budget: Callable[[Mapping[str, Any], int], None] | None = None
    presets: MethodPresets | None = None
    all_labels: bool = False
    extra_iterations: Callable[[Mapping[str, Any]], tuple[int, str]] | None = None

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
    def data_inputs(self) -> frozenset[str]:
        """The ``DATA_INPUTS`` this builder declares (e.g. ``num_unlabeled``)."""
        return frozenset(inspect.signature(self.build).parameters) & DATA_INPUTS

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
            if p.name in DATA_INPUTS:
                continue
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


def algorithm_options(registry: Mapping[str, Method]) -> dict[str, Option]:
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


_METHODS: dict[str, Method] = {}
_loaded = False


def register_method(
    name: str | None = None,
    *,
    formulas: Mapping[str, tuple[tuple[str, ...], LambdaFormula]] | None = None,
    budget: tuple[BudgetDefault, ...] = (),
    check_budget: Callable[[Mapping[str, Any], int], None] | None = None,
    presets: MethodPresets | None = None,
    all_labels: bool = False,
    extra_iterations: Callable[[Mapping[str, Any]], tuple[int, str]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated builder as method ``name`` (default: the builder's name).

    For a method outside semimatch, decorate in a module named by an entry point of the group
    ``semimatch.methods``; semimatch loads it before ``Config`` is made.  Called after that
    (the registry is closed), it raises ``RuntimeError``: the method's options could not become
    ``Config`` fields, flags and ``config.json`` keys.
    """

    def add(build: Callable[..., Any]) -> Callable[..., Any]:
        key = build.__name__ if name is None else name
        if _loaded:
            raise RuntimeError(
                f"register_method({key!r}) after the method registry was read to make Config's "
                f"fields: declare the module in the entry-point group {ENTRY_POINT_GROUP!r} of "
                "your package (loaded before Config is made) instead of registering at runtime"
            )
        old = _METHODS.get(key)
        if old is not None and _qualname(old.build) != _qualname(build):
            raise ValueError(
                f"method {key!r} is already registered by {_qualname(old.build)}; "
                f"{_qualname(build)} needs another name"
            )
        _METHODS[key] = Method(
            key, build, dict(formulas or {}), budget, check_budget, presets, all_labels,
            extra_iterations,
        )  # fmt: skip
        return build

    return add


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def methods() -> Mapping[str, Method]:
    """The registry: the built-in methods in their order, then the entry points' methods."""
    global _loaded
    if not _loaded:
        package = importlib.import_module("semimatch.methods")
        others = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
        for module in dict.fromkeys([*_BUILTINS, *others]):
            importlib.import_module(f"semimatch.methods.{module}")
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                point.load()
            except Exception as e:  # a broken plug-in names itself, not a traceback of ours
                raise RuntimeError(
                    f"the {ENTRY_POINT_GROUP!r} entry point {point.name} = {point.value} "
                    f"failed to load: {type(e).__name__}: {e}"
                ) from e
        ordered = {k: _METHODS[k] for k in _BUILTINS}
        ordered.update((k, v) for k, v in _METHODS.items() if k not in ordered)
        _METHODS.clear()
        _METHODS.update(ordered)
        _loaded = True
    return _METHODS


def lambda_formulas() -> dict[str, tuple[tuple[str, ...], LambdaFormula]]:
    """Every registered method's lambda(p) formulas, by weighting type."""
    table: dict[str, tuple[tuple[str, ...], LambdaFormula]] = {}
    for method in methods().values():
        table.update(method.formulas)
    return table


def build_algorithm(
    name: str,
    num_classes: int,
    *,
    num_unlabeled: int | None = None,
    num_iterations: int | None = None,
    labeled_counts: Any = None,
    num_labeled: int | None = None,
    **options: Any,
) -> Any:
    """Build a named algorithm; an option the algorithm does not use is an error, not ignored.
    ``num_unlabeled`` (pool size), ``num_iterations`` (the iteration budget) and
    ``labeled_counts`` (per-class counts of the labeled set) and ``num_labeled`` (its size),
    data inputs, go to the builders that declare them."""
    registry = methods()
    if name not in registry:
        hint = difflib.get_close_matches(name, registry, n=1)
        raise ValueError(
            f"unknown algorithm {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Valid: {', '.join(registry)}"
        )
    check_num_classes(num_classes)
    spec = registry[name]
    spec.check(name, options)
    given = {
        "num_unlabeled": num_unlabeled,
        "num_iterations": num_iterations,
        "labeled_counts": labeled_counts,
        "num_labeled": num_labeled,
    }
    data = {k: v for k, v in given.items() if k in spec.data_inputs}
    return spec.build(num_classes, **data, **options)
