"""Mean Teacher (semimatch.methods.meanteacher) against a float64 transcription of its
equations; its teacher (the weight EMA) resumed exactly."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from helpers.reference_impl import (
    batchnorm_train_oracle,
    cross_entropy,
    rampup_oracle,
    softmax,
    squared_consistency_oracle,
)
from helpers.runs import TINY, assert_resume_is_exact
from semimatch.cli import main
from semimatch.config import Config
from semimatch.methods.registry import build_algorithm
from semimatch.presets import PRESETS
from semimatch.runs import checkpoint as ckpt
from semimatch.training.step import StepInfo, train_step


def _linear(W: np.ndarray, b: np.ndarray) -> torch.nn.Linear:  # noqa: N803
    layer = torch.nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(W))
        layer.bias.copy_(torch.from_numpy(b))
    return layer


@pytest.mark.parametrize(("shape", "lambda_u"), [("sigmoid", 50.0), ("linear", 2.0)])
def test_loss_matches_the_equations_over_steps(shape, lambda_u):
    """L = CE(lb) + lambda_u r(k) (1/(N C)) sum ||softmax f_s(strong) - softmax f_t(weak)||^2,
    the teacher in train mode (batch statistics) with its running statistics untouched."""
    rng = np.random.default_rng(1)
    total, C, D = 12, 5, 4  # noqa: N806
    algo = build_algorithm("meanteacher", C, lambda_u=lambda_u, rampup_shape=shape)
    assert algo.needs.teacher
    for k in range(8):
        W, b, Wt, bt = (
            rng.normal(size=(C, D)),
            rng.normal(size=C),
            rng.normal(size=(C, D)),
            rng.normal(size=C),
        )  # noqa: N806, E501
        gamma, beta = rng.uniform(0.5, 2, C), rng.normal(size=C)
        student = _linear(W, b)
        bn = torch.nn.BatchNorm1d(C).double()
        with torch.no_grad():
            bn.weight.copy_(torch.from_numpy(gamma))
            bn.bias.copy_(torch.from_numpy(beta))
            bn.running_mean.uniform_(-1, 1)
        teacher = torch.nn.Sequential(_linear(Wt, bt), bn).eval()  # as the EMA holds it
        before = copy.deepcopy(teacher.state_dict())
        x_lb, u_w, u_s = (rng.normal(size=(n, D)) * 2 for n in (4, 6, 6))
        y = rng.integers(0, C, 4)
        info = StepInfo(k, iterations=total, teacher=teacher)
        loss, _ = train_step(
            student, algo, torch.from_numpy(x_lb), torch.from_numpy(y), torch.from_numpy(u_w),
            torch.from_numpy(u_s), info=info,
        )  # fmt: skip
        target = softmax(batchnorm_train_oracle(u_w @ Wt.T + bt, gamma, beta, bn.eps))
        want = cross_entropy(x_lb @ W.T + b, y).mean() + lambda_u * rampup_oracle(
            k, total, 0.4, shape
        ) * squared_consistency_oracle(u_s @ W.T + b, target)
        assert loss.item() == pytest.approx(want, rel=1e-6, abs=1e-7)
        assert not teacher.training and not bn.training
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, before[key]), key
        loss.backward()  # the student only: the teacher has no gradient
        assert student.weight.grad is not None and teacher[0].weight.grad is None


def test_without_a_teacher_it_is_refused():
    algo = build_algorithm("meanteacher", 3)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="--ema-decay"):
        train_step(torch.nn.Linear(2, 3), algo, x, torch.zeros(4, dtype=torch.long), x, x,
                   info=StepInfo(5, iterations=10))  # fmt: skip


def test_a_run_without_the_ema_is_refused_before_it_starts():
    from semimatch.config import ConfigError
    from semimatch.training.recipe import check_needs

    with pytest.raises(ConfigError, match=r"--algorithm meanteacher .* --ema-decay > 0"):
        check_needs(build_algorithm("meanteacher", 3), "meanteacher", None, True)


@pytest.mark.slow
def test_the_command_line_refuses_it_without_the_ema(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--algorithm", "meanteacher", "--ema-decay", "0",
            "--num-labels", "20",
            "--iterations", "2", "--threads", "1", "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "error: --algorithm meanteacher" in last and "--ema-decay > 0" in last


def test_state_dict_round_trip_and_presets():
    algo = build_algorithm("meanteacher", 3, lambda_u=7.0)
    fresh = build_algorithm("meanteacher", 3)
    fresh.load_state_dict(algo.state_dict())  # the teacher is the run's EMA: checkpointed there
    assert dict(fresh.state_dict()) == {} and fresh.describe()["weighting"]["type"] == "meanteacher"
    values = PRESETS["cifar10-40-meanteacher"].values
    assert (values["lambda_u"], values["unsup_warmup"], values["rampup_shape"]) == (
        50.0, 0.4, "linear"
    )  # fmt: skip
    assert values["ema_decay"] == 0.999 and values["uratio"] == 1


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The teacher (the EMA) and the ramp-up resume exactly: the same final state as an
    uninterrupted run."""
    caplog.set_level(logging.WARNING, logger="semimatch")  # quiet, restored after the test
    cfg = Config(**TINY, algorithm="meanteacher", iterations=6, eval_every=2, log_every=1,
                 deterministic=True, unsup_warmup=0.5, ema_decay=0.9)  # fmt: skip
    # model, EMA (the teacher), optimiser, records
    assert_resume_is_exact(cfg, tmp_path, monkeypatch, stop_at=3)
    ref = tmp_path / "ref"
    a = ckpt.load(ckpt.latest(ref / "checkpoints"))
    student = {k.removeprefix("module."): v for k, v in a["model"].items()}
    teacher = {k.removeprefix("module."): v for k, v in a["ema"].items()}
    assert student.keys() == teacher.keys()
    # The teacher is not the student: the check is not vacuous.
    assert any(not torch.equal(v, student[k]) for k, v in teacher.items() if v.is_floating_point())
