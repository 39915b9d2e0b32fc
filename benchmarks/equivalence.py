"""Accuracy is not traded for speed: the speed defaults vs the reference-style settings.

Trains the same SoftMatch recipe (same seeds, split, budget) under
  reference  fp32, contiguous NCHW, one joint forward, per-image PIL augmentation
  default    semimatch's resolved defaults (bf16 autocast, channels_last, batched tensor
             augmentation, the default forward mode)
  joint      the defaults with the joint forward (one forward over labeled + weak + strong)
  two-pass   the defaults with the two-pass forward (semimatch.training.two_pass)
  split      the defaults with the split no-grad weak forward
  split-fp32 the split forward in fp32 / NCHW (isolates bf16 + channels_last)
and prints best / final test error per seed and the mean.  (The fused foreach optimiser and EMA
are exact reformulations of the per-tensor loops and need no accuracy check.)

    python benchmarks/equivalence.py --setting digits --seeds 0,1,2
    python benchmarks/equivalence.py --setting fmnist --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

VARIANTS = {
    "reference": dict(precision="fp32", channels_last=False, forward_mode="joint", augment="pil"),
    "default": {},
    "joint": dict(forward_mode="joint"),
    "two-pass": dict(forward_mode="two-pass"),
    "split": dict(forward_mode="split"),
    "split-fp32": dict(forward_mode="split", precision="fp32", channels_last=False),
}
SETTINGS = {
    "digits": dict(dataset="digits", num_labels=20, iterations=300, batch_size=32, eval_every=30),
    "fmnist": dict(
        dataset="fashion_mnist", num_labels=40, iterations=300, batch_size=32, eval_every=30
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS), default="digits")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--algorithm", default="softmatch")
    p.add_argument(
        "--fmnist-root",
        default=os.environ.get("SEMIMATCH_FMNIST", "/usr/share/datasets/fashion-mnist"),
    )
    p.add_argument("--json", help="append the results (one JSON line per run) to this file")
    args = p.parse_args()

    from semimatch.config import Config
    from semimatch.runs.engine import fit

    base = dict(SETTINGS[args.setting], algorithm=args.algorithm, progress=False, tensorboard=False)
    if args.setting == "fmnist":
        base["data_root"] = args.fmnist_root
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.variants.split(","):
            cfg = Config(**base, **VARIANTS[name], seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                run = fit(cfg, out=Path(tmp) / "run")
            s = run.summary
            row = {
                "setting": args.setting,
                "variant": name,
                "seed": seed,
                "best_error": s["best_error"],
                "final_error": s["final_error"],
                "final_quantity": s["final_quantity"],
                "sec_per_iter": s["sec_per_iter"],
                "resolved": {
                    k: getattr(run.config, k)
                    for k in ("precision", "channels_last", "forward_mode", "augment")
                },
            }
            rows.append(row)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(
        f"\n{args.setting}, {args.algorithm}, {base['num_labels']} labels, "
        f"{base['iterations']} iterations (test error %, EMA model)"
    )
    print(
        "| variant | "
        + " | ".join(f"seed {s}" for s in args.seeds.split(","))
        + " | mean final | mean best | s/iter |"
    )
    print("|---|" + "--:|" * (len(args.seeds.split(",")) + 3))
    for name in args.variants.split(","):
        mine = [r for r in rows if r["variant"] == name]
        cells = " | ".join(f"{100 * r['final_error']:.2f}" for r in mine)
        print(
            f"| {name} | {cells} | {100 * statistics.mean(r['final_error'] for r in mine):.2f} "
            f"| {100 * statistics.mean(r['best_error'] for r in mine):.2f} "
            f"| {statistics.mean(r['sec_per_iter'] for r in mine):.3f} |"
        )


if __name__ == "__main__":
    main()
