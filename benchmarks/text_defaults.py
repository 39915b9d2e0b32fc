"""The README's first text command as written against the explicit fast one, interleaved.

The command a new user copies first (README, Text) passes no ``--batch-size``, ``--uratio`` or
``--precision``: it trains with the derived defaults (USB's NLP batch, 8 labeled + 8 unlabeled
texts, in fp32, the exact default).  The README's worked example adds ``--batch-size 8
--uratio 1 --precision bf16``.  This script runs both through the command line
(``python -m semimatch train``, a fresh process each), alternating (as written, explicit, as
written, ...) so a load change on a shared CPU hits both alike, and reads the seconds of every
training iteration from each run's ``metrics.jsonl`` (``--log-every 1``; the first iteration of
each run, which warms up the allocator and kernels, is left out).  Both commands get the same
additions: ``--iterations``, ``--eval-every``, ``--log-every 1``, ``--threads`` and ``--out``.

    python benchmarks/text_defaults.py --data ag_news_test.csv.gz --model <MiniLM folder>
    python benchmarks/text_defaults.py ... --iterations 8 --repeats 3 --json out.json

The ratio of the medians is the cost per iteration of the command as written relative to the
explicit one (the claim to check: at most 3x); with both at 8 + 8 it is also the fp32 / bf16
factor of the text step that ``semimatch.runs.hardware.BF16_SPEEDUP`` quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import machine  # noqa: E402

#: The README's first text command, after ``--data-root`` and ``--backbone`` (README, Text).
AS_WRITTEN = ["--num-labels", "40", "--test-size", "2000", "--algorithm", "softmatch"]
#: What the README's worked example adds.
EXPLICIT = ["--batch-size", "8", "--uratio", "1", "--precision", "bf16"]


def run_once(args: argparse.Namespace, extra: list[str], out: Path) -> dict[str, Any]:
    """One ``semimatch train`` process; its per-iteration seconds and resolved batch."""
    cmd = [
        sys.executable, "-m", "semimatch", "train", "--dataset", "text",
        "--data-root", str(args.data), "--backbone", f"hf:{args.model}", *AS_WRITTEN, *extra,
        "--iterations", str(args.iterations), "--eval-every", str(args.iterations),
        "--log-every", "1", "--threads", str(args.threads), "--no-tensorboard",
        "--no-progress", "--out", str(out),
    ]  # fmt: skip
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    return {
        "sec_per_iter": [r["sec_per_iter"] for r in records if r["kind"] == "train"][1:],
        "batch": f"{cfg['batch_size']}+{cfg['batch_size'] * cfg['uratio']}",
        "precision": cfg["precision"],
        "wall_s": time.perf_counter() - start,
        "stderr_head": done.stderr.splitlines()[:6],
        "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the AG News CSV (README: news.csv)")
    p.add_argument("--model", required=True, help="the encoder folder (all-MiniLM-L6-v2)")
    p.add_argument("--iterations", type=int, default=8, help="per run (the first is warm-up)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each command, alternating")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.iterations < 2:
        p.error("--iterations must be >= 2 (the first iteration of a run is left out)")
    runs: dict[str, list[dict[str, Any]]] = {"as_written": [], "explicit": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for name, extra in (("as_written", []), ("explicit", EXPLICIT)):
                runs[name].append(run_once(args, extra, Path(tmp) / f"{name}-{k}"))
                r = runs[name][-1]
                print(
                    f"{name:10s} #{k}: {r['batch']} {r['precision']}, median "
                    f"{statistics.median(r['sec_per_iter']):.2f} s/it, load {r['load']:.1f}",
                    flush=True,
                )
    medians = {
        n: statistics.median(t for r in rs for t in r["sec_per_iter"]) for n, rs in runs.items()
    }
    ratio = medians["as_written"] / medians["explicit"]
    print(
        f"as written {medians['as_written']:.2f} s/it, explicit {medians['explicit']:.2f} s/it: "
        f"{ratio:.2f}x"
    )
    result = {
        "command": sys.argv if argv is None else ["text_defaults.py", *argv],
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "median_sec_per_iter": medians,
        "ratio": ratio,
        "runs": runs,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
