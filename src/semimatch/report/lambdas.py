"""lambda(p) of a run, rebuilt from the weighting state it recorded (the report's overlay).

Each eval record of ``metrics.jsonl`` holds ``weighting``: the ``describe()`` of the run's
weighting module (its type and the state lambda(p) depends on).  ``LAMBDA_FORMULAS`` maps a
weighting type to the keys it needs and the function that evaluates lambda(p) from them: each
method declares its own (``register_method(formulas=...)`` in its module); ``register_formula``
adds one for a weighting no method declares.  A record whose type has no
entry, or lacks a key (a run written before semimatch recorded it), falls back to the curve the
engine sampled from the live module (``lambda_curve``), and says so.

Convention (as the engine's ``lambda_curve``): a row with confidence ``q = max_c p`` puts ``q``
on one class and spreads ``1 - q`` evenly over the others; per-class weightings give one curve
per class holding the max, and the drawn curve is their mean.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from semimatch.methods.registry import LambdaFormula, lambda_formulas
from semimatch.report.runs import RunData

__all__ = [
    "LAMBDA_FORMULAS",
    "LambdaCurve",
    "final_lambda",
    "lambda_values",
    "num_classes",
    "register_formula",
]

#: Grid points of a rebuilt curve (fine enough that a step looks like one).
GRID_POINTS = 401

#: weighting type (``describe()["type"]``) -> (keys lambda(p) needs, its formula): every
#: registered method's formulas (``Method.formulas``), plus those added by ``register_formula``.
LAMBDA_FORMULAS: dict[str, tuple[tuple[str, ...], LambdaFormula]] = lambda_formulas()


def register_formula(kind: str, needs: tuple[str, ...], formula: LambdaFormula) -> None:
    """Add (or replace) the lambda(p) of weighting type ``kind`` for the report."""
    LAMBDA_FORMULAS[kind] = (tuple(needs), formula)


def lambda_values(state: Mapping[str, Any], q: Any, num_classes: int) -> np.ndarray | None:
    """lambda(p) at confidences ``q`` from a recorded ``weighting`` state: (K, len(q)) weights,
    K = 1 or one row per class; None when the type has no formula or a key is missing."""
    entry = LAMBDA_FORMULAS.get(str(state.get("type")))
    if entry is None or any(k not in state for k in entry[0]):
        return None
    q = np.asarray(q, dtype=np.float64)
    return np.atleast_2d(entry[1](state, q, num_classes))


@dataclass
class LambdaCurve:
    """One run's lambda(p): the class mean ``w`` and the per-class range ``low``..``high``."""

    p: list[float]
    w: list[float]
    low: list[float] | None
    high: list[float] | None
    iteration: int | None
    source: str  # "formula" (rebuilt from the state) or "sampled" (the engine's lambda_curve)
    state: dict[str, Any] | None = None  # the recorded weighting state (formula curves)
    num_classes: int | None = None

    def at(self, p: float) -> float:
        """lambda(p), class mean: exact from the state, else interpolated (NaN off the grid)."""
        if self.state is not None and self.num_classes is not None:
            w = lambda_values(self.state, [p], self.num_classes)
            if w is not None:
                return float(w.mean(axis=0)[0])
        if not self.p or p < self.p[0] - 1e-9 or p > self.p[-1] + 1e-9:
            return math.nan
        return float(np.interp(p, self.p, self.w))


def num_classes(run: RunData) -> int | None:
    """C from dataset.json, else the records (p_model, confusion, the lambda_curve grid)."""
    info = run.dataset or {}  # DatasetInfo as saved: num_classes and class_names
    count = info.get("num_classes")
    if isinstance(count, int) and not isinstance(count, bool) and count >= 2:
        return count
    classes = info.get("class_names")
    if isinstance(classes, list) and len(classes) >= 2:
        return len(classes)
    for rec in reversed(run.evals):
        for key in ("p_model", "confusion", "per_class_acc"):
            if isinstance(rec.get(key), list) and len(rec[key]) >= 2:
                return len(rec[key])
        p = (rec.get("lambda_curve") or {}).get("p")
        if p and p[0] > 0:
            return round(1 / p[0])
    return None


def _sampled(rec: dict[str, Any], note: str) -> LambdaCurve | None:
    curve = rec.get("lambda_curve") or {}
    if not (curve.get("p") and curve.get("w")):
        return None
    return LambdaCurve(curve["p"], curve["w"], None, None, rec.get("iteration"), "sampled")


def final_lambda(run: RunData) -> tuple[LambdaCurve | None, str]:
    """lambda(p) at the run's last evaluation, and a note on where it came from (or why not)."""
    rec = next((r for r in reversed(run.evals) if isinstance(r.get("weighting"), dict)), None)
    if rec is None:
        return None, "no evaluation record with a weighting state yet"
    state = rec["weighting"]
    kind = str(state.get("type"))
    if kind == "none":
        return None, "no unlabeled loss (supervised): λ(p) is not defined"
    if state.get("warmup"):
        return None, f"still in the supervised warm-up at iteration {rec.get('iteration')}"
    C = num_classes(run)
    entry = LAMBDA_FORMULAS.get(kind)
    if entry is None:
        why = f"no formula for weighting type {kind!r}: the engine's sampled curve"
    elif missing := [k for k in entry[0] if k not in state]:
        why = f"the record lacks {', '.join(missing)}: the engine's sampled curve"
    elif C is None:
        why = "the number of classes is unknown: the engine's sampled curve"
    else:
        q = np.linspace(1.0 / C, 1.0, GRID_POINTS)
        w = lambda_values(state, q, C)
        assert w is not None
        per_class = w.shape[0] > 1
        curve = LambdaCurve(
            q.tolist(),
            w.mean(axis=0).tolist(),
            w.min(axis=0).tolist() if per_class else None,
            w.max(axis=0).tolist() if per_class else None,
            rec.get("iteration"),
            "formula",
            dict(state),
            C,
        )
        return curve, f"rebuilt from the logged {kind} state"
    curve = _sampled(rec, why)
    return curve, why if curve else why.split(":")[0]
