"""Tiny training runs for the loop's tests: the recipe, a run killed after its first checkpoint,
and the comparison of two runs (weights, EMA, algorithm and optimiser state, the records)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semimatch.config import Config
from semimatch.errors import TrainingInterrupted
from semimatch.runs import checkpoint as ckpt
from semimatch.runs import engine
from semimatch.runs.engine import fit
from semimatch.runs.run import Run
from semimatch.training.metrics import read_jsonl

# A tiny, fast recipe: digits, 20 labels, 8 labeled + 16 unlabeled per step.
TINY = dict(
    dataset="digits",
    num_labels=20,
    batch_size=8,
    uratio=2,
    seed=3,
    precision="fp32",
    threads=1,
    tensorboard=False,
)


VOLATILE = {"time", "sec_per_iter"}


def stable(records: list[dict]) -> list[dict]:
    """Records without wall-clock fields."""
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in VOLATILE}
        if isinstance(r.get("window"), dict):
            r["window"] = {k: v for k, v in r["window"].items() if k not in VOLATILE}
        out.append(r)
    return out


CLI = [
    sys.executable,
    "-m",
    "semimatch",
    "train",
    "--dataset",
    "digits",
    "--algorithm",
    "softmatch",
    "--num-labels",
    "20",
    "--iterations",
    "16",
    "--eval-every",
    "4",
    "--log-every",
    "2",
    "--batch-size",
    "8",
    "--uratio",
    "2",
    "--seed",
    "3",
    "--deterministic",
    "true",
    "--precision",
    "fp32",
    "--threads",
    "1",
    "--tensorboard",
    "false",
]


def final_state(run_dir: Path) -> dict:
    return ckpt.load(ckpt.latest(run_dir / "checkpoints"))


def assert_same_run(a: Path, b: Path, iterations: int = 16) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa["iteration"] == sb["iteration"] == iterations
    for part in ("model", "ema", "algorithm", "optimizer"):
        flat_a, flat_b = flatten(sa[part]), flatten(sb[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), f"{part}.{key} differs"
    assert stable(read_jsonl(a / "metrics.jsonl")) == stable(read_jsonl(b / "metrics.jsonl"))


def short_cli_run(out: Path, algorithm: str, *args: str, uratio: int = 2) -> list[dict]:
    """``semimatch train`` of ``algorithm`` on digits, 2 iterations of 8 labeled rows, fp32, one
    thread, plus ``args``; asserts it exits 0 and returns the run's train records."""
    from semimatch.cli import main

    argv = ["train", "--dataset", "digits", "--algorithm", algorithm, "--num-labels", "20",
            "--iterations", "2", "--eval-every", "2", "--log-every", "1", "--batch-size", "8",
            "--uratio", str(uratio), "--precision", "fp32", "--no-tensorboard", "--threads", "1",
            *args, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]


def stop_after(monkeypatch: pytest.MonkeyPatch, iteration: int) -> list[int]:
    """Stop the next run once, after ``iteration``, as Ctrl-C would (its checkpoint saved);
    the list returned holds the iteration once the stop has fired."""
    real, fired = engine._stop_requested, []

    def stop(t, interrupted, done):
        if done == iteration and not fired:
            fired.append(done)
            return True
        return real(t, interrupted, done)

    monkeypatch.setattr(engine, "_stop_requested", stop)
    return fired


def assert_resume_is_exact(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_at: int
) -> Run:
    """Train ``cfg`` uninterrupted, and again stopped after ``stop_at`` then resumed: the two
    end in the same state (``assert_same_run``).  Returns the uninterrupted run."""
    ref, run = tmp_path / "ref", tmp_path / "run"
    result = fit(cfg, out=ref)
    stop_after(monkeypatch, stop_at)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, out=run)
    monkeypatch.undo()
    fit(out=run, resume=True)
    assert_same_run(ref, run, iterations=cfg.iterations)
    return result


def flatten(obj, prefix=""):
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    elif isinstance(obj, torch.Tensor):
        out[prefix] = obj
    else:
        out[prefix] = torch.tensor(float(obj) if isinstance(obj, (int, float, bool)) else 0.0)
    return out


def kill_after_first_checkpoint(cmd: list[str], run: Path, jitter: float = 0.5) -> None:
    """Start ``cmd --out run`` and SIGKILL it at a random moment after its first checkpoint
    exists (mid-window, mid-iteration)."""
    proc = subprocess.Popen(
        [*cmd, "--out", str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while ckpt.latest(run / "checkpoints") is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, jitter))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.latest(run / "checkpoints") is not None
