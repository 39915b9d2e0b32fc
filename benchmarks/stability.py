"""The short-text stability table from reproduce.py's run directories.

Per cell (setting x method), mean ± std over its seeds of: the best and the final test error,
the median of the last ``LAST`` evaluations' errors, the mean consecutive-evaluation swing
(mean ``|error_k - error_{k-1}|`` over the evaluations after the first two, so that the drop
out of the untrained start does not count as a swing), the mean and the largest swing over
the second half of training (evaluations at iteration >= half the budget), the same for the
error's rises only (``max(error_k - error_{k-1}, 0)``: a method still improving late does not
count as swinging), the mean
``pl_flip`` of the last ``LAST`` evaluations, and ``lb_weak_acc`` / ``lb_strong_acc`` at the
last evaluation (the model's accuracy on weak and on strong views of the labeled samples).

    python benchmarks/stability.py --runs benchmarks/results/reproduce --setting agnews10w-40
    python benchmarks/stability.py ... --curves   # every evaluation's error, per seed
    python benchmarks/stability.py ... --correlate   # swing against pl_flip and the label gap
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
    half = evals[-1]["iteration"] / 2
    late = [100 * r["error"] for r in evals if r["iteration"] >= half]
    late_swings = [abs(b - a) for a, b in zip(late, late[1:])]
    # Only the error's rises: a method still improving late is not swinging.
    late_rises = [max(b - a, 0.0) for a, b in zip(late, late[1:])]
    flips = [r["pl_flip"] for r in evals[-LAST:] if r.get("pl_flip") is not None]
    last = evals[-1]

    def pct(key: str) -> float | None:
        return None if last.get(key) is None else 100 * last[key]

    return {
        "best": min(errors),
        "final": errors[-1],
        "median_last": statistics.median(errors[-LAST:]),
        "swing": statistics.mean(swings) if swings else None,
        "late_swing": statistics.mean(late_swings) if late_swings else None,
        "max_late_swing": max(late_swings) if late_swings else None,
        "late_rise": statistics.mean(late_rises) if late_rises else None,
        "max_late_rise": max(late_rises) if late_rises else None,
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
    ("swing", "mean swing after eval 2 (pts)"),
    ("late_swing", "mean swing, 2nd half (pts)"),
    ("max_late_swing", "max swing, 2nd half (pts)"),
    ("late_rise", "mean rise, 2nd half (pts)"),
    ("max_late_rise", "max rise, 2nd half (pts)"),
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


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.mean(x), statistics.mean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5


def correlations(runs: Path, setting: str, second_half: bool = False) -> str:
    """Which diagnostic moves with the swing: over every evaluation after the first two of every
    SSL run without a weight EMA, Pearson's r of ``|error_k - error_{k-1}|`` with ``pl_flip``
    and with the label gap ``lb_weak_acc - lb_strong_acc`` at evaluation k, and the mean of each
    diagnostic at the evaluations whose swing exceeds ``big`` points against the others
    (``second_half``: only evaluations at iteration >= half the budget, past SoftMatch's
    start-up collapse).

    A swing of the test error needs test predictions to change, so ``pl_flip`` (changed
    unlabeled predictions) rises with it partly by construction: a high r says the diagnostic
    sees the swing, not what causes it."""
    big = 3.0
    rows = []
    for run in sorted((runs / setting).glob("*/seed*")):
        if not (run / "summary.json").exists():
            continue
        if json.loads((run / "config.json").read_text()).get("ema_decay"):
            continue  # an EMA cell evaluates another model of the same training as its base
        evals = evaluations(run)
        half = evals[-1]["iteration"] / 2
        for prev, now in zip(evals[2:], evals[3:]):
            if now.get("pl_flip") is None or now.get("lb_strong_acc") is None:
                continue
            if second_half and prev["iteration"] < half:
                continue
            swing = 100 * abs(now["error"] - prev["error"])
            gap = 100 * (now["lb_weak_acc"] - now["lb_strong_acc"])
            rows.append((run.parent.name, swing, 100 * now["pl_flip"], gap))
    if len(rows) < 3:
        return "too few SSL evaluations"
    swing, flip, gap = ([r[i] for r in rows] for i in (1, 2, 3))
    large = [r for r in rows if r[1] > big]
    small = [r for r in rows if r[1] <= big]

    def mean(rs: list[tuple], i: int) -> str:
        return f"{statistics.mean(r[i] for r in rs):.1f}" if rs else "n/a"

    return "\n".join(
        [
            f"{len(rows)} evaluations of SSL runs after the first two"
            + (" in the second half" if second_half else ""),
            f"r(swing, pl_flip) = {_pearson(swing, flip):.2f}; "
            f"r(swing, weak - strong gap) = {_pearson(swing, gap):.2f}",
            f"swing > {big:g} pts ({len(large)} evaluations): mean pl_flip {mean(large, 2)} %, "
            f"mean gap {mean(large, 3)} pts",
            f"swing <= {big:g} pts ({len(small)} evaluations): mean pl_flip {mean(small, 2)} %, "
            f"mean gap {mean(small, 3)} pts",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument("--setting", default="agnews10w-40")
    p.add_argument("--curves", action="store_true", help="every evaluation's error, per run")
    p.add_argument("--correlate", action="store_true", help="which diagnostic moves with the swing")
    args = p.parse_args()
    runs = Path(args.runs)
    if args.curves:
        print(curves(runs, args.setting))
    elif args.correlate:
        print(correlations(runs, args.setting))
        print(correlations(runs, args.setting, second_half=True))
    else:
        print(table(runs, args.setting, ["supervised", "fixmatch", "softmatch"]))


if __name__ == "__main__":
    main()
