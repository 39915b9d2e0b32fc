"""SimMatch: the loss and the labeled memory bank against a float64 oracle of the paper's
equations over several steps, the bank as checkpointed state, two processes equal to one, the
presets, and short runs on images and texts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.gloo import run_on_gloo
from helpers.reference_impl import SimMatchOracle
from helpers.runs import TINY, assert_resume_is_exact
from helpers.text_fixtures import text_corpus
from semimatch.cli import main
from semimatch.config import Config
from semimatch.methods.blocks import frozen_bn, train_mode
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.heads import attach_heads
from semimatch.methods.registry import build_algorithm
from semimatch.methods.simmatch import ProjectionHead, last_occurrence
from semimatch.models.cnn import SmallCNN
from semimatch.presets import PRESETS
from semimatch.training.step import StepInfo, train_step

C, K, D, P = 3, 6, 5, 4  # classes, labeled set, feature size, projection size

OPTIONS = dict(sim_temperature=0.5, proj_size=P, da_len=3, tau=0.4, lambda_in=0.7, lambda_u=1.3)


def _outputs(algo, heads, g, n_lb=4, n_u=6, lb_idx=None) -> tuple[StepOutputs, dict]:
    """Random float64 step outputs (logits, features, labeled positions) and what the oracle
    takes (the projections)."""
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    logits_lb, logits_w, logits_s = r(n_lb, C) * 2, r(n_u, C) * 2, r(n_u, C) * 2
    feats_lb, feats_w, feats_s = r(n_lb, D), r(n_u, D), r(n_u, D).requires_grad_()
    y_lb = torch.randint(0, C, (n_lb,), generator=g)
    if lb_idx is None:
        lb_idx = torch.randint(0, K, (n_lb,), generator=g)
    out = StepOutputs(
        logits_lb, y_lb, F.cross_entropy(logits_lb, y_lb), logits_w, (logits_s,),
        feats_lb=feats_lb, feats_weak=feats_w, feats_student=(feats_s,), heads=heads,
        lb_idx=lb_idx,
    )  # fmt: skip
    with torch.no_grad():
        proj = heads["proj"]
        z = {"z_lb": proj(feats_lb), "z_weak": proj(feats_w), "z_strong": proj(feats_s)}
    oracle_in = dict(
        logits_lb=logits_lb, y_lb=y_lb.numpy(), logits_weak=logits_w, logits_strong=logits_s,
        lb_idx=lb_idx.numpy(), **{k: v.numpy() for k, v in z.items()},
    )  # fmt: skip
    return out, oracle_in


@pytest.mark.parametrize(
    "variant",
    [
        dict(propagation="product", bank_teacher="student", bank_momentum=0.0),
        dict(
            propagation="smoothing",
            smoothing_alpha=0.8,
            bank_teacher="student",
            bank_momentum=0.7,
            in_warmup=0.25,
        ),
    ],  # fmt: skip
)
def test_loss_and_bank_match_the_float64_oracle_over_steps(variant):
    algo = build_algorithm("simmatch", C, num_labeled=K, num_iterations=8, **OPTIONS, **variant)
    algo = algo.double()
    torch.manual_seed(0)
    heads = algo.make_heads(D).double()
    oracle = SimMatchOracle(
        algo.bank.numpy(), C, T=0.5, tau=0.4, lambda_u=1.3, lambda_in=0.7, da_len=3,
        propagation=variant["propagation"], alpha=variant.get("smoothing_alpha", 0.9),
        momentum=variant["bank_momentum"], warmup=int(variant.get("in_warmup", 0) * 8),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    propagated = 0
    for it in range(6):
        # Step 0 repeats a labeled position: the later row is the one the bank keeps.
        idx = torch.tensor([1, 4, 1, 0]) if it == 0 else None
        out, oracle_in = _outputs(algo, heads, g, lb_idx=idx)
        out.iteration = it
        loss, result = algo.loss(out)
        want = oracle.step(it, **oracle_in)
        assert loss.item() == pytest.approx(want["loss"], rel=1e-10, abs=1e-12)
        assert result.unsup_loss.item() == pytest.approx(want["unsup"], abs=1e-12)
        assert result.extra.item() == pytest.approx(want["in"], abs=1e-12)
        np.testing.assert_array_equal(result.weights.numpy(), want["mask"])
        np.testing.assert_allclose(algo.bank.numpy(), oracle.bank, atol=1e-12)
        np.testing.assert_array_equal(
            algo.bank_labels.numpy()[oracle.seen], oracle.labels[oracle.seen]
        )
        np.testing.assert_array_equal(algo.bank_seen.numpy(), oracle.seen)
        propagated += bool(want["in"] > 0)
        # The gradient reaches the strong view's features through the projection head.
        loss.backward()
        assert out.feats_student[0].grad is not None
    assert propagated >= 3  # the steps exercised the propagation, not only the warm-up


def test_projection_head_is_the_mean_of_usbs_mlps_normalised():
    torch.manual_seed(0)
    head = ProjectionHead(D, P, heads=3)
    x = torch.randn(7, D)
    want = sum(m[2](torch.relu(m[0](x))) for m in head.mlps) / 3
    torch.testing.assert_close(head(x), want / want.norm(dim=1, keepdim=True))


def test_last_occurrence_keeps_the_later_duplicate():
    keep = last_occurrence(torch.tensor([2, 0, 2, 1, 0]), 4)
    assert keep.tolist() == [False, False, True, True, True]


def test_bank_is_state_and_a_reloaded_algorithm_takes_the_saved_size():
    algo = build_algorithm("simmatch", C, num_labeled=K, bank_teacher="student", **OPTIONS)
    heads = algo.make_heads(D)
    out, _ = _outputs(algo, heads.double(), torch.Generator().manual_seed(2))
    algo.double().loss(out)
    state = algo.state_dict()
    assert {"bank", "bank_labels", "bank_seen", "alignment.means", "alignment.ptr"} <= set(state)
    fresh = build_algorithm("simmatch", C, **OPTIONS).double()  # a reloaded run: size unknown
    assert fresh.num_labeled == 0
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        torch.testing.assert_close(value, state[key])
    other = build_algorithm("simmatch", C, num_labeled=K + 1, **OPTIONS).double()
    with pytest.raises(RuntimeError, match="size mismatch"):  # another labeled set: refused
        other.load_state_dict(state)


def test_the_ema_bank_takes_the_teachers_own_forward_of_the_labeled_batch():
    torch.manual_seed(0)
    net = SmallCNN(num_classes=C, in_channels=1, width=4)
    algo = build_algorithm("simmatch", C, num_labeled=K, bank_teacher="ema", **OPTIONS)
    attach_heads(net, algo.make_heads(16), C)
    teacher = SmallCNN(num_classes=C, in_channels=1, width=4)
    attach_heads(teacher, algo.make_heads(16), C)
    x_lb, u = torch.rand(4, 1, 12, 12), torch.rand(6, 1, 12, 12)
    idx = torch.tensor([0, 2, 3, 5])
    stats = [b.clone() for b in teacher.buffers()]
    info = StepInfo(iteration=0, teacher=teacher.eval(), lb_idx=idx)
    train_step(net, algo, x_lb, torch.tensor([0, 1, 2, 0]), u, u.flip(0), info=info)
    assert all(torch.equal(a, b) for a, b in zip(stats, teacher.buffers()))  # BN untouched
    assert not teacher.training  # its mode restored
    with torch.no_grad(), train_mode(teacher), frozen_bn(teacher):  # batch statistics
        want = teacher.ssl_heads["proj"](teacher.forward_features(x_lb))
    torch.testing.assert_close(algo.bank[:, idx].t(), want)


def test_bf16_autocast_keeps_the_similarities_in_float32():
    torch.manual_seed(0)
    net = SmallCNN(num_classes=C, in_channels=1, width=4)
    algo = build_algorithm("simmatch", C, num_labeled=K, bank_teacher="ema", **OPTIONS)
    attach_heads(net, algo.make_heads(16), C)
    x_lb, u = torch.rand(4, 1, 12, 12), torch.rand(6, 1, 12, 12)
    info = StepInfo(iteration=0, lb_idx=torch.tensor([0, 2, 3, 5]))
    for _ in range(2):  # the second step propagates through the bank the first one wrote
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = train_step(net, algo, x_lb, torch.tensor([0, 1, 2, 0]), u, u, info=info)
        loss.backward()
    assert torch.isfinite(loss) and algo.bank.dtype == torch.float32


def _rank_step(rank: int, world: int = 2) -> dict:
    torch.manual_seed(0)
    algo = build_algorithm(
        "simmatch", C, num_labeled=K, propagation="smoothing", bank_momentum=0.7,
        bank_teacher="student", **OPTIONS,
    ).double()  # fmt: skip
    heads = algo.make_heads(D).double()
    g = torch.Generator().manual_seed(5)
    losses = []
    for it in range(3):
        out, _ = _outputs(algo, heads, g, n_lb=4, n_u=6)
        if it == 0:
            out.lb_idx = torch.tensor([1, 4, 1, 0])  # a duplicate across the two ranks' rows
        # The stream deals the rows of a global batch to the ranks in turn.
        for name in ("logits_lb", "y_lb", "logits_weak", "feats_lb", "feats_weak", "lb_idx"):
            setattr(out, name, getattr(out, name)[rank::world])
        out.logits_student = (out.logits_student[0][rank::world],)
        out.feats_student = (out.feats_student[0][rank::world],)
        out.sup_loss = F.cross_entropy(out.logits_lb, out.y_lb)
        loss, _ = algo.loss(out)
        losses.append(loss.item())
    return {"losses": losses, **{k: v.clone() for k, v in algo.state_dict().items()}}


def test_two_gloo_processes_equal_one(tmp_path):
    one = _rank_step(0, world=1)
    both = run_on_gloo(_rank_step, tmp_path)
    for rank in both:  # the bank and the queue are global: every process holds one's
        for key in ("bank", "bank_labels", "bank_seen", "alignment.means", "alignment.ptr"):
            torch.testing.assert_close(rank[key], one[key], rtol=0, atol=1e-12)
    # Equal shards: the mean of the processes' losses is the one-process loss.
    mean = np.mean([r["losses"] for r in both], axis=0)
    np.testing.assert_allclose(mean, one["losses"], atol=1e-12)


def test_presets_follow_usb():
    cifar = PRESETS["cifar10-40-simmatch"].values
    assert cifar["bank_teacher"] == "student" and cifar["bank_momentum"] == 0.7
    assert cifar["proj_heads"] == 3 and cifar["propagation"] == "smoothing"
    assert cifar["in_warmup"] * cifar["iterations"] == 1024
    yelp, news = PRESETS["yelp_review-250-simmatch"].values, PRESETS["ag_news-40-simmatch"].values
    assert yelp["bank_teacher"] == "ema" and yelp["bank_momentum"] == 0.0
    assert news["bank_teacher"] == "student" and news["proj_heads"] == 1
    assert news["in_warmup"] * news["iterations"] == 1024


def test_forward_mode_split_is_refused_naming_the_flag(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--algorithm", "simmatch", "--forward-mode", "split",
            "--iterations", "2", "--threads", "1", "--out", str(tmp_path / "r")]  # fmt: skip
    assert main(args) == 2
    assert "--forward-mode joint" in capsys.readouterr().err


def test_a_short_run_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--algorithm", "simmatch", "--num-labels", "20",
            "--iterations", "4", "--eval-every", "2", "--log-every", "1", "--batch-size", "8",
            "--uratio", "1", "--precision", "fp32", "--no-tensorboard", "--threads", "1",
            "--bank-teacher", "student", "--bank-momentum", "0.7", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    records = list(map(json.loads, (out / "metrics.jsonl").read_text().splitlines()))
    trains = [r for r in records if r["kind"] == "train"]
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] >= 0 for r in trains)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The bank, its labels and the alignment queue resume exactly (the EMA teacher's bank)."""
    caplog.set_level(logging.WARNING, logger="semimatch")
    cfg = Config(**TINY, algorithm="simmatch", iterations=6, eval_every=2, log_every=1,
                 deterministic=True, in_warmup=0.2)  # fmt: skip
    assert_resume_is_exact(cfg, tmp_path, monkeypatch, stop_at=3)


def test_feature_vectors_train_and_the_run_reloads_with_its_bank(tmp_path):
    """An MLP on (N, D) features; a reloaded run (its labeled set unknown when it is built)
    takes the checkpoint's bank."""
    import semimatch
    from semimatch.data import from_features

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 6)) + y[:, None]
    y_seen = np.where(np.arange(60) < 12, y, -1)
    run = semimatch.train(
        data=from_features(x, y_seen), algorithm="simmatch", iterations=4, eval_every=2,
        batch_size=4, uratio=2, out=tmp_path / "run", threads=1, bank_teacher="student",
    )  # fmt: skip
    assert run.algorithm.num_labeled == 12 and run.algorithm.bank_seen.any()
    again = semimatch.load_run(tmp_path / "run", checkpoint="last")
    assert torch.equal(again.algorithm.bank, run.algorithm.bank)
    assert torch.equal(again.algorithm.bank_labels, run.algorithm.bank_labels)


def test_texts_train_with_the_tiny_bert(tiny_bert_dir):
    pytest.importorskip("transformers")
    import semimatch
    from semimatch.data import from_texts

    texts, labels = text_corpus(40)
    labels = [y if i < 8 else None for i, y in enumerate(labels)]
    data = from_texts(texts, labels, test_texts=texts[:8], test_labels=labels[:8])
    cfg = Config(
        backbone=f"hf:{tiny_bert_dir}", algorithm="simmatch", max_length=32, iterations=3,
        eval_every=3, batch_size=4, uratio=1, threads=1, tensorboard=False, progress=False,
        ema_decay=0.0,  # USB's NLP configs: the "EMA" teacher is the live model
    )  # fmt: skip
    run = semimatch.train(cfg, data=data)
    assert run.algorithm.bank_seen.any()
    errors = [r["error"] for r in run.history if "error" in r]
    assert errors and all(np.isfinite(errors))
