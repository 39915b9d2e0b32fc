"""Pi-Model (semimatch.methods.pimodel) against a float64 transcription of its equations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers.reference_impl import cross_entropy, rampup_oracle, softmax, squared_consistency_oracle
from semimatch.cli import main
from semimatch.methods.registry import build_algorithm
from semimatch.presets import PRESETS
from semimatch.training.step import StepInfo, train_step

TRAIN = ["train", "--dataset", "digits", "--num-labels", "20", "--iterations", "2",
         "--eval-every", "2", "--log-every", "1", "--batch-size", "8", "--uratio", "2",
         "--seed", "1", "--precision", "fp32", "--no-tensorboard", "--threads", "1"]  # fmt: skip


@pytest.mark.parametrize(("shape", "lambda_u"), [("sigmoid", 10.0), ("linear", 3.0)])
def test_loss_matches_the_equations_over_steps(shape, lambda_u):
    """L = CE(lb) + lambda_u r(k) (1/(N C)) sum ||softmax f(strong) - softmax f(weak)||^2."""
    rng = np.random.default_rng(0)
    total, C, D = 10, 4, 6  # noqa: N806
    algo = build_algorithm("pimodel", C, lambda_u=lambda_u, rampup_shape=shape)
    for k in range(8):
        W, b = rng.normal(size=(C, D)), rng.normal(size=C)  # noqa: N806
        model = torch.nn.Linear(D, C).double()
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(W))
            model.bias.copy_(torch.from_numpy(b))
        x_lb, u_w, u_s = (rng.normal(size=(n, D)) * 2 for n in (5, 7, 7))
        y = rng.integers(0, C, 5)
        loss, sums = train_step(
            model, algo, *(torch.from_numpy(a) for a in (x_lb,)), torch.from_numpy(y),
            torch.from_numpy(u_w), torch.from_numpy(u_s), info=StepInfo(k, iterations=total),
        )  # fmt: skip
        sup = cross_entropy(x_lb @ W.T + b, y).mean()
        unsup = squared_consistency_oracle(u_s @ W.T + b, softmax(u_w @ W.T + b))
        ramp = rampup_oracle(k, total, 0.4, shape)
        assert loss.item() == pytest.approx(sup + lambda_u * ramp * unsup, rel=1e-6, abs=1e-7)
        assert float(sums["unsup_loss_sum"]) == pytest.approx(7 * ramp * unsup, rel=1e-5)
        assert float(sums["weight_sum"]) == 7.0  # every row counts: not a weighting method
        loss.backward()
        assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_state_dict_round_trip_and_description():
    algo = build_algorithm("pimodel", 3, unsup_warmup=0.2)
    fresh = build_algorithm("pimodel", 3, unsup_warmup=0.2)
    fresh.load_state_dict(algo.state_dict())
    assert dict(fresh.state_dict()) == {}  # stateless: the ramp reads the iteration
    assert fresh.describe()["weighting"] == {
        "type": "pimodel", "not_a_weighting_method": True, "unsup_warmup": 0.2,
        "rampup": "sigmoid",
    }  # fmt: skip
    assert not fresh.weights_defined()  # no lambda(p) curve
    with pytest.raises(ValueError, match="unsup_warmup"):
        build_algorithm("pimodel", 3, unsup_warmup=1.5)


def test_presets_are_usbs():
    values = PRESETS["cifar10-40-pimodel"].values
    assert (values["lambda_u"], values["unsup_warmup"], values["rampup_shape"]) == (
        10.0, 0.4, "linear"
    )  # fmt: skip
    assert values["uratio"] == 1 and PRESETS["imdb-20-pimodel"].values["lambda_u"] == 10.0


@pytest.mark.slow
def test_a_short_run_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    assert (
        main([*TRAIN, "--algorithm", "pimodel", "--rampup-shape", "linear", "--out", str(out)]) == 0
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["algorithm"] == "pimodel" and cfg["rampup_shape"] == "linear"
    trains = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]  # fmt: skip
    assert trains and all(np.isfinite(r["loss"]) for r in trains)


def test_the_report_says_it_is_not_a_weighting_method():
    from types import SimpleNamespace

    from semimatch.report.lambdas import final_lambda

    state = build_algorithm("pimodel", 3).describe()["weighting"]
    curve, note = final_lambda(SimpleNamespace(evals=[{"iteration": 4, "weighting": state}]))
    assert curve is None and note == "pimodel is not a weighting method: λ(p) is not defined"


@pytest.mark.parametrize("name", ["pimodel", "meanteacher"])
def test_the_second_view_is_a_weak_draw_unless_asked(name) -> None:
    """The papers and USB's datasets give Pi-Model and Mean Teacher two weak views (USB:
    "x_ulb_s here is weak augmentation"); the strong augmentation is an option."""
    from semimatch.config import Config

    assert build_algorithm(name, 3).needs.strong_as_weak is True
    strong = build_algorithm(name, 3, second_view="strong")
    assert strong.needs.strong_as_weak is False and strong.needs.strong_views == 1
    assert Config(algorithm=name, second_view="strong").second_view == "strong"
    with pytest.raises(ValueError, match="second_view must be 'weak' or 'strong'"):
        build_algorithm(name, 3, second_view="medium")
