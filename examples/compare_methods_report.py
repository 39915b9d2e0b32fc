"""Train several methods on the same labels and compare them in one report.

    python examples/compare_methods_report.py
    python examples/compare_methods_report.py --methods fixmatch,softmatch,freematch

Every method gets the same 20 labeled digits, seed and budget; the report overlays their test
error, pseudo-label quantity and quality and their weighting functions λ(p), with a comparison
table (open OUT/report/index.html). The same from the command line:

    semimatch train --dataset digits --algorithm fixmatch --num-labels 20 --out runs/cmp/fixmatch
    semimatch train --dataset digits --algorithm softmatch --num-labels 20 --out runs/cmp/softmatch
    semimatch report runs/cmp -o runs/cmp/report

SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import semimatch
from semimatch.report import build_report

SMALL = os.environ.get("SEMIMATCH_EXAMPLE_SMALL") == "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="supervised,fixmatch,softmatch")
    parser.add_argument("--out", type=Path, default=Path("runs/compare-methods"))
    args = parser.parse_args()

    runs = []
    for method in args.methods.split(","):
        semimatch.train(
            dataset="digits",
            algorithm=method,
            num_labels=20,
            iterations=4 if SMALL else 300,
            eval_every=2 if SMALL else 30,
            seed=0,
            out=args.out / method,
            overwrite=True,
        )
        runs.append(args.out / method)

    print(f"{'method':<12} {'best error':>10} {'quantity':>9} {'quality':>8}")
    for run in runs:
        s = json.loads((run / "summary.json").read_text())
        quantity, quality = s.get("final_quantity"), s.get("final_quality")
        print(
            f"{run.name:<12} {s['best_error']:>10.2%} "
            f"{'n/a' if quantity is None else f'{quantity:.3f}':>9} "
            f"{'n/a' if quality is None else f'{quality:.3f}':>8}"
        )
    print("report:", build_report(runs, out=args.out / "report"))


if __name__ == "__main__":
    main()
