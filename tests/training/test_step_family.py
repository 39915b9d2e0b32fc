"""train_step for the rest of the family (FlexMatch, FreeMatch, AdaMatch, UDA, Dash, SoftMatch's
shapes)
against the float64 oracles of ``reference_impl``: loss, its parts and its gradient, over random
batches and several steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.reference_impl import (
    AlgorithmOracle,
    DashOracle,
    DistributionAlignmentOracle,
    FlexMatchOracle,
    FreeMatchOracle,
    SoftMatchOracle,
    UniformAlignmentOracle,
    adamatch_weights,
    cross_entropy,
    fixed_threshold_weights,
    freematch_fairness_oracle,
    sharpen_oracle,
    softmatch_shape_weight,
    softmax,
)
from semimatch.methods.registry import build_algorithm
from semimatch.training.metrics import WindowSums, summarize
from semimatch.training.step import StepInfo, train_step

D, C = 5, 4  # input features and classes of the tiny models
STEPS = 4


def linear(seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(D, C)


def batch(seed: int, n_lb: int = 6, n_ulb: int = 12, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    x_lb = torch.randn(n_lb, D, generator=g) * scale
    y_lb = torch.randint(0, C, (n_lb,), generator=g)
    u_weak = torch.randn(n_ulb, D, generator=g) * scale
    u_strong = u_weak + torch.randn(n_ulb, D, generator=g)
    u_true = torch.randint(-1, C, (n_ulb,), generator=g)
    return x_lb, y_lb, u_weak, u_strong, u_true


def logits_np(model: nn.Linear, x: torch.Tensor) -> np.ndarray:
    w = model.weight.detach().double().numpy()
    b = model.bias.detach().double().numpy()
    return x.double().numpy() @ w.T + b


def soft_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row ``-sum_k t_k log softmax(z)_k``, float64 with explicit loops."""
    out = []
    for z, t in zip(np.asarray(logits, dtype=np.float64), targets, strict=True):
        m = max(z)
        log_norm = m + math.log(sum(math.exp(v - m) for v in z))
        out.append(-sum(tk * (zk - log_norm) for tk, zk in zip(t, z, strict=True)))
    return np.array(out)


def onehot(labels: np.ndarray) -> np.ndarray:
    out = np.zeros((len(labels), C))
    out[np.arange(len(labels)), labels] = 1.0
    return out


class StepOracle:
    """One algorithm's step in float64: ``(loss, sup, unsup, extra, weights, pseudo, targets)``
    from the logits of the labeled, weak and strong rows."""

    def __init__(self, name: str, options: dict) -> None:
        self.name, self.o = name, options
        m = options.get("stat_momentum", 0.999)
        if name == "freematch":
            self.free = FreeMatchOracle(C, m)
        elif name == "adamatch":
            self.da = DistributionAlignmentOracle(C, m)
        elif name == "dash":
            self.dash = None  # made at the end of the warm-up
        elif name == "softmatch":
            self.sm = AlgorithmOracle(SoftMatchOracle(C, m), UniformAlignmentOracle(C, m))
            self.shape = options.get("shape", "gaussian")

    def step(self, it: int, z_lb, y_lb, z_weak, z_strong):
        o = self.o
        sup = float(np.mean(cross_entropy(z_lb, y_lb)))
        if self.name == "dash" and it < o["dash_warmup"]:
            return sup, sup, None, None, None, None, None
        p = softmax(z_weak)
        pseudo = p.argmax(axis=1)
        targets, extra = None, None
        if self.name == "freematch":
            self.free.update(p)
            w = self.free.weights(p)
        elif self.name == "adamatch":
            p_lb = softmax(z_lb)
            self.da.update(p, p_lb)
            pa = self.da.align(p)
            w = adamatch_weights(pa, p_lb, o.get("tau", 0.95))
            pseudo = pa.argmax(axis=1)  # AdaMatch: pseudo-labels from the aligned probs
        elif self.name == "uda":
            w = fixed_threshold_weights(p, o.get("tau", 0.8))
            targets = sharpen_oracle(p, o.get("temperature", 0.4))
        elif self.name == "dash":
            if it == o["dash_warmup"]:  # rho_init: the labeled loss after the warm-up
                self.dash = DashOracle(
                    sup, o["dash_gamma"], 1.0001, o["rho_min"], o["rho_period"], o["temperature"]
                )
            self.dash.update()
            w = self.dash.weights(p)
            hard = self.dash.rho() <= self.dash.rho_min
            targets = onehot(pseudo) if hard else sharpen_oracle(p, o["temperature"])
        elif self.name == "softmatch":
            al = self.sm.alignment
            al.update(p)
            q = al.align(p)
            self.sm.weighting.update(q)
            mu, var = self.sm.weighting.mean[0], self.sm.weighting.var[0]
            w = np.array([softmatch_shape_weight(r.max(), mu, var, 2.0, self.shape) for r in q])
        n = len(p)
        if targets is None:
            per = cross_entropy(z_strong, pseudo)
        else:
            per = soft_cross_entropy(z_strong, targets)
        unsup = sum(float(a) * float(b) for a, b in zip(w, per, strict=True)) / n
        loss = sup + o.get("lambda_u", 1.0) * unsup
        if self.name == "freematch":
            extra = freematch_fairness_oracle(z_strong, w, self.free.p_model, self.free.label_hist)
            loss += o["lambda_e"] * extra
        return loss, sup, unsup, extra, w, pseudo, targets


def torch_loss(model, x_lb, y_lb, u_strong, w, pseudo, targets, extra_state, o, name):
    """The same equation with torch autograd (float64), weights and targets constant."""
    m = nn.Linear(D, C).double()
    m.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    z = m(u_strong.double())
    loss = F.cross_entropy(m(x_lb.double()), y_lb)
    if w is None:
        return m, loss
    log_q = torch.log_softmax(z, dim=1)
    t = torch.as_tensor(onehot(pseudo) if targets is None else targets)
    per = -(t * log_q).sum(dim=1)
    loss = loss + o.get("lambda_u", 1.0) * (torch.as_tensor(w) * per).sum() / len(w)
    if extra_state is not None:  # FreeMatch's fairness term, written from the equation
        p_model, label_hist = (torch.as_tensor(v, dtype=torch.float64) for v in extra_state)
        keep = torch.as_tensor(w) > 0
        if keep.any():
            prob = torch.softmax(z[keep], dim=1)
            hist = torch.bincount(prob.argmax(1), minlength=C).double() / keep.sum()
            mean = prob.mean(0)
            a = torch.where(label_hist > 0, p_model / label_hist, torch.zeros_like(p_model))
            b = torch.where(hist > 0, mean / torch.where(hist > 0, hist, 1.0), 0.0 * mean)
            a, b = a / a.sum(), b / b.sum()
            loss = loss + o["lambda_e"] * (a * torch.log(b + 1e-12)).sum()
    return m, loss


CASES = {
    "freematch": {"stat_momentum": 0.6, "lambda_e": 0.5, "lambda_u": 0.7},
    "adamatch": {"stat_momentum": 0.6, "tau": 0.6},
    "uda": {"tau": 0.5, "temperature": 0.4, "lambda_u": 2.0},
    "dash": {
        "temperature": 0.5,
        "dash_gamma": 3.0,
        "rho_min": 0.3,
        "rho_period": 1,
        "dash_warmup": 1,
    },
    "softmatch-linear": {"stat_momentum": 0.6, "shape": "linear"},
    "softmatch-quadratic": {"stat_momentum": 0.6, "shape": "quadratic"},
}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_parts_and_gradient_match_the_float64_oracle(case, seed):
    name, options = case.split("-")[0], CASES[case]
    algorithm = build_algorithm(name, C, **options)
    oracle = StepOracle(name, options)
    model = linear(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for it in range(STEPS):
        x_lb, y_lb, u_weak, u_strong, u_true = batch(seed * 31 + it)
        z = [logits_np(model, x) for x in (x_lb, u_weak, u_strong)]
        want, sup, unsup, extra, w, pseudo, targets = oracle.step(it, z[0], y_lb.numpy(), *z[1:])
        extra_state = None
        if name == "freematch":
            extra_state = (oracle.free.p_model, oracle.free.label_hist)
        opt.zero_grad()
        views = (x_lb, y_lb, u_weak, u_strong, u_true)
        loss, sums = train_step(model, algorithm, *views, info=StepInfo(it))
        assert loss.item() == pytest.approx(want, abs=2e-5), (case, it)
        assert sums["sup_loss_sum"].item() / len(y_lb) == pytest.approx(sup, abs=1e-5)
        if w is None:  # Dash's warm-up: the labeled batch only
            assert sums["n_ulb"].item() == 0
        else:
            n = len(w)
            assert sums["unsup_loss_sum"].item() / n == pytest.approx(unsup, abs=2e-5)
            assert sums["weight_sum"].item() == pytest.approx(float(np.sum(w)), abs=1e-4)
            np.testing.assert_array_equal(sums["class_count"].numpy(), np.bincount(pseudo, None, C))
        if extra is not None:
            assert sums["extra_loss_sum"].item() / len(w) == pytest.approx(extra, abs=2e-5)
        loss.backward()
        ref_model, ref = torch_loss(
            model, x_lb, y_lb, u_strong, w, pseudo, targets, extra_state, options, name
        )
        assert ref.item() == pytest.approx(want, abs=1e-9)  # the autograd twin is the oracle
        ref.backward()
        for p, q in ((model.weight, ref_model.weight), (model.bias, ref_model.bias)):
            torch.testing.assert_close(p.grad.double(), q.grad, atol=2e-5, rtol=1e-4)
        opt.step()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_step_matches_the_float64_oracle(seed, warmup):
    """FlexMatch's step: weights from the memory of the previous steps (the threshold warm-up
    or not), the memory written from the global pool indices u_idx, loss and gradient."""
    n_pool, tau, lambda_u = 10, 0.5, 0.7  # tau an exact binary fraction
    options = {"tau": tau, "threshold_warmup": warmup, "lambda_u": lambda_u}
    algorithm = build_algorithm("flexmatch", C, num_unlabeled=n_pool, **options)
    oracle = FlexMatchOracle(C, n_pool, tau=tau, warmup=warmup)
    model = linear(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rng = np.random.default_rng(seed)
    kept, dropped = 0, 0
    for it in range(5):
        x_lb, y_lb, u_weak, u_strong, u_true = batch(seed * 31 + it)
        u_idx = torch.from_numpy(rng.integers(0, n_pool, size=len(u_weak)))  # repeats too
        z_lb, z_weak, z_strong = (logits_np(model, x) for x in (x_lb, u_weak, u_strong))
        p = softmax(z_weak)
        q, cls = p.max(axis=1), p.argmax(axis=1)
        thresholds = np.array([oracle.threshold(int(k)) for k in cls])
        # No row within rounding of tau or of its threshold: no CPU's rounding decides a side.
        assert np.min(np.abs(q - tau)) > 1e-6 and np.min(np.abs(q - thresholds)) > 1e-6
        w = oracle.step(p, u_idx.numpy())
        sup = float(np.mean(cross_entropy(z_lb, y_lb.numpy())))
        unsup = float(np.sum(w * cross_entropy(z_strong, cls))) / len(w)
        opt.zero_grad()
        loss, sums = train_step(
            model, algorithm, x_lb, y_lb, u_weak, u_strong, u_true, info=StepInfo(u_idx=u_idx)
        )
        assert loss.item() == pytest.approx(sup + lambda_u * unsup, abs=2e-5), it
        assert sums["weight_sum"].item() == float(np.sum(w))
        np.testing.assert_array_equal(algorithm.weighting.selected_label.numpy(), oracle.sel)
        effect = algorithm.weighting.learning_effect().numpy()  # what the next step uses
        np.testing.assert_allclose(effect, oracle.beta, atol=1e-6)
        loss.backward()
        ref_model, ref = torch_loss(model, x_lb, y_lb, u_strong, w, cls, None, None, options, "")
        ref.backward()
        for a, b in ((model.weight, ref_model.weight), (model.bias, ref_model.bias)):
            torch.testing.assert_close(a.grad.double(), b.grad, atol=2e-5, rtol=1e-4)
        opt.step()
        kept, dropped = kept + int(w.sum()), dropped + int((w == 0).sum())
    assert kept and dropped and max(oracle.beta) > 0  # the thresholds did select
    with pytest.raises(ValueError, match="needs indices"):
        train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong, u_true)


def test_the_cases_are_not_vacuous():
    """Over the seeds, every case weighs some rows in and some out, and Dash goes hard."""
    for case, options in CASES.items():
        name = case.split("-")[0]
        partial, hard = False, False
        for seed in range(5):
            oracle = StepOracle(name, options)
            model = linear(seed)
            for it in range(STEPS):
                x_lb, y_lb, u_weak, u_strong, _ = batch(seed * 31 + it)
                z = [logits_np(model, x) for x in (x_lb, u_weak, u_strong)]
                w = oracle.step(it, z[0], y_lb.numpy(), *z[1:])[4]
                if w is not None and np.any(w < 1) and np.any(w > 0):
                    partial = True
                if name == "dash" and oracle.dash is not None:
                    hard |= oracle.dash.rho() <= oracle.dash.rho_min
        assert partial, case
        if name == "dash":
            assert hard


def test_adamatch_pseudo_labels_come_from_the_aligned_probabilities():
    """A row whose aligned argmax differs from its raw argmax is trained towards the aligned one."""
    algorithm = build_algorithm("adamatch", 2, tau=0.1, stat_momentum=0.0)
    # Labeled rows confident on class 1; unlabeled rows lean to class 0: alignment flips row 1.
    x_lb = torch.tensor([[0.0, 1.0]] * 4)
    y_lb = torch.tensor([1] * 4)
    u_weak = torch.tensor([[4.0, 0.0], [0.3, 0.0], [4.0, 0.0], [4.0, 0.0]])
    u_strong = torch.zeros(4, 2, requires_grad=True)
    _, sums = train_step(nn.Identity(), algorithm, x_lb, y_lb, u_weak, u_strong)
    p = torch.softmax(u_weak, 1)
    aligned = algorithm.alignment(p)
    assert p[1].argmax() == 0 and aligned[1].argmax() == 1  # the construction
    assert (aligned[[0, 2, 3]].argmax(1) == 0).all()
    assert sums["class_count"].tolist() == [3.0, 1.0]
    # the gradient of row 1 pulls towards class 1: d CE / dz = softmax(0) - onehot(1)
    train_step(nn.Identity(), build_algorithm("adamatch", 2, tau=0.1, stat_momentum=0.0),
               x_lb, y_lb, u_weak, u_strong)[0].backward()  # fmt: skip
    assert u_strong.grad[1, 1] < 0 < u_strong.grad[1, 0]


def test_freematch_logs_its_extra_loss_and_the_others_do_not():
    x_lb, y_lb, u_weak, u_strong, u_true = batch(1)
    window = WindowSums()
    algorithm = build_algorithm("freematch", C, lambda_e=0.5)
    loss, sums = train_step(linear(1), algorithm, x_lb, y_lb, u_weak, u_strong, u_true)
    window.add(sums)
    m = summarize(window.reduce())
    want = m["sup_loss"] + m["unsup_loss"] + 0.5 * m["extra_loss"]
    assert loss.item() == pytest.approx(want, abs=1e-5) and m["extra_loss"] != 0
    for name in ("fixmatch", "softmatch", "uda", "adamatch"):
        _, sums = train_step(linear(1), build_algorithm(name, C), x_lb, y_lb, u_weak, u_strong)
        assert "extra_loss_sum" not in sums


def test_dash_warmup_is_supervised_then_sets_rho_init_once():
    algorithm = build_algorithm("dash", C, dash_warmup=2, rho_period=1)
    assert not algorithm.weights_defined()
    assert algorithm.describe()["weighting"]["warmup"] is True
    model = linear(2)
    keys = None
    for it in range(4):
        x_lb, y_lb, u_weak, u_strong, _ = batch(it)
        loss, sums = train_step(model, algorithm, x_lb, y_lb, u_weak, u_strong, info=StepInfo(it))
        keys = keys or set(sums)
        assert set(sums) == keys  # fixed keys through the warm-up
        if it < 2:
            assert sums["n_ulb"].item() == 0 and torch.isnan(algorithm.weighting.rho_init)
            assert loss.item() == pytest.approx(F.cross_entropy(model(x_lb), y_lb).item())
        if it == 2:
            rho = algorithm.weighting.rho_init.item()
            assert rho == pytest.approx(F.cross_entropy(model(x_lb), y_lb).item(), rel=1e-6)
            assert bool(algorithm.warmed_up) and algorithm.weights_defined()
    assert algorithm.weighting.rho_init.item() == rho  # set once
    assert int(algorithm.weighting.num_updates) == 2
    assert {"warmed_up", "weighting.rho_init", "weighting.num_updates"} <= set(
        algorithm.state_dict()
    )


def test_existing_algorithms_keep_their_state_dict_keys():
    """No new buffers for the algorithms that existed (old checkpoints still load)."""
    want = {
        "supervised": set(),
        "pseudolabel": set(),
        "fixmatch": set(),
        "softmatch": {
            "weighting.mean", "weighting.var", "alignment.p_model", "alignment.initialized"
        },
    }  # fmt: skip
    for name, keys in want.items():
        assert set(build_algorithm(name, C).state_dict()) == keys
