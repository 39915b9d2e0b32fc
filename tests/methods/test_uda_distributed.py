"""Two gloo processes anneal UDA's labeled loss as one process does on the global batch: the
paper's mean over the rows kept counts the rows every process keeps (DDP averages gradients)."""

from __future__ import annotations

import numpy as np
import torch

from helpers.gloo import run_on_gloo
from semimatch.methods.uda import uda

WORLD = 2
C = 5
SEED = 77


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    rng = np.random.default_rng(SEED)
    return [
        (
            torch.from_numpy(rng.normal(size=(12, C)) * 2.0).float(),
            torch.from_numpy(rng.integers(0, C, size=12)),
            int(rng.integers(1, 11)),  # uneven shards: rank 0 takes [:cut]
        )
        for _ in range(4)
    ]


def run(rank: int | None) -> list[dict]:
    out = []
    for step, (logits, y, cut) in enumerate(global_batches()):
        rows = slice(None) if rank is None else (slice(0, cut) if rank == 0 else slice(cut, None))
        for mask in ("paper", "usb"):
            algorithm = uda(C, tsa_schedule="linear", tsa_mask=mask, num_iterations=4)
            x = logits[rows].clone().requires_grad_(True)
            loss = algorithm.annealed_sup_loss(x, y[rows], step)
            loss.backward()
            out.append({"loss": loss.detach(), "grad": x.grad.clone(), "cut": cut, "mask": mask})
    return out


def test_two_processes_anneal_as_one_on_the_global_batch(tmp_path):
    ranks = run_on_gloo(run, tmp_path, world=WORLD)
    reference = run(None)
    for ref, r0, r1 in zip(reference, *ranks, strict=True):
        if ref["mask"] == "usb":  # a mean over all rows: equal shards only (USB's B per rank)
            continue
        # DDP averages the processes' gradients: their mean loss is the global batch's.
        torch.testing.assert_close((r0["loss"] + r1["loss"]) / WORLD, ref["loss"])
        grad = torch.cat([r0["grad"], r1["grad"]]) / WORLD
        torch.testing.assert_close(grad, ref["grad"], rtol=0, atol=1e-7)
    assert any(float(ref["loss"]) > 0 for ref in reference)
