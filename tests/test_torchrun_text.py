"""A text run under torchrun (2 CPU processes, gloo): the ranks hold the same BERT and SoftMatch
state after every step, and the statistics are the global batch's, equal to one process on the
concatenated batch (a tiny BERT without dropout: LayerNorm is per sample)."""

from __future__ import annotations

import shutil

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun
from helpers.text_fixtures import write_tiny_bert

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp-text")
    write_tiny_bert(folder / "bert", dropout=0.0)
    return folder


@pytest.fixture(scope="module")
def ddp(out) -> dict:
    proc = torchrun(str(WORKER), str(out), "text")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r: load(out / f"text-rank{r}.pt") for r in (0, 1)}


def test_ranks_agree_and_statistics_are_the_global_batchs(ddp, out, tmp_path):
    r0, r1 = ddp[0], ddp[1]
    assert r0["world_size"] == 2
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} at step {k}")
    shutil.copytree(out / "bert", tmp_path / "bert")  # the same model, another run folder
    single = steps(worker.run_case("text", tmp_path))
    got = steps(r0)
    assert len(got) == len(single) == 7
    for k in range(len(single)):
        for key in single[k]:
            if key.startswith("algorithm.") and single[k][key].is_floating_point():
                torch.testing.assert_close(
                    got[k][key].double(), single[k][key].double(), rtol=1e-5, atol=1e-6,
                    msg=f"{key} at step {k}",
                )  # fmt: skip
    moved = [k for k in r0["final"] if k.startswith("algorithm.")]
    assert any(not torch.equal(got[0][k], r0["final"][k]) for k in moved)
