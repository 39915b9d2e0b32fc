"""``semimatch demo``: supervised vs FixMatch vs SoftMatch on scikit-learn's digits, offline.

Same seed, same labeled split, same budget for the three; prints a small results table.
"""

from __future__ import annotations

from pathlib import Path

from semimatch.config import Config
from semimatch.engine import TrainingError, fit
from semimatch.run import RunDir

ALGORITHMS = ("supervised", "fixmatch", "softmatch")


def demo_runs(out: Path) -> list[str]:
    """The algorithms whose demo run folder ``out/<algorithm>`` already holds a run."""
    out = Path(out)
    return [a for a in ALGORITHMS if RunDir(out / a).holds_run()]


def run_demo(
    out: Path,
    iterations: int = 300,
    num_labels: int = 20,
    seed: int = 0,
    *,
    threads: int | None = None,
    overwrite: bool = True,
) -> list[dict]:
    """Train supervised, FixMatch and SoftMatch into ``out/<algorithm>``; return their summaries.

    ``threads`` sets ``Config.threads`` of the three runs (None: torch's default).
    ``overwrite=False`` refuses an ``out`` that already holds a demo before anything trains; the
    default ``True`` replaces it, as this function always did.
    """
    out = Path(out)
    held = demo_runs(out)
    if held and not overwrite:
        raise TrainingError(
            f"{out} already holds a demo ({', '.join(held)}); pass overwrite=True to replace "
            "it or choose another folder"
        )
    rows = []
    for algo in ALGORITHMS:
        cfg = Config(
            algorithm=algo,
            dataset="digits",
            num_labels=num_labels,
            iterations=iterations,
            eval_every=max(1, iterations // 5),
            log_every=max(1, iterations // 20),
            batch_size=32,
            seed=seed,
            threads=threads,
        )
        print(f"--- {algo}: {num_labels} labels, {iterations} iterations ---", flush=True)
        run = fit(cfg, out=out / algo, overwrite=True)
        rows.append(run.summary)
    print()
    print(
        f"digits, {num_labels} labels, {iterations} iterations, seed {seed} "
        f"(EMA model, test error; lower is better)"
    )
    print(f"{'algorithm':<12} {'error':>8} {'best':>8} {'quantity':>9} {'quality':>8} {'s/it':>7}")
    for r in rows:

        def pct(v: float | None) -> str:
            return "   n/a" if v is None else f"{100 * v:6.2f}%"

        def num(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.3f}"

        print(
            f"{r['algorithm']:<12} {pct(r['final_error']):>8} {pct(r['best_error']):>8} "
            f"{num(r['final_quantity']):>9} {num(r['final_quality']):>8} "
            f"{r['sec_per_iter']:7.3f}"
        )
    print(f"\nrun directories: {out}/<algorithm>; figures: semimatch report {out}/*")
    return rows
