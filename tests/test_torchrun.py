"""``torchrun --nproc_per_node=2`` on CPU (gloo) trains what one process trains on the global batch.

torchrun launches ``tests/helpers/ddp_worker.py`` (the public ``fit`` with a recording
backbone) with ``--standalone``, so it picks a free port itself.  Two backbones:

* ``nobn``: a small CNN without BatchNorm.  Per-process computation is then exactly the
  single-process computation split in two (DDP averages gradients of equal shards; the
  pseudo-label statistics all-reduce sums), so the runs agree up to float rounding.
* ``bn``: the SmallCNN with per-process BatchNorm (the papers' default).  2 x (B/2) normalises
  each half with its own batch statistics, which is a different function from 1 x B: the ranks
  still agree with each other, but not with one process.  ``--sync-bn`` would restore the
  equivalence, but torch's SyncBatchNorm runs only on GPUs, so on CPU it is a config error.

Measured here (6 steps, fp32, lr 0.1): ranks bit-identical after every step; no-BN weights and
EMA within 1.6e-7 (relative 9e-7) of one process, SoftMatch mean/var and UA p_model within 6e-8;
with per-process BN the weights differ by 0.36 (joint forward) to 0.6 (split forward, the
default) after 6 steps.  A torchrun restart resumes
bit-identically.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from helpers import ddp_worker as worker
from helpers.ddp import WORKER, load, steps, torchrun
from semimatch.config import Config
from semimatch.errors import TrainingError
from semimatch.runs.engine import fit
from semimatch.training.metrics import read_jsonl

CASES = ("bn", "nobn")
K = worker.BASE["iterations"]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun(str(WORKER), str(out), *CASES)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"out": out, **{(c, r): load(out / f"{c}-rank{r}.pt") for c in CASES for r in (0, 1)}}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    return {c: worker.run_case(c, out) for c in CASES}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> float:
    return max(
        (a[k].double() - b[k].double()).abs().max().item()
        for k in a
        if k.startswith(prefix) and a[k].is_floating_point()
    )


def test_global_batch_is_split_between_the_ranks(ddp, single):
    for case in CASES:
        assert ddp[case, 0]["world_size"] == 2 and single[case]["world_size"] == 1
        # 8 labeled + 16 weak + 16 strong images per step, half on each rank, in the default
        # joint forward's one call.
        rows = 40
        assert single[case]["rows"] == [rows] * K
        assert ddp[case, 0]["rows"] == ddp[case, 1]["rows"] == [rows // 2] * K


@pytest.mark.parametrize("case", CASES)
def test_ranks_hold_identical_models_after_every_step(ddp, case):
    r0, r1 = ddp[case, 0], ddp[case, 1]
    for k, (a, b) in enumerate(zip(steps(r0), steps(r1), strict=True)):
        assert a.keys() == b.keys()
        for key in a:  # parameters, BatchNorm running statistics, algorithm state: bit-identical
            assert torch.equal(a[key], b[key]), f"{case}: {key} differs between ranks at step {k}"
    for key in r0["ema"]:
        assert torch.equal(r0["ema"][key], r1["ema"][key]), f"{case}: EMA {key} differs"
    # Not vacuous: the model and the statistics moved.
    assert max_diff(steps(r0)[0], r0["final"], "model.") > 1e-3
    assert max_diff(steps(r0)[0], r0["final"], "algorithm.") > 1e-3


def test_pseudo_label_statistics_equal_one_process_on_the_global_batch(ddp, single):
    """SoftMatch mean/var and Uniform Alignment p_model after every step, no-BN backbone."""
    for k, (got, ref) in enumerate(zip(steps(ddp["nobn", 0]), steps(single["nobn"]), strict=True)):
        for key in (
            "algorithm.weighting.mean",
            "algorithm.weighting.var",
            "algorithm.alignment.p_model",
        ):
            torch.testing.assert_close(
                got[key], ref[key], rtol=1e-5, atol=1e-7, msg=f"{key} at step {k}"
            )
    final = single["nobn"]["final"]
    assert final["algorithm.weighting.var"].item() < 0.5  # followed the batches (init 1.0)


def test_final_weights_match_one_process_within_float_tolerance(ddp, single):
    got, ref = ddp["nobn", 0], single["nobn"]
    for key in ref["final"]:
        torch.testing.assert_close(
            got["final"][key], ref["final"][key], rtol=1e-5, atol=1e-6, msg=key
        )
    for key in ref["ema"]:
        torch.testing.assert_close(
            got["ema"][key], ref["ema"][key], rtol=1e-5, atol=1e-6, msg=f"EMA {key}"
        )


def test_per_process_batchnorm_is_not_one_process(ddp, single):
    """Documented difference: per-process BN statistics make 2 x (B/2) differ from 1 x B."""
    bn = max_diff(ddp["bn", 0]["final"], single["bn"]["final"], "model.")
    nobn = max_diff(ddp["nobn", 0]["final"], single["nobn"]["final"], "model.")
    assert bn > 1e-3 > 1e3 * nobn


def test_evaluation_covers_the_whole_test_set_and_only_rank0_logs(ddp, single):
    evals = [r for r in ddp["nobn", 0]["history"] if r["kind"] == "eval"]
    ref = [r for r in single["nobn"]["history"] if r["kind"] == "eval"]
    assert [r["iteration"] for r in evals] == [3, 6]
    for got, want in zip(evals, ref, strict=True):
        assert sum(map(sum, got["confusion"])) == 360  # all digits test images, once
        assert got["top1"] == want["top1"]
        assert got["window"]["quantity"] == pytest.approx(want["window"]["quantity"], abs=1e-6)
        assert got["window"]["conf_hist"] == want["window"]["conf_hist"]
        # The diagnostics: each rank scores a share of the probes, the sums are all-reduced.
        for key in ("lb_weak_acc", "lb_strong_acc", "pl_flip", "error_swing"):
            assert got[key] == want[key], key
    assert evals[-1]["pl_flip"] is not None
    assert ddp["nobn", 1]["history"] == []  # the other rank reads no log
    records = read_jsonl(ddp["out"] / "nobn" / "metrics.jsonl")  # one writer: no duplicates
    assert [(r["kind"], r["iteration"]) for r in records] == [
        ("train", 3),
        ("eval", 3),
        ("train", 6),
        ("eval", 6),
        ("end", 6),
    ]
    assert sorted(p.name for p in (ddp["out"] / "nobn" / "checkpoints").iterdir()) == [
        "best.pt",
        "ckpt-0000006.pt",
    ]


def test_resume_auto_starts_continues_or_refuses_a_different_run(tmp_path):
    cfg = Config(
        dataset="digits",
        num_labels=20,
        batch_size=8,
        uratio=2,
        iterations=4,
        eval_every=2,
        precision="fp32",
        threads=1,
        tensorboard=False,
    )
    out = tmp_path / "run"
    first = fit(cfg, out=out, resume="auto")  # nothing there: a fresh run
    assert first.summary["iterations_done"] == 4
    again = fit(cfg, out=out, resume="auto")  # the same run: continues from its last checkpoint
    assert again.summary["iterations_done"] == 4
    assert [r["kind"] for r in read_jsonl(out / "metrics.jsonl")].count("end") == 1
    with pytest.raises(TrainingError, match="holds a different run.*lr: saved 0.03"):
        fit(cfg.replace(lr=0.1), out=out, resume="auto")
    # Stopped before its first checkpoint: the same command starts it again.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    (crashed / "config.json").write_text((out / "config.json").read_text())
    assert fit(cfg, out=crashed, resume="auto").summary["iterations_done"] == 4
    assert json.loads((crashed / "summary.json").read_text())["status"] == "finished"


# ----------------------------------------------------------------------------------------------
# Failures and restarts (each launches torchrun again: ~10-25 s apiece on 2 cores)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_its_error(tmp_path):
    t0 = time.perf_counter()
    proc = torchrun(str(WORKER), str(tmp_path), "nobn", "--fail-at", "4", "--fail-rank", "1")
    elapsed = time.perf_counter() - t0
    assert proc.returncode != 0
    assert "injected failure at step 4 on rank 1" in proc.stderr  # the cause is visible
    assert elapsed < 90, f"the surviving rank was not torn down promptly ({elapsed:.0f} s)"
    assert not (tmp_path / "nobn-rank0.pt").exists()


@pytest.mark.slow
def test_torchrun_restart_resumes_from_rank0s_checkpoint(ddp, tmp_path):
    """--max-restarts=1: rank 1 fails in step 5 of attempt 0; attempt 1 (same command, resume
    auto) loads the step-3 checkpoint on both ranks and ends where an uninterrupted run ends."""
    proc = torchrun(
        str(WORKER), str(tmp_path), "nobn", "--fail-at", "4", "--resume-auto", restarts=1
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "injected failure at step 4 on rank 1" in proc.stderr
    for rank in (0, 1):
        got = load(tmp_path / f"nobn-rank{rank}.pt")
        assert len(got["snapshots"]) == K - 3  # the restarted attempt ran steps 4..6 only
        for key, want in ddp["nobn", 0]["final"].items():
            torch.testing.assert_close(got["final"][key], want, rtol=0, atol=0, msg=key)
    records = read_jsonl(tmp_path / "nobn" / "metrics.jsonl")
    assert [(r["kind"], r["iteration"]) for r in records] == [
        ("train", 3),
        ("eval", 3),
        ("train", 6),
        ("eval", 6),
        ("end", 6),
    ]
    assert records[-1]["status"] == "finished"


@pytest.mark.slow
def test_cli_under_torchrun_and_config_errors_on_every_rank(tmp_path):
    base = [
        "-m",
        "semimatch",
        "train",
        "--dataset",
        "digits",
        "--num-labels",
        "20",
        "--iterations",
        "4",
        "--eval-every",
        "2",
        "--uratio",
        "2",
        "--precision",
        "fp32",
        "--threads",
        "1",
        "--tensorboard",
        "false",
        "--out",
        str(tmp_path / "run"),
    ]
    proc = torchrun(*base, "--batch-size", "7")
    assert proc.returncode != 0
    assert (
        proc.stderr.count(
            "--batch-size 7 is the global batch and must be divisible by the number of "
            "processes (2)"
        )
        == 2
    )
    proc = torchrun(*base, "--batch-size", "8", "--sync-bn", "true")
    assert proc.returncode != 0 and proc.stderr.count("SyncBatchNorm runs only on GPUs") == 2
    assert not (tmp_path / "run").exists()  # config errors come before the run directory
    for _ in range(2):  # a restartable command: the second launch finds the run finished
        proc = torchrun(*base, "--batch-size", "8", "--resume", "auto")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("done: fixmatch on digits | 4 it") == 1  # rank 0 prints
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iterations_done"] == 4
