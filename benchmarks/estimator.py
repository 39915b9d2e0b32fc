"""The scikit-learn estimator on feature vectors, before and after a change, side by side.

Fits the README's digits-features example: ``sklearn.datasets.load_digits`` (64 features), a
stratified 360-image test split (``random_state=0``), 5 labels per class drawn with
``numpy.random.default_rng(0)`` (as ``tests/test_sklearn.py``'s slow test), default settings
``SemiSupervisedClassifier(max_iter=1000, random_state=0)``.

Each tree (a ``src`` directory holding ``semimatch``) fits in its own fresh interpreter with
``PYTHONPATH`` pointing at it; the trees alternate (before, after, after, before, ...) so a
change in the machine's load hits both alike. The wall time covers ``fit`` only (imports and
data loading excluded). Usage::

    python benchmarks/estimator.py --before /work/base/src --after src \\
        [--repeats 3] [--max-iter 1000] [--json benchmarks/results/estimator.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import semimatch
    from semimatch.sklearn import SemiSupervisedClassifier
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=360, stratify=y, random_state=0)
    rng = np.random.default_rng(0)
    labeled = np.concatenate([rng.permutation(np.flatnonzero(y_tr == c))[:5] for c in range(10)])
    y_semi = np.full_like(y_tr, -1)
    y_semi[labeled] = y_tr[labeled]
    clf = SemiSupervisedClassifier(max_iter=int(sys.argv[1]), random_state=0)
    t = time.perf_counter()
    clf.fit(X_tr, y_semi)
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "accuracy": clf.score(X_te, y_te),
                      "n_iter": clf.n_iter_, "semimatch": semimatch.__file__}))
    """
)


def fit_once(src: str, max_iter: int) -> dict:
    """One fit in a fresh interpreter importing semimatch from ``src``."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src)}
    load = os.getloadavg()[0]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(max_iter)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_before"] = round(load, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    if not result["semimatch"].startswith(os.path.abspath(src)):
        raise RuntimeError(f"{src}: the child imported {result['semimatch']}")
    return result


def cpu_model() -> str:
    """``lscpu``'s model name (platform.processor() is often empty on Linux)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="src directory of the old code")
    parser.add_argument("--after", default="src", help="src directory of the new code")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    runs: dict[str, list[dict]] = {"before": [], "after": []}
    trees = {"before": args.before, "after": args.after}
    for r in range(args.repeats):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in order:
            res = fit_once(trees[name], args.max_iter)
            runs[name].append(res)
            print(
                f"repeat {r} {name:6s}: {res['seconds']:7.2f} s, accuracy "
                f"{res['accuracy']:.4f} (load {res['load_before']} -> {res['load_after']})",
                flush=True,
            )
    summary = {
        name: {
            "median_seconds": statistics.median(x["seconds"] for x in rs),
            "accuracy": sorted({x["accuracy"] for x in rs}),
        }
        for name, rs in runs.items()
    }
    speedup = summary["before"]["median_seconds"] / summary["after"]["median_seconds"]
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "command": " ".join(["python", "benchmarks/estimator.py", *sys.argv[1:]]),
        "max_iter": args.max_iter,
        "trees": trees,
        "summary": summary,
        "speedup": round(speedup, 2),
        "runs": runs,
    }
    for name, s in summary.items():
        print(f"{name:6s}: median {s['median_seconds']:.2f} s per fit, accuracy {s['accuracy']}")
    print(f"speed-up: {speedup:.2f}x")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
