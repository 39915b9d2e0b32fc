"""Thread count and OpenMP wait policy, on a quiet and on a busy machine.

A training run shares the CPU with whatever else runs.  torch's default uses every core, and
its OpenMP threads spin while they wait for each other: when another job takes a core, a
spinning thread burns the time slice the descheduled one needs, and a step can take 50x
longer.  This script times short training runs for each policy, model and load:

  policies  spin         torch's thread count (all cores), OpenMP's default wait policy
                         (waiting threads spin first): semimatch's default until 2026-12-02
            threads=1    one thread
            passive      all cores, OMP_WAIT_POLICY=PASSIVE (waiting threads sleep): the
                         default since (semimatch sets it when imported before torch)
  models    small        the demo's recipe: digits, small CNN, batch 32 + 224
            standard     WRN-28-2 on 32x32 images, batch 64 + 448, SoftMatch (synthetic images)
  load      quiet        nothing else running
            busy         another process doing fp32 matmuls on every core (a second job)

Each cell runs in a fresh process (the wait policy is read when OpenMP starts) and reports the
median seconds per iteration after warm-up.  Usage::

    python benchmarks/threads.py [--json benchmarks/results/threads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time

POLICIES = {
    # An empty OMP_WAIT_POLICY is OpenMP's own default (spin, then sleep); semimatch leaves a
    # set variable alone.
    "spin": ({"OMP_WAIT_POLICY": ""}, None),
    "threads=1": ({}, 1),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, None),
}
# (iterations, warm-up) per model: enough iterations for a stable median in a few seconds.
MODELS = {"small": (40, 10), "standard": (4, 1)}
TIMEOUT = 300  # seconds per cell; a slower cell is recorded as "> TIMEOUT / iterations"

CELL = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    import semimatch
    from semimatch.data import from_arrays
    model, threads, iters, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    common = dict(iterations=iters, log_every=1, eval_every=iters, progress=False,
                  tensorboard=False, threads=None if threads == "None" else int(threads))
    if model == "small":
        run = semimatch.train(dataset="digits", num_labels=20, batch_size=32, uratio=7,
                              **common)
    else:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
        y = np.where(np.arange(2000) < 400, np.arange(2000) % 10, -1)
        run = semimatch.train(data=from_arrays(x, y), algorithm="softmatch", backbone="wrn_28_2",
                              batch_size=64, uratio=7, eval_batch_size=64, **common)
    times = [r["sec_per_iter"] for r in run.history if r.get("kind") == "train"][warm:]
    print(json.dumps(statistics.median(times)))
    """
)

LOAD = textwrap.dedent(
    """
    import torch
    a = torch.randn(2048, 2048)
    while True:
        a = (a @ a).clamp_(-1, 1)
    """
)


def cell(model: str, policy: str) -> float:
    """Median s/iteration of one cell, or -1 when it ran longer than TIMEOUT."""
    env_extra, threads = POLICIES[policy]
    iters, warm = MODELS[model]
    env = {**os.environ, **env_extra}
    args = [sys.executable, "-c", CELL, model, str(threads), str(iters), str(warm)]
    try:
        proc = subprocess.run(
            args, env=env, check=True, capture_output=True, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return -1.0
    return float(proc.stdout.strip().splitlines()[-1])


def _fmt(seconds: float, model: str) -> str:
    return f"> {TIMEOUT / MODELS[model][0]:.0f}" if seconds < 0 else f"{seconds:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--models", default="small,standard")
    p.add_argument("--policies", default=",".join(POLICIES))
    args = p.parse_args()
    results = []
    for load in ("quiet", "busy"):
        for model in args.models.split(","):
            for policy in args.policies.split(","):
                bg = None
                if load == "busy":
                    bg = subprocess.Popen([sys.executable, "-c", LOAD])
                    time.sleep(3)  # the load is running at full speed
                try:
                    s = cell(model, policy)
                finally:
                    if bg is not None:
                        bg.kill()
                        bg.wait()
                results.append({"load": load, "model": model, "policy": policy, "sec_per_iter": s})
                print(f"{load:<6} {model:<9} {policy:<10} {_fmt(s, model)} s/it", flush=True)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| load | model | " + " | ".join(args.policies.split(",")) + " |")
    print("|---|---|" + "--:|" * len(args.policies.split(",")))
    for load in ("quiet", "busy"):
        for model in args.models.split(","):
            row = [r for r in results if r["load"] == load and r["model"] == model]
            cells = " | ".join(_fmt(r["sec_per_iter"], model) for r in row)
            print(f"| {load} | {model} | {cells} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timeout_s": TIMEOUT, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
