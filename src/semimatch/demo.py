"""``semimatch demo``: a chosen list of methods on scikit-learn's digits, offline.

Same seed, same labeled split, same budget for every method (default: supervised vs FixMatch vs
SoftMatch); prints a small results table and writes the comparison report of the runs.
"""

from __future__ import annotations

import difflib
import shutil
from collections.abc import Iterable
from pathlib import Path

from semimatch.config import Config, ConfigError
from semimatch.errors import TrainingError
from semimatch.methods.registry import methods as registered
from semimatch.runs.engine import fit
from semimatch.runs.run import RunDir

#: The default methods of the demo (registered names), in table order.
DEFAULT_METHODS = ("supervised", "fixmatch", "softmatch")


def parse_methods(methods: str | Iterable[str] | None) -> tuple[str, ...]:
    """The demo's methods: names of registered algorithms (a list, or one comma-separated
    string), in order, without repeats; None gives ``DEFAULT_METHODS``.

    An unknown name is a ``ConfigError`` that suggests the closest registered one.
    """
    if methods is None:
        return DEFAULT_METHODS
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names = [str(m).strip().lower() for m in items if str(m).strip()]
    if not names:
        raise ConfigError(f"no method given; choose from {', '.join(registered())}")
    for name in names:
        if name not in registered():
            hint = difflib.get_close_matches(name, registered(), n=1)
            raise ConfigError(
                f"unknown method {name!r}"
                + (f" (did you mean {hint[0]}?)" if hint else "")
                + f"; choose from {', '.join(registered())}"
            )
    return tuple(dict.fromkeys(names))


def demo_runs(out: Path) -> list[str]:
    """The algorithms whose demo run folder ``out/<algorithm>`` already holds a run."""
    out = Path(out)
    return [a for a in registered() if RunDir(out / a).holds_run()]


def run_demo(
    out: Path,
    iterations: int = 300,
    num_labels: int = 20,
    seed: int = 0,
    *,
    methods: str | Iterable[str] | None = None,
    threads: int | None = None,
    overwrite: bool = True,
    report: bool = True,
) -> list[dict]:
    """Train each of ``methods`` into ``out/<algorithm>``; return their summaries.

    ``methods``: registered algorithm names (``semimatch.methods.registry.methods()``), a list or a
    comma-separated string; default supervised, FixMatch and SoftMatch.  Checked before
    anything trains.  ``threads`` sets ``Config.threads`` of every run (None: torch's default).
    ``overwrite=False`` refuses an ``out`` that already holds a demo before anything trains; the
    default ``True`` replaces it (its report and the runs of methods not chosen this time are
    removed, so the folder holds one demo).  ``report``: write the comparison report to
    ``out/report``.
    """
    out = Path(out)
    chosen = parse_methods(methods)
    _clear_previous_demo(out, chosen, overwrite)
    rows = []
    for algo in chosen:
        # A method that trains on every label (fullysupervised) refuses a labeled draw.
        every = registered()[algo].all_labels
        cfg = Config(
            algorithm=algo,
            dataset="digits",
            num_labels=None if every else num_labels,
            iterations=iterations,
            eval_every=max(1, iterations // 5),
            log_every=max(1, iterations // 20),
            batch_size=32,
            seed=seed,
            threads=threads,
        )
        labels = "every label" if every else f"{num_labels} labels"
        print(f"--- {algo}: {labels}, {iterations} iterations ---", flush=True)
        run = fit(cfg, out=out / algo, overwrite=True)
        rows.append(run.summary)
    print()
    print(
        f"digits, {num_labels} labels, {iterations} iterations, seed {seed} "
        f"(EMA model, test error; lower is better)"
    )
    _print_table(rows, width=max(12, *(len(a) for a in chosen)))
    print(f"\nrun directories: {out}/<algorithm>")
    if report:
        from semimatch.report import build_report

        index = build_report([out / a for a in chosen], out=out / "report")
        print(f"report (λ(p), quantity and quality of the runs overlaid): {index}")
    else:
        print(f"figures: semimatch report {out}")
    return rows


def _clear_previous_demo(out: Path, chosen: tuple[str, ...], overwrite: bool) -> None:
    """Refuse (``overwrite=False``) or clear a demo that ``out`` holds already: its report and
    the runs of methods not chosen this time go, so the folder holds one demo."""
    held = demo_runs(out)
    if held and not overwrite:
        raise TrainingError(
            f"{out} already holds a demo ({', '.join(held)}); pass overwrite=True to replace "
            "it or choose another folder"
        )
    stale = [out / a for a in held if a not in chosen]
    if held and (out / "report" / "index.html").exists():
        stale.append(out / "report")  # the report of the demo this one replaces
    for path in stale:
        shutil.rmtree(path)
        print(f"removed {path} (of the demo this one replaces)", flush=True)


def _print_table(rows: list[dict], width: int) -> None:
    """One line per run: final and best test error, quantity, quality, seconds per iteration."""

    def pct(v: float | None) -> str:
        return "   n/a" if v is None else f"{100 * v:6.2f}%"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    print(
        f"{'algorithm':<{width}} {'error':>8} {'best':>8} {'quantity':>9} {'quality':>8} "
        f"{'s/it':>7}"
    )
    for r in rows:
        print(
            f"{r['algorithm']:<{width}} {pct(r['final_error']):>8} {pct(r['best_error']):>8} "
            f"{num(r['final_quantity']):>9} {num(r['final_quality']):>8} "
            f"{r['sec_per_iter']:7.3f}"
        )
