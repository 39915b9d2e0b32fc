"""torch.distributed helpers: the torchrun environment and all-reduce of fixed-size sums.

Every running statistic in semimatch (SoftMatch mean/variance, Uniform Alignment ``p_model``,
pseudo-label quantity/quality, evaluation accuracy) is computed from *sums* of fixed shape
(count, sum, sum of squares, per-class sums).  Sums all-reduce exactly, so the statistics of a
run on W processes equal those of one process that sees the concatenated global batch.
"""

from __future__ import annotations

import atexit
import datetime
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate, along dim 0 and in rank order, ``tensor`` from every process.

    The first dimension may differ between ranks (an uneven or empty shard); the other
    dimensions, the dtype and the device must agree.  One process: ``tensor`` itself.  The sizes
    travel first (one small all-gather read on the host), then the padded tensors.
    """
    if not is_distributed():
        return tensor
    world = get_world_size()
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(max(counts), 1), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


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
    """Initialise the process group under torchrun; return the env and this rank's device.

    The backend follows the device: ``nccl`` for CUDA, ``gloo`` otherwise.  Rendezvous comes
    entirely from torchrun's environment (``MASTER_ADDR``/``MASTER_PORT`` or ``--rdzv-*``), so no
    port is ever hard-coded here.  A process group the caller already initialised (its own
    launcher) is used as it is; ``teardown`` is then the caller's business.
    """
    if is_distributed():
        rank, world = get_rank(), get_world_size()
        env = DistEnv(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    elif launched_by_torchrun():
        env = DistEnv(
            int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        )
    else:
        return DistEnv(), torch.device(device)
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(dev)
    if not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        store, _, _ = next(dist.rendezvous("env://", timeout=timeout))
        # Workers restarted by torchrun (--max-restarts) talk to the same agent store as the
        # attempt before them; without a per-attempt prefix they can read the dead workers'
        # addresses and fail to connect ("Connection refused", seen with torch 2.14 + gloo).
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = dist.PrefixStore(f"semimatch/attempt_{attempt}/", store)
        dist.init_process_group(
            backend=backend, store=store, rank=env.rank, world_size=env.world_size, timeout=timeout
        )
        # Destroyed when the process exits, not after each training: a second ``fit`` in the
        # same process reuses the group (re-initialising one under torchrun's persistent store
        # can connect to the stale addresses of the previous group).
        atexit.register(teardown)
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


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result, or raise its error everywhere.

    For decisions that touch the file system (does the run directory hold a run, which
    checkpoint is the latest): one process decides, so ranks cannot disagree because they looked
    at a moment when rank 0 had already changed the directory, and an error (e.g. "already
    holds a run") stops every rank with the same message instead of leaving the others waiting
    in the next collective.
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    result: Any = None
    error: BaseException | None = None
    if is_main_process():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # re-raised below, on every rank
            error = e
            try:
                pickle.dumps(e)
            except Exception:  # an unpicklable exception still reaches the other ranks
                error = RuntimeError(f"{type(e).__name__}: {e}")
    result, sent = broadcast_object((result, error))  # type: ignore[misc]
    if is_main_process() and error is not None:
        raise error
    if sent is not None:
        raise sent
    return result


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any rank (one tiny all-reduce).

    Used for decisions that end the training loop (NaN loss, Ctrl-C/SIGTERM): all ranks must
    leave at the same iteration, or the others wait forever in the next collective.
    """
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


@torch.no_grad()
def average_(tensors: Sequence[torch.Tensor]) -> None:
    """Replace each floating-point tensor, in place, by its mean over the processes.

    Used for BatchNorm running statistics under per-process BN: every rank then holds the same
    model after every step (as the EMA, evaluation and checkpoints assume), and a running mean
    equals that of one process over the global batch (equal shards; the running variance misses
    the between-shard part).
    """
    if not is_distributed() or not tensors:
        return
    world = get_world_size()
    for t, total in zip(tensors, all_reduce_sums(*tensors)):
        t.copy_(total / world)
