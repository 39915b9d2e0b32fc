"""benchmarks/memory_estimate.py runs end to end, and the pre-flight estimate of a real step is
within a factor 2 of the step's measured peak (VmHWM of a fresh process, small CNN)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import semimatch

ROOT = Path(__file__).resolve().parents[2]


def test_the_estimate_is_within_2x_of_the_measured_peak(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    cmd = [sys.executable, str(ROOT / "benchmarks/memory_estimate.py")]
    cmd += ["--cases", "cnn:32:7:fp32", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(semimatch.__file__).parents[1])}  # this tree
    printed = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    (row,) = json.loads(out.read_text())
    assert row["batch"] == "32+224" and row["measured_mib"] > 100  # activations dominate
    assert 0.5 < row["estimate_mib"] / row["measured_mib"] < 2.0
    assert row["probe_s"] < 1.0 and "| cnn:32:7:fp32 | 32+224 |" in printed
