"""Pi-Model, Mean Teacher, VAT, MixMatch and ReMixMatch under torchrun (2 CPU processes, gloo).

The ranks hold the same model after every step (DDP's gradient average, the averaged
BatchNorm buffers).  On a backbone without BatchNorm, Pi-Model and Mean Teacher on two
processes are one process on the concatenated batch (each row's loss is its own; DDP averages
equal shards).  VAT's random directions and MixMatch's MixUp draw are drawn per process, as in
USB (``torch.randn`` / ``np.random`` on each rank), so those runs are not one process's (nor
ReMixMatch's: its MixUp and rotations likewise): they are checked for identical ranks (the
rotation head and ReMixMatch's alignment window included) and a model that moved.
"""

from __future__ import annotations

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun

CASES = ("nobn:pimodel", "nobn:meanteacher", "nobn:vat", "nobn:mixmatch", "nobn:remixmatch")
EXACT = ("nobn:pimodel", "nobn:meanteacher")


def _file(case: str, rank: int) -> str:
    return f"{case.replace(':', '-')}-rank{rank}.pt"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp-classic")
    proc = torchrun(str(WORKER), str(out), *CASES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(c, r): load(out / _file(c, r)) for c in CASES for r in (0, 1)}


@pytest.mark.parametrize("case", CASES)
def test_ranks_hold_identical_models_after_every_step(ddp, case):
    r0, r1 = ddp[case, 0], ddp[case, 1]
    assert r0["world_size"] == 2
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{case}: {key} differs between ranks at step {k}"
    for key in r0["ema"]:
        assert torch.equal(r0["ema"][key], r1["ema"][key]), f"{case}: EMA {key} differs"
    first, final = steps(r0)[0], r0["final"]
    assert any(not torch.equal(first[k], final[k]) for k in first if k.startswith("model."))


@pytest.mark.parametrize("case", EXACT)
def test_two_processes_equal_one_without_batchnorm(ddp, tmp_path, case):
    single = worker.run_case(case, tmp_path)
    got = ddp[case, 0]
    for key, ref in single["final"].items():
        if ref.is_floating_point():
            torch.testing.assert_close(got["final"][key], ref, rtol=1e-5, atol=1e-6, msg=key)
    for key, ref in single["ema"].items():
        torch.testing.assert_close(got["ema"][key], ref, rtol=1e-5, atol=1e-6, msg=f"ema {key}")
