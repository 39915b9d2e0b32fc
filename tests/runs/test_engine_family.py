"""The rest of the family in the loop: exact resume of every new state (FlexMatch's per-sample
memory, FreeMatch's thresholds and histograms, AdaMatch's alignment and threshold, Dash's
warm-up, rho and schedule, UDA), and each algorithm selectable from the three front doors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

import semimatch
from helpers.runs import CLI, TINY, assert_same_run, kill_after_first_checkpoint, stop_after
from semimatch.cli import main
from semimatch.config import Config
from semimatch.errors import TrainingInterrupted
from semimatch.methods.registry import build_algorithm
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.engine import fit
from semimatch.sklearn import SemiSupervisedClassifier
from semimatch.training.metrics import read_jsonl

FAMILY = ("flexmatch", "freematch", "adamatch", "dash", "uda")
SHORT = dict(TINY, iterations=6, eval_every=2, log_every=1, deterministic=True)
#: Options that make each new state move within six iterations.
MOVING = {
    "flexmatch": dict(tau=0.5),
    "freematch": dict(stat_momentum=0.5, lambda_e=0.5),
    "adamatch": dict(stat_momentum=0.5, tau=0.5),
    "dash": dict(dash_warmup=2, rho_period=1, dash_gamma=3.0, rho_min=0.2),
    "uda": dict(tau=0.3),
    "softmatch": dict(shape="linear"),
}


@pytest.fixture(autouse=True)
def _quiet():
    logger = logging.getLogger("semimatch")
    before = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(before)


@pytest.mark.parametrize(
    ("algorithm", "stop"),
    [
        ("flexmatch", 3),
        ("freematch", 3),
        ("adamatch", 3),
        ("uda", 3),
        ("dash", 1),
        ("dash", 3),
        ("softmatch", 3),
    ],  # fmt: skip
)
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, algorithm, stop):
    cfg = Config(**SHORT, algorithm=algorithm, **MOVING[algorithm])
    ref, run = tmp_path / "ref", tmp_path / "run"
    fit(cfg, out=ref)
    stop_after(monkeypatch, stop)
    with pytest.raises(TrainingInterrupted):
        fit(cfg, out=run)
    assert ckpt.load(ckpt.latest(run / "checkpoints"))["iteration"] == stop
    monkeypatch.undo()
    fit(out=run, resume=True)
    assert_same_run(ref, run, iterations=6)
    saved = ckpt.load(ckpt.latest(ref / "checkpoints"))
    state, pool = saved["algorithm"], saved["num_unlabeled"]
    assert (pool is not None) == (algorithm == "flexmatch")
    initial = build_algorithm(algorithm, 10, num_unlabeled=pool, **MOVING[algorithm])
    moved = [k for k, v in initial.state_dict().items() if not torch.equal(state[k], v)]
    if initial.state_dict():  # UDA has no running state
        assert moved, f"{algorithm}: no state moved, the resume check would be vacuous"
    if algorithm == "dash":
        assert bool(state["warmed_up"]) and int(state["weighting.num_updates"]) == 4
        assert torch.isfinite(state["weighting.rho_init"])


def test_flexmatch_memory_survives_sigkill_bit_exactly(tmp_path):
    """SIGKILL at a random moment after the first checkpoint, then resume: the same memory,
    model and records as an uninterrupted run; a resume on another pool size is refused."""
    cmd = [*CLI, "--algorithm", "flexmatch", "--tau", "0.5"]  # the later flag wins
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*cmd, "--out", str(ref)], check=True, capture_output=True, timeout=300)
    kill_after_first_checkpoint(cmd, run)
    resume = [sys.executable, "-m", "semimatch", "train", "--resume", str(run)]
    subprocess.run(resume, check=True, capture_output=True, timeout=300)
    assert_same_run(ref, run)
    final = ckpt.load(ckpt.latest(run / "checkpoints"))
    memory = final["algorithm"]["weighting.selected_label"]
    assert final["num_unlabeled"] == memory.numel() and (memory >= 0).any()
    reloaded = semimatch.load_run(run, checkpoint="last", device="cpu")
    assert torch.equal(reloaded.algorithm.weighting.selected_label, memory)
    # A checkpoint of another pool (as if the data had changed) is refused, with the fix.
    path = ckpt.latest(run / "checkpoints")
    ckpt.save_atomic({**final, "num_unlabeled": memory.numel() + 1}, path)
    with pytest.raises(ckpt.CheckpointError, match="unlabeled pool of .* same data"):
        fit(out=run, resume=True)


def test_a_flexmatch_weighting_of_your_own_gets_the_pool_indices():
    """weighting=FlexMatchThreshold(...) declares sample_indices: the step passes u_idx; a
    memory sized for another pool is refused before training, naming the size to use."""
    from semimatch.data import load_dataset
    from semimatch.methods.flexmatch import FlexMatchThreshold

    pool = len(load_dataset("digits").train)  # digits: every training image is unlabeled too
    weighting = FlexMatchThreshold(10, pool, tau=0.125)
    run = semimatch.train(**{**SHORT, "iterations": 2}, weighting=weighting)
    assert run.algorithm.sample_indices and run.algorithm.weighting is weighting
    assert (weighting.selected_label >= 0).any()  # the memory was written
    with pytest.raises(semimatch.TrainingError, match=f"num_unlabeled={pool}"):
        semimatch.train(**{**SHORT, "iterations": 2}, weighting=FlexMatchThreshold(10, 5))


def test_dash_logs_its_warm_up_as_supervised(tmp_path):
    cfg = Config(**SHORT, algorithm="dash", **MOVING["dash"])
    fit(cfg, out=tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    train = {r["iteration"]: r for r in records if r["kind"] == "train"}
    assert train[1]["quantity"] is None and train[2]["quantity"] is None  # warm-up
    assert train[3]["quantity"] is not None
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["iteration"] == 2 and evals[0]["lambda_curve"] is None
    assert evals[0]["weighting"].get("warmup") is True
    assert evals[1]["lambda_curve"] is not None and "rho" in evals[1]["weighting"]


def test_freematch_train_records_carry_the_fairness_term(tmp_path):
    cfg = Config(**SHORT, algorithm="freematch", **MOVING["freematch"])
    fit(cfg, out=tmp_path / "run")
    train = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    for r in train:
        want = r["sup_loss"] + r["unsup_loss"] + 0.5 * r["extra_loss"]
        assert r["loss"] == pytest.approx(want)


@pytest.mark.parametrize("algorithm", [*FAMILY, "softmatch"])
def test_every_algorithm_from_the_cli_the_api_and_the_estimator(tmp_path, algorithm, capsys):
    options = {**MOVING[algorithm], "iterations": 4, "batch_size": 8, "uratio": 2, "seed": 1}
    options.update(deterministic=True, threads=1, precision="fp32")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    out = tmp_path / "cli"
    argv = ["train", "--dataset=digits", "--num-labels=20", "--tensorboard=false", *flags]
    assert main([*argv, f"--algorithm={algorithm}", "--out", str(out)]) == 0
    cli = semimatch.load_run(out, checkpoint="last", device="cpu")
    assert cli.config.algorithm == algorithm and cli.summary["algorithm"] == algorithm
    api = semimatch.train(
        dataset="digits", num_labels=20, algorithm=algorithm, tensorboard=False, **options
    )
    for name, tensor in api.ema_model.state_dict().items():
        assert torch.equal(cli.ema_model.state_dict()[name], tensor), name

    X = np.random.default_rng(0).random((60, 8, 8))
    y = np.where(np.arange(60) < 20, np.arange(60) % 10, -1)
    est = SemiSupervisedClassifier(algorithm=algorithm, max_iter=4, batch_size=8, uratio=2)
    est.set_params(random_state=0, device="cpu", config={"threads": 1})
    est.fit(X, y)
    assert est.run_.config.algorithm == algorithm and est.predict(X).shape == (60,)


def test_an_option_of_another_algorithm_is_refused(tmp_path, capsys):
    assert main(["train", "--algorithm=uda", "--lambda-e=0.1", "--out", str(tmp_path)]) == 2
    assert "--lambda-e have no effect with algorithm 'uda'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dash_warmup"):
        semimatch.train(dataset="digits", algorithm="freematch", dash_warmup=3, iterations=2)
    with pytest.raises(ValueError, match="dash-warmup"):
        semimatch.train(dataset="digits", algorithm="dash", dash_warmup=5, iterations=5)


def test_short_budgets_derive_dash_and_the_momenta(tmp_path):
    run = semimatch.train(**{**SHORT, "iterations": 40}, algorithm="dash")
    assert (run.config.dash_warmup, run.config.rho_period) == (2, 1)
    assert "dash_warmup" in run.config.auto and "rho_period" in run.config.auto
    for algorithm in ("freematch", "adamatch"):
        run = semimatch.train(**{**SHORT, "iterations": 2}, algorithm=algorithm)
        assert run.config.stat_momentum == 0.9 and "stat_momentum" in run.config.auto


def test_dash_warm_up_outside_the_budget_is_the_longer_run_with_it_inside():
    """--dash-warmup-extra (USB's placement) trains iterations + dash_warmup: the run of that
    longer budget with the warm-up inside, once nothing else is derived from the budget."""
    pinned = dict(SHORT, algorithm="dash", bn_momentum=0.1, ema_decay=0.9, **MOVING["dash"])
    outside = semimatch.train(**{**pinned, "iterations": 4}, dash_warmup_extra=True)
    inside = semimatch.train(**{**pinned, "iterations": 6})
    assert outside.config.iterations == 6 and inside.config.iterations == 6
    assert outside.config.auto["iterations"].startswith("4 + 2: dash's supervised warm-up")
    for name, tensor in inside.ema_model.state_dict().items():
        assert torch.equal(outside.ema_model.state_dict()[name], tensor), name
    # Inside the budget the warm-up must leave semi-supervised iterations; outside it need not.
    assert (
        semimatch.train(**{**pinned, "iterations": 2}, dash_warmup_extra=True).config.iterations
        == 4
    )


def test_uda_s_annealing_reaches_the_logged_labeled_loss(tmp_path):
    for schedule in ("none", "linear"):
        cfg = Config(**SHORT, algorithm="uda", tsa_schedule=schedule, **MOVING["uda"])
        fit(cfg, out=tmp_path / schedule)
    logged = {
        s: [
            r["sup_loss"]
            for r in read_jsonl(tmp_path / s / "metrics.jsonl")
            if r["kind"] == "train"
        ]
        for s in ("none", "linear")
    }
    # At t = 0 the threshold is 1/C: rows the model already gives more are left out.
    assert logged["linear"][0] != logged["none"][0]
    assert json.loads((tmp_path / "linear" / "config.json").read_text())["tsa_schedule"] == "linear"
