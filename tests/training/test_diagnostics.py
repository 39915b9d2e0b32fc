"""The run's diagnostics (semimatch.training.diagnostics): labeled weak/strong accuracy,
pseudo-label flips, error swing - logged at every evaluation and warned about once per run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import semimatch
from helpers.text_fixtures import text_corpus
from semimatch.config import Config
from semimatch.data import TrainStream, balanced_split, from_features, from_texts
from semimatch.training.diagnostics import FLIP_SHARE, UNLABELED_PROBE, Diagnostics

# Small enough for a few seconds on 2 shared cores; the weak view fits the 20 labels by the
# second half of the run, where the checks may warn.
TINY = dict(
    dataset="digits",
    num_labels=20,
    iterations=40,
    eval_every=10,
    log_every=10,
    batch_size=16,
    uratio=1,
    seed=0,
    threads=1,
    num_workers=0,
)


def identity(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return img


def blank(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A strong view that destroys the label: every image becomes the same blank one."""
    return np.zeros_like(img)


def evals(run) -> list[dict]:
    return [r for r in run.metrics if r["kind"] == "eval"]


def test_a_strong_view_that_destroys_the_label_is_warned_about_once(capsys):
    run = semimatch.train(weak_view=identity, strong_view=blank, **TINY)
    err = capsys.readouterr().err
    assert err.count("the strong view may destroy the label") == 1
    assert "--strong-augment" in err  # names what to try
    last = evals(run)[-1]
    assert last["lb_weak_acc"] >= 0.5 and last["lb_strong_acc"] < 0.5 * last["lb_weak_acc"]


def test_an_identity_strong_view_keeps_the_label_and_is_not_warned_about(capsys):
    run = semimatch.train(weak_view=identity, strong_view=identity, **TINY)
    assert "destroy the label" not in capsys.readouterr().err
    records = evals(run)
    # The same view both times: the same predictions, the same accuracy.
    assert all(r["lb_weak_acc"] == r["lb_strong_acc"] for r in records)
    assert records[0]["pl_flip"] is None and records[0]["error_swing"] is None
    assert all(0 <= r["pl_flip"] <= 1 for r in records[1:])
    swings = [abs(a["error"] - b["error"]) for a, b in zip(records, records[1:])]
    assert [r["error_swing"] for r in records[1:]] == pytest.approx(swings)


class Switch(nn.Module):
    """Predicts class 0 everywhere, or - once ``flip`` is set - class 1 for the samples whose
    first feature is positive."""

    def __init__(self) -> None:
        super().__init__()
        self.flip = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), 2)
        out[:, 0] = 1.0
        if self.flip:
            out[x[:, 0] > 0, 1] = 2.0
        return out


def _diagnostics(
    iterations: int = 100, algorithm: str = "fixmatch"
) -> tuple[Diagnostics, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    y = (x[:, 1] > 0).astype(np.int64)
    data = from_features(x, y, mean=[0.0] * 4, std=[1.0] * 4)
    split = balanced_split(y, 2, 20, seed=0)
    stream = TrainStream(data, split, batch_size=4, uratio=1, seed=0)
    cfg = Config(iterations=iterations, eval_every=10, eval_batch_size=64, algorithm=algorithm)
    return Diagnostics(stream, cfg, torch.device("cpu")), x[split.unlabeled]


def test_pseudo_label_flips_are_the_share_of_probed_samples_that_changed_class(capsys):
    diag, pool = _diagnostics()
    model, history = Switch(), {"errors": []}
    first = diag.measure(model, history)
    assert first["pl_flip"] is None  # nothing to compare with yet
    model.flip = True
    second = diag.measure(model, history)
    # The probe is a seeded subset of the pool: about half of it has a positive first feature.
    assert diag.n_u == UNLABELED_PROBE
    assert second["pl_flip"] == pytest.approx(np.mean(np.array(history["probe_pl"]) == 1))
    assert 0.4 < second["pl_flip"] < 0.6
    diag.warn(second, history, done=40, n_sel=0)  # early: learning, not instability
    assert "changed class" not in capsys.readouterr().err
    for done in (60, 80):  # late: warned, once
        diag.warn(second, history, done=done, n_sel=0)
    err = capsys.readouterr().err
    assert second["pl_flip"] > FLIP_SHARE and err.count("changed class") == 1
    assert "--tau" in err


def test_the_flip_warning_names_a_threshold_only_for_a_method_with_one(capsys):
    diag, _ = _diagnostics(algorithm="pimodel")  # no --tau: suggesting it would be refused
    d = {"lb_weak_acc": None, "lb_strong_acc": None, "pl_flip": 0.9, "error_swing": None}
    diag.warn(d, {"errors": []}, done=80, n_sel=0)
    err = capsys.readouterr().err
    assert "changed class" in err and "--tau" not in err and "a lower --lr" in err


def test_the_error_swing_warns_only_above_the_noise_of_the_set_that_measures_it(capsys):
    diag, _ = _diagnostics()
    history = {"errors": [0.15, 0.30]}
    d = diag.measure(Switch(), history)
    assert d["error_swing"] == pytest.approx(0.15)
    diag.warn(d, history, done=90, n_sel=20)  # 15 points on 20 samples: 3 of them, noise
    assert "error rose" not in capsys.readouterr().err
    diag.warn(d, history, done=90, n_sel=2000)
    assert "error rose by 15.0%" in capsys.readouterr().err


def test_a_late_drop_of_the_error_is_learning_not_a_swing(capsys):
    diag, _ = _diagnostics()
    history = {"errors": [0.30, 0.15]}
    d = diag.measure(Switch(), history)
    assert d["error_swing"] == pytest.approx(0.15)  # logged either way
    diag.warn(d, history, done=90, n_sel=2000)
    assert "error rose" not in capsys.readouterr().err
    # With a validation set, the validation errors are the ones that swing.
    history = {"errors": [0.30, 0.15], "val_errors": [0.2, 0.2]}
    assert diag.measure(Switch(), history)["error_swing"] == 0.0


def test_text_runs_log_the_diagnostics_on_their_token_views(tiny_bert_dir):
    texts, labels = text_corpus(40)
    labels = [y if i < 8 else None for i, y in enumerate(labels)]
    data = from_texts(texts, labels, test_texts=texts[:8], test_labels=labels[:8])
    cfg = Config(
        backbone=f"hf:{tiny_bert_dir}", algorithm="fixmatch", max_length=32, iterations=4,
        eval_every=2, batch_size=4, uratio=1, threads=1, tensorboard=False, progress=False,
    )  # fmt: skip
    records = evals(semimatch.train(cfg, data=data))  # the default strong view: TF-IDF
    for r in records:
        assert 0 <= r["lb_weak_acc"] <= 1 and 0 <= r["lb_strong_acc"] <= 1
    assert records[0]["pl_flip"] is None and 0 <= records[1]["pl_flip"] <= 1
