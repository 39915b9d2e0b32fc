"""FlexMatch, FreeMatch (+ fairness loss), AdaMatch (+ its alignment) and Dash against the
float64 oracles of reference_impl (semimatch.methods: flexmatch, freematch, adamatch, dash,
alignment).

Masks are steps: a row whose confidence (or loss) lies within float32 rounding of its
threshold may legitimately fall on either side, so mask comparisons skip those rows only.
Thresholds tau are exact binary fractions, so the memory of FlexMatch never depends on how a
platform rounds 0.95.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import (
    DashOracle,
    DistributionAlignmentOracle,
    FlexMatchOracle,
    FreeMatchOracle,
    adamatch_weights,
    freematch_fairness_oracle,
    prob_batches,
    random_probs,
)
from semimatch.methods.adamatch import AdaMatchThreshold
from semimatch.methods.alignment import DistributionAlignment
from semimatch.methods.dash import DashThreshold
from semimatch.methods.flexmatch import FlexMatchThreshold
from semimatch.methods.freematch import FreeMatchThreshold, freematch_fairness_loss

FAST = settings(max_examples=20, deadline=None)
TAUS = st.sampled_from([0.5, 0.625, 0.75, 0.875])
ROUNDING = 1e-5


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def assert_mask_equal(got: np.ndarray, want: np.ndarray, margin: np.ndarray) -> None:
    """Equal masks on every row whose confidence is clear of its threshold."""
    clear = np.abs(margin) > ROUNDING
    np.testing.assert_array_equal(got[clear], want[clear])


# --- FlexMatch -----------------------------------------------------------------------------------


@FAST
@given(
    data=prob_batches(min_n=0),
    n_unlabeled=st.integers(5, 40),
    tau=TAUS,
    warmup=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_flexmatch_matches_oracle(data, n_unlabeled, tau, warmup, seed):
    """Memory, learning effects and masks over several steps; indices repeat within and
    across batches (the last row of an index wins), so the warm-up normaliser moves."""
    c, batches = data
    rng = np.random.default_rng(seed)
    module = FlexMatchThreshold(c, n_unlabeled, tau=tau, warmup=warmup)
    oracle = FlexMatchOracle(c, n_unlabeled, tau=tau, warmup=warmup)
    for probs in batches:
        idx = rng.integers(0, n_unlabeled, size=probs.shape[0])
        module.update(t(probs), torch.from_numpy(idx))
        got = module(t(probs)).numpy()
        thresholds = [oracle.threshold(int(np.argmax(r))) for r in probs]
        want = oracle.step(probs, idx)
        margin = probs.max(axis=1).astype(np.float64) - np.array(thresholds)
        assert_mask_equal(got, want, margin)
        # After the step, the module's memory equals the oracle's.
        np.testing.assert_array_equal(module.selected_label.numpy(), oracle.sel)
        np.testing.assert_allclose(module.learning_effect().numpy(), oracle.beta, atol=1e-6)


def test_flexmatch_hand_made_warmup():
    """N = 10, C = 3: beta(c) = sigma(c) / max(max sigma, unused) with warm-up."""
    module = FlexMatchThreshold(3, 10, tau=0.75)
    plain = FlexMatchThreshold(3, 10, tau=0.75, warmup=False)
    p = torch.tensor([[0.8, 0.1, 0.1], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]])
    idx = torch.tensor([0, 1, 2, 3])
    for m in (module, plain):
        m.update(p, idx)
        # First step: beta = 0, threshold 0: every row passes (USB: classwise_acc starts at 0).
        np.testing.assert_array_equal(m(p).numpy(), [1, 1, 1, 1])
        np.testing.assert_array_equal(m.selected_label[:4].numpy(), [0, 0, 1, -1])
    # Next update: sigma = (2, 1, 0), unused = 7.
    q = torch.tensor([[0.34, 0.33, 0.33]])
    module.update(q, torch.tensor([9]))
    plain.update(q, torch.tensor([9]))
    np.testing.assert_allclose(module.beta.numpy(), [2 / 7, 1 / 7, 0], atol=1e-7)
    np.testing.assert_allclose(plain.beta.numpy(), [1, 1 / 2, 0], atol=1e-7)
    b = np.array([2 / 7, 1 / 7, 0])
    np.testing.assert_allclose(module.thresholds().numpy(), 0.75 * b / (2 - b), atol=1e-7)
    np.testing.assert_allclose(plain.thresholds().numpy(), [0.75, 0.75 / 3, 0], atol=1e-7)
    assert module.describe()["unused"] == 7


def test_flexmatch_needs_valid_indices():
    module = FlexMatchThreshold(3, 8)
    p = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="indices"):
        module.update(p)
    with pytest.raises(ValueError, match=r"indices.*\[0, 8\)"):
        module.update(p, torch.tensor([0, 8]))
    with pytest.raises(ValueError, match=r"indices.*\(2,\)"):
        module.update(p, torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        module.update(p, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_unlabeled"):
        FlexMatchThreshold(3, 0)
    with pytest.raises(ValueError, match="num_unlabeled"):
        FlexMatchThreshold(3, 2.5)
    assert FlexMatchThreshold(3, np.int64(8)).num_unlabeled == 8  # a dataset length from numpy
    with pytest.raises(ValueError, match="move them together"):
        module.update(p.to("meta"), torch.tensor([0, 1]))


def test_flexmatch_memory_keeps_last_confident_prediction():
    module = FlexMatchThreshold(2, 3, tau=0.75)
    module.update(torch.tensor([[0.9, 0.1]]), torch.tensor([1]))
    module.update(torch.tensor([[0.4, 0.6]]), torch.tensor([1]))  # not confident: keeps 0
    assert module.selected_label.tolist() == [-1, 0, -1]
    module.update(torch.tensor([[0.2, 0.8], [0.9, 0.1]]), torch.tensor([1, 1]))  # last wins
    assert module.selected_label.tolist() == [-1, 0, -1]
    module.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([1, 1]))
    assert module.selected_label.tolist() == [-1, 1, -1]
    module.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))  # empty batch
    assert module.selected_label.tolist() == [-1, 1, -1]


# --- FreeMatch -----------------------------------------------------------------------------------


@FAST
@given(
    data=prob_batches(),
    momentum=st.floats(0.3, 0.99),
    use_quantile=st.booleans(),
    clip=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_freematch_matches_oracle(data, momentum, use_quantile, clip, seed):
    c, batches = data
    module = FreeMatchThreshold(c, momentum, use_quantile=use_quantile, clip=clip)
    oracle = FreeMatchOracle(c, momentum, use_quantile=use_quantile, clip=clip)
    probe = random_probs(np.random.default_rng(seed), 32, c, scale=2.0)
    for probs in batches:
        module.update(t(probs))
        oracle.update(probs)
        assert module.time_p.item() == pytest.approx(oracle.time_p, abs=1e-6)
        np.testing.assert_allclose(module.p_model.numpy(), oracle.p_model, atol=1e-6)
        np.testing.assert_allclose(module.label_hist.numpy(), oracle.label_hist, atol=1e-6)
        for batch in (probs, probe):
            top = max(oracle.p_model)
            thr = [oracle.time_p * oracle.p_model[int(np.argmax(r))] / top for r in batch]
            margin = batch.max(axis=1).astype(np.float64) - np.array(thr)
            assert_mask_equal(module(t(batch)).numpy(), oracle.weights(batch), margin)


def test_freematch_hand_made():
    m = 0.5
    module = FreeMatchThreshold(2, momentum=m)
    p = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]])
    module.update(p)
    assert module.time_p.item() == pytest.approx(0.5 * 0.5 + 0.5 * (0.9 + 0.7 + 0.6) / 3)
    np.testing.assert_allclose(module.p_model.numpy(), [0.25 + 0.5 * 2 / 3, 0.25 + 0.5 / 3])
    np.testing.assert_allclose(module.label_hist.numpy(), [0.25 + 0.5 * 2 / 3, 0.25 + 0.5 / 3])
    tau = module.time_p.item()
    np.testing.assert_allclose(
        module.thresholds().numpy(), [tau, tau * (0.25 + 0.5 / 3) / (0.25 + 1 / 3)], rtol=1e-6
    )
    module.update(torch.zeros(0, 2))  # an empty global batch changes nothing
    assert module.time_p.item() == pytest.approx(tau)


@FAST
@given(
    c=st.integers(2, 10),
    n=st.integers(0, 40),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 6.0),
)
def test_freematch_fairness_loss_matches_oracle(c, n, keep, seed, scale):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, c)) * scale).astype(np.float32)
    mask = (rng.random(n) < keep).astype(np.float32)
    p_model = rng.dirichlet(np.ones(c))
    label_hist = rng.dirichlet(np.ones(c))
    label_hist[1:][rng.random(c - 1) < 0.2] = 0.0  # 1/0 := 0 must hold
    got = freematch_fairness_loss(
        torch.from_numpy(logits), torch.from_numpy(mask), t(p_model), t(label_hist)
    ).item()
    want = freematch_fairness_oracle(logits, mask, p_model, label_hist)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_freematch_fairness_loss_gradient():
    """Autograd matches finite differences (float64), through mean(P_s) only."""
    rng = np.random.default_rng(3)
    logits = torch.from_numpy(rng.normal(size=(12, 4)) * 2).requires_grad_(True)
    mask = torch.from_numpy((rng.random(12) < 0.7).astype(np.float64))
    p_model = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    hist = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    def f(x):
        return freematch_fairness_loss(x, mask, p_model, hist)

    assert torch.autograd.gradcheck(f, (logits,))
    loss = f(logits)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[mask == 0] == 0).all()  # rows outside the mask get no gradient


def test_freematch_fairness_loss_empty_mask_is_zero_with_finite_gradient():
    logits = torch.randn(5, 3, requires_grad=True)
    loss = freematch_fairness_loss(logits, torch.zeros(5), torch.full((3,), 1 / 3), torch.ones(3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad == 0).all()


def test_freematch_fairness_method_uses_the_state():
    module = FreeMatchThreshold(3, momentum=0.5)
    module.update(torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]]))
    logits, mask = torch.randn(6, 3), torch.tensor([1.0, 0, 1, 1, 0, 1])
    torch.testing.assert_close(
        module.fairness_loss(logits, mask),
        freematch_fairness_loss(logits, mask, module.p_model, module.label_hist),
    )


# --- AdaMatch ------------------------------------------------------------------------------------


@FAST
@given(
    data=prob_batches(min_n=1),
    tau=st.sampled_from([0.6, 0.9, 0.95]),
    n_lb=st.integers(1, 16),
    seed=st.integers(0, 2**16),
)
def test_adamatch_matches_oracle(data, tau, n_lb, seed):
    c, batches = data
    rng = np.random.default_rng(seed)
    module = AdaMatchThreshold(tau)
    for probs in batches:
        probs_lb = random_probs(rng, n_lb, c, scale=4.0)
        module.update(t(probs), probs_lb=t(probs_lb))
        cut = tau * probs_lb.max(axis=1).astype(np.float64).mean()
        assert module.threshold.item() == pytest.approx(cut, abs=1e-6)
        margin = probs.max(axis=1).astype(np.float64) - cut
        assert_mask_equal(module(t(probs)).numpy(), adamatch_weights(probs, probs_lb, tau), margin)


def test_adamatch_needs_labeled_probs():
    module = AdaMatchThreshold(0.9)
    p = torch.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="probs_lb"):
        module.update(p)
    with pytest.raises(ValueError, match="probs_lb"):
        module.update(p, probs_lb=torch.full((2, 4), 0.25))
    module.update(p, probs_lb=torch.zeros(0, 3))  # empty labeled batch keeps the threshold
    assert module.threshold.item() == pytest.approx(0.9)


@FAST
@given(
    data=prob_batches(min_n=0),
    momentum=st.floats(0.3, 0.999),
    target=st.sampled_from(["model", "uniform"]),
    seed=st.integers(0, 2**16),
)
def test_distribution_alignment_matches_oracle(data, momentum, target, seed):
    c, batches = data
    rng = np.random.default_rng(seed)
    module = DistributionAlignment(c, momentum, target=target)
    oracle = DistributionAlignmentOracle(c, momentum, target=target)
    for probs in batches:
        probs_lb = random_probs(rng, int(rng.integers(0, 10)), c)
        module.update(t(probs), probs_lb=t(probs_lb))
        oracle.update(probs, probs_lb)
        if oracle.p_model is not None:
            np.testing.assert_allclose(module.p_model.numpy(), oracle.p_model, atol=1e-6)
        np.testing.assert_allclose(module.p_target.numpy(), oracle.p_target, atol=1e-6)
        np.testing.assert_allclose(module(t(probs)).numpy(), oracle.align(probs), atol=2e-6)


def test_distribution_alignment_needs_labeled_probs_for_model_target():
    with pytest.raises(ValueError, match="probs_lb"):
        DistributionAlignment(3).update(torch.full((2, 3), 1 / 3))
    DistributionAlignment(3, target="uniform").update(torch.full((2, 3), 1 / 3))


# --- Dash ----------------------------------------------------------------------------------------


@FAST
@given(
    data=prob_batches(min_n=1, steps=5),
    rho_hat=st.floats(0.05, 3.0),
    gamma=st.sampled_from([1.27, 2.0, 5.0]),
    period=st.integers(1, 3),
    temperature=st.sampled_from([0.5, 1.0]),
)
def test_dash_matches_oracle(data, rho_hat, gamma, period, temperature):
    c, batches = data
    module = DashThreshold(rho_hat, gamma=gamma, period=period, temperature=temperature)
    oracle = DashOracle(rho_hat, gamma=gamma, period=period, T=temperature)
    for probs in batches:
        module.update(t(probs))
        oracle.update()
        assert module.rho().item() == pytest.approx(oracle.rho(), rel=1e-12)
        losses = oracle.losses(probs)
        np.testing.assert_allclose(
            module.sample_loss(t(probs)).numpy(), losses, rtol=1e-6, atol=1e-9
        )
        assert_mask_equal(module(t(probs)).numpy(), oracle.weights(probs), losses - oracle.rho())


def test_dash_schedule_and_switch_to_hard_targets():
    module = DashThreshold(1.0, gamma=2.0, C=1.0, rho_min=0.2, period=2)
    rhos, hard = [], []
    for _ in range(8):
        module.update(torch.full((1, 2), 0.5))
        rhos.append(module.rho().item())
        hard.append(bool(module.hard()))
    assert rhos == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.2, 0.2]
    assert hard == [False] * 6 + [True] * 2
    p = torch.tensor([[0.7, 0.2, 0.1]])
    torch.testing.assert_close(module.target(p), torch.tensor([[1.0, 0.0, 0.0]]))
    soft = DashThreshold(1.0, temperature=0.5)
    want = p**2 / (p**2).sum()
    torch.testing.assert_close(soft.target(p), want)


def test_dash_needs_rho_init():
    module = DashThreshold()
    with pytest.raises(RuntimeError, match="set_rho_init"):
        module(torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="rho_init"):
        module.set_rho_init(float("nan"))
    module.set_rho_init(torch.tensor(0.7))
    assert module.rho().item() == pytest.approx(1.0001 * 0.7)


# --- State: checkpoints restore bit-exactly ------------------------------------------------------


def _drive(module, rng, steps, c=4, n_unlabeled=20):
    """Feed ``steps`` batches with whatever extra input each module needs."""
    outputs = []
    for _ in range(steps):
        p = t(random_probs(rng, 16, c, bias=1.0, scale=4.0))
        if isinstance(module, FlexMatchThreshold):
            module.update(p, torch.from_numpy(rng.integers(0, n_unlabeled, 16)))
        elif isinstance(module, (AdaMatchThreshold, DistributionAlignment)):
            module.update(p, probs_lb=t(random_probs(rng, 8, c, scale=4.0)))
        else:
            module.update(p)
        outputs.append(module(p))
    return outputs


FACTORIES = {
    "flexmatch": lambda: FlexMatchThreshold(4, 20, tau=0.75),
    "freematch": lambda: FreeMatchThreshold(4, momentum=0.6, use_quantile=True),
    "adamatch": lambda: AdaMatchThreshold(0.8),
    "distribution_alignment": lambda: DistributionAlignment(4, momentum=0.6),
    "dash": lambda: DashThreshold(1.5, period=2),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_is_bit_exact(name):
    module = FACTORIES[name]()
    _drive(module, np.random.default_rng(1), 5)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    restored = FACTORIES[name]()
    restored.load_state_dict(torch.load(buf, weights_only=True))
    for key, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0)
    a = _drive(module, np.random.default_rng(2), 4)
    b = _drive(restored, np.random.default_rng(2), 4)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_update_under_float64_default_dtype(name):
    """``torch.set_default_dtype(torch.float64)`` (common in numerical tests) must not break the
    statistics, which are kept in float32 whatever the default: no mixed-dtype index_add_."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        module = FACTORIES[name]()
        weights = _drive(module, np.random.default_rng(4), 3)
    finally:
        torch.set_default_dtype(old)
    assert all(bool(torch.isfinite(w).all()) for w in weights)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_meta_device_has_no_host_sync(name):
    """On a device without data (meta), update and weighting run: no value is read on the host
    (outside torchrun; there FlexMatch and FreeMatch's quantile read the gathered sizes)."""
    module = FACTORIES[name]()
    if isinstance(module, FreeMatchThreshold):  # torch.quantile has no meta kernel
        module = FreeMatchThreshold(4, momentum=0.6)
    module = module.to("meta")
    p = torch.full((6, 4), 0.25, device="meta")
    if isinstance(module, FlexMatchThreshold):
        module.update(p, torch.zeros(6, dtype=torch.long, device="meta"))
    elif isinstance(module, (AdaMatchThreshold, DistributionAlignment)):
        module.update(p, probs_lb=p)
    else:
        module.update(p)
    assert module(p).shape[0] == 6


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_protocol_and_describe(name):
    """nn.Modules with update/__call__; describe() is JSON-ready for the logs."""
    import json

    module = FACTORIES[name]()
    _drive(module, np.random.default_rng(3), 2)
    assert isinstance(module, torch.nn.Module)
    assert callable(module.update) and callable(module.describe)
    info = module.describe()
    assert isinstance(info["type"], str)
    json.dumps(info)
    if not isinstance(module, DistributionAlignment):
        assert module.lambda_max == 1.0
