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
from semimatch.methods.uda import UDAWeighting, tsa_threshold

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
