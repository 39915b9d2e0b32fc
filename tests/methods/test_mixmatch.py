"""MixMatch (semimatch.methods.mixmatch) against a float64 transcription of the equations."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from helpers.reference_impl import mixmatch_linear_oracle, rampup_oracle
from helpers.runs import TINY, assert_resume_is_exact, short_cli_run
from semimatch.config import Config, ConfigError
from semimatch.methods.mixmatch import mixup_draw, to_unit
from semimatch.methods.registry import build_algorithm
from semimatch.presets import PRESETS
from semimatch.training.recipe import check_needs
from semimatch.training.step import StepInfo, train_step


@pytest.mark.parametrize(
    ("options", "ratio", "shape"),
    [({}, 1 / 64, "linear"),
     (dict(lambda_u=3.0, unsup_warmup=0.5, temperature=0.7, mixup_alpha=0.75), 0.5, "linear"),
     (dict(unsup_warmup=0.3, rampup_shape="sigmoid"), 0.3, "sigmoid")],
)  # fmt: skip
def test_loss_matches_the_equations_over_steps(options, ratio, shape):
    """Sharpened mean guess of K = 2 views, MixUp with the step's draw, soft CE + ramped L2,
    for a linear model (no BatchNorm: the chunked forwards are one forward)."""
    rng = np.random.default_rng(3)
    total, C, D, B, seed = 10, 4, 6, 5, 11  # noqa: N806
    algo = build_algorithm("mixmatch", C, **options)
    lam_u = options.get("lambda_u", 75.0)
    T, alpha = options.get("temperature", 0.5), options.get("mixup_alpha", 0.5)  # noqa: N806
    for k in range(5):
        W, b = rng.normal(size=(C, D)), rng.normal(size=C)  # noqa: N806
        model = torch.nn.Linear(D, C).double()
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(W))
            model.bias.copy_(torch.from_numpy(b))
        x_lb, u1, u2 = rng.normal(size=(B, D)), rng.normal(size=(B, D)), rng.normal(size=(B, D))
        y = rng.integers(0, C, B)
        t = torch.from_numpy
        loss, sums = train_step(model, algo, t(x_lb), t(y), t(u1), (t(u2),),
                                info=StepInfo(k, iterations=total, seed=seed))  # fmt: skip
        lam, perm = mixup_draw(alpha, 3 * B, seed, k, 0)
        assert 0.5 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(3 * B))
        want = mixmatch_linear_oracle(W, b, x_lb, y, [u1, u2], lam, perm.numpy(), T, lam_u,
                                      rampup_oracle(k, total, ratio, shape))  # fmt: skip
        assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
        loss.backward()
        assert model.weight.grad is not None
        assert sums["n_ulb"].item() == B and sums["weight_sum"].item() == B


def test_the_mixup_draw_is_reproducible_per_iteration_and_rank():
    a, b = mixup_draw(0.5, 12, 7, 3, 0), mixup_draw(0.5, 12, 7, 3, 0)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    others = [
        mixup_draw(0.5, 12, 7, 4, 0),
        mixup_draw(0.5, 12, 7, 3, 1),
        mixup_draw(0.5, 12, 8, 3, 0),
    ]
    assert all(o[0] != a[0] for o in others)
    assert mixup_draw(0.0, 4, 0, 0, 0)[0] == 1.0


def test_only_the_first_mixed_chunk_updates_batchnorm_statistics():
    """The guesses and the labeled forward leave the running statistics; of the mixed chunks
    (labeled batch size each), the first alone updates them (USB)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(net)
    x_lb, u1, u2 = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    algo = build_algorithm("mixmatch", 3)
    loss, _ = train_step(net, algo, x_lb, torch.zeros(4, dtype=torch.long), u1, (u2,),
                         info=StepInfo(0, iterations=5, seed=2))  # fmt: skip
    lam, perm = mixup_draw(0.5, 12, 2, 0, 0)
    x = torch.cat([x_lb, u1, u2])
    twin(lam * x[:4] + (1 - lam) * x[perm][:4])
    for (key, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a, b), key
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_texts_are_refused_in_one_line_naming_the_flag():
    algo = build_algorithm("mixmatch", 3)
    with pytest.raises(ConfigError, match="--algorithm mixmatch .* token ids"):
        check_needs(algo, "mixmatch", None, continuous=False)
    with pytest.raises(ValueError, match="--algorithm"):
        to_unit(torch.zeros(2, 2, 5, dtype=torch.long))
    pixels = torch.tensor([[0, 255]], dtype=torch.uint8)
    assert to_unit(pixels).tolist() == [[0.0, 1.0]]


def test_needs_presets_and_description():
    algo = build_algorithm("mixmatch", 3)
    needs = algo.needs
    assert needs.model and needs.strong_as_weak and not needs.forward and needs.strong_views == 1
    assert dict(algo.state_dict()) == {} and algo.describe()["weighting"]["not_a_weighting_method"]
    values = PRESETS["cifar10-40-mixmatch"].values
    assert (values["lambda_u"], values["unsup_warmup"], values["temperature"]) == (100.0, 0.4, 0.5)
    assert (values["mixup_alpha"], values["uratio"], values["rampup_shape"]) == (0.5, 1, "linear")
    # The existing methods keep their stream and forward.
    for name in ("fixmatch", "vat"):
        other = build_algorithm(name, 3).needs
        assert other.forward and not other.strong_as_weak
    # Pi-Model's second view is a weak draw too, forwarded by the standard step.
    assert build_algorithm("pimodel", 3).needs.forward


def test_the_report_says_it_is_not_a_weighting_method():
    from types import SimpleNamespace

    from semimatch.report.lambdas import final_lambda

    state = build_algorithm("mixmatch", 3).describe()["weighting"]
    curve, note = final_lambda(SimpleNamespace(evals=[{"iteration": 4, "weighting": state}]))
    assert curve is None and "mixmatch is not a weighting method" in note


def test_a_short_run_from_the_command_line(tmp_path):
    trains = short_cli_run(tmp_path / "run", "mixmatch", uratio=1)
    assert trains and all(np.isfinite(r["loss"]) for r in trains)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The MixUp draws and the ramp-up resume exactly: the same final state as an
    uninterrupted run."""
    caplog.set_level(logging.WARNING, logger="semimatch")  # quiet, restored after the test
    cfg = Config(**TINY, algorithm="mixmatch", iterations=6, eval_every=2, log_every=1,
                 deterministic=True, unsup_warmup=0.5)  # fmt: skip
    assert_resume_is_exact(cfg, tmp_path, monkeypatch, stop_at=3)
