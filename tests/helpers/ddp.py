"""``torchrun --standalone --nproc-per-node=2`` on CPU and what it leaves behind.

``WORKER`` is ``ddp_worker.py``, launched by path; the ``tests`` folder goes on the workers'
``PYTHONPATH`` so the worker imports ``helpers`` as the tests do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from helpers import ddp_worker as worker

TESTS = Path(__file__).resolve().parents[1]
WORKER = Path(worker.__file__)


def torchrun(*args: str, timeout: float = 240, restarts: int = 0) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=2 ARGS`` with a clean environment.

    On timeout, torchrun and its workers (each in a session of its own) are killed, so a hung
    job leaves no orphaned workers behind.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        f"--max-restarts={restarts}",
        *args,
    ]
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in [*psutil.Process(proc.pid).children(recursive=True), proc]:
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    p.kill()
            out, err = proc.communicate()
            pytest.fail(f"torchrun {' '.join(args)} hung for {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def steps(result: dict) -> list[dict[str, torch.Tensor]]:
    """The state before step 1, ..., before step K, and after step K."""
    return [*result["snapshots"], result["final"]]
