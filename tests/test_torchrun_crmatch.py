"""CRMatch under torchrun (2 CPU processes, gloo): its heads (the projection, the rotation MLP)
hang on the model, so DDP averages their gradients with the backbone's: the ranks hold the same
model and heads after every step, and without BatchNorm two processes are one process on the
concatenated batch (every term is a mean over the rows; DDP averages equal shards)."""

from __future__ import annotations

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun

CASE = "nobn:crmatch"


@pytest.mark.slow  # a torchrun of 2 processes and a reference run: ~15-45 s on 2 cores
def test_two_processes_equal_one_and_hold_identical_heads(tmp_path):
    proc = torchrun(str(WORKER), str(tmp_path / "ddp"), CASE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load(tmp_path / "ddp" / f"nobn-crmatch-rank{r}.pt") for r in (0, 1))
    assert r0["world_size"] == 2
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        for key in a:
            assert torch.equal(a[key], b[key]), f"{key} differs between ranks at step {k}"
    heads = [k for k in r0["ema"] if ".ssl_heads." in k or k.startswith("ssl_heads.")]
    assert any(".rot." in k for k in heads) and any(".ds." in k for k in heads)
    for key in r0["ema"]:
        assert torch.equal(r0["ema"][key], r1["ema"][key]), f"EMA {key} differs"
    single = worker.run_case(CASE, tmp_path / "one")
    for key, ref in single["final"].items():
        if ref.is_floating_point():
            torch.testing.assert_close(r0["final"][key], ref, rtol=1e-5, atol=1e-6, msg=key)
    for key, ref in single["ema"].items():  # the heads included
        torch.testing.assert_close(r0["ema"][key], ref, rtol=1e-5, atol=1e-6, msg=f"ema {key}")
