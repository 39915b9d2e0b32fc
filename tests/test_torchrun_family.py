"""FlexMatch, FreeMatch, AdaMatch, Dash and CoMatch under torchrun (2 CPU processes, gloo): the
ranks hold the same model and algorithm state after every step, and the statistics are the
global batch's (equal to one process on the concatenated batch, on a backbone without
BatchNorm). FlexMatch's per-sample memory is indexed by the global pool indices of the rows,
all-gathered: both ranks hold the one process's memory. CoMatch's graph spans the global batch
(the second strong view's embeddings gathered with their gradient): its alignment window and
memory bank (compared as a set of rows) are one process's at every step.

FreeMatch's fairness loss is computed from each rank's own rows, as in USB (DDP averages the
gradients), so after its first step a FreeMatch run on 2 processes is not one process's; its
statistics are compared on the first step only.
"""

from __future__ import annotations

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun

CASES = ("nobn:flexmatch", "nobn:freematch", "nobn:adamatch", "nobn:dash", "nobn:comatch")


def _file(case: str, rank: int) -> str:
    return f"{case.replace(':', '-')}-rank{rank}.pt"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp-family")
    proc = torchrun(str(WORKER), str(out), *CASES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(c, r): load(out / _file(c, r)) for c in CASES for r in (0, 1)}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single-family")
    return {c: worker.run_case(c, out) for c in CASES}


@pytest.mark.parametrize("case", CASES)
def test_ranks_hold_identical_state_after_every_step(ddp, case):
    r0, r1 = ddp[case, 0], ddp[case, 1]
    assert r0["world_size"] == 2
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        assert a.keys() == b.keys()
        for key in a:  # bit-identical (Dash's rho_init is NaN until the warm-up ends)
            torch.testing.assert_close(
                a[key], b[key], rtol=0, atol=0, equal_nan=True, msg=f"{case}: {key} at step {k}"
            )
    moved = [k for k in r0["final"] if k.startswith("algorithm.")]
    first = steps(r0)[0]
    assert any(not torch.equal(first[k], r0["final"][k]) for k in moved), case


def _bank_rows_sorted(state: dict) -> dict:
    """CoMatch's memory bank with its rows in one order: under torchrun each step writes the
    gathered rows rank after rank (a rank holds every W-th row of the global batch), one
    process writes them in the batch's order; the smoothing sums over the rows."""
    feats, probs = state["algorithm.bank.feats"], state["algorithm.bank.probs"]
    key = feats.double() @ torch.linspace(1.0, 2.0, feats.shape[1], dtype=torch.float64)
    order = torch.argsort(key)
    return {**state, "algorithm.bank.feats": feats[order], "algorithm.bank.probs": probs[order]}


@pytest.mark.parametrize("case", CASES)
def test_statistics_are_those_of_the_global_batch(ddp, single, case):
    got, ref = steps(ddp[case, 0]), steps(single[case])
    upto = 2 if case.endswith("freematch") else len(ref)  # see the module docstring
    if case.endswith("comatch"):  # the bank's rows in each rank's order (the set is the same)
        got, ref = [_bank_rows_sorted(s) for s in got], [_bank_rows_sorted(s) for s in ref]
    for k in range(upto):
        for key in ref[k]:
            if key.startswith("algorithm.") and ref[k][key].is_floating_point():
                torch.testing.assert_close(
                    got[k][key].double(),
                    ref[k][key].double(),
                    rtol=1e-5,
                    atol=1e-6,
                    equal_nan=True,
                    msg=f"{case}: {key} at step {k}",
                )
    if case.endswith("flexmatch"):  # the memory (integers): the same entries, exactly
        for k in range(upto):
            key = "algorithm.weighting.selected_label"
            assert torch.equal(got[k][key], ref[k][key]), f"memory at step {k}"
        memory = ddp[case, 0]["final"]["algorithm.weighting.selected_label"]
        assert (memory >= 0).sum() > 32  # rows of both ranks were written (32 per step)
    if case.endswith("dash"):
        final = ddp[case, 0]["final"]
        assert bool(final["algorithm.warmed_up"]) and torch.isfinite(
            final["algorithm.weighting.rho_init"]
        )
