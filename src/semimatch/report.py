"""``semimatch report``: an offline HTML report with PNG figures for one or several runs.

Shows the pseudo-label quantity/quality trade-off of the reference ("Pseudo-label quantity and
quality": quantity ``f = mean w_i / lambda_max``, quality ``g = sum w_i 1[y_hat_i = y_i] /
sum w_i``) as logged by the engine in ``metrics.jsonl`` (schema: notes/contracts.md), next to the
test error, the weighting function lambda(p) over the confidence histogram, per-class statistics,
the final confusion matrix and a table comparing the runs.

Works on finished, running and crashed runs: it reads whatever has been logged (a torn last line
is skipped by ``read_jsonl``) and says in the HTML what is missing and why.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semimatch.metrics import median_of_last, read_jsonl

__all__ = ["RunData", "build_report", "comparison_rows", "format_row", "load_run", "run_status"]

#: A run without an "end" record whose metrics were last written longer ago than this (or than
#: 5x its longest gap between records, whichever is larger) is presumed crashed, not running.
STALE_AFTER_S = 600.0
#: Number of points in training at which lambda(p) is drawn.
LAMBDA_SNAPSHOTS = 4
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


# ----------------------------------------------------------------------------------------------
# Reading a run directory
# ----------------------------------------------------------------------------------------------
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


def load_run(run_dir: str | Path) -> RunData:
    """Read config.json, summary.json and metrics.jsonl of ``run_dir`` (each may be missing)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"run directory {str(path)!r} does not exist; pass the folder "
            "given to `semimatch train --out`"
        )
    metrics = path / "metrics.jsonl"
    if not (path / "config.json").exists() and not metrics.exists():
        raise FileNotFoundError(
            f"{str(path)!r} is not a run directory (no config.json and no "
            "metrics.jsonl); pass the folder given to `semimatch train --out`"
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
        _read_json(path / "config.json") or {},
        _read_json(path / "summary.json"),
        records,
        unparsed,
        mtime,
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
# The comparison table
# ----------------------------------------------------------------------------------------------
def _values(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(iteration, value) pairs of ``key`` where it is a number."""
    return [
        (int(r["iteration"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), (int, float)) and isinstance(r.get("iteration"), int)
    ]


def _window_values(evals: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return _values(
        [{"iteration": r.get("iteration"), **(r.get("window") or {})} for r in evals], key
    )


def _last(records: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(records):
        if r.get(key) is not None:
            return r[key]
    return None


def _labels(run: RunData) -> Any:
    """num_labels; a long-tailed split is described by its imbalance ratio instead."""
    labels = run.setting("num_labels")
    if labels is None and run.config.get("lt_gamma") is not None:
        return f"long-tailed, gamma {run.config['lt_gamma']}"
    return labels


def _row(run: RunData, now: float | None = None) -> dict[str, Any]:
    summary = run.summary or {}
    errors = [v for _, v in _values(run.evals, "error")]
    best = _last(run.evals, "best_error")
    if best is None:
        best = min(errors) if errors else summary.get("best_error")
    median20 = _last(run.evals, "median20_error")
    if median20 is None:
        median20 = median_of_last(errors, 20) if errors else summary.get("median20_error")
    # "final" = the last evaluation window, as in summary.json; before the first eval, the last
    # train log window, so a young running run still shows where it stands.
    last_window = (run.evals[-1].get("window") or {}) if run.evals else None
    source = last_window if last_window is not None else (run.train[-1] if run.train else {})
    quantity, quality = source.get("quantity"), source.get("quality")
    if not run.records:
        quantity, quality = summary.get("final_quantity"), summary.get("final_quality")
    sec = [v for _, v in _values(run.train, "sec_per_iter")]
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
    return [_row(r, now) for r in _load_all(run_dirs)]


def _load_all(run_dirs: list[Path]) -> list[RunData]:
    if isinstance(run_dirs, (str, Path)):
        raise ValueError("run_dirs must be a list of run directories; wrap a single one in [...]")
    if not run_dirs:
        raise ValueError("run_dirs is empty; pass at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    # Two runs with the same folder name (runs/a/softmatch, runs/b/softmatch): tell them apart.
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    return runs


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------
class _Figures:
    """Renders matplotlib figures to PNG files in ``out`` and keeps their bytes for embedding."""

    def __init__(self, out: Path) -> None:
        # The Agg canvas is attached per figure (no pyplot): no GUI backend, no global backend
        # switch that would disturb a notebook or application importing semimatch.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._figure, self._canvas = Figure, FigureCanvasAgg
        self.out = out

    def new(self, width: float, height: float) -> Any:
        fig = self._figure(figsize=(width, height), dpi=100, layout="constrained")
        self._canvas(fig)
        return fig

    def save(self, fig: Any, filename: str) -> tuple[str, str]:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        data = buf.getvalue()
        (self.out / filename).write_bytes(data)
        return filename, base64.b64encode(data).decode("ascii")


def _fig_error(figs: _Figures, runs: list[RunData]) -> tuple[str, str] | None:
    series = [(i, r, _values(r.evals, "error")) for i, r in enumerate(runs)]
    series = [s for s in series if s[2]]
    if not series:
        return None
    fig = figs.new(7, 4)
    ax = fig.add_subplot()
    for i, run, pts in series:
        x, y = zip(*pts, strict=True)
        ax.plot(
            x,
            [100 * v for v in y],
            marker="o" if len(x) < 30 else None,
            ms=3,
            color=_COLORS[i % len(_COLORS)],
            label=run.name,
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error of the evaluated model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figs.save(fig, "fig-error.png")


def _pl_series(run: RunData, key: str) -> list[tuple[int, float]]:
    """Train log windows (finest grain); the eval windows when no train record has the key."""
    return _values(run.train, key) or _window_values(run.evals, key)


def _fig_pseudo_labels(figs: _Figures, runs: list[RunData]) -> tuple[str, str] | None:
    quantity = [(i, r, _pl_series(r, "quantity")) for i, r in enumerate(runs)]
    quantity = [s for s in quantity if s[2]]
    if not quantity:
        return None
    quality = [(i, r, _pl_series(r, "quality"), _pl_series(r, "pl_acc")) for i, r, _ in quantity]
    quality = [s for s in quality if s[2]]
    fig = figs.new(11 if quality else 6.5, 4)
    axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]
    ax = axes[0]
    for i, run, pts in quantity:
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, color=_COLORS[i % len(_COLORS)], label=run.name)
    # SoftMatch's claim (reference): quantity stays >= lambda_max / 2 throughout training.
    ax.axhline(0.5, color="gray", ls=":", lw=1, label="λmax / 2")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("iteration")
    ax.set_ylabel("quantity  (mean weight / λmax)")
    ax.set_title("Pseudo-label quantity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if quality:
        ax = axes[1]
        for i, run, pts, acc in quality:
            color = _COLORS[i % len(_COLORS)]
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=color, label=f"{run.name}: quality (weighted)")
            if acc:
                x, y = zip(*acc, strict=True)
                ax.plot(
                    x,
                    y,
                    color=color,
                    ls="--",
                    lw=1,
                    alpha=0.7,
                    label=f"{run.name}: unweighted accuracy",
                )
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("iteration")
        ax.set_ylabel("quality  (weighted pseudo-label accuracy)")
        ax.set_title("Pseudo-label quality")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figs.save(fig, "fig-pseudo-labels.png")


def _snapshots(evals: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` evenly spaced records from first to last (all of them when there are fewer)."""
    if len(evals) <= n:
        return list(evals)
    idx = sorted({round(j * (len(evals) - 1) / (n - 1)) for j in range(n)})
    return [evals[j] for j in idx]


def _fig_lambda(figs: _Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    evals = [
        r
        for r in run.evals
        if (r.get("lambda_curve") or {}).get("p") and (r.get("lambda_curve") or {}).get("w")
    ]
    if not evals:
        return None
    shots = _snapshots(evals, LAMBDA_SNAPSHOTS)
    fig = figs.new(3.2 * len(shots) + 0.6, 3.4)
    axes = fig.subplots(1, len(shots), squeeze=False, sharey=True)[0]
    for ax, rec in zip(axes, shots, strict=True):
        hist = (rec.get("window") or {}).get("conf_hist") or []
        total = sum(hist)
        if total > 0:
            width = 1.0 / len(hist)
            ax.bar(
                [(j + 0.5) * width for j in range(len(hist))],
                [h / total for h in hist],
                width=width,
                color="#c7d7ea",
                edgecolor="#9fb7d4",
                lw=0.5,
            )
        ax.set_xlim(0, 1)
        ax.set_xlabel("confidence  max p")
        twin = ax.twinx()
        curve = rec["lambda_curve"]
        twin.plot(curve["p"], curve["w"], color="#d62728", lw=2, label="λ(p)")
        weighting = rec.get("weighting") or {}
        if weighting.get("type") == "softmatch" and isinstance(weighting.get("mean"), (int, float)):
            twin.axvline(weighting["mean"], color="#d62728", ls=":", lw=1, label="μ (running mean)")
        elif weighting.get("type") == "fixed" and isinstance(weighting.get("tau"), (int, float)):
            twin.axvline(weighting["tau"], color="#d62728", ls=":", lw=1, label="τ")
        twin.set_ylim(0, 1.05)
        if ax is axes[-1]:
            twin.set_ylabel("weight λ(p)", color="#d62728")
            twin.legend(fontsize=7, loc="upper left")
        else:
            twin.set_yticklabels([])
        q = (rec.get("window") or {}).get("quantity")
        ax.set_title(
            f"iteration {rec.get('iteration')}"
            + (f"  (quantity {q:.2f})" if isinstance(q, (int, float)) else ""),
            fontsize=9,
        )
    axes[0].set_ylabel("fraction of unlabeled samples")
    fig.suptitle(f"{run.name}: weighting function over the confidence histogram", fontsize=10)
    return figs.save(fig, f"fig-lambda-{slug}.png")


def _matrix(evals: list[dict[str, Any]], key: str) -> tuple[list[int], list[list[float]]]:
    """(iterations, rows) of a per-class window statistic; None entries become NaN."""
    iters, rows = [], []
    for r in evals:
        values = (r.get("window") or {}).get(key)
        if isinstance(values, list) and values:
            iters.append(r.get("iteration"))
            rows.append([float(v) if isinstance(v, (int, float)) else math.nan for v in values])
    width = max((len(row) for row in rows), default=0)
    return iters, [row + [math.nan] * (width - len(row)) for row in rows]


def _heat(
    ax: Any, fig: Any, iters: list[int], rows: list[list[float]], title: str, label: str
) -> None:
    import matplotlib
    import numpy as np

    # Gray = no unlabeled sample was pseudo-labelled with that class in the window.
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    data = np.ma.masked_invalid(np.array(rows, dtype=float).T)
    im = ax.imshow(
        data, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest", origin="lower"
    )
    n = len(iters)
    ticks = sorted({round(j * (n - 1) / 5) for j in range(6)}) if n > 6 else list(range(n))
    ax.set_xticks(ticks, [str(iters[j]) for j in ticks], fontsize=8)
    classes = data.shape[0]
    if classes <= 20:
        ax.set_yticks(range(classes))
    ax.set_xlabel("iteration (evaluation window)")
    ax.set_ylabel("predicted class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label)


def _fig_per_class(figs: _Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    panels = [
        ("per_class_quantity", "Per-class quantity", "mean weight"),
        ("per_class_pl_acc", "Per-class pseudo-label accuracy", "accuracy"),
    ]
    panels = [(t, lab, *_matrix(run.evals, key)) for key, t, lab in panels]
    panels = [p for p in panels if p[2] and any(not math.isnan(v) for row in p[3] for v in row)]
    if not panels:
        return None
    fig = figs.new(6 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, label, iters, rows) in zip(axes, panels, strict=True):
        _heat(ax, fig, iters, rows, title, label)
    fig.suptitle(
        f"{run.name}: pseudo-labels per predicted class over training (gray: none)", fontsize=10
    )
    return figs.save(fig, f"fig-per-class-{slug}.png")


def _fig_confusion(figs: _Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    import numpy as np

    rec = next((r for r in reversed(run.evals) if r.get("confusion")), None)
    if rec is None:
        return None
    counts = np.array(rec["confusion"], dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        return None
    # Rows normalised (recall per true class) so colours are comparable across class sizes.
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    C = counts.shape[0]
    size = min(10.0, 3.5 + 0.35 * C)
    fig = figs.new(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    if C <= 20:
        ax.set_xticks(range(C))
        ax.set_yticks(range(C))
        for t in range(C):
            for p in range(C):
                if counts[t, p]:
                    ax.text(
                        p,
                        t,
                        f"{int(counts[t, p])}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if rates[t, p] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    err = rec.get("error")
    ax.set_title(
        f"{run.name}: confusion matrix at iteration {rec.get('iteration')}"
        + (f" (error {100 * err:.2f}%)" if isinstance(err, (int, float)) else ""),
        fontsize=10,
    )
    fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
    return figs.save(fig, f"fig-confusion-{slug}.png")


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------
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
        "median-20 error": _pct(row["median20_error"]),
        "final error": _pct(row["final_error"]),
        "final quantity": _num(row["final_quantity"]),
        "final quality": _num(row["final_quality"]),
        "sec / iter": _num(row["sec_per_iter"], ".4f"),
        "status": str(row["status"]),
    }


def _notes(run: RunData, row: dict[str, Any], now: float | None) -> list[str]:
    notes = []
    status = row["status"]
    if status in ("running", "crashed"):
        age = ""
        if run.metrics_mtime is not None:
            age = f"; metrics last written {((now or time.time()) - run.metrics_mtime):.0f} s ago"
        what = (
            "still running, or died without a trace"
            if status == "running"
            else "presumed crashed (not written to for a long time)"
        )
        notes.append(
            f"No summary.json and no end record: {what}{age}. The report shows what "
            f"was logged up to iteration {row['iterations_done']}."
        )
    elif run.end is not None and run.end.get("message"):
        notes.append(f"Run ended {status}: {run.end['message']}")
    if run.unparsed_lines:
        notes.append(
            f"{run.unparsed_lines} unreadable line(s) in metrics.jsonl skipped (a torn "
            "write from a killed process)."
        )
    if not run.records:
        notes.append("No metrics logged yet (the first log window has not finished).")
    elif not run.evals:
        every = run.config.get("eval_every")
        notes.append(
            "No evaluation record yet"
            + (f" (first one at iteration {every})" if every else "")
            + ": test error, λ(p), per-class and confusion figures "
            "appear after it."
        )
    elif not _values(run.evals, "error"):
        notes.append(
            "No test set: the test error is not logged (null), so there is no error "
            "curve and no confusion matrix."
        )
    if run.records and not (_pl_series(run, "quantity")):
        notes.append(
            f"No pseudo-label statistics: {run.setting('algorithm') or 'this run'} uses "
            "no unlabeled loss, so quantity, quality and λ(p) are not defined."
        )
    elif run.records and not _pl_series(run, "quality"):
        notes.append(
            "Pseudo-label quality is not available: the ground truth of the unlabeled "
            "data is unknown (quality is null in the log)."
        )
    return notes


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.3em;border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:2em}h3{font-size:1.1em}
table{border-collapse:collapse;font-size:.9em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.status-finished{color:#2a7a2a}.status-running{color:#1f5fa8}
.status-crashed,.status-failed,.status-interrupted{color:#b03030}
img{max-width:100%;height:auto;border:1px solid #eee}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em .8em;margin:.4em 0}
.caption{color:#555;font-size:.9em;margin:.2em 0 1.2em}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def _img(figure: tuple[str, str], caption: str) -> str:
    filename, b64 = figure
    # Embedded (the HTML alone is complete) and linked to the PNG file saved next to it.
    return (
        f'<figure><a href="{html.escape(filename)}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{b64}"></a><figcaption class="caption">'
        f'{html.escape(caption)} (<a href="{html.escape(filename)}">'
        f"{html.escape(filename)}</a>)</figcaption></figure>"
    )


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "run"
    slug, k = base, 2
    while slug in taken:
        slug, k = f"{base}-{k}", k + 1
    taken.add(slug)
    return slug


def build_report(run_dirs: list[Path], out: Path | str | None = None) -> Path:
    """Write ``index.html`` and its PNG figures for ``run_dirs``; return the path of index.html.

    ``out`` defaults to ``RUN_DIR/report`` for one run and ``./semimatch-report`` for several.
    Figures: test error; pseudo-label quantity and quality (overlaid over runs); per run, the
    weighting function lambda(p) at up to 4 points in training over the confidence histogram,
    per-class quantity / pseudo-label accuracy heat maps and the final confusion matrix.
    """
    now = time.time()
    runs = _load_all(list(run_dirs) if not isinstance(run_dirs, (str, Path)) else run_dirs)
    if out is None:
        out_dir = runs[0].path / "report" if len(runs) == 1 else Path.cwd() / "semimatch-report"
    else:
        out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out={str(out_dir)!r} is a file; pass a folder for the report")
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "index.html").exists():
        # A previous report: drop its figures so none of them outlives its data.
        for old in out_dir.glob("fig-*.png"):
            old.unlink()

    figs = _Figures(out_dir)
    rows = [_row(r, now) for r in runs]
    title = "semimatch report: " + ", ".join(r.name for r in runs)
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="caption">Generated {time.strftime("%Y-%m-%d %H:%M:%S")} from '
        f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}. Errors are test "
        "errors of the evaluated model; quantity = mean unlabeled weight / λmax, quality = "
        "weighted pseudo-label accuracy (SoftMatch, section 2).</p>",
    ]

    # -- comparison table ------------------------------------------------------------------
    cells = [format_row(row) for row in rows]
    header = list(cells[0])
    parts.append(
        '<h2>Runs</h2><table id="comparison"><thead><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
    )
    for c in cells:
        parts.append(
            "<tr>"
            + "".join(
                f'<td class="status-{html.escape(c[h])}">{html.escape(c[h])}</td>'
                if h == "status"
                else f"<td>{html.escape(c[h])}</td>"
                for h in header
            )
            + "</tr>"
        )
    parts.append(
        '</tbody></table><p class="caption">best / median-20 / final error from the '
        "eval records (median-20 = median of the last 20 evaluations, FixMatch paper); "
        "final quantity/quality = last evaluation window (last train window before the "
        "first evaluation); sec / iter = median of the train log windows.</p>"
    )

    # -- overlaid curves ---------------------------------------------------------------------
    parts.append("<h2>Test error and pseudo-labels over training</h2>")
    fig = _fig_error(figs, runs)
    parts.append(
        _img(fig, "Test error over iterations, one line per run")
        if fig
        else '<p class="note">No test error logged by any run yet (no evaluation record, '
        "or no test set).</p>"
    )
    fig = _fig_pseudo_labels(figs, runs)
    parts.append(
        _img(
            fig,
            "Pseudo-label quantity (left) and quality (right, dashed: unweighted "
            "pseudo-label accuracy) per train log window",
        )
        if fig
        else '<p class="note">No pseudo-label statistics logged by any run (supervised '
        "runs or no log window yet).</p>"
    )

    # -- per run -----------------------------------------------------------------------------
    taken: set[str] = set()
    for run, row in zip(runs, rows, strict=True):
        slug = _slug(run.name, taken)
        parts.append(
            f'<h2 id="run-{html.escape(slug)}">{html.escape(run.name)} '
            f"<small>({html.escape(str(run.path))})</small></h2>"
        )
        parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in _notes(run, row, now))
        last = run.evals[-1] if run.evals else {}
        weighting = last.get("weighting")
        if weighting and weighting.get("type") != "none":
            parts.append(
                f"<p>Weighting state at iteration {last.get('iteration')}: <code>"
                f"{html.escape(json.dumps(weighting))}</code></p>"
            )
        for maker, caption in (
            (
                _fig_lambda,
                "Weighting function λ(p) (red) at evenly spaced evaluations, over the "
                "histogram of the confidences it saw in the window before",
            ),
            (
                _fig_per_class,
                "Per-class quantity and pseudo-label accuracy of each evaluation "
                "window, indexed by predicted class",
            ),
            (
                _fig_confusion,
                "Confusion matrix of the last evaluation that logged one (colour: "
                "row-normalised; numbers: counts)",
            ),
        ):
            fig = maker(figs, run, slug)
            if fig:
                parts.append(_img(fig, f"{run.name}: {caption}"))
        if run.config:
            parts.append(
                "<details><summary>config.json</summary><pre>"
                + html.escape(json.dumps(run.config, indent=2, sort_keys=True))
                + "</pre></details>"
            )
    parts.append("</body></html>\n")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index
