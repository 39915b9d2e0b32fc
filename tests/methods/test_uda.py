"""UDA's mask, sharpened targets and TSA (semimatch.methods.uda) against the float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import fixed_threshold_weights, prob_batches, sharpen_oracle, softmax
from semimatch.methods.blocks import sharpen
from semimatch.methods.registry import build_algorithm
from semimatch.methods.uda import UDAWeighting, tsa_threshold, uda

FAST = settings(max_examples=20, deadline=None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@FAST
@given(
    data=prob_batches(steps=2),
    tau=st.sampled_from([0.5, 0.75, 0.8, 0.95]),
    temperature=st.sampled_from([0.2, 0.4, 1.0, 2.0]),
)
def test_uda_mask_and_targets_match_oracle(data, tau, temperature):
    _, batches = data
    module = UDAWeighting(tau, temperature)
    for probs in batches:
        module.update(t(probs))
        got = module(t(probs)).numpy()
        clear = np.abs(probs.max(axis=1).astype(np.float64) - tau) > 1e-6
        np.testing.assert_array_equal(got[clear], fixed_threshold_weights(probs, tau)[clear])
        target = module.target(t(probs)).numpy()
        np.testing.assert_allclose(target, sharpen_oracle(probs, temperature), atol=2e-6)
        if len(probs):
            np.testing.assert_allclose(target.sum(axis=1), 1.0, atol=1e-5)


def test_sharpen_equals_softmax_of_logits_over_temperature():
    """USB computes softmax(logits / T); from p = softmax(logits) the same values."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(64, 7)) * 3
    p = torch.from_numpy(softmax(logits))
    for temperature in (0.4, 0.5, 1.0, 3.0):
        want = softmax(logits / temperature)
        np.testing.assert_allclose(sharpen(p, temperature).numpy(), want, atol=1e-12)
    torch.testing.assert_close(sharpen(p, 1.0), p)
    assert sharpen(p.float(), 0.4).dtype == torch.float32
    # Exact zeros stay zero; one-hot rows stay one-hot.
    z = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(sharpen(z, 0.4), z)
    with pytest.raises(ValueError, match="temperature"):
        sharpen(z, 0.0)


def test_uda_validation_and_describe():
    with pytest.raises(ValueError, match="temperature"):
        UDAWeighting(0.8, 0.0)
    with pytest.raises(ValueError, match="tau"):
        UDAWeighting(1.5)
    module = UDAWeighting()
    assert (module.tau, module.temperature) == (0.8, 0.4)  # USB's classic-CV values
    assert module.describe() == {
        "type": "uda",
        "tau": 0.8,
        "temperature": 0.4,
        "lambda_max": 1.0,
    }
    assert dict(module.state_dict()) == {}


@pytest.mark.parametrize(
    "schedule, alpha",
    [
        ("linear", lambda x: x),
        ("exp", lambda x: math.exp(5 * (x - 1))),
        ("log", lambda x: 1 - math.exp(-5 * x)),
    ],
)
def test_tsa_threshold(schedule, alpha):
    for progress in (0.0, 0.3, 1.0):
        want = alpha(progress) * (1 - 1 / 10) + 1 / 10
        assert tsa_threshold(schedule, progress, 10) == pytest.approx(want)
    assert tsa_threshold("none", 0.3, 10) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        tsa_threshold("cosine", 0.3, 10)


def tsa_loss_oracle(logits, y, iteration, budget, schedule, mask):
    """Float64 transcription of UDA's annealed labeled loss (paper section 3.3; the authors'
    code normalises by the rows kept) and of USB's variant (largest probability, mean over B)."""
    C = logits.shape[1]
    x = iteration / budget
    alpha = {"linear": x, "exp": math.exp(5 * (x - 1)), "log": 1 - math.exp(-5 * x)}[schedule]
    eta = alpha * (1 - 1 / C) + 1 / C
    p = softmax(logits.astype(np.float64))
    correct = p[np.arange(len(y)), y]
    ce = -np.log(correct)
    if mask == "paper":
        keep = correct <= eta
        return float((ce * keep).sum() / max(keep.sum(), 1)), eta, p
    keep = p.max(axis=1) <= eta
    return float((ce * keep).mean()), eta, p


@pytest.mark.parametrize("mask", ["paper", "usb"])
@pytest.mark.parametrize("schedule", ["linear", "exp", "log"])
def test_annealed_labeled_loss_matches_the_oracle(schedule, mask):
    rng = np.random.default_rng(3)
    budget, C = 50, 5
    algorithm = uda(C, tsa_schedule=schedule, tsa_mask=mask, num_iterations=budget)
    assert algorithm.needs.iteration
    for iteration in (0, 7, 25, 49):
        logits = rng.normal(size=(32, C)) * 2.5
        y = rng.integers(0, C, size=32)
        want, eta, p = tsa_loss_oracle(logits, y, iteration, budget, schedule, mask)
        seen = p[np.arange(32), y] if mask == "paper" else p.max(axis=1)
        assert np.abs(seen - eta).min() > 1e-5  # no row on the threshold (float32 rounding)
        got = algorithm.annealed_sup_loss(t(logits), torch.from_numpy(y), iteration)
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_annealing_is_the_method_s_labeled_loss_in_the_step():
    """The step adds the annealed labeled loss and logs it (sup_loss_sum)."""
    from semimatch.training.step import StepInfo, train_step

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    x_lb, y_lb = torch.randn(16, 6), torch.randint(0, 4, (16,))
    u_w, u_s = torch.randn(32, 6), torch.randn(32, 6)
    annealed = uda(4, tsa_schedule="linear", num_iterations=10)
    plain = uda(4)
    assert not plain.needs.iteration and type(plain).__name__ == "UDA"
    loss, sums = train_step(model, annealed, x_lb, y_lb, u_w, u_s, info=StepInfo(3))
    loss0, sums0 = train_step(model, plain, x_lb, y_lb, u_w, u_s, info=StepInfo(3))
    logits = model(x_lb).detach().double().numpy()
    want, _, _ = tsa_loss_oracle(logits, y_lb.numpy(), 3, 10, "linear", "paper")
    unsup = sums0["unsup_loss_sum"] / sums0["n_ulb"]
    assert float(sums["sup_loss_sum"]) / 16 == pytest.approx(want, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(want + float(unsup), rel=1e-5)
    assert float(loss0.detach()) == pytest.approx(float(sums0["sup_loss_sum"]) / 16 + float(unsup))
    with pytest.raises(ValueError, match="iteration"):
        train_step(model, annealed, x_lb, y_lb, u_w, u_s)


def test_annealing_needs_the_budget_and_a_known_schedule():
    with pytest.raises(ValueError, match="num_iterations"):
        uda(10, tsa_schedule="exp")
    with pytest.raises(ValueError, match="schedule"):
        uda(10, tsa_schedule="cosine", num_iterations=5)
    with pytest.raises(ValueError, match="tsa_mask"):
        uda(10, tsa_mask="max", num_iterations=5)
    assert build_algorithm("uda", 10, num_iterations=8, tsa_schedule="log").num_iterations == 8


def test_the_usb_nlp_uda_presets_anneal_with_exp():
    from semimatch.config import load_preset
    from semimatch.presets import PRESETS

    nlp = sorted(
        n for n in PRESETS if n.endswith("-uda") and PRESETS[n].values["dataset"] == "text"
    )
    assert len(nlp) == 10
    assert {load_preset(n).tsa_schedule for n in nlp} == {"exp"}
    # USB's classic-CV configs: none, the builder's default (None: left to it)
    assert load_preset("cifar10-40-uda").tsa_schedule in (None, "none")
