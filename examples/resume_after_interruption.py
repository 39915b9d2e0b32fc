"""Interrupt a training run and resume it: the resumed run ends where an uninterrupted one would.

    python examples/resume_after_interruption.py

Starts ``semimatch train`` in a child process, sends it Ctrl-C (SIGINT) once its first
checkpoint is written, and resumes it with ``semimatch train --resume``. On Ctrl-C the run
finishes its current iteration, saves a checkpoint and exits with status 130, printing the
resume command; the resumed run continues from that checkpoint, bit-identical to a run that was
never stopped (the data stream is a function of the seed and the iteration). The same by hand:

    semimatch train --dataset digits --iterations 300 --out runs/resume   # press Ctrl-C
    semimatch train --resume runs/resume

SEMIMATCH_EXAMPLE_SMALL=1 trains a few iterations only (the test suite runs it that way).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SMALL = os.environ.get("SEMIMATCH_EXAMPLE_SMALL") == "1"


def semimatch(*args: str) -> list[str]:
    return [sys.executable, "-m", "semimatch", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/resume-example"))
    args = parser.parse_args()
    iterations, every = (12, 3) if SMALL else (300, 50)
    train = semimatch(
        "train", "--dataset", "digits", "--algorithm", "softmatch", "--num-labels", "20",
        "--iterations", str(iterations), "--eval-every", str(every), "--seed", "0",
        "--threads", "1", "--no-progress", "--out", str(args.out), "--overwrite",
    )  # fmt: skip
    child = subprocess.Popen(train)
    checkpoints = args.out / "checkpoints"
    while child.poll() is None and not any(checkpoints.glob("*.pt")):
        time.sleep(0.05)  # wait for the first checkpoint
    child.send_signal(signal.SIGINT)  # what Ctrl-C in a terminal does
    status = child.wait()
    print(f"interrupted run exited with status {status} (130: stopped after a checkpoint)")

    if status == 130:
        subprocess.run(semimatch("train", "--resume", str(args.out)), check=True)
    summary = json.loads((args.out / "summary.json").read_text())
    print(f"done: {summary['iterations_done']} iterations, best error {summary['best_error']:.2%}")


if __name__ == "__main__":
    main()
