"""Checkpoints written before semimatch.methods existed (algorithms.py, weighting/) still load and
resume bit-exactly: the algorithm's state_dict keys did not change.

The old code is the package at commit ``OLD`` read from git (skipped outside a git checkout).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch

import semimatch

OLD = "764176a"  # main before the methods package
REPO = Path(__file__).parents[2]
SRC = Path(semimatch.__file__).parents[1]


def _old_src(tmp: Path) -> Path:
    try:
        blob = subprocess.run(
            ["git", "-C", str(REPO), "archive", OLD, "src"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history (commit {OLD})")
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(tmp / "old", filter="data")
    return tmp / "old" / "src"


def _train(src: Path, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "semimatch", "train", "--threads", "1", "--progress", "none",
           *args]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["flexmatch", "dash", "softmatch"])
def test_a_run_of_the_old_code_resumes_bit_exactly(tmp_path, algorithm):
    run = tmp_path / "run"
    _train(_old_src(tmp_path), "--dataset", "digits", "--num-labels", "20", "--iterations", "6",
           "--eval-every", "3", "--batch-size", "8", "--uratio", "2", "--seed", "0",
           "--keep-checkpoints", "2", "--algorithm", algorithm, "--out", str(run))  # fmt: skip
    last = run / "checkpoints" / "ckpt-0000006.pt"
    old = torch.load(last, weights_only=False)
    shutil.move(last, tmp_path / "old-final.pt")  # resume from iteration 3 with today's code
    (run / "checkpoints" / "best.pt").unlink(missing_ok=True)
    _train(SRC, "--resume", str(run))
    new = torch.load(last, weights_only=False)
    assert new["iteration"] == 6 and set(new["algorithm"]) == set(old["algorithm"])
    for part in ("model", "algorithm"):
        for key, value in old[part].items():
            assert torch.equal(new[part][key], value), (part, key)
