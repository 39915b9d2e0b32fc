"""The report's figures (matplotlib, Agg canvas, no pyplot): each function draws one PNG.

Every figure function returns ``(filename, base64 PNG)``, or None when the runs logged nothing
it could draw (the page then says why).
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

from semimatch.report.lambdas import LambdaCurve, final_lambda
from semimatch.report.runs import RunData, pseudo_label_series, run_label, series

__all__ = [
    "Figures",
    "confusion_figure",
    "error_figure",
    "lambda_figure",
    "lambda_overlay_figure",
    "per_class_figure",
    "pseudo_label_figure",
]

#: Number of points in training at which lambda(p) is drawn.
LAMBDA_SNAPSHOTS = 4
COLORS = (
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


class Figures:
    """Renders matplotlib figures to PNG files in ``out`` and keeps their bytes for embedding."""

    def __init__(self, out: Path) -> None:
        # The Agg canvas is attached per figure (no pyplot): no GUI backend, no global backend
        # switch that would disturb a notebook or application importing semimatch.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self._figure, self._canvas = Figure, FigureCanvasAgg
        self.out = out
        #: The saved figures by file name (their axes and lines, for tests and callers).
        self.drawn: dict[str, Any] = {}

    def new(self, width: float, height: float) -> Any:
        """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
        fig = self._figure(figsize=(width, height), dpi=100, layout="constrained")
        self._canvas(fig)
        return fig

    def save(self, fig: Any, filename: str) -> tuple[str, str]:
        """Write ``fig`` to ``out/filename``; return (filename, base64 PNG) for embedding."""
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        data = buf.getvalue()
        (self.out / filename).write_bytes(data)
        self.drawn[filename] = fig
        return filename, base64.b64encode(data).decode("ascii")


def error_figure(figs: Figures, runs: list[RunData]) -> tuple[str, str] | None:
    """Test error over iterations, one line per run (None when no run logged one)."""
    lines = [(i, r, series(r.evals, "error")) for i, r in enumerate(runs)]
    lines = [s for s in lines if s[2]]
    if not lines:
        return None
    fig = figs.new(7, 4)
    ax = fig.add_subplot()
    for i, run, pts in lines:
        x, y = zip(*pts, strict=True)
        ax.plot(
            x,
            [100 * v for v in y],
            marker="o" if len(x) < 30 else None,
            ms=3,
            color=COLORS[i % len(COLORS)],
            label=run_label(run),
        )
    ax.set_xlabel("iteration")
    ax.set_ylabel("test error (%)")
    ax.set_title("Test error of the evaluated model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figs.save(fig, "fig-error.png")


def diagnostics_figure(figs: Figures, runs: list[RunData]) -> tuple[str, str] | None:
    """``semimatch.training.diagnostics`` over training, overlaid: accuracy on the weak (solid) and
    the strong (dashed) view of labeled samples, the share of pseudo-labels that changed class
    since the last evaluation, and the error's swing (None when no run logged them)."""
    logged = [(i, r) for i, r in enumerate(runs) if series(r.evals, "lb_weak_acc")]
    if not logged:
        return None
    fig = figs.new(13, 3.8)
    axes = fig.subplots(1, 3)
    panels = (
        (
            ("lb_weak_acc", "lb_strong_acc"),
            "accuracy on labeled samples",
            "Weak (—) vs strong (--) view",
        ),
        (("pl_flip",), "share of probed unlabeled samples", "Pseudo-labels that changed class"),
        (("error_swing",), "|error change| (%)", "Error swing between evaluations"),
    )
    for ax, (keys, ylabel, title) in zip(axes, panels, strict=True):
        for i, run in logged:
            for key, ls in zip(keys, ("-", "--"), strict=False):
                pts = series(run.evals, key)
                if not pts:
                    continue
                x, y = zip(*pts, strict=True)
                scale = 100 if key == "error_swing" else 1
                label = run_label(run) if ls == "-" else "_strong"
                ax.plot(
                    x, [scale * v for v in y], color=COLORS[i % len(COLORS)], ls=ls, label=label
                )
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    return figs.save(fig, "fig-diagnostics.png")


def pseudo_label_figure(figs: Figures, runs: list[RunData]) -> tuple[str, str] | None:
    """Quantity (and, where the ground truth is known, quality) over training, overlaid."""
    quantity = [(i, r, pseudo_label_series(r, "quantity")) for i, r in enumerate(runs)]
    quantity = [s for s in quantity if s[2]]
    if not quantity:
        return None
    quality = [
        (i, r, pseudo_label_series(r, "quality"), pseudo_label_series(r, "pl_acc"))
        for i, r, _ in quantity
    ]
    quality = [s for s in quality if s[2]]
    fig = figs.new(11 if quality else 6.5, 4)
    axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]
    ax = axes[0]
    for i, run, pts in quantity:
        x, y = zip(*pts, strict=True)
        ax.plot(x, y, color=COLORS[i % len(COLORS)], label=run_label(run))
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
        dashed = False
        for i, run, pts, acc in quality:
            color = COLORS[i % len(COLORS)]
            x, y = zip(*pts, strict=True)
            ax.plot(x, y, color=color, label=run_label(run))
            if acc:
                x, y = zip(*acc, strict=True)
                # "_" labels stay out of the legend: one entry per run, one for all dashes.
                ax.plot(x, y, color=color, ls="--", lw=1, alpha=0.7, label="_unweighted")
                dashed = True
        if dashed:
            ax.plot([], [], color="gray", ls="--", lw=1, label="dashed: unweighted accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("iteration")
        ax.set_ylabel("quality  (weighted pseudo-label accuracy)")
        ax.set_title("Pseudo-label quality")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figs.save(fig, "fig-pseudo-labels.png")


def lambda_overlay_figure(
    figs: Figures, runs: list[RunData]
) -> tuple[tuple[str, str] | None, list[tuple[RunData, LambdaCurve | None, str]]]:
    """lambda(p) of every run at its last evaluation, overlaid (one line per run).

    Returns the figure (None when no run has a curve) and, per run, its curve (None when
    lambda(p) is not defined or not known) with a note on where it came from.
    """
    found = [(run, *final_lambda(run)) for run in runs]
    lines = [(i, run, curve) for i, (run, curve, _) in enumerate(found) if curve is not None]
    if not lines:
        return None, found
    fig = figs.new(10, 4.4)
    ax = fig.add_subplot()
    for i, run, curve in lines:
        color = COLORS[i % len(COLORS)]
        label = f"{run_label(run)}, it {curve.iteration}"
        if curve.source == "sampled":
            label += " (sampled)"
        ax.plot(
            curve.p,
            curve.w,
            color=color,
            lw=2,
            ls="-" if curve.source == "formula" else "--",
            label=label,
        )
        if curve.low is not None and curve.high is not None:
            ax.fill_between(curve.p, curve.low, curve.high, color=color, alpha=0.12, lw=0)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(-0.02, max(1.0, *(max(c.w) for _, _, c in lines)) * 1.05)
    ax.set_xlabel("confidence  max p")
    ax.set_ylabel("weight λ(p)")
    ax.set_title("Weighting function λ(p) of each run at its last evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figs.save(fig, "fig-lambda-overlay.png"), found


def _snapshots(evals: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` evenly spaced records from first to last (all of them when there are fewer)."""
    if len(evals) <= n:
        return list(evals)
    idx = sorted({round(j * (len(evals) - 1) / (n - 1)) for j in range(n)})
    return [evals[j] for j in idx]


def lambda_figure(figs: Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    """lambda(p) at up to ``LAMBDA_SNAPSHOTS`` evaluations over the confidence histogram."""
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


def per_class_figure(figs: Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    """Heat maps of per-class quantity and pseudo-label accuracy over the eval windows."""
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


def confusion_figure(figs: Figures, run: RunData, slug: str) -> tuple[str, str] | None:
    """The row-normalised confusion matrix of the last evaluation that logged one."""
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
