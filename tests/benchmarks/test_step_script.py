"""benchmarks/step.py still runs end to end (slow: a few WRN-28-2 iterations)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_step_benchmark_times_and_measures_memory_separately(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    cmd = [sys.executable, str(ROOT / "benchmarks/step.py"), "--data", str(tmp_path / "none")]
    cmd += ["--per-class", "8", "--iters", "2", "--warmup", "1", "--variants", "semimatch"]
    printed = subprocess.run([*cmd, "--json", str(out)], check=True, capture_output=True).stdout
    (result,) = json.loads(out.read_text())
    assert result["source"] == "synthetic uint8 noise" and len(result["times"]) == 2
    assert result["flops"] > 1e12  # the joint WRN-28-2 step: > 1 TFLOP
    # The default step is the exact joint fp32 forward: 4.70 GiB peak PSS measured with 64 + 448
    # rows (BENCHMARKS.md 1); bf16 and the two-pass forward need less.
    assert 0 < result["mfu"] < 1.5 and 0.5 < result["pss_peak_gib"] < 6.0
    assert b"| semimatch |" in printed
