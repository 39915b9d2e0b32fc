"""The short-text stability table from reproduce.py's run directories.

Per cell (setting x method), mean ± std over its seeds of: the best and the final test error,
the median of the last ``LAST`` evaluations' errors, the mean consecutive-evaluation swing
(mean ``|error_k - error_{k-1}|`` over the evaluations after the first two, so that the drop
out of the untrained start does not count as a swing), the largest such swing, the mean
``pl_flip`` of the last ``LAST`` evaluations, and ``lb_weak_acc`` / ``lb_strong_acc`` at the
last evaluation (the model's accuracy on weak and on strong views of the labeled samples).

    python benchmarks/stability.py --runs benchmarks/results/reproduce --setting agnews10w-40
    python benchmarks/stability.py ... --curves   # every evaluation's error, per seed
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

#: Evaluations that count as "late" (the median and the late pl_flip).
LAST = 5


def evaluations(run: Path) -> list[dict]:
    """The eval records of a run's metrics.jsonl, in order."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "eval"]


def cell_numbers(run: Path) -> dict[str, float | None]:
    """One seed's numbers (errors and accuracies in %)."""
    evals = evaluations(run)
    errors = [100 * r["error"] for r in evals]
    swings = [abs(b - a) for a, b in zip(errors[2:], errors[3:])]
    flips = [r["pl_flip"] for r in evals[-LAST:] if r.get("pl_flip") is not None]
    last = evals[-1]

    def pct(key: str) -> float | None:
        return None if last.get(key) is None else 100 * last[key]

    return {
        "best": min(errors),
        "final": errors[-1],
        "median_last": statistics.median(errors[-LAST:]),
        "swing": statistics.mean(swings) if swings else None,
        "max_swing": max(swings) if swings else None,
        "late_flip": 100 * statistics.mean(flips) if flips else None,
        "weak": pct("lb_weak_acc"),
        "strong": pct("lb_strong_acc"),
    }


def _fmt(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


COLUMNS = (
    ("best", "best error %"),
    ("final", "final error %"),
    ("median_last", f"median of last {LAST} evals %"),
    ("swing", "mean swing (pts)"),
    ("max_swing", "max swing (pts)"),
    ("late_flip", f"pl_flip, last {LAST} evals %"),
    ("weak", "lb_weak_acc %"),
    ("strong", "lb_strong_acc %"),
)


def table(runs: Path, setting: str, order: list[str] | None = None) -> str:
    cells = sorted(p.name for p in (runs / setting).iterdir() if p.is_dir())
    if order:
        cells = [c for c in order if c in cells] + [c for c in cells if c not in order]
    lines = [
        "| method | seeds | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|--:|" + "--:|" * len(COLUMNS),
    ]
    for cell in cells:
        seeds = sorted(p.parent for p in (runs / setting / cell).glob("seed*/summary.json"))
        if not seeds:
            continue
        numbers = [cell_numbers(s) for s in seeds]
        row = [_fmt([n[key] for n in numbers]) for key, _ in COLUMNS]
        lines.append(f"| {cell} | {len(seeds)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def curves(runs: Path, setting: str) -> str:
    out = []
    for run in sorted((runs / setting).glob("*/seed*")):
        if (run / "metrics.jsonl").exists():
            errors = " ".join(f"{100 * r['error']:.1f}" for r in evaluations(run))
            out.append(f"{run.parent.name} {run.name}: {errors}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument("--setting", default="agnews10w-40")
    p.add_argument("--curves", action="store_true", help="every evaluation's error, per run")
    args = p.parse_args()
    runs = Path(args.runs)
    if args.curves:
        print(curves(runs, args.setting))
    else:
        print(table(runs, args.setting, ["supervised", "fixmatch", "softmatch"]))


if __name__ == "__main__":
    main()
