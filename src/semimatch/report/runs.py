"""Reading run directories for the report: ``RunData``, its status and the comparison table.

``read_run`` reads whatever a run has written so far (finished, running or crashed: a torn last
line of ``metrics.jsonl`` is skipped by ``read_jsonl`` and counted); ``semimatch.api.load_run``,
by contrast, rebuilds a trained ``Run`` from a checkpoint.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semimatch.runs.run import RunDir
from semimatch.training.metrics import median_of_last, read_jsonl

__all__ = [
    "RunData",
    "comparison_rows",
    "expand_run_dirs",
    "format_row",
    "last_value",
    "pseudo_label_series",
    "read_run",
    "read_runs",
    "run_label",
    "run_row",
    "run_status",
    "series",
    "window_series",
]

#: A run without an "end" record whose metrics were last written longer ago than this (or than
#: 5x its longest gap between records, whichever is larger) is presumed crashed, not running.
STALE_AFTER_S = 600.0


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    path: Path
    name: str
    config: dict[str, Any]
    summary: dict[str, Any] | None
    records: list[dict[str, Any]]
    unparsed_lines: int = 0
    metrics_mtime: float | None = None
    dataset: dict[str, Any] | None = None  # dataset.json (class_names, kind...), None: absent
    train: list[dict[str, Any]] = field(init=False)
    evals: list[dict[str, Any]] = field(init=False)
    end: dict[str, Any] | None = field(init=False)

    def __post_init__(self) -> None:
        self.train = [r for r in self.records if r.get("kind") == "train"]
        self.evals = [r for r in self.records if r.get("kind") == "eval"]
        ends = [r for r in self.records if r.get("kind") == "end"]
        self.end = ends[-1] if ends else None

    def setting(self, key: str) -> Any:
        """A config value, falling back to summary.json (a run may lack config.json)."""
        if key in self.config:
            return self.config[key]
        return (self.summary or {}).get(key)


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None when absent or half-written (a running run may be writing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_run(run_dir: str | Path) -> RunData:
    """Read config.json, summary.json and metrics.jsonl of ``run_dir`` for the report (each may
    be missing; a torn or half-written file reads as absent)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"run directory {str(path)!r} does not exist; pass the folder "
            "given to `semimatch train --out`"
        )
    layout = RunDir(path)
    metrics = layout.metrics
    if not layout.holds_run():
        raise FileNotFoundError(
            f"{str(path)!r} is not a run directory (no config.json and no "
            "metrics.jsonl) and holds none; pass the folder given to `semimatch train --out`, "
            "or a folder of such folders"
        )
    records: list[dict[str, Any]] = []
    unparsed, mtime = 0, None
    if metrics.exists():
        mtime = metrics.stat().st_mtime
        records = [r for r in read_jsonl(metrics) if isinstance(r, dict)]
        # read_jsonl skips unparseable lines silently; count them so the report can say so.
        lines = [
            ln
            for ln in metrics.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()
        ]
        unparsed = max(0, len(lines) - len(records))
    name = path.resolve().name or str(path)
    return RunData(
        path,
        name,
        _read_json(layout.config) or {},
        _read_json(layout.summary),
        records,
        unparsed,
        mtime,
        _read_json(layout.dataset),
    )


def run_status(run: RunData, now: float | None = None) -> str:
    """finished / interrupted / failed (from summary.json or the "end" record), else running or
    crashed: without an end record, a log not written for a long time means the process died."""
    if run.summary and run.summary.get("status"):
        return str(run.summary["status"])
    if run.end is not None and run.end.get("status"):
        return str(run.end["status"])
    if run.metrics_mtime is None:
        return "running"  # config.json written, first log window not finished yet
    times = [r["time"] for r in run.records if isinstance(r.get("time"), (int, float))]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    stale_after = max(STALE_AFTER_S, 5 * max(gaps, default=0.0))
    age = (time.time() if now is None else now) - run.metrics_mtime
    return "running" if age <= stale_after else "crashed"


# ----------------------------------------------------------------------------------------------
# Series and the comparison table
# ----------------------------------------------------------------------------------------------
def series(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(iteration, value) pairs of ``key`` where it is a number."""
    return [
        (int(r["iteration"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("iteration"), int)
    ]


def window_series(evals: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(iteration, value) pairs of ``key`` in the eval records' log windows."""
    return series(
        [{"iteration": r.get("iteration"), **(r.get("window") or {})} for r in evals], key
    )


def last_value(records: list[dict[str, Any]], key: str) -> Any:
    """The last non-null value of ``key`` (None when no record has one)."""
    for r in reversed(records):
        if r.get(key) is not None:
            return r[key]
    return None


def pseudo_label_series(run: RunData, key: str) -> list[tuple[int, float]]:
    """Train log windows (finest grain); the eval windows when no train record has the key."""
    return series(run.train, key) or window_series(run.evals, key)


def run_method(run: RunData) -> str:
    """What trained: summary.json's algorithm (a custom weighting), else config.json's."""
    return str((run.summary or {}).get("algorithm") or run.setting("algorithm") or "unknown")


def run_label(run: RunData) -> str:
    """The legend label of a run in the overlaid figures: method (run name, seed)."""
    method = run_method(run)
    extras = [] if run.name == method else [run.name]
    seed = run.setting("seed")
    if seed is not None:
        extras.append(f"seed {seed}")
    return f"{method} ({', '.join(extras)})" if extras else method


def _labels(run: RunData) -> Any:
    """num_labels; a long-tailed split is described by its imbalance ratio instead."""
    labels = run.setting("num_labels")
    if labels is None and run.config.get("lt_gamma") is not None:
        return f"long-tailed, gamma {run.config['lt_gamma']}"
    return labels


def run_row(run: RunData, now: float | None = None) -> dict[str, Any]:
    """The comparison-table values of one run (see ``comparison_rows``)."""
    summary = run.summary or {}
    errors = [v for _, v in series(run.evals, "error")]
    best = last_value(run.evals, "best_error")
    if best is None:
        best = min(errors) if errors else summary.get("best_error")
    median20 = last_value(run.evals, "median20_error")
    if median20 is None:
        median20 = median_of_last(errors, 20) if errors else summary.get("median20_error")
    # "final" = the last evaluation window, as in summary.json; before the first eval, the last
    # train log window, so a young running run still shows where it stands.
    last_window = (run.evals[-1].get("window") or {}) if run.evals else None
    source = last_window if last_window is not None else (run.train[-1] if run.train else {})
    quantity, quality = source.get("quantity"), source.get("quality")
    if not run.records:
        quantity, quality = summary.get("final_quantity"), summary.get("final_quality")
    sec = [v for _, v in series(run.train, "sec_per_iter")]
    iterations = [r["iteration"] for r in run.records if isinstance(r.get("iteration"), int)]
    return {
        "name": run.name,
        "path": str(run.path),
        # summary.json names what trained (a custom weighting), config.json the configured one
        "algorithm": (run.summary or {}).get("algorithm") or run.setting("algorithm"),
        "dataset": run.setting("dataset"),
        "labels": _labels(run),
        "iterations": run.setting("iterations"),
        "iterations_done": max(iterations) if iterations else summary.get("iterations_done", 0),
        "best_error": best,
        # What chose best.pt: "val" (a validation set), "test" (the test set: best_error and
        # best.pt's score are optimistic), "latest" (no test set); None for older runs.
        "selected_on": last_value(run.evals, "selected_on") or summary.get("selected_on"),
        "median20_error": median20,
        "final_error": errors[-1] if errors else summary.get("final_error"),
        "final_quantity": quantity,
        "final_quality": quality,
        "sec_per_iter": statistics.median(sec) if sec else summary.get("sec_per_iter"),
        "status": run_status(run, now),
    }


def comparison_rows(run_dirs: list[Path], now: float | None = None) -> list[dict[str, Any]]:
    """One dict per run with the values of the report's comparison table (raw numbers; errors
    are fractions in [0, 1]; ``None`` where not logged).

    Keys: name, path, algorithm, dataset, labels, iterations, iterations_done, best_error,
    median20_error, final_error, final_quantity, final_quality, sec_per_iter (median of the train
    records' ``sec_per_iter``, else summary.json's), status.
    """
    return [run_row(r, now) for r in read_runs(run_dirs)]


def read_runs(run_dirs: list[Path]) -> list[RunData]:
    """``read_run`` of each directory; runs with the same folder name get their parent's too."""
    if isinstance(run_dirs, (str, Path)):
        raise ValueError("run_dirs must be a list of run directories; wrap a single one in [...]")
    if not run_dirs:
        raise ValueError("run_dirs is empty; pass at least one run directory")
    runs = [read_run(p) for p in expand_run_dirs(run_dirs)]
    # Two runs with the same folder name (runs/a/softmatch, runs/b/softmatch): tell them apart.
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    return runs


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """Each path that holds a run, in order; a folder that holds none stands for the run
    folders under it (found recursively, sorted by path; a run's own folder is not searched).
    A path that is neither is kept, for ``read_run`` to report."""
    out: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir() or RunDir(path).holds_run():
            out.append(path)
            continue
        found = []
        for root, dirs, _ in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            if root != str(path) and RunDir(Path(root)).holds_run():
                found.append(Path(root))
                dirs[:] = []  # a run's checkpoints/, tb/, report/ hold no other run
        out.extend(found or [path])
    return out


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "n/a"


def _num(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else "n/a"


def format_row(row: dict[str, Any]) -> dict[str, str]:
    """The comparison-table cells of a ``comparison_rows`` row, as written in the HTML."""
    done, total = row["iterations_done"], row["iterations"]
    return {
        "name": str(row["name"]),
        "algorithm": str(row["algorithm"] if row["algorithm"] is not None else "n/a"),
        "dataset": str(row["dataset"] if row["dataset"] is not None else "n/a"),
        "labels": str(row["labels"] if row["labels"] is not None else "all"),
        "iterations": f"{done} / {total}" if total is not None else str(done),
        "best error": _pct(row["best_error"]),
        "best chosen on": str(row.get("selected_on") or "n/a"),
        "median-20 error": _pct(row["median20_error"]),
        "final error": _pct(row["final_error"]),
        "final quantity": _num(row["final_quantity"]),
        "final quality": _num(row["final_quality"]),
        "sec / iter": _num(row["sec_per_iter"], ".4f"),
        "status": str(row["status"]),
    }
