"""Two gloo processes give the weighting family the statistics of one process on the
concatenated global batch: FlexMatch's memory and learning effects, FreeMatch's thresholds (mean
and quantile), AdaMatch's relative threshold and distribution alignment, and
``distributed.all_gather_cat`` itself.  Shards are uneven, one is empty at one step, and sample
indices repeat across ranks (rank order decides which row wins, as in the concatenation).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from helpers.gloo import run_on_gloo
from helpers.reference_impl import random_probs
from semimatch import distributed as sd
from semimatch.methods.adamatch import AdaMatchThreshold
from semimatch.methods.alignment import DistributionAlignment
from semimatch.methods.flexmatch import FlexMatchThreshold
from semimatch.methods.freematch import FreeMatchThreshold

WORLD = 2
C = 4
N_UNLABELED = 24
STEPS = 5
SEED = 4321


def global_data() -> list[dict]:
    rng = np.random.default_rng(SEED)
    steps = []
    for k in range(STEPS):
        n = int(rng.integers(10, 30))
        n_lb = int(rng.integers(2, 9))
        steps.append(
            {
                "probs": torch.from_numpy(random_probs(rng, n, C, scale=4.0, bias=1.0)),
                "indices": torch.from_numpy(rng.integers(0, N_UNLABELED, size=n)),
                "cut": n if k == 2 else int(rng.integers(1, n)),  # rank 1 empty at step 2
                "probs_lb": torch.from_numpy(random_probs(rng, n_lb, C, scale=4.0)),
                "cut_lb": int(rng.integers(1, n_lb)),
            }
        )
    return steps


def shard(x: torch.Tensor, cut: int, rank: int | None) -> torch.Tensor:
    if rank is None:
        return x
    return x[:cut] if rank == 0 else x[cut:]


def run(rank: int | None) -> dict:
    modules = {
        "flex": FlexMatchThreshold(C, N_UNLABELED, tau=0.75),
        "flex_plain": FlexMatchThreshold(C, N_UNLABELED, tau=0.75, warmup=False),
        "free": FreeMatchThreshold(C, momentum=0.6),
        "free_quantile": FreeMatchThreshold(C, momentum=0.6, use_quantile=True),
        "ada": AdaMatchThreshold(0.9),
        "da": DistributionAlignment(C, momentum=0.6),
    }
    history = []
    for step in global_data():
        probs = shard(step["probs"], step["cut"], rank)
        indices = shard(step["indices"], step["cut"], rank)
        probs_lb = shard(step["probs_lb"], step["cut_lb"], rank)
        record = {}
        for name, module in modules.items():
            if isinstance(module, FlexMatchThreshold):
                module.update(probs, indices)
            elif isinstance(module, (AdaMatchThreshold, DistributionAlignment)):
                module.update(probs, probs_lb=probs_lb)
            else:
                module.update(probs)
            record[f"{name}.out"] = module(probs).clone()
            record.update({f"{name}.{k}": v.clone() for k, v in module.state_dict().items()})
        record["gathered"] = sd.all_gather_cat(torch.stack([indices, indices * 2], dim=1))
        history.append(record)
    return {"history": history}


def test_two_processes_match_one_process_on_the_concatenated_batch(tmp_path):
    assert not dist.is_initialized()
    results = run_on_gloo(run, tmp_path, world=WORLD)
    reference = run(None)
    data = global_data()
    for rank in range(WORLD):
        got = results[rank]
        for k, (mine, ref) in enumerate(zip(got["history"], reference["history"], strict=True)):
            assert set(mine) == set(ref)
            for key, want in ref.items():
                if key.endswith(".out"):  # this rank's rows of the reference's weights
                    want = shard(want, data[k]["cut"], rank)
                msg = f"rank {rank}, step {k}, {key}"
                if want.dtype in (torch.int64, torch.bool):
                    torch.testing.assert_close(mine[key], want, rtol=0, atol=0, msg=msg)
                else:
                    torch.testing.assert_close(mine[key], want, rtol=0, atol=1e-6, msg=msg)
    # The checks are not vacuous: memories filled, with repeated indices, thresholds moved.
    final = reference["history"][-1]
    assert (final["flex.selected_label"] >= 0).sum() > N_UNLABELED // 2
    assert len(set(torch.cat([s["indices"] for s in data]).tolist())) < sum(
        len(s["indices"]) for s in data
    )
    assert (final["flex.beta"] > 0).any() and final["free.time_p"] != 1 / C


def test_all_gather_cat_is_identity_without_a_process_group():
    x = torch.arange(6).reshape(3, 2)
    assert sd.all_gather_cat(x) is x
