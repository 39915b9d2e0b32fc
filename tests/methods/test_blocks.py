"""FixedThreshold and SoftMatchWeighting against the reference equations (reference_impl)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import (
    SoftMatchOracle,
    fixed_threshold_weights,
    prob_batches,
    random_probs,
)
from semimatch.methods.blocks import check_probs
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.softmatch import SoftMatchWeighting

FAST = settings(max_examples=20, deadline=None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


# --- FixedThreshold ------------------------------------------------------------------------------


@FAST
@given(
    data=prob_batches(steps=1),
    tau=st.floats(0.05, 1.0),
    lambda_max=st.floats(0.1, 3.0),
)
def test_fixed_threshold_matches_oracle(data, tau, lambda_max):
    _, (probs,) = data
    module = FixedThreshold(tau, lambda_max=lambda_max)
    module.update(t(probs))  # a no-op, but must accept any valid batch
    got = module(t(probs)).numpy()
    want = fixed_threshold_weights(probs, tau, lambda_max)
    # The step is discontinuous at tau: compare only rows not within float32 rounding of it.
    clear = np.abs(probs.max(axis=1).astype(np.float64) - tau) > 1e-6
    np.testing.assert_allclose(got[clear], want[clear], rtol=1e-6)
    assert got.shape == (probs.shape[0],)
    assert set(np.unique(got)) <= {0.0, np.float32(lambda_max)}


def test_fixed_threshold_hand_made():
    probs = torch.tensor([[0.96, 0.04], [0.949, 0.051], [0.2, 0.8], [0.0, 1.0]])
    np.testing.assert_array_equal(FixedThreshold(0.95)(probs).numpy(), [1, 0, 0, 1])
    # ">=": a confidence exactly at tau passes (0.75 is exact in binary floating point).
    assert FixedThreshold(0.75)(torch.tensor([[0.75, 0.25]])).item() == 1.0
    # tau = 1 is allowed: only exactly confident rows count.
    np.testing.assert_array_equal(FixedThreshold(1.0)(probs).numpy(), [0, 0, 0, 1])
    np.testing.assert_array_equal(FixedThreshold(0.5, lambda_max=2.0)(probs).numpy(), [2, 2, 2, 2])


def test_fixed_threshold_has_no_state():
    module = FixedThreshold(0.7)
    assert dict(module.state_dict()) == {}
    probs = torch.tensor([[0.75, 0.25], [0.6, 0.4]])
    before = module(probs)
    for _ in range(3):
        module.update(torch.softmax(torch.randn(16, 2), 1))
    torch.testing.assert_close(module(probs), before)
    assert module.describe() == {"type": "fixed", "tau": 0.7, "lambda_max": 1.0}


# --- SoftMatchWeighting: initial state, single steps, closed forms -------------------------------


@pytest.mark.parametrize("per_class", [False, True])
def test_softmatch_initial_state(per_class):
    c = 7
    module = SoftMatchWeighting(c, per_class=per_class)
    size = c if per_class else 1
    assert set(dict(module.named_buffers())) == {"mean", "var"}
    torch.testing.assert_close(module.mean, torch.full((size,), 1 / c))
    torch.testing.assert_close(module.var, torch.ones(size))
    # Every valid row has max >= 1/C = mean_0, so the untrained function gives full weight.
    probs = t(random_probs(np.random.default_rng(0), 30, c))
    torch.testing.assert_close(module(probs), torch.ones(30))


def test_softmatch_one_step_mean_and_unbiased_var():
    # Two samples: the unbiased variance is twice the biased one, so the two cannot be confused.
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.2, 0.3]])
    m = 0.8
    module = SoftMatchWeighting(3, momentum=m)
    module.update(probs)
    q = np.array([0.9, 0.5])
    assert module.mean.item() == pytest.approx(m / 3 + (1 - m) * q.mean(), abs=1e-7)
    assert module.var.item() == pytest.approx(m * 1.0 + (1 - m) * q.var(ddof=1), abs=1e-7)
    assert module.var.item() != pytest.approx(m * 1.0 + (1 - m) * q.var(ddof=0), abs=1e-4)


@pytest.mark.parametrize("n_sigma", [1.0, 2.0, 3.0])
def test_softmatch_gaussian_closed_form(n_sigma):
    """At q = mu - k*sigma the weight is exp(-(k*n_sigma)^2 / 2) (reference, SoftMatch step 3)."""
    module = SoftMatchWeighting(4, n_sigma=n_sigma)
    module.mean.fill_(0.7)
    module.var.fill_(0.01)  # sigma = 0.1
    for k in (0.5, 1.0, 2.0):
        q = 0.7 - k * 0.1
        rest = (1 - q) / 3
        w = module(torch.tensor([[q, rest, rest, rest]], dtype=torch.float64)).item()
        assert w == pytest.approx(math.exp(-((k * n_sigma) ** 2) / 2), rel=1e-5)
    above = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.97, 0.01, 0.01, 0.01]], dtype=torch.float64)
    np.testing.assert_array_equal(module(above).numpy(), [1.0, 1.0])


@pytest.mark.parametrize("lambda_max", [0.5, 1.0, 4.0])
def test_softmatch_lambda_max_scales_weights(lambda_max):
    rng = np.random.default_rng(1)
    base, scaled = (
        SoftMatchWeighting(5, momentum=0.5),
        SoftMatchWeighting(5, momentum=0.5, lambda_max=lambda_max),
    )
    for _ in range(3):
        p = t(random_probs(rng, 32, 5))
        base.update(p)
        scaled.update(p)
    p = t(random_probs(rng, 64, 5))
    w = scaled(p)
    torch.testing.assert_close(w, lambda_max * base(p))
    assert w.max().item() == pytest.approx(lambda_max)
    assert (w < lambda_max).any() and (w >= 0).all()


def test_softmatch_zero_variance_is_finite():
    """momentum 0 and identical confidences give var = 0: no NaN/inf, step function remains."""
    module = SoftMatchWeighting(2, momentum=0.0)
    module.update(torch.tensor([[0.8, 0.2]] * 4))
    assert 0.0 <= module.var.item() < 1e-12
    assert module.mean.item() == pytest.approx(0.8)
    w = module(torch.tensor([[0.8, 0.2], [0.9, 0.1], [0.7, 0.3]]))
    assert torch.isfinite(w).all() and 0.0 <= w[0].item() <= 1.0
    np.testing.assert_allclose(w[1:].numpy(), [1.0, 0.0], atol=1e-12)


def test_softmatch_momentum_zero_uses_batch_statistics():
    rng = np.random.default_rng(2)
    module = SoftMatchWeighting(6, momentum=0.0)
    for _ in range(3):
        p = random_probs(rng, 20, 6)
        module.update(t(p))
    q = p.max(axis=1).astype(np.float64)
    assert module.mean.item() == pytest.approx(q.mean(), abs=1e-6)
    assert module.var.item() == pytest.approx(q.var(ddof=1), abs=1e-6)


def test_softmatch_weights_monotone_in_confidence():
    module = SoftMatchWeighting(3, momentum=0.5)
    module.update(t(random_probs(np.random.default_rng(3), 40, 3)))
    q = torch.linspace(0.34, 1.0, 200, dtype=torch.float64)
    probs = torch.stack([q, (1 - q) / 2, (1 - q) / 2], dim=1)
    w = module(probs)
    assert (w[1:] >= w[:-1]).all()
    assert w[-1].item() == 1.0 and w[0].item() < 1.0


# --- SoftMatchWeighting vs the oracle on random inputs -------------------------------------------


@FAST
@given(
    data=prob_batches(),
    momentum=st.floats(0.3, 0.999),
    n_sigma=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    per_class=st.booleans(),
    lambda_max=st.sampled_from([1.0, 0.5, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_softmatch_ema_and_weights_match_oracle(
    data, momentum, n_sigma, per_class, lambda_max, seed
):
    c, batches = data
    module = SoftMatchWeighting(c, momentum, n_sigma, per_class, lambda_max=lambda_max)
    oracle = SoftMatchOracle(c, momentum, n_sigma, per_class, lambda_max=lambda_max)
    probe = random_probs(np.random.default_rng(seed), 32, c, scale=2.0)
    for probs in batches:
        module.update(t(probs))
        oracle.update(probs)
        np.testing.assert_allclose(module.mean.numpy(), oracle.mean, atol=1e-6)
        np.testing.assert_allclose(module.var.numpy(), oracle.var, atol=1e-6)
        np.testing.assert_allclose(module(t(probs)).numpy(), oracle.weights(probs), atol=2e-5)
        np.testing.assert_allclose(module(t(probe)).numpy(), oracle.weights(probe), atol=2e-5)


@FAST
@given(data=prob_batches(num_classes=5, steps=4, min_n=1), momentum=st.floats(0.3, 0.99))
def test_softmatch_per_class_absent_classes_keep_state(data, momentum):
    _, batches = data
    module = SoftMatchWeighting(5, momentum=momentum, per_class=True)
    for probs in batches:
        # Drop classes 3 and 4 from this batch (by predicted class): their state must not move.
        keep = probs[probs.argmax(axis=1) < 3]
        mean_before, var_before = module.mean.clone(), module.var.clone()
        module.update(t(keep))
        torch.testing.assert_close(module.mean[3:], mean_before[3:], rtol=0, atol=0)
        torch.testing.assert_close(module.var[3:], var_before[3:], rtol=0, atol=0)
    torch.testing.assert_close(module.mean[3:], torch.full((2,), 0.2))
    torch.testing.assert_close(module.var[3:], torch.ones(2))


def test_softmatch_per_class_groups_by_predicted_class():
    m = 0.5
    module = SoftMatchWeighting(3, momentum=m, per_class=True)
    probs = torch.tensor(
        [
            [0.9, 0.05, 0.05],  # class 0
            [0.7, 0.2, 0.1],  # class 0
            [0.1, 0.6, 0.3],  # class 1, alone: mean moves, var stays (undefined for n = 1)
        ]
    )
    module.update(probs)
    np.testing.assert_allclose(
        module.mean.numpy(), [m / 3 + (1 - m) * 0.8, m / 3 + (1 - m) * 0.6, 1 / 3], atol=1e-7
    )
    np.testing.assert_allclose(
        module.var.numpy(), [m + (1 - m) * np.var([0.9, 0.7], ddof=1), 1.0, 1.0], atol=1e-7
    )
    # Same confidence, different predicted class -> the class's own mean decides.
    module.mean.copy_(torch.tensor([0.9, 0.5, 0.5]))
    w = module(torch.tensor([[0.6, 0.3, 0.1], [0.3, 0.6, 0.1]]))
    assert w[0].item() < 1.0 and w[1].item() == 1.0


def test_softmatch_global_batch_of_one_keeps_variance():
    module = SoftMatchWeighting(2, momentum=0.5)
    module.update(torch.tensor([[0.9, 0.1]]))
    assert module.mean.item() == pytest.approx(0.5 * 0.5 + 0.5 * 0.9)
    assert module.var.item() == 1.0
    module.update(torch.zeros(0, 2))  # an empty batch changes nothing
    assert module.mean.item() == pytest.approx(0.7)


# --- Validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, -0.1, 1.0001, 2.0, float("nan")])
def test_tau_out_of_range(tau):
    with pytest.raises(ValueError, match=r"tau.*\(0, 1\]"):
        FixedThreshold(tau)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.5])
def test_num_classes_below_two(num_classes):
    with pytest.raises(ValueError, match=r"num_classes.*>= 2"):
        SoftMatchWeighting(num_classes)


@pytest.mark.parametrize("num_classes", [float("nan"), float("inf")])
def test_num_classes_non_finite_is_named(num_classes):
    # A config typo must give the documented ValueError naming the argument, not a bare
    # "cannot convert float NaN to integer" / OverflowError from int().
    with pytest.raises(ValueError, match="num_classes"):
        SoftMatchWeighting(num_classes)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, float("nan")])
def test_momentum_out_of_range(momentum):
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)"):
        SoftMatchWeighting(4, momentum=momentum)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_sigma": 0.0}, "n_sigma"),
        ({"n_sigma": -1}, "n_sigma"),
        ({"lambda_max": 0.0}, "lambda_max"),
    ],
)
def test_other_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SoftMatchWeighting(4, **kwargs)
    if name == "lambda_max":
        with pytest.raises(ValueError, match=name):
            FixedThreshold(0.9, **kwargs)


BAD_PROBS = {
    "1-D": (torch.tensor([0.5, 0.5, 0.0]), r"probs.*\(N, C\)"),
    "3-D": (torch.full((2, 1, 3), 1 / 3), r"probs.*\(N, C\)"),
    "columns": (torch.full((2, 4), 0.25), r"probs.*num_classes=3"),
    "sum": (torch.tensor([[0.5, 0.4, 0.0]]), r"probs.*sum to 1"),
    "negative": (torch.tensor([[1.2, -0.2, 0.0]]), r"probs.*non-negative"),
    "nan": (torch.tensor([[float("nan"), 0.5, 0.5]]), r"probs.*(NaN|finite)"),
    "integer": (torch.tensor([[1, 0, 0]]), r"probs.*floating"),
    "not a tensor": (np.full((2, 3), 1 / 3), r"probs.*\(N, C\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROBS))
@pytest.mark.parametrize(
    "module",
    [FixedThreshold(0.9), SoftMatchWeighting(3), SoftMatchWeighting(3, per_class=True)],
    ids=["fixed", "softmatch", "softmatch_per_class"],
)
def test_invalid_probs_raise_value_error(case, module):
    probs, pattern = BAD_PROBS[case]
    if case == "columns" and isinstance(module, FixedThreshold):
        pattern = None  # a threshold is class-count agnostic: 4 columns are valid
    if pattern is None:
        module.update(probs)
        return
    state = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=pattern):
        module.update(probs)
    with pytest.raises(ValueError, match=pattern):
        module(probs)
    for k, v in module.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_check_probs_accepts_float_rounding():
    probs = torch.softmax(torch.randn(100, 10) * 20, dim=1)
    check_probs(probs, 10)
    check_probs(probs.half(), 10)
    check_probs(torch.zeros(0, 10), 10)


# --- State in buffers ----------------------------------------------------------------------------


def _trained(per_class: bool, steps: int = 4) -> tuple[SoftMatchWeighting, np.random.Generator]:
    rng = np.random.default_rng(11)
    module = SoftMatchWeighting(6, momentum=0.6, n_sigma=1.5, per_class=per_class)
    for _ in range(steps):
        module.update(t(random_probs(rng, 40, 6, bias=1.0)))
    return module, rng


@pytest.mark.parametrize("per_class", [False, True])
def test_state_dict_round_trip_and_checkpoint(per_class, tmp_path):
    module, rng = _trained(per_class)
    path = tmp_path / "w.pt"
    torch.save(module.state_dict(), path)
    restored = SoftMatchWeighting(6, momentum=0.6, n_sigma=1.5, per_class=per_class)
    restored.load_state_dict(torch.load(path, weights_only=True))
    # Same weights now, and the same trajectory afterwards.
    for _ in range(3):
        p = t(random_probs(rng, 40, 6, bias=1.0))
        torch.testing.assert_close(restored(p), module(p), rtol=0, atol=0)
        module.update(p)
        restored.update(p)
    torch.testing.assert_close(restored.mean, module.mean, rtol=0, atol=0)
    torch.testing.assert_close(restored.var, module.var, rtol=0, atol=0)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    assert set(torch.load(buf, weights_only=True)) == {"mean", "var"}


@pytest.mark.parametrize("per_class", [False, True])
def test_float64_module_keeps_working(per_class):
    """`.to(torch.float64)` must not break `update` (nn.Module.to casts the buffers)."""
    module, rng = _trained(per_class)
    double = SoftMatchWeighting(6, momentum=0.6, n_sigma=1.5, per_class=per_class)
    double.load_state_dict(module.state_dict())
    double = double.to(torch.float64)
    assert double.mean.dtype == torch.float64
    for _ in range(2):
        p = t(random_probs(rng, 40, 6, bias=1.0))
        double.update(p)
        module.update(p)
        torch.testing.assert_close(double.mean.float(), module.mean, atol=1e-6, rtol=0)
        torch.testing.assert_close(double(p), module(p), atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_class", [False, True])
def test_device_moves_keep_working(per_class):
    module, rng = _trained(per_class)
    p = t(random_probs(rng, 40, 6))
    same = module.to("cpu")
    same.update(p)
    assert same(p).device.type == "cpu"
    # The meta device has no data: update/forward must not read values on the host, i.e. the
    # hot path has no device->host synchronisation.
    meta = SoftMatchWeighting(6, per_class=per_class).to("meta")
    meta.update(p.to("meta"))
    assert meta(p.to("meta")).shape == (40,)
    if torch.cuda.is_available():
        cuda = module.to("cuda")
        cuda.update(p.cuda())
        assert cuda(p.cuda()).device.type == "cuda"


def test_describe():
    module, _ = _trained(False)
    d = module.describe()
    assert d["type"] == "softmatch" and d["n_sigma"] == 1.5
    assert d["mean"] == pytest.approx(module.mean.item())
    assert d["std"] == pytest.approx(math.sqrt(module.var.item()))
    d = _trained(True)[0].describe()
    assert len(d["mean"]) == 6 and len(d["std"]) == 6
