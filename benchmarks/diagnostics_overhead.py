"""What the per-evaluation diagnostics (``semimatch.training.diagnostics``) cost a default digits
run.

The demo's FixMatch recipe (digits, 20 labels, 300 iterations, an evaluation every 60, batch
32 + 7x32, 1 thread), timed two ways in ONE process:

* direct: the seconds spent inside ``Diagnostics.__init__`` and ``Diagnostics.measure`` (a
  subclass times them) against the run's wall time - the cost itself, free of load noise;
* interleaved A/B: whole runs with the diagnostics on and stubbed off (on, off, off, on, ...),
  medians - what a user would see, noisy on a shared CPU.

    PYTHONPATH=src python benchmarks/diagnostics_overhead.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import semimatch
import semimatch.runs.engine as engine
from semimatch.config import Config
from semimatch.log import quiet

CFG = Config(
    algorithm="fixmatch", dataset="digits", num_labels=20, iterations=300, eval_every=60,
    log_every=15, batch_size=32, seed=0, threads=1, num_workers=0, tensorboard=False,
)  # fmt: skip


class _Off:
    """The diagnostics stubbed out: nothing measured, nothing logged."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def measure(self, model: object, history: object) -> dict:
        return {}

    def warn(self, *args: object, **kwargs: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    real = engine.Diagnostics
    spent = {"init": 0.0, "measure": 0.0}

    class Timed(real):  # type: ignore[misc, valid-type]
        def __init__(self, *a: object, **k: object) -> None:
            t = time.perf_counter()
            super().__init__(*a, **k)
            spent["init"] += time.perf_counter() - t

        def measure(self, *a: object, **k: object) -> dict:
            t = time.perf_counter()
            out = super().measure(*a, **k)
            spent["measure"] += time.perf_counter() - t
            return out

    times: dict[str, list[float]] = {"on": [], "off": []}
    for pair in range(args.pairs):
        for mode in ("on", "off") if pair % 2 == 0 else ("off", "on"):
            engine.Diagnostics = Timed if mode == "on" else _Off
            spent.update(init=0.0, measure=0.0)
            t = time.perf_counter()
            with quiet():
                semimatch.train(CFG)
            wall = time.perf_counter() - t
            times[mode].append(wall)
            extra = ""
            if mode == "on":
                cost = spent["init"] + spent["measure"]
                extra = (
                    f"  diagnostics {cost:.2f} s = {100 * cost / wall:.1f}% "
                    f"(set-up {spent['init']:.2f} s, 5 measures {spent['measure']:.2f} s)"
                )
            print(f"pair {pair} {mode:>3}: {wall:6.1f} s{extra}", flush=True)
    engine.Diagnostics = real
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"median on {on:.1f} s, off {off:.1f} s: {100 * (on / off - 1):+.1f}%")


if __name__ == "__main__":
    main()
