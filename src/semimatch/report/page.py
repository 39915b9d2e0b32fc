"""The report page: ``build_report`` writes ``index.html`` (figures embedded and saved next to
it) for one or several run directories."""

from __future__ import annotations

import html
import json
import math
import re
import time
from pathlib import Path
from typing import Any

from semimatch.report.figures import (
    Figures,
    confusion_figure,
    diagnostics_figure,
    error_figure,
    lambda_figure,
    lambda_overlay_figure,
    per_class_figure,
    pseudo_label_figure,
)
from semimatch.report.runs import (
    RunData,
    format_row,
    pseudo_label_series,
    read_runs,
    run_label,
    run_row,
    series,
)

__all__ = ["build_report"]


def _notes(run: RunData, row: dict[str, Any], now: float | None) -> list[str]:
    """What the page cannot show for this run, and why (running, crashed, no test set, ...)."""
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
    elif not series(run.evals, "error"):
        notes.append(
            "No test set: the test error is not logged (null), so there is no error "
            "curve and no confusion matrix."
        )
    if run.records and not (pseudo_label_series(run, "quantity")):
        notes.append(
            f"No pseudo-label statistics: {run.setting('algorithm') or 'this run'} uses "
            "no unlabeled loss, so quantity, quality and λ(p) are not defined."
        )
    elif run.records and not pseudo_label_series(run, "quality"):
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
    """A figure embedded as base64 and linked to its PNG file."""
    filename, b64 = figure
    # Embedded (the HTML alone is complete) and linked to the PNG file saved next to it.
    return (
        f'<figure><a href="{html.escape(filename)}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{b64}"></a><figcaption class="caption">'
        f'{html.escape(caption)} (<a href="{html.escape(filename)}">'
        f"{html.escape(filename)}</a>)</figcaption></figure>"
    )


def _slug(name: str, taken: set[str]) -> str:
    """A file-name-safe form of ``name`` not in ``taken`` (added to it)."""
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
    runs = read_runs(list(run_dirs) if not isinstance(run_dirs, (str, Path)) else run_dirs)
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

    figs = Figures(out_dir)
    rows = [run_row(r, now) for r in runs]
    title = "semimatch report: " + ", ".join(r.name for r in runs)
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="caption">Generated {time.strftime("%Y-%m-%d %H:%M:%S")} from '
        f"{len(runs)} run director{'y' if len(runs) == 1 else 'ies'}. Errors are test "
        "errors of the evaluated model; quantity = mean unlabeled weight / λmax, quality = "
        "weighted pseudo-label accuracy (SoftMatch, section 2).</p>",
        _comparison_table(rows),
        *_curves(figs, runs),
        *_lambda_section(figs, runs),
    ]
    taken: set[str] = set()
    for run, row in zip(runs, rows, strict=True):
        parts.extend(_run_section(figs, run, row, _slug(run.name, taken), now))
    parts.append("</body></html>\n")
    index = out_dir / "index.html"
    index.write_text("\n".join(parts), encoding="utf-8")
    return index


def _comparison_table(rows: list[dict[str, Any]]) -> str:
    """The "Runs" section: one table row per run, cells as ``format_row`` writes them."""
    cells = [format_row(row) for row in rows]
    header = list(cells[0])
    parts = [
        '<h2>Runs</h2><table id="comparison"><thead><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr></thead><tbody>"
    ]
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
        "best error is the lowest test error, chosen on the test set itself (what papers "
        "report, an optimistic estimate); best chosen on = what chose best.pt (val: a "
        "validation set, --val-size / --val-dir; test: the test set); "
        "final quantity/quality = last evaluation window (last train window before the "
        "first evaluation); sec / iter = median of the train log windows.</p>"
    )
    return "\n".join(parts)


def _curves(figs: Figures, runs: list[RunData]) -> list[str]:
    """The overlaid curves of all runs: test error, pseudo-label quantity and quality."""
    parts = ["<h2>Test error and pseudo-labels over training</h2>"]
    fig = error_figure(figs, runs)
    parts.append(
        _img(fig, "Test error over iterations, one line per run")
        if fig
        else '<p class="note">No test error logged by any run yet (no evaluation record, '
        "or no test set).</p>"
    )
    fig = pseudo_label_figure(figs, runs)
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
    fig = diagnostics_figure(figs, runs)
    if fig:
        parts.append(
            _img(
                fig,
                "Why a run swings, at each evaluation: accuracy on the weak (solid) and strong "
                "(dashed) views of labeled samples - a strong view that keeps the label stays "
                "close; the share of unlabeled samples whose pseudo-label changed class; the "
                "error's change since the last evaluation",
            )
        )
    return parts


#: Confidences at which the λ(p) table gives each run's weight.
LAMBDA_TABLE_AT = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)


def _lambda_section(figs: Figures, runs: list[RunData]) -> list[str]:
    """λ(p) of every run overlaid, and a table of its values at ``LAMBDA_TABLE_AT``."""
    parts = ["<h2>Weighting functions λ(p)</h2>"]
    fig, found = lambda_overlay_figure(figs, runs)
    if fig is None:
        parts.append(
            '<p class="note">No run has a weighting function to draw (supervised runs, '
            "no evaluation record yet, or a warm-up).</p>"
        )
    else:
        parts.append(
            _img(
                fig,
                "λ(p) of each run at its last evaluation, rebuilt from the weighting state it "
                "recorded (per-class methods: the class mean, shaded from the lowest to the "
                "highest class; dashed: the engine's sampled curve where no formula applies)",
            )
        )
    head = "".join(f"<th>λ({p:g})</th>" for p in LAMBDA_TABLE_AT)
    parts.append(
        f'<table id="lambda-table"><thead><tr><th>run</th><th>iteration</th>{head}'
        "<th>from</th></tr></thead><tbody>"
    )
    for run, curve, note in found:
        cells = [run_label(run), str(curve.iteration) if curve else "n/a"]
        cells += [
            "n/a" if curve is None or math.isnan(v := curve.at(p)) else f"{v:.3f}"
            for p in LAMBDA_TABLE_AT
        ]
        cells.append(note)
        parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    parts.append(
        '</tbody></table><p class="caption">λ at a confidence max p whose remaining mass is '
        "spread evenly over the other classes (per-class methods: mean over the class holding "
        "the max).</p>"
    )
    return parts


#: The per-run figures and their captions, in page order.
_RUN_FIGURES = (
    (
        lambda_figure,
        "Weighting function λ(p) (red) at evenly spaced evaluations, over the "
        "histogram of the confidences it saw in the window before",
    ),
    (
        per_class_figure,
        "Per-class quantity and pseudo-label accuracy of each evaluation "
        "window, indexed by predicted class",
    ),
    (
        confusion_figure,
        "Confusion matrix of the last evaluation that logged one (colour: "
        "row-normalised; numbers: counts)",
    ),
)


def _run_section(
    figs: Figures, run: RunData, row: dict[str, Any], slug: str, now: float
) -> list[str]:
    """One run's section: notes on what is missing, its weighting state, figures, config."""
    parts = [
        f'<h2 id="run-{html.escape(slug)}">{html.escape(run.name)} '
        f"<small>({html.escape(str(run.path))})</small></h2>"
    ]
    parts.extend(f'<p class="note">{html.escape(n)}</p>' for n in _notes(run, row, now))
    last = run.evals[-1] if run.evals else {}
    weighting = last.get("weighting")
    if weighting and weighting.get("type") != "none":
        parts.append(
            f"<p>Weighting state at iteration {last.get('iteration')}: <code>"
            f"{html.escape(json.dumps(weighting))}</code></p>"
        )
    names = (run.dataset or {}).get("class_names")
    if isinstance(names, list) and names and any(str(n) != str(i) for i, n in enumerate(names)):
        pairs = ", ".join(f"{i} = {n}" for i, n in enumerate(names))
        parts.append(
            f'<p class="classes">Classes (the figures\' indices): {html.escape(pairs)}</p>'
        )
    for maker, caption in _RUN_FIGURES:
        fig = maker(figs, run, slug)
        if fig:
            parts.append(_img(fig, f"{run.name}: {caption}"))
    if run.config:
        parts.append(
            "<details><summary>config.json</summary><pre>"
            + html.escape(json.dumps(run.config, indent=2, sort_keys=True))
            + "</pre></details>"
        )
    return parts
