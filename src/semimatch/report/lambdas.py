"""lambda(p) of a run, rebuilt from the weighting state it recorded (the report's overlay).

Each eval record of ``metrics.jsonl`` holds ``weighting``: the ``describe()`` of the run's
weighting module (its type and the state lambda(p) depends on).  ``LAMBDA_FORMULAS`` maps a
weighting type to the keys it needs and the function that evaluates lambda(p) from them; a new
weighting extends the table with one entry (``register_formula``).  A record whose type has no
entry, or lacks a key (a run written before semimatch recorded it), falls back to the curve the
engine sampled from the live module (``lambda_curve``), and says so.

Convention (as the engine's ``lambda_curve``): a row with confidence ``q = max_c p`` puts ``q``
on one class and spreads ``1 - q`` evenly over the others; per-class weightings give one curve
per class holding the max, and the drawn curve is their mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from semimatch.report.runs import RunData

__all__ = [
    "LAMBDA_FORMULAS",
    "LambdaCurve",
    "LambdaFormula",
    "final_lambda",
    "lambda_values",
    "num_classes",
    "register_formula",
]

#: (state, q grid (n,), num_classes) -> weights (K, n): K = 1, or one row per class holding max.
LambdaFormula = Callable[[Mapping[str, Any], np.ndarray, int], np.ndarray]

#: Grid points of a rebuilt curve (fine enough that a step looks like one).
GRID_POINTS = 401


def _lambda_max(state: Mapping[str, Any]) -> float:
    # Recorded since the report's overlay; before that every built-in algorithm used 1.0 (no
    # builder passes lambda_max), so a record without the key was written with 1.0.
    return float(state.get("lambda_max", 1.0))


def _step(thresholds: Any, q: np.ndarray, state: Mapping[str, Any]) -> np.ndarray:
    """``lambda_max * 1[q >= T]`` for a scalar T (one row) or per-class T(c) (C rows)."""
    t = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))[:, None]
    return _lambda_max(state) * (q[None, :] >= t).astype(np.float64)


def _fixed(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    return _step(state["tau"], q, state)


def _per_class(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    return _step(state["thresholds"], q, state)


def _adamatch(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    return _step(state["threshold"], q, state)


def _softmatch(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """Truncated Gaussian (or the ablation's linear / quadratic) below the running mean."""
    mean = np.atleast_1d(np.asarray(state["mean"], dtype=np.float64))[:, None]
    var = np.atleast_1d(np.asarray(state["std"], dtype=np.float64))[:, None] ** 2
    width2 = 2 * np.maximum(var, 1e-12) / float(state["n_sigma"]) ** 2
    shape = state.get("shape", "gaussian")
    if shape == "gaussian":
        below = np.exp(-((q[None, :] - mean) ** 2) / width2)
    else:
        u = (mean - q[None, :]) / np.sqrt(width2)
        below = np.clip(1 - u if shape == "linear" else 1 - u * u, 0.0, None)
    return _lambda_max(state) * np.where(q[None, :] >= mean, 1.0, below)


def _dash(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """``1[loss(p) <= rho]``: soft loss ``-sum_k sharpen(p, T)_k log p_k``, ``-log q`` once hard."""
    rest = (1 - q) / (num_classes - 1)
    if state["hard"]:
        loss = -np.log(q)
    else:
        inv_t = 1.0 / float(state["temperature"])
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q, log_r = np.log(q), np.log(rest)
            # sharpen = softmax(log p / T), over one q and C-1 equal rest values
            top = np.maximum(log_q, log_r) * inv_t
            e_q = np.exp(log_q * inv_t - top)
            e_r = np.where(rest > 0, np.exp(log_r * inv_t - top), 0.0)
            z = e_q + (num_classes - 1) * e_r
            s_q, s_r = e_q / z, e_r / z
            loss = -(s_q * log_q + (num_classes - 1) * np.where(s_r > 0, s_r * log_r, 0.0))
    return _lambda_max(state) * (loss <= float(state["rho"])).astype(np.float64)[None, :]


#: weighting type (``describe()["type"]``) -> (keys lambda(p) needs, its formula).
LAMBDA_FORMULAS: dict[str, tuple[tuple[str, ...], LambdaFormula]] = {
    "fixed": (("tau",), _fixed),  # FixMatch, Pseudo-Label
    "softmatch": (("mean", "std", "n_sigma"), _softmatch),
    "flexmatch": (("thresholds",), _per_class),  # T(c) = M(beta(c)) * tau
    "freematch": (("thresholds",), _per_class),  # tau_t * MaxNorm(p_t)(c)
    "adamatch": (("threshold",), _adamatch),  # tau * mean labeled confidence
    "uda": (("tau",), _fixed),
    "dash": (("rho", "hard", "temperature"), _dash),
}


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
