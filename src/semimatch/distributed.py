"""torch.distributed helpers: the torchrun environment and all-reduce of fixed-size sums.

Every running statistic in semimatch (SoftMatch mean/variance, Uniform Alignment ``p_model``,
pseudo-label quantity/quality, evaluation accuracy) is computed from *sums* of fixed shape
(count, sum, sum of squares, per-class sums).  Sums all-reduce exactly, so the statistics of a
run on W processes equal those of one process that sees the concatenated global batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group is initialised (i.e. running under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only rank 0 writes logs, progress bars and checkpoints."""
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (returns a new tensor; a no-op copy on one process)."""
    if not is_distributed():
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_sums(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """All-reduce several tensors in one collective by packing them into one float64 buffer.

    float64 keeps integer counts exact up to 2**53 and makes the reduction order irrelevant
    for the precision of the float32 sums that go in.
    """
    if not is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset : offset + t.numel()].reshape(t.shape).to(t.dtype))
        offset += t.numel()
    return out


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job (rank 0 of 1 outside torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


def setup(device: str) -> tuple[DistEnv, torch.device]:
    """Initialise the process group when launched by torchrun; return the env and this rank's device.

    The backend follows the device: ``nccl`` for CUDA, ``gloo`` otherwise.  Rendezvous comes
    entirely from torchrun's environment (``MASTER_ADDR``/``MASTER_PORT`` or ``--rdzv-*``), so no
    port is ever hard-coded here.
    """
    if not launched_by_torchrun():
        return DistEnv(), torch.device(device)
    env = DistEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                  int(os.environ["LOCAL_RANK"]))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    if not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return env, dev


def teardown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank (used for a run directory decision)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
