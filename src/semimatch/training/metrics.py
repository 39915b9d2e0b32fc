"""Pseudo-label quantity and quality (SoftMatch, section 2), accuracy, and metric writers.

quantity ``f = (1/N) sum_i w_i / lambda_max``;
quality ``g = sum_i w_i 1[y_hat_i = y_i] / sum_i w_i`` over the unlabeled samples whose ground
truth is known and hidden from training (monitoring only): a labeled sample in the unlabeled
stream does not count, so data with no hidden truth has no quality (None, "n/a").

An "eval" record of ``metrics.jsonl`` also holds ``best`` (its checkpoint became ``best.pt``),
``selected_on`` (what chose it: "val", "test" or "latest"), ``val_error``/``best_val_error``
with a validation set, and ``semimatch.training.diagnostics``' checks:
``lb_weak_acc``/``lb_strong_acc`` (accuracy on the weak/strong view of labeled samples),
``pl_flip`` (share of pseudo-labels that changed class since the last evaluation) and
``error_swing`` (``|error - previous|`` of the selecting set); ``None`` where undefined (the first
evaluation has no previous one)."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from semimatch.distributed import all_reduce_sums

__all__ = ["WindowSums", "summarize", "JsonlWriter", "median_of_last", "read_jsonl"]


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


class WindowSums:
    """Accumulates the step sums of ``train_step`` on the device; read with one sync per window."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, sums: Mapping[str, torch.Tensor]) -> None:
        for key, value in sums.items():
            prev = self._sums.get(key)
            self._sums[key] = value.detach().clone() if prev is None else prev + value.detach()
        self.steps += 1

    def reduce(self) -> dict[str, list[float] | float]:
        """All-reduce over processes and move to the host (one collective, one sync)."""
        keys = sorted(self._sums)
        reduced = all_reduce_sums(*(self._sums[k] for k in keys))
        return {k: (v.tolist() if v.dim() else v.item()) for k, v in zip(keys, reduced)}

    def reset(self) -> None:
        self._sums.clear()
        self.steps = 0

    def state(self) -> dict[str, Any]:
        """Checkpointable state: a run interrupted mid-window resumes with the same window."""
        return {"steps": self.steps, "sums": {k: v.detach().cpu() for k, v in self._sums.items()}}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.steps = int(state["steps"])
        self._sums = {k: v.clone() for k, v in state["sums"].items()}


def summarize(sums: Mapping[str, Any]) -> dict[str, Any]:
    """Turn accumulated sums into the logged metrics (``None`` where undefined)."""
    n_lb, n_ulb = sums.get("n_lb", 0.0), sums.get("n_ulb", 0.0)
    out: dict[str, Any] = {
        "sup_loss": _div(sums.get("sup_loss_sum", 0.0), n_lb),
        "train_acc": _div(sums.get("lb_correct", 0.0), n_lb),
        "unsup_loss": _div(sums.get("unsup_loss_sum", 0.0), n_ulb),
        "quantity": _div(sums.get("weight_sum", 0.0), n_ulb),
        "full_weight_frac": _div(sums.get("full_weight", 0.0), n_ulb),
        "quality": _div(sums.get("weight_correct", 0.0), sums.get("weight_known", 0.0)),
        "pl_acc": _div(sums.get("correct", 0.0), sums.get("known", 0.0)),
    }
    if "extra_loss_sum" in sums:  # only algorithms with an extra loss term (FreeMatch)
        out["extra_loss"] = _div(sums["extra_loss_sum"], n_ulb)
    if n_ulb > 0:
        counts = sums["class_count"]
        out["per_class_quantity"] = [_div(w, c) for w, c in zip(sums["class_weight"], counts)]
        out["per_class_pl_acc"] = [
            _div(c, k) for c, k in zip(sums["class_correct"], sums["class_known"])
        ]
        out["conf_hist"] = [int(round(v)) for v in sums["conf_hist"]]
    else:
        out["per_class_quantity"] = out["per_class_pl_acc"] = out["conf_hist"] = None
    return out


def median_of_last(values: list[float], n: int = 20) -> float | None:
    """The FixMatch paper's metric: median of the last ``n`` evaluations."""
    return statistics.median(values[-n:]) if values else None


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every line stays parseable."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


class JsonlWriter:
    """Append-only JSON-lines log, flushed per record so a crash loses nothing already logged."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(dict(record))) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @property
    def temporary(self) -> Path:
        """The file ``truncate_after`` writes before renaming it over the log."""
        return self.path.with_suffix(".tmp")

    def remove_temporary(self) -> bool:
        """Delete the temporary file a killed ``truncate_after`` left; whether there was one."""
        if not self.temporary.is_file():
            return False
        try:
            self.temporary.unlink()
        except OSError:
            return False
        return True

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop records logged after the checkpoint we resume from (they will be
        produced again), so the log of a resumed run equals an uninterrupted one's."""
        if not self.path.exists():
            return
        keep = [
            r
            for r in read_jsonl(self.path)
            if r.get("iteration", 0) <= iteration and r.get("kind") != "end"
        ]
        tmp = self.temporary
        with open(tmp, "w", encoding="utf-8") as f:
            for r in keep:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a metrics log; a torn last line (a run killed mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
