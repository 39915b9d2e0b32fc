"""SimMatch under torchrun (2 CPU processes, gloo): the labeled memory bank and the alignment
queue are global (gathered / all-reduced as USB does), so on a backbone without BatchNorm two
processes are one process on the concatenated batch, with the bank from the student's forward
or from the EMA teacher's own forward of the labeled rows."""

from __future__ import annotations

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun

pytestmark = pytest.mark.slow  # two torchrun jobs and two one-process runs: ~45 s

CASES = ("nobn:simmatch", "nobn:simmatch_ema")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp-simmatch")
    proc = torchrun(str(WORKER), str(out), *CASES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(c, r): load(out / f"{c.replace(':', '-')}-rank{r}.pt") for c in CASES for r in (0, 1)}


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one_and_hold_one_bank(ddp, tmp_path, case):
    r0, r1 = ddp[case, 0], ddp[case, 1]
    assert r0["world_size"] == 2
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        for key in a:
            assert torch.equal(a[key], b[key]), f"{case}: {key} differs between ranks at step {k}"
    single = worker.run_case(case, tmp_path)
    assert bool(single["final"]["algorithm.bank_seen"].any())
    for key, ref in single["final"].items():
        got = r0["final"][key]
        if ref.is_floating_point():
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=key)
        else:  # the bank's labels and which entries were written
            assert torch.equal(got, ref), key
    for key, ref in single["ema"].items():
        torch.testing.assert_close(r0["ema"][key], ref, rtol=1e-5, atol=1e-6, msg=f"ema {key}")
