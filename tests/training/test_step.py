"""train_step: the loss equation, gradient paths, the joint forward and the per-step metrics."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from helpers.reference_impl import (
    AlgorithmOracle,
    SoftMatchOracle,
    UniformAlignmentOracle,
    pseudo_label_metrics,
    softmax,
    step_loss,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.registry import build_algorithm
from semimatch.training.metrics import WindowSums, summarize
from semimatch.training.step import CONF_BINS, metric_sums, train_step

D, C = 5, 4  # input features and classes of the tiny models


class Recorder(nn.Module):
    """Wraps a model and records every forward call's input (and whether grad was enabled)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.detach().clone(), torch.is_grad_enabled()))
        return self.inner(x)


def linear(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, C).to(dtype)


def batch(seed: int, n_lb: int = 3, n_ulb: int = 8, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    x_lb = torch.randn(n_lb, D, generator=g) * scale
    y_lb = torch.randint(0, C, (n_lb,), generator=g)
    u_weak = torch.randn(n_ulb, D, generator=g) * scale
    u_strong = u_weak + torch.randn(n_ulb, D, generator=g)
    u_true = torch.randint(-1, C, (n_ulb,), generator=g)
    return x_lb, y_lb, u_weak, u_strong, u_true


def oracle_for(name: str, options: dict) -> AlgorithmOracle:
    if name in ("fixmatch", "pseudolabel"):
        return AlgorithmOracle(("fixed", options.get("tau", 0.95)))
    m = options.get("stat_momentum", 0.999)
    return AlgorithmOracle(SoftMatchOracle(C, m), UniformAlignmentOracle(C, m))


def logits_np(model: nn.Linear, x: torch.Tensor) -> np.ndarray:
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    return x.double().numpy() @ w.T + b


# --- The loss equation against the oracle --------------------------------------------------------


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    name=st.sampled_from(["fixmatch", "softmatch", "pseudolabel"]),
    lambda_u=st.sampled_from([1.0, 0.3, 2.0]),
    n_ulb=st.integers(1, 12),
)
def test_loss_and_gradients_match_oracle(seed, name, lambda_u, n_ulb):
    options = {"lambda_u": lambda_u}
    options.update({"tau": 0.5} if name != "softmatch" else {"stat_momentum": 0.6})
    algorithm = build_algorithm(name, C, **options)
    oracle = oracle_for(name, options)
    model = linear(seed)
    for step in range(2):
        x_lb, y_lb, u_weak, u_strong, _ = batch(seed * 7 + step, n_ulb=n_ulb)
        model.zero_grad()
        loss, sums = train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong)
        loss.backward()

        weak = logits_np(model, u_weak)
        student = weak if name == "pseudolabel" else logits_np(model, u_strong)
        weights, pseudo, _ = oracle.weigh(softmax(weak))
        want, sup, unsup = step_loss(
            logits_np(model, x_lb), y_lb.numpy(), student, pseudo, weights, lambda_u
        )
        assert loss.item() == pytest.approx(want, abs=1e-5)
        assert sums["sup_loss_sum"].item() / len(y_lb) == pytest.approx(sup, abs=1e-5)
        assert sums["unsup_loss_sum"].item() / n_ulb == pytest.approx(unsup, abs=1e-5)
        assert sums["weight_sum"].item() == pytest.approx(weights.sum(), abs=1e-4)

        # Gradients: the same equation written with torch autograd, weights and targets constant.
        manual = linear(seed)
        manual.load_state_dict(model.state_dict())
        student_in = u_weak if name == "pseudolabel" else u_strong
        ce_u = F.cross_entropy(manual(student_in), torch.as_tensor(pseudo), reduction="none")
        ref = (
            F.cross_entropy(manual(x_lb), y_lb)
            + lambda_u * (torch.as_tensor(weights, dtype=torch.float32) * ce_u).sum() / n_ulb
        )
        ref.backward()
        torch.testing.assert_close(model.weight.grad, manual.weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.bias.grad, manual.bias.grad, atol=1e-5, rtol=1e-4)


def log_probs(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probability rows (for the identity model)."""
    return torch.tensor(rows, dtype=torch.float64).log().float()


def test_unlabeled_mean_runs_over_all_samples():
    """Reference: (1/(mu*B)) sum_i w_i H(..) -- divide by all unlabeled samples, not the masked."""
    u_weak = log_probs([[0.97, 0.02, 0.01], [0.5, 0.3, 0.2], [0.01, 0.98, 0.01], [0.4, 0.4, 0.2]])
    u_strong = torch.tensor([[0.1, 0.5, -0.2], [1.0, 0.0, 0.0], [0.3, 0.2, 0.1], [0.0, 0.0, 2.0]])
    x_lb, y_lb = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    loss, sums = train_step(
        nn.Identity(), build_algorithm("fixmatch", 3), x_lb, y_lb, u_weak, u_strong
    )
    ce = F.cross_entropy(u_strong, torch.tensor([0, 0, 1, 0]), reduction="none")
    sup = F.cross_entropy(x_lb, y_lb)
    # Samples 0 and 2 pass tau = 0.95.
    assert loss.item() == pytest.approx((sup + (ce[0] + ce[2]) / 4).item(), abs=1e-6)
    assert loss.item() != pytest.approx((sup + (ce[0] + ce[2]) / 2).item(), abs=1e-3)
    assert summarize(sums_to_host(sums))["quantity"] == pytest.approx(0.5)


def test_no_confident_sample_gives_zero_unlabeled_loss():
    u_weak = log_probs([[0.5, 0.5], [0.6, 0.4]])
    loss, sums = train_step(
        nn.Identity(),
        build_algorithm("fixmatch", 2),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([1]),
        u_weak,
        u_weak.clone(),
    )
    assert sums["unsup_loss_sum"].item() == 0.0
    assert loss.item() == pytest.approx(
        F.cross_entropy(torch.tensor([[1.0, 0.0]]), torch.tensor([1])).item()
    )


def test_lambda_u_scales_only_the_unlabeled_term():
    parts = {}
    for lambda_u in (1.0, 0.25):
        algorithm = build_algorithm("fixmatch", C, tau=0.3, lambda_u=lambda_u)
        loss, sums = train_step(linear(1), algorithm, *batch(1)[:4])
        parts[lambda_u] = (
            loss.item(),
            sums["sup_loss_sum"].item() / 3,
            sums["unsup_loss_sum"].item() / 8,
        )
    for lambda_u, (loss, sup, unsup) in parts.items():
        assert unsup > 0
        assert loss == pytest.approx(sup + lambda_u * unsup, abs=1e-6)
    assert parts[1.0][1:] == pytest.approx(parts[0.25][1:])


# --- Gradient paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixmatch", "softmatch"])
def test_gradients_flow_only_through_labeled_and_strong_logits(name):
    options = {"tau": 0.4} if name == "fixmatch" else {"stat_momentum": 0.5}
    algorithm = build_algorithm(name, C, **options)
    model = linear(3)
    x_lb, y_lb, u_weak, u_strong, _ = batch(3, n_ulb=10, scale=3.0)
    # The weights this step will use, from a copy of the algorithm's state.
    weights, _ = copy.deepcopy(algorithm).weigh(torch.softmax(model(u_weak), 1).detach())
    for x in (x_lb, u_weak, u_strong):
        x.requires_grad_(True)
    loss, _ = train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong)
    loss.backward()
    assert u_weak.grad is None or torch.count_nonzero(u_weak.grad) == 0
    assert x_lb.grad.abs().sum(dim=1).gt(0).all()
    # A strong-view sample receives gradient exactly when its weight is non-zero.
    has_grad = u_strong.grad.abs().sum(dim=1) > 0
    assert has_grad.any()
    torch.testing.assert_close(has_grad, weights > 0)
    if name == "fixmatch":
        assert not has_grad.all()  # the case is not vacuous


def test_pseudolabel_gradient_flows_through_weak_view():
    algorithm = build_algorithm("pseudolabel", C, tau=0.4)
    x_lb, y_lb, u_weak, _, _ = batch(4, scale=3.0)
    u_weak.requires_grad_(True)
    loss, sums = train_step(linear(4), algorithm, x_lb, y_lb, u_weak)
    assert sums["weight_sum"].item() > 0
    loss.backward()
    assert torch.count_nonzero(u_weak.grad) > 0


# --- The forward passes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fixmatch", "softmatch"])
def test_joint_forward_is_one_call_over_the_concatenation(name):
    model = Recorder(linear(5))
    x_lb, y_lb, u_weak, u_strong, _ = batch(5)
    train_step(model, build_algorithm(name, C), x_lb, y_lb, u_weak, u_strong, forward_mode="joint")
    assert len(model.calls) == 1
    x, grad = model.calls[0]
    assert grad
    torch.testing.assert_close(x, torch.cat([x_lb, u_weak, u_strong]), rtol=0, atol=0)


def test_batchnorm_sees_the_joint_batch():
    model = nn.Sequential(nn.BatchNorm1d(D, momentum=1.0), nn.Linear(D, C))
    x_lb, y_lb, u_weak, u_strong, _ = batch(6)
    train_step(model, build_algorithm("softmatch", C), x_lb, y_lb, u_weak, u_strong)
    joint = torch.cat([x_lb, u_weak, u_strong])
    torch.testing.assert_close(model[0].running_mean, joint.mean(0))
    torch.testing.assert_close(model[0].running_var, joint.var(0))


def test_split_forward_computes_the_same_loss_without_batchnorm():
    x_lb, y_lb, u_weak, u_strong, _ = batch(7)
    joint_loss, _ = train_step(
        linear(7), build_algorithm("fixmatch", C, tau=0.4), x_lb, y_lb, u_weak, u_strong
    )
    model = Recorder(linear(7))
    split_loss, _ = train_step(
        model,
        build_algorithm("fixmatch", C, tau=0.4),
        x_lb,
        y_lb,
        u_weak,
        u_strong,
        forward_mode="split",
    )
    assert split_loss.item() == pytest.approx(joint_loss.item(), abs=1e-6)
    assert [g for _, g in model.calls] == [False, True]  # weak view without autograd
    torch.testing.assert_close(model.calls[0][0], u_weak)
    torch.testing.assert_close(model.calls[1][0], torch.cat([x_lb, u_strong]))


@pytest.mark.parametrize("name", ["fixmatch", "softmatch"])
def test_two_pass_forward_gives_the_joint_loss_and_metrics(name):
    """Default forward: same values as the joint forward (BN sees the joint batch)."""
    x_lb, y_lb, u_weak, u_strong, u_true = batch(9)
    results = {}
    for mode in ("joint", "two-pass"):
        torch.manual_seed(9)
        model = nn.Sequential(nn.Linear(D, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, C))
        algorithm = build_algorithm(name, C, **({"tau": 0.4} if name == "fixmatch" else {}))
        loss, sums = train_step(
            model, algorithm, x_lb, y_lb, u_weak, u_strong, u_true, forward_mode=mode
        )
        loss.backward()
        results[mode] = (loss, sums, model)
    (loss_j, sums_j, model_j), (loss_t, sums_t, model_t) = results.values()
    torch.testing.assert_close(loss_t, loss_j)
    for key in sums_j:
        torch.testing.assert_close(sums_t[key], sums_j[key])
    torch.testing.assert_close(model_t[1].running_mean, model_j[1].running_mean)
    # The first layer's gradient differs only by the weak rows' path through BN (stood in for).
    g_j, g_t = model_j[0].weight.grad.flatten(), model_t[0].weight.grad.flatten()
    assert F.cosine_similarity(g_j, g_t, dim=0) > 0.8


def test_two_pass_forward_without_batchnorm_is_the_joint_gradient():
    x_lb, y_lb, u_weak, u_strong, _ = batch(10)
    fixmatch = build_algorithm("fixmatch", C, tau=0.4)
    joint = linear(10)
    train_step(joint, fixmatch, x_lb, y_lb, u_weak, u_strong, forward_mode="joint")[0].backward()
    model = Recorder(linear(10))
    train_step(model, fixmatch, x_lb, y_lb, u_weak, u_strong, forward_mode="two-pass")[0].backward()
    assert [g for _, g in model.calls] == [False, True]  # weak rows alone, without autograd
    torch.testing.assert_close(model.calls[0][0], u_weak)
    torch.testing.assert_close(model.calls[1][0], torch.cat([x_lb, u_strong]))
    torch.testing.assert_close(model.inner.weight.grad, joint.weight.grad)


def test_pseudolabel_uses_weak_view_and_no_strong_view():
    x_lb, y_lb, u_weak, _, _ = batch(8)
    results = []
    for u_strong in (None, torch.full_like(u_weak, float("nan"))):
        model = Recorder(linear(8))
        loss, _ = train_step(
            model, build_algorithm("pseudolabel", C, tau=0.4), x_lb, y_lb, u_weak, u_strong
        )
        assert len(model.calls) == 1
        torch.testing.assert_close(model.calls[0][0], torch.cat([x_lb, u_weak]))
        results.append(loss.item())
    assert math.isfinite(results[0]) and results[0] == results[1]


def test_supervised_ignores_unlabeled_data():
    x_lb, y_lb, u_weak, u_strong, u_true = batch(9)
    model = Recorder(linear(9))
    nan = torch.full_like(u_weak, float("nan"))
    loss, sums = train_step(model, build_algorithm("supervised", C), x_lb, y_lb, nan, nan, u_true)
    assert len(model.calls) == 1
    torch.testing.assert_close(model.calls[0][0], x_lb)
    assert loss.item() == pytest.approx(F.cross_entropy(linear(9)(x_lb), y_lb).item())
    metrics = summarize(sums_to_host(sums))
    assert metrics["quantity"] is None and metrics["quality"] is None and metrics["pl_acc"] is None
    assert metrics["sup_loss"] == pytest.approx(loss.item())
    # The same result without any unlabeled input.
    loss2, _ = train_step(linear(9), build_algorithm("supervised", C), x_lb, y_lb)
    assert loss2.item() == loss.item()


def test_monitoring_labels_never_change_the_loss():
    x_lb, y_lb, u_weak, u_strong, u_true = batch(10, n_ulb=16)
    u_true = torch.arange(16) % C
    losses, grads = [], []
    for labels in (u_true, u_true[torch.randperm(16)], None, torch.full_like(u_true, -1)):
        model = linear(10)
        algorithm = build_algorithm("softmatch", C, stat_momentum=0.5)
        loss, _ = train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong, labels)
        loss.backward()
        losses.append(loss.item())
        grads.append(model.weight.grad.clone())
    assert len(set(losses)) == 1
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=0, atol=0)


def test_pseudo_labels_come_from_raw_probabilities():
    """Aligned argmax != raw argmax for the last sample: the step's target is the raw argmax."""
    rows = [[0.95, 0.05]] * 7 + [[0.6, 0.4]]
    probs = np.array(rows)
    ua = UniformAlignmentOracle(2)
    ua.update(probs)
    assert ua.align(probs)[-1].argmax() == 1 and probs[-1].argmax() == 0  # the construction
    u_weak = log_probs(rows)
    u_strong = torch.zeros(8, 2, requires_grad=True)
    algorithm = build_algorithm("softmatch", 2, stat_momentum=0.5)
    loss, sums = train_step(
        nn.Identity(), algorithm, torch.zeros(1, 2), torch.tensor([0]), u_weak, u_strong
    )
    loss.backward()
    np.testing.assert_array_equal(sums["class_count"].numpy(), [8, 0])
    # d CE(z, y) / dz = softmax(z) - onehot(y); at z = 0 with target 0 the row is w/N*[-.5, .5].
    g = u_strong.grad[-1]
    assert g[0].item() < 0 < g[1].item()
    weights, _, _ = AlgorithmOracle(SoftMatchOracle(2, 0.5), UniformAlignmentOracle(2, 0.5)).weigh(
        probs
    )
    np.testing.assert_allclose(g.numpy(), weights[-1] / 8 * np.array([-0.5, 0.5]), atol=1e-6)


def test_invalid_step_arguments():
    x_lb, y_lb, u_weak, u_strong, _ = batch(11)
    fixmatch = build_algorithm("fixmatch", C)
    with pytest.raises(ValueError, match="y_lb"):
        train_step(linear(), fixmatch, x_lb, y_lb[:-1], u_weak, u_strong)
    with pytest.raises(ValueError, match="u_strong"):
        train_step(linear(), fixmatch, x_lb, y_lb, u_weak, None)
    with pytest.raises(ValueError, match="u_strong"):
        train_step(linear(), fixmatch, x_lb, y_lb, u_weak, u_strong[:-1])
    with pytest.raises(ValueError, match="forward_mode"):
        train_step(linear(), fixmatch, x_lb, y_lb, u_weak, u_strong, forward_mode="fused")


# --- Per-step metrics: quantity, quality, pseudo-label accuracy ----------------------------------


def sums_to_host(sums: dict[str, torch.Tensor]) -> dict:
    window = WindowSums()
    window.add(sums)
    return window.reduce()


def test_quantity_quality_pl_acc_hand_made():
    rows = [
        [0.99, 0.005, 0.005],  # y_hat 0, w 1, true 0 -> correct
        [0.01, 0.97, 0.02],  # y_hat 1, w 1, true 2 -> wrong
        [0.2, 0.2, 0.6],  # y_hat 2, w 0, true 2 -> correct
        [0.5, 0.3, 0.2],  # y_hat 0, w 0, unknown
        [0.01, 0.01, 0.98],  # y_hat 2, w 1, true 2 -> correct
    ]
    u_true = torch.tensor([0, 2, 2, -1, 2])
    _, sums = train_step(
        nn.Identity(),
        build_algorithm("fixmatch", 3),
        torch.eye(3),
        torch.tensor([0, 1, 2]),
        log_probs(rows),
        log_probs(rows),
        u_true,
    )
    m = summarize(sums_to_host(sums))
    assert m["quantity"] == pytest.approx(3 / 5)
    assert m["full_weight_frac"] == pytest.approx(3 / 5)
    assert m["quality"] == pytest.approx(2 / 3)  # weighted: samples 0, 1, 4 known with w = 1
    assert m["pl_acc"] == pytest.approx(3 / 4)
    assert m["per_class_quantity"] == pytest.approx([0.5, 1.0, 0.5])
    assert m["per_class_pl_acc"] == pytest.approx([1.0, 0.0, 1.0])
    assert m["train_acc"] == pytest.approx(1.0)
    assert sum(m["conf_hist"]) == 5 and len(m["conf_hist"]) == CONF_BINS
    hist = m["conf_hist"]  # bins of width 1/50 over [0, 1]
    assert sum(hist[45:]) == 3 and sum(hist[24:32]) == 2  # {0.97, 0.98, 0.99}, {0.5, 0.6}
    want = pseudo_label_metrics(
        np.array([1, 1, 0, 0, 1]), np.array([0, 1, 2, 0, 2]), u_true.numpy()
    )
    assert m["quantity"] == pytest.approx(want["quantity"])
    assert m["quality"] == pytest.approx(want["quality"])
    assert m["pl_acc"] == pytest.approx(want["pl_acc"])


def test_quality_undefined_without_labels_or_weight():
    rows = [[0.6, 0.4], [0.55, 0.45]]
    algorithm = build_algorithm("fixmatch", 2)
    _, sums = train_step(
        nn.Identity(),
        algorithm,
        torch.zeros(1, 2),
        torch.tensor([0]),
        log_probs(rows),
        log_probs(rows),
        torch.tensor([0, 1]),
    )
    m = summarize(sums_to_host(sums))
    assert m["quantity"] == 0.0 and m["quality"] is None and m["pl_acc"] == 0.5
    _, sums = train_step(
        nn.Identity(),
        algorithm,
        torch.zeros(1, 2),
        torch.tensor([0]),
        log_probs(rows),
        log_probs(rows),
    )
    m = summarize(sums_to_host(sums))
    assert m["quality"] is None and m["pl_acc"] is None
    assert m["per_class_pl_acc"] == [None, None]


def test_quantity_is_divided_by_lambda_max():
    algorithm = SSLAlgorithm(FixedThreshold(0.5, lambda_max=2.0))
    assert algorithm.lambda_max == 2.0
    rows = [[0.9, 0.1], [0.7, 0.3], [0.5, 0.5], [0.4, 0.6]]
    loss, sums = train_step(
        nn.Identity(),
        algorithm,
        torch.zeros(1, 2),
        torch.tensor([0]),
        log_probs(rows),
        torch.zeros(4, 2),
        torch.tensor([0, 1, 0, 1]),
    )
    m = summarize(sums_to_host(sums))
    assert m["quantity"] == pytest.approx(1.0) and m["full_weight_frac"] == pytest.approx(1.0)
    assert m["quality"] == pytest.approx(0.75)  # weights cancel: 3 of 4 correct
    assert m["unsup_loss"] == pytest.approx(2.0 * math.log(2))  # w = 2, CE at z = 0 is log 2


def test_window_metrics_match_oracle_over_several_steps():
    algorithm = build_algorithm("softmatch", C, stat_momentum=0.6)
    oracle = oracle_for("softmatch", {"stat_momentum": 0.6})
    model = linear(12)
    window = WindowSums()
    all_w, all_pseudo, all_true = [], [], []
    for step in range(4):
        x_lb, y_lb, u_weak, u_strong, u_true = batch(100 + step, n_ulb=12, scale=3.0)
        _, sums = train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong, u_true)
        window.add(sums)
        w, pseudo, _ = oracle.weigh(softmax(logits_np(model, u_weak)))
        all_w.append(w)
        all_pseudo.append(pseudo)
        all_true.append(u_true.numpy())
    m = summarize(window.reduce())
    want = pseudo_label_metrics(
        np.concatenate(all_w), np.concatenate(all_pseudo), np.concatenate(all_true)
    )
    assert 0 < want["quantity"] < 1
    for key in ("quantity", "quality", "pl_acc"):
        assert m[key] == pytest.approx(want[key], abs=1e-5)


def test_metric_sums_shapes_are_fixed():
    """Every key has the same shape with and without unlabeled data (needed by all-reduce)."""
    x_lb, y_lb, u_weak, u_strong, _ = batch(13)
    _, ssl = train_step(linear(), build_algorithm("softmatch", C), x_lb, y_lb, u_weak, u_strong)
    _, sup = train_step(linear(), build_algorithm("supervised", C), x_lb, y_lb)
    assert set(ssl) == set(sup)
    for key in ssl:
        assert ssl[key].shape == sup[key].shape, key
        assert ssl[key].dtype == torch.float32 and not ssl[key].requires_grad
    direct = metric_sums(
        build_algorithm("supervised", C), linear()(x_lb), y_lb, torch.tensor(1.0), None
    )
    assert set(direct) == set(sup)
