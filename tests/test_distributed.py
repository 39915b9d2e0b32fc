"""Two gloo processes on CPU produce the statistics of one process on the concatenated batch.

Each rank gets a different (uneven, sometimes empty) shard of the same random global batch and
runs several update steps of SoftMatchWeighting (global and per-class), UniformAlignment, the
full softmatch train_step and WindowSums.reduce; the states must equal a single-process run on
the concatenation.  Rendezvous goes through a file in tmp_path, so no port is needed.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers.reference_impl import random_probs
from semimatch import distributed as sd
from semimatch.methods.alignment import UniformAlignment
from semimatch.methods.registry import build_algorithm
from semimatch.methods.softmatch import SoftMatchWeighting
from semimatch.training.metrics import WindowSums
from semimatch.training.step import train_step

WORLD = 2
C, D = 5, 6
STEPS = 4
SEED = 1234


def global_data() -> list[dict]:
    """Per step: a global batch of probabilities and of train_step inputs, with shard cuts."""
    rng = np.random.default_rng(SEED)
    g = torch.Generator().manual_seed(SEED)
    steps = []
    for k in range(STEPS):
        n = int(rng.integers(12, 40))
        # Uneven shards; at step 2 rank 1's shard of probabilities is empty.
        cut = n if k == 2 else int(rng.integers(1, n))
        n_ulb = int(rng.integers(8, 20))
        steps.append(
            {
                "probs": torch.from_numpy(random_probs(rng, n, C, scale=2.5, bias=1.5)),
                "cut": cut,
                "x_lb": torch.randn(6, D, generator=g),
                "y_lb": torch.randint(0, C, (6,), generator=g),
                "u_weak": torch.randn(n_ulb, D, generator=g) * 2,
                "u_strong": torch.randn(n_ulb, D, generator=g) * 2,
                "u_true": torch.randint(-1, C, (n_ulb,), generator=g),
                "cut_lb": 2,
                "cut_ulb": int(rng.integers(1, n_ulb)),
            }
        )
    return steps


def shard(x: torch.Tensor, cut: int, rank: int | None) -> torch.Tensor:
    if rank is None:  # the single-process reference sees the whole batch
        return x
    return x[:cut] if rank == 0 else x[cut:]


def run(rank: int | None) -> dict:
    """The same program on one shard (rank 0/1) or on the concatenated batch (rank None)."""
    torch.manual_seed(0)
    modules = {
        "global": SoftMatchWeighting(C, momentum=0.7),
        "per_class": SoftMatchWeighting(C, momentum=0.7, per_class=True),
        "ua": UniformAlignment(C, momentum=0.7),
    }
    algorithm = build_algorithm("softmatch", C, stat_momentum=0.6, per_class=True)
    model = nn.Linear(D, C)
    window = WindowSums()
    history = []
    for step in global_data():
        probs = shard(step["probs"], step["cut"], rank)
        for module in modules.values():
            module.update(probs)
        _, sums = train_step(
            model,
            algorithm,
            shard(step["x_lb"], step["cut_lb"], rank),
            shard(step["y_lb"], step["cut_lb"], rank),
            *(shard(step[k], step["cut_ulb"], rank) for k in ("u_weak", "u_strong", "u_true")),
        )
        window.add(sums)
        state = {
            f"{name}.{k}": v.clone()
            for name, m in modules.items()
            for k, v in m.state_dict().items()
        }
        state.update({f"algorithm.{k}": v.clone() for k, v in algorithm.state_dict().items()})
        history.append(state)
    return {"history": history, "window": window.reduce()}


def _spawn(tmp_path: Path, program: str) -> None:
    """Run ``program`` on WORLD gloo ranks; each saves its result to tmp_path/rank<r>.pt."""
    assert not dist.is_initialized()
    # fork where available: a spawned child re-imports torch (~3 s of CPU each on this 2-core
    # machine); the workers call torch.set_num_threads(1) first, as DataLoader workers do.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    args = (str(tmp_path / "store"), str(tmp_path), program)
    mp.start_processes(_worker, args=args, nprocs=WORLD, join=True, start_method=method)


def _worker(rank: int, store: str, out_dir: str, program: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        if program == "statistics":
            info = {
                "rank": sd.get_rank(),
                "world": sd.get_world_size(),
                "main": sd.is_main_process(),
                "distributed": sd.is_distributed(),
            }
            # all_reduce_sums keeps shapes and dtypes and packs tensors in one collective.
            counts, values = sd.all_reduce_sums(
                torch.tensor([rank + 1, 10], dtype=torch.int64),
                torch.full((2, 2), 0.25 * (rank + 1)),
            )
            info["reduce"] = (counts, values)
            result = run(rank)
            result["info"] = info
        else:
            result = run_empty_shard(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    _spawn(tmp_path, "statistics")
    reference = run(None)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        info = got["info"]
        assert (info["rank"], info["world"], info["main"], info["distributed"]) == (
            rank,
            WORLD,
            rank == 0,
            True,
        )
        counts, values = info["reduce"]
        assert counts.dtype == torch.int64 and counts.tolist() == [3, 20]
        assert values.dtype == torch.float32 and values.shape == (2, 2)
        torch.testing.assert_close(values, torch.full((2, 2), 0.75))

        for step, (mine, ref) in enumerate(zip(got["history"], reference["history"], strict=True)):
            assert set(mine) == set(ref)
            for key in ref:
                torch.testing.assert_close(
                    mine[key], ref[key], atol=1e-6, rtol=0, msg=f"rank {rank}, step {step}, {key}"
                )
        for key, ref in reference["window"].items():
            np.testing.assert_allclose(
                got["window"][key],
                ref,
                rtol=1e-5,
                atol=1e-5,
                err_msg=f"rank {rank}, window sum {key}",
            )
    # The statistics really moved and the checks are not vacuous.
    final = reference["history"][-1]
    assert (final["per_class.mean"] != 1 / C).all()
    assert reference["window"]["n_ulb"] == sum(s["u_weak"].shape[0] for s in global_data())


def test_helpers_are_no_ops_without_a_process_group():
    assert not sd.is_distributed()
    assert (sd.get_rank(), sd.get_world_size(), sd.is_main_process()) == (0, 1, True)
    x = torch.arange(3.0)
    (y,) = sd.all_reduce_sums(x)
    assert y is x and sd.all_reduce_sum(x) is x
    assert sd.broadcast_object({"a": 1}) == {"a": 1}
    sd.barrier()


@pytest.mark.parametrize("env", [{}, {"RANK": "0", "WORLD_SIZE": "1"}])
def test_setup_outside_torchrun_is_single_process(env, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    dist_env, device = sd.setup("cpu")
    assert dist_env == sd.DistEnv() and dist_env.is_main and device == torch.device("cpu")
    assert not dist.is_initialized()


def run_empty_shard(rank: int | None) -> dict:
    """Two softmatch steps; at the first one rank 1's unlabeled shard is empty (a global
    unlabeled batch smaller than the world size, or an uneven strided share)."""
    torch.manual_seed(0)
    algorithm = build_algorithm("softmatch", C, stat_momentum=0.6)
    model = nn.Linear(D, C)
    g = torch.Generator().manual_seed(7)
    losses, states = [], []
    for cut in (5, 3):
        x_lb, y_lb = torch.randn(4, D, generator=g), torch.randint(0, C, (4,), generator=g)
        u_weak, u_strong = torch.randn(5, D, generator=g), torch.randn(5, D, generator=g)
        loss, _ = train_step(
            model,
            algorithm,
            shard(x_lb, 2, rank),
            shard(y_lb, 2, rank),
            shard(u_weak, cut, rank),
            shard(u_strong, cut, rank),
        )
        losses.append(loss.item())
        states.append({k: v.clone() for k, v in algorithm.state_dict().items()})
    return {"losses": losses, "states": states}


def test_empty_unlabeled_shard_on_one_rank_keeps_ranks_in_step(tmp_path):
    """A rank whose unlabeled shard is empty must still join the statistics' all-reduce;
    otherwise the other rank's collective fails (or hangs) and the states diverge."""
    _spawn(tmp_path, "empty_shard")
    reference = run_empty_shard(None)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert all(np.isfinite(got["losses"])), f"rank {rank}: {got['losses']}"
        for mine, ref in zip(got["states"], reference["states"], strict=True):
            for key in ref:
                torch.testing.assert_close(mine[key], ref[key], atol=1e-6, rtol=0)
