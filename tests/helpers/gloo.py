"""Run a function in two (or more) CPU processes joined by a gloo process group, and collect
what each returns: the lightly-style check that N processes compute what one does."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _process(rank: int, fn: Callable[..., Any], world: int, folder: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        torch.save(fn(rank, *args), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_gloo(fn: Callable[..., Any], folder: Path, *args: Any, world: int = 2) -> list[Any]:
    """``[fn(rank, *args) for rank in range(world)]``, each rank in its own process of one gloo
    group (forked where the platform can, so ``fn`` may be any test function); the results go
    through ``torch.save`` in ``folder``."""
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(
        _process, args=(fn, world, str(folder), args), nprocs=world, join=True, start_method=method
    )
    return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world)]
