"""SoftMatch's ablation shapes (semimatch.methods.softmatch) against the float64 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import (
    SoftMatchOracle,
    prob_batches,
    random_probs,
    softmatch_shape_weight,
)
from semimatch.methods.softmatch import SHAPES, SoftMatchWeighting

FAST = settings(max_examples=20, deadline=None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


@FAST
@given(
    data=prob_batches(),
    momentum=st.floats(0.3, 0.99),
    n_sigma=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    per_class=st.booleans(),
    shape=st.sampled_from(["linear", "quadratic"]),
    lambda_max=st.sampled_from([1.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_shapes_match_oracle(data, momentum, n_sigma, per_class, shape, lambda_max, seed):
    c, batches = data
    module = SoftMatchWeighting(c, momentum, n_sigma, per_class, lambda_max, shape=shape)
    # The statistics do not depend on the shape: the existing oracle tracks them.
    stats = SoftMatchOracle(c, momentum, n_sigma, per_class, lambda_max=lambda_max)
    probe = random_probs(np.random.default_rng(seed), 40, c, scale=2.0)
    for probs in batches:
        module.update(t(probs))
        stats.update(probs)
        for batch in (probs, probe):
            want = []
            for row in np.asarray(batch, dtype=np.float64):
                g = int(np.argmax(row)) if per_class else 0
                want.append(
                    softmatch_shape_weight(
                        float(row.max()), stats.mean[g], stats.var[g], n_sigma, shape, lambda_max
                    )
                )
            np.testing.assert_allclose(module(t(batch)).numpy(), want, atol=3e-5)


def test_shapes_closed_form():
    """At q = mu - k*s (s = sigma / n_sigma): exp(-k^2/2), 1 - k^2/2, 1 - k/sqrt(2), floor 0."""
    n_sigma, mu, sigma = 2.0, 0.7, 0.1
    s = sigma / n_sigma
    expected = {
        "gaussian": lambda k: math.exp(-(k**2) / 2),
        "quadratic": lambda k: max(0.0, 1 - k**2 / 2),
        "linear": lambda k: max(0.0, 1 - k / math.sqrt(2)),
    }
    for shape in SHAPES:
        module = SoftMatchWeighting(4, n_sigma=n_sigma, shape=shape)
        module.mean.fill_(mu)
        module.var.fill_(sigma**2)
        for k in (0.0, 0.5, 1.0, 1.4, 2.0, 3.0):
            q = mu - k * s
            rest = (1 - q) / 3
            w = module(torch.tensor([[q, rest, rest, rest]], dtype=torch.float64)).item()
            assert w == pytest.approx(expected[shape](k), abs=1e-6), (shape, k)
        above = torch.tensor([[0.8, 0.1, 0.05, 0.05]], dtype=torch.float64)
        assert module(above).item() == 1.0


def test_shapes_order_below_mean():
    """Below mu: linear >= gaussian >= quadratic near mu; all vanish far below (except gaussian)."""
    ws = {}
    q = torch.linspace(0.26, 0.69, 50, dtype=torch.float64)
    probs = torch.stack([q, (1 - q) / 3, (1 - q) / 3, (1 - q) / 3], dim=1)
    for shape in SHAPES:
        module = SoftMatchWeighting(4, shape=shape)
        module.mean.fill_(0.7)
        module.var.fill_(0.01)
        ws[shape] = module(probs)
        assert (ws[shape][1:] >= ws[shape][:-1]).all()  # monotone in confidence
    assert (ws["quadratic"] <= ws["gaussian"] + 1e-12).all()
    assert (ws["linear"][-5:] <= ws["gaussian"][-5:]).all()  # just below mu the line is lower
    assert ws["linear"][0] == 0 and ws["quadratic"][0] == 0 and ws["gaussian"][0] > 0


@pytest.mark.parametrize("per_class", [False, True])
def test_default_gaussian_is_bit_identical_to_the_formula(per_class):
    """shape='gaussian' (the default) keeps the exact arithmetic of semimatch before shapes."""
    rng = np.random.default_rng(5)
    default = SoftMatchWeighting(6, momentum=0.6, per_class=per_class)
    explicit = SoftMatchWeighting(6, momentum=0.6, per_class=per_class, shape="gaussian")
    for _ in range(4):
        p = t(random_probs(rng, 50, 6, bias=1.0))
        default.update(p)
        explicit.update(p)
        q, cls = p.max(dim=1)
        mu = default.mean[cls] if per_class else default.mean.expand_as(q)
        var = default.var[cls] if per_class else default.var.expand_as(q)
        gauss = torch.exp(-((q - mu) ** 2) / (2 * var.clamp(min=1e-12) / 2.0**2))
        want = torch.where(q >= mu, torch.ones_like(q), gauss)
        torch.testing.assert_close(default(p), want, rtol=0, atol=0)
        torch.testing.assert_close(explicit(p), want, rtol=0, atol=0)
    assert "shape" not in default.describe()


def test_shape_validation_and_describe():
    with pytest.raises(ValueError, match="shape"):
        SoftMatchWeighting(3, shape="cubic")
    assert SoftMatchWeighting(3, shape="linear").describe()["shape"] == "linear"
    assert "shape='quadratic'" in repr(SoftMatchWeighting(3, shape="quadratic"))


@pytest.mark.parametrize("shape", SHAPES)
def test_shapes_state_dict_round_trip(shape):
    rng = np.random.default_rng(9)
    module = SoftMatchWeighting(5, momentum=0.5, shape=shape)
    for _ in range(3):
        module.update(t(random_probs(rng, 30, 5)))
    restored = SoftMatchWeighting(5, momentum=0.5, shape=shape)
    restored.load_state_dict(module.state_dict())
    for _ in range(3):
        p = t(random_probs(rng, 30, 5))
        module.update(p)
        restored.update(p)
        torch.testing.assert_close(restored(p), module(p), rtol=0, atol=0)
