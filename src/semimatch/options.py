"""Reading an algorithm's declaration: a builder's signature and docstring become its options.

``AlgorithmSpec`` wraps a builder ``build(num_classes, *, option=default, ...)``; its keyword-only
parameters (type annotation, default, Google-style ``Args:`` line) are the algorithm's options,
which ``semimatch.config.Config`` turns into fields, command-line flags, help and validation.
``algorithm_options`` merges them over the table of algorithms (one name, one type).
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DATA_INPUTS",
    "AlgorithmSpec",
    "Option",
    "OptionSpec",
    "algorithm_options",
    "docstring_args",
]

#: Keyword parameters of a builder that the data, not the user, supplies (FlexMatch's memory
#: size): not options - no ``Config`` field, flag or validation; ``build_algorithm`` passes
#: them to the builders that declare them.
DATA_INPUTS: frozenset[str] = frozenset({"num_unlabeled"})


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

    build: Callable[..., Any]  # -> semimatch.algorithms.SSLAlgorithm

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
