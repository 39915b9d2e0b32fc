"""UniformAlignment against the reference (SoftMatch step 1) and tests/helpers/reference_impl.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import UniformAlignmentOracle, prob_batches, random_probs
from semimatch.methods.alignment import UniformAlignment

FAST = settings(max_examples=20, deadline=None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def test_initial_state_is_uniform_and_uninitialised():
    ua = UniformAlignment(4)
    assert set(dict(ua.named_buffers())) == {"p_model", "initialized"}
    torch.testing.assert_close(ua.p_model, torch.full((4,), 0.25))
    assert not bool(ua.initialized)
    # Before any update p_model is uniform, so the alignment is the identity.
    p = t(random_probs(np.random.default_rng(0), 10, 4))
    torch.testing.assert_close(ua(p), p)


def test_first_batch_sets_p_model_then_ema():
    m = 0.9
    ua = UniformAlignment(3, momentum=m)
    b1 = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]])
    ua.update(b1)
    # Initialised from the first batch's mean -- not an EMA step away from uniform.
    np.testing.assert_allclose(ua.p_model.numpy(), [0.7, 0.2, 0.1], atol=1e-7)
    assert bool(ua.initialized)
    b2 = torch.tensor([[0.0, 0.0, 1.0]])
    ua.update(b2)
    np.testing.assert_allclose(
        ua.p_model.numpy(),
        m * np.array([0.7, 0.2, 0.1]) + (1 - m) * np.array([0, 0, 1]),
        atol=1e-7,
    )


def test_uniform_init_makes_every_update_an_ema_step():
    """TorchSSL's variant: p_model starts at 1/C and the first batch is an EMA step from it."""
    m = 0.9
    ua = UniformAlignment(3, momentum=m, init="uniform")
    assert bool(ua.initialized) and "init='uniform'" in repr(ua)
    b1 = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1]])
    ua.update(b1)
    np.testing.assert_allclose(
        ua.p_model.numpy(), m / 3 + (1 - m) * np.array([0.7, 0.2, 0.1]), atol=1e-7
    )
    with pytest.raises(ValueError, match="init must be 'batch' or 'uniform'"):
        UniformAlignment(3, init="first")


def test_empty_batch_leaves_state_untouched():
    ua = UniformAlignment(3, momentum=0.5)
    ua.update(torch.zeros(0, 3))
    assert not bool(ua.initialized)
    torch.testing.assert_close(ua.p_model, torch.full((3,), 1 / 3))
    ua.update(torch.tensor([[0.5, 0.5, 0.0]]))
    ua.update(torch.zeros(0, 3))
    np.testing.assert_allclose(ua.p_model.numpy(), [0.5, 0.5, 0.0])


def test_hand_made_alignment():
    ua = UniformAlignment(2, momentum=0.999)
    ua.update(torch.tensor([[0.9, 0.1], [0.7, 0.3]]))  # p_model = [0.8, 0.2]
    out = ua(torch.tensor([[0.6, 0.4]], dtype=torch.float64))
    raw = np.array([0.6 / 0.8, 0.4 / 0.2])
    np.testing.assert_allclose(out.numpy()[0], raw / raw.sum(), rtol=1e-5)
    assert out.dtype == torch.float64


@FAST
@given(
    data=prob_batches(min_n=1),
    momentum=st.floats(0.0, 0.999),
    seed=st.integers(0, 2**16),
    init=st.sampled_from(["batch", "uniform"]),
)
def test_matches_oracle_over_several_steps(data, momentum, seed, init):
    c, batches = data
    ua = UniformAlignment(c, momentum, init=init)
    oracle = UniformAlignmentOracle(c, momentum, init=init)
    probe = random_probs(np.random.default_rng(seed), 16, c, scale=3.0)
    for probs in batches:
        ua.update(t(probs))
        oracle.update(probs)
        np.testing.assert_allclose(ua.p_model.numpy(), oracle.p_model, atol=1e-6)
        for x in (probs, probe):
            got = ua(t(x)).numpy()
            want = oracle.align(x)
            # The alignment divides by p_model, which can be ~0 for an absent class; compare
            # with a tolerance relative to each row's scale.
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@FAST
@given(
    data=prob_batches(),
    zero_class=st.booleans(),
    onehot=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
)
def test_rows_sum_to_one_and_stay_finite(data, zero_class, onehot, dtype):
    c, batches = data
    ua = UniformAlignment(c, momentum=0.9)
    rng = np.random.default_rng(len(batches))
    for probs in batches:
        if zero_class and probs.shape[0]:
            # A class no sample ever predicts: p_model gets an exact zero entry.
            probs = probs.copy()
            probs[:, 0] = 0.0
            probs[probs.sum(axis=1) == 0, 1] = 1.0
            probs /= probs.sum(axis=1, keepdims=True)
        ua.update(t(probs))
        probe = random_probs(rng, 12, c, zero_frac=0.5, onehot_frac=0.5 if onehot else 0.0)
        for x in (probs, probe):
            out = ua(t(x).to(dtype))
            assert out.dtype == dtype and out.shape == x.shape
            o = out.double()
            assert torch.isfinite(o).all()
            assert (o >= 0).all()
            if x.shape[0]:
                tol = 1e-2 if dtype == torch.float16 else 1e-5
                torch.testing.assert_close(
                    o.sum(1), torch.ones(x.shape[0], dtype=torch.float64), atol=tol, rtol=0
                )


def test_one_hot_rows_stay_one_hot_even_with_zero_p_model():
    ua = UniformAlignment(3, momentum=0.0)
    ua.update(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))  # p_model = [1, 0, 0]
    out = ua(torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    torch.testing.assert_close(out, torch.eye(3)[[1, 0, 2]])
    # A soft row with mass on a class p_model says never occurs is pushed towards it, finitely.
    out = ua(torch.tensor([[0.5, 0.5, 0.0]]))
    assert torch.isfinite(out).all() and out[0, 1] > 0.99


def test_alignment_flattens_the_class_distribution():
    """Dividing by p_model undoes a skewed prediction marginal (the purpose of UA)."""
    rng = np.random.default_rng(5)
    probs = random_probs(rng, 2000, 5, scale=1.0, bias=2.0)
    ua = UniformAlignment(5, momentum=0.0)
    ua.update(t(probs))
    raw_marginal = probs.mean(axis=0)
    aligned_marginal = ua(t(probs)).numpy().mean(axis=0)
    assert np.ptp(aligned_marginal) < 0.5 * np.ptp(raw_marginal)


# --- Validation and state ------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [1, 0, -1, 3.5])
def test_invalid_num_classes(num_classes):
    with pytest.raises(ValueError, match=r"num_classes.*>= 2"):
        UniformAlignment(num_classes)


@pytest.mark.parametrize("momentum", [-0.01, 1.0, 2.0])
def test_invalid_momentum(momentum):
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)"):
        UniformAlignment(3, momentum=momentum)


@pytest.mark.parametrize(
    "probs, pattern",
    [
        (torch.tensor([0.2, 0.8, 0.0]), r"probs.*\(N, C\)"),
        (torch.full((2, 2), 0.5), r"probs.*num_classes=3"),
        (torch.tensor([[0.2, 0.2, 0.2]]), r"probs.*sum to 1"),
        (torch.tensor([[-0.5, 1.0, 0.5]]), r"probs.*non-negative"),
        (torch.tensor([[float("inf"), 0.0, 0.0]]), r"probs.*(NaN|finite)"),
    ],
)
def test_invalid_probs(probs, pattern):
    ua = UniformAlignment(3)
    with pytest.raises(ValueError, match=pattern):
        ua.update(probs)
    with pytest.raises(ValueError, match=pattern):
        ua(probs)
    assert not bool(ua.initialized)


def test_state_dict_round_trip_and_checkpoint(tmp_path):
    rng = np.random.default_rng(7)
    ua = UniformAlignment(6, momentum=0.7)
    for _ in range(3):
        ua.update(t(random_probs(rng, 30, 6, bias=2.0)))
    torch.save(ua.state_dict(), tmp_path / "ua.pt")
    restored = UniformAlignment(6, momentum=0.7)
    restored.load_state_dict(torch.load(tmp_path / "ua.pt", weights_only=True))
    assert bool(restored.initialized)
    for _ in range(2):
        p = t(random_probs(rng, 30, 6, bias=2.0))
        torch.testing.assert_close(restored(p), ua(p), rtol=0, atol=0)
        restored.update(p)
        ua.update(p)
    torch.testing.assert_close(restored.p_model, ua.p_model, rtol=0, atol=0)


def test_restored_before_first_update_still_initialises_from_first_batch(tmp_path):
    fresh = UniformAlignment(3, momentum=0.9)
    restored = UniformAlignment(3, momentum=0.9)
    restored.load_state_dict(fresh.state_dict())
    restored.update(torch.tensor([[0.9, 0.05, 0.05]]))
    np.testing.assert_allclose(restored.p_model.numpy(), [0.9, 0.05, 0.05], atol=1e-7)


def test_dtype_and_device_moves():
    rng = np.random.default_rng(8)
    ua = UniformAlignment(4, momentum=0.8)
    ref = UniformAlignment(4, momentum=0.8)
    double = UniformAlignment(4, momentum=0.8).to(torch.float64)
    assert double.p_model.dtype == torch.float64 and double.initialized.dtype == torch.bool
    for _ in range(3):
        p = t(random_probs(rng, 20, 4, bias=1.0))
        for module in (ua, ref, double):
            module.update(p)
    torch.testing.assert_close(double.p_model.float(), ref.p_model, atol=1e-6, rtol=0)
    torch.testing.assert_close(double(p), ref(p), atol=1e-6, rtol=0)
    moved = ua.to("cpu")
    moved.update(p)
    meta = UniformAlignment(4).to("meta")  # no host reads in update/forward
    meta.update(p.to("meta"))
    assert meta(p.to("meta")).shape == p.shape
    if torch.cuda.is_available():
        cuda = ua.to("cuda")
        cuda.update(p.cuda())
        torch.testing.assert_close(cuda(p.cuda()).cpu(), ref(p), atol=1e-6, rtol=0)
