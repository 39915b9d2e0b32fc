"""Memory over a long run: resident memory (PSS of the process tree) per iteration.

Trains with `semimatch.runs.engine.fit` for ``--iterations`` (default 1000) while a thread samples
the proportional set size of this process and its children; each sample is mapped to the
iteration logged just before it.  A leak in the loop (metrics kept on the device, a growing
history, graph references) shows as a slope; the script prints the curve and the fitted slope
over the second half of the run (after allocator warm-up).

    python benchmarks/memory.py                          # digits, softmatch, 1000 iterations
    python benchmarks/memory.py --dataset fashion_mnist \
        --data-root /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--algorithm", default="softmatch")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    from semimatch.config import Config
    from semimatch.runs.engine import fit
    from semimatch.training.metrics import read_jsonl
    from step import PssSampler  # same folder: PSS of the process tree

    samples: list[tuple[float, int]] = []

    class Recorder(PssSampler):
        def _run(self) -> None:
            while not self._stop.is_set():
                samples.append((time.time(), self._pss()))
                time.sleep(0.25)

    cfg = Config(
        dataset=args.dataset,
        data_root=args.data_root,
        algorithm=args.algorithm,
        num_labels=40 if args.dataset != "digits" else 20,
        iterations=args.iterations,
        log_every=args.log_every,
        eval_every=max(args.iterations // 10, 1),
        batch_size=args.batch_size,
        tensorboard=False,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp, Recorder():
        fit(cfg, out=Path(tmp) / "run")
        records = [
            r for r in read_jsonl(Path(tmp) / "run" / "metrics.jsonl") if r["kind"] == "train"
        ]
    # PSS at each logged iteration = the last sample taken before that record was written.
    curve = []
    for r in records:
        before = [pss for t, pss in samples if t <= r["time"]]
        if before:
            curve.append((r["iteration"], before[-1] / 2**20))
    print(
        f"{args.dataset}, {args.algorithm}, batch {args.batch_size}, {args.iterations} "
        f"iterations: PSS (MiB) of the process tree at each log"
    )
    print(
        "| iteration | " + " | ".join(str(i) for i, _ in curve[:: max(len(curve) // 10, 1)]) + " |"
    )
    print("|---|" + "--:|" * len(curve[:: max(len(curve) // 10, 1)]))
    print(
        "| PSS MiB | "
        + " | ".join(f"{m:.0f}" for _, m in curve[:: max(len(curve) // 10, 1)])
        + " |"
    )
    half = curve[len(curve) // 2 :]
    if len(half) >= 2:
        x = np.array([i for i, _ in half], dtype=float)
        y = np.array([m for _, m in half])
        slope = np.polyfit(x, y, 1)[0]
        print(
            f"peak {max(m for _, m in curve):.0f} MiB; median second half "
            f"{statistics.median(y):.0f} MiB; slope over the second half "
            f"{1024 * slope:.1f} KiB/iteration"
        )


if __name__ == "__main__":
    main()
