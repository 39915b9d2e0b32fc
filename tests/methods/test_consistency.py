"""Algorithms as compositions: the per-step order, every SoftMatch option, build_algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.reference_impl import (
    AlgorithmOracle,
    SoftMatchOracle,
    UniformAlignmentOracle,
    fixed_threshold_weights,
    prob_batches,
)
from semimatch.config import OPTIONS
from semimatch.methods.alignment import UniformAlignment
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.flexmatch import FlexMatchThreshold
from semimatch.methods.registry import build_algorithm, methods
from semimatch.methods.softmatch import SoftMatchWeighting

FAST = settings(max_examples=20, deadline=None)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def softmatch_oracle(num_classes: int, **options) -> AlgorithmOracle:
    """The oracle twin of ``build_algorithm("softmatch", num_classes, **options)``."""
    m = options.get("stat_momentum", 0.999)
    ua_m = options.get("ua_momentum") or m
    weighting = SoftMatchOracle(
        num_classes, m, options.get("n_sigma", 2.0), options.get("per_class", False)
    )
    alignment = (
        UniformAlignmentOracle(num_classes, ua_m, init=options.get("ua_init", "batch"))
        if options.get("uniform_alignment", True)
        else None
    )
    return AlgorithmOracle(weighting, alignment, options.get("stats_on", "aligned"))


def skewed_batches(num_classes: int, steps: int, seed: int = 0, n: int = 64) -> list[np.ndarray]:
    """Batches in which the ALIGNMENT and the CLASS matter: class 0 is predicted for ~70% of the
    samples with high confidence, the other classes rarely and with lower, class-dependent
    confidence.  UA then changes confidences (and some argmaxes), raw and aligned confidences
    have different statistics, and per-class statistics differ from the global ones."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(steps):
        probs = np.empty((n, num_classes))
        for i in range(n):
            cls = 0 if rng.random() < 0.7 else int(rng.integers(1, num_classes))
            top = rng.uniform(0.75, 0.99) if cls == 0 else rng.uniform(0.25, 0.45 + 0.08 * cls)
            rest = rng.dirichlet(np.ones(num_classes - 1)) * (1 - top)
            probs[i] = np.insert(rest, cls, 0.0)
            probs[i, cls] = top
            j = int(np.argmax(probs[i]))  # a rest entry may exceed `top`: keep cls the argmax
            probs[i, [cls, j]] = probs[i, [j, cls]]
        batches.append((probs / probs.sum(axis=1, keepdims=True)).astype(np.float32))
    return batches


def run(algorithm: SSLAlgorithm, batches: list[np.ndarray]) -> list[np.ndarray]:
    return [algorithm.weigh(t(p))[0].numpy() for p in batches]


# --- The order "align -> update -> weight" against the oracle ------------------------------------


@FAST
@given(
    data=prob_batches(min_n=1),
    uniform_alignment=st.booleans(),
    raw_stats=st.booleans(),
    per_class=st.booleans(),
    n_sigma=st.sampled_from([1.0, 2.0, 3.0]),
    momentum=st.floats(0.3, 0.99),
)
def test_weigh_matches_oracle(data, uniform_alignment, raw_stats, per_class, n_sigma, momentum):
    c, batches = data
    options = dict(
        uniform_alignment=uniform_alignment,
        stats_on="raw" if raw_stats and uniform_alignment else "aligned",
        per_class=per_class,
        n_sigma=n_sigma,
        stat_momentum=momentum,
    )
    algorithm = build_algorithm("softmatch", c, **options)
    oracle = softmatch_oracle(c, **options)
    for probs in batches:
        weights, confidence = algorithm.weigh(t(probs))
        want_w, _, want_conf = oracle.weigh(probs)
        np.testing.assert_allclose(weights.numpy(), want_w, atol=3e-5)
        np.testing.assert_allclose(confidence.numpy(), want_conf, atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(
            algorithm.weighting.mean.numpy(), oracle.weighting.mean, atol=2e-6
        )
        np.testing.assert_allclose(algorithm.weighting.var.numpy(), oracle.weighting.var, atol=2e-6)
        if uniform_alignment:
            np.testing.assert_allclose(
                algorithm.alignment.p_model.numpy(), oracle.alignment.p_model, atol=1e-6
            )


@FAST
@given(data=prob_batches(steps=3), tau=st.floats(0.3, 1.0))
def test_fixmatch_weigh_is_a_threshold_on_raw_probs(data, tau):
    _, batches = data
    algorithm = build_algorithm("fixmatch", 10, tau=tau)
    assert algorithm.alignment is None
    for probs in batches:
        weights, confidence = algorithm.weigh(t(probs))
        clear = np.abs(probs.max(axis=1).astype(np.float64) - tau) > 1e-6
        np.testing.assert_array_equal(
            weights.numpy()[clear], fixed_threshold_weights(probs, tau)[clear]
        )
        np.testing.assert_array_equal(confidence.numpy(), probs.max(axis=1))


def test_order_update_before_weight():
    """The first step's weights already use the updated statistics: with the initial mean 1/C
    every sample would get full weight, after the update some do not."""
    probs = skewed_batches(4, 1)[0]
    algorithm = build_algorithm("softmatch", 4, stat_momentum=0.5, uniform_alignment=False)
    weights, _ = algorithm.weigh(t(probs))
    assert (weights < 1).any()
    fresh = SoftMatchWeighting(4, momentum=0.5)
    torch.testing.assert_close(fresh(t(probs)), torch.ones(len(probs)))


def test_order_alignment_updated_before_applied():
    """The first batch is aligned with p_model = its own mean, not with the initial uniform
    p_model (which would leave the probabilities unchanged)."""
    probs = skewed_batches(4, 1)[0]
    algorithm = build_algorithm("softmatch", 4, stat_momentum=0.999)
    _, confidence = algorithm.weigh(t(probs))
    ua = UniformAlignmentOracle(4)
    ua.update(probs)
    np.testing.assert_allclose(confidence.numpy(), ua.align(probs).max(axis=1), atol=1e-5)
    assert np.abs(confidence.numpy() - probs.max(axis=1)).max() > 0.05


@pytest.mark.parametrize("stats_on", ["aligned", "raw"])
def test_stats_on_selects_the_probabilities_of_the_update(stats_on):
    batches = skewed_batches(5, 3)
    algorithm = build_algorithm("softmatch", 5, stat_momentum=0.5, stats_on=stats_on)
    sm, ua = SoftMatchOracle(5, 0.5), UniformAlignmentOracle(5, 0.5)
    for probs in batches:
        weights, _ = algorithm.weigh(t(probs))
        ua.update(probs)
        aligned = ua.align(probs)
        sm.update(aligned if stats_on == "aligned" else probs)
        # Weights are always computed on the aligned probabilities.
        np.testing.assert_allclose(weights.numpy(), sm.weights(aligned), atol=2e-5)
    np.testing.assert_allclose(algorithm.weighting.mean.numpy(), sm.mean, atol=1e-6)


# --- Every SoftMatch option changes behaviour ----------------------------------------------------

# A momentum that lets the statistics move within a few steps (with the paper's 0.999 they stay
# near 1/C and every sample gets full weight, hiding every other option).
BASE = {"stat_momentum": 0.8}
OPTION_PAIRS = {
    "uniform_alignment": ({"uniform_alignment": True}, {"uniform_alignment": False}),
    "stats_on": ({"stats_on": "aligned"}, {"stats_on": "raw"}),
    "n_sigma": ({"n_sigma": 2.0}, {"n_sigma": 1.0}),
    "per_class": ({"per_class": False}, {"per_class": True}),
    "stat_momentum": ({"stat_momentum": 0.8}, {"stat_momentum": 0.4}),
    "ua_momentum": ({}, {"ua_momentum": 0.3}),
    "ua_init": ({"ua_init": "batch"}, {"ua_init": "uniform"}),
}


@pytest.mark.parametrize("option", sorted(OPTION_PAIRS))
def test_every_softmatch_option_changes_weights(option):
    c = 6
    batches = skewed_batches(c, 5, seed=3)
    results = []
    for change in OPTION_PAIRS[option]:
        options = {**BASE, **change}
        algorithm = build_algorithm("softmatch", c, **options)
        oracle = softmatch_oracle(c, **options)
        got = run(algorithm, batches)
        for g, probs in zip(got, batches, strict=True):
            np.testing.assert_allclose(g, oracle.weigh(probs)[0], atol=3e-5)
        results.append(np.concatenate(got))
    on, off = results
    # A real difference, not float noise.
    assert np.abs(on - off).max() > 1e-2, f"option {option} did not change the weights"


def test_lambda_u_is_carried():
    assert build_algorithm("softmatch", 3, lambda_u=0.5).lambda_u == 0.5
    assert build_algorithm("fixmatch", 3, lambda_u=2.0).lambda_u == 2.0
    with pytest.raises(ValueError, match="lambda_u"):
        build_algorithm("fixmatch", 3, lambda_u=-1.0)


# --- build_algorithm -----------------------------------------------------------------------------


def test_algorithm_table_and_defaults():
    assert set(methods()) >= {
        "supervised", "fullysupervised", "pseudolabel", "fixmatch", "flexmatch", "softmatch",
        "freematch", "adamatch", "dash", "uda",
    }  # fmt: skip
    sup = build_algorithm("supervised", 10)
    assert not sup.uses_unlabeled and not sup.uses_strong
    assert sup.describe() == {"weighting": {"type": "none"}, "p_model": None}
    pl = build_algorithm("pseudolabel", 10)
    assert pl.uses_unlabeled and not pl.uses_strong and pl.student_view == "weak"
    assert isinstance(pl.weighting, FixedThreshold) and pl.weighting.tau == 0.95
    fm = build_algorithm("fixmatch", 10)
    assert fm.uses_strong and isinstance(fm.weighting, FixedThreshold) and fm.alignment is None
    assert fm.weighting.tau == 0.95 and fm.lambda_u == 1.0
    sm = build_algorithm("softmatch", 10)
    assert sm.uses_strong and sm.stats_on == "aligned" and sm.lambda_u == 1.0
    assert isinstance(sm.weighting, SoftMatchWeighting) and isinstance(
        sm.alignment, UniformAlignment
    )
    assert (sm.weighting.momentum, sm.weighting.n_sigma, sm.weighting.per_class) == (
        0.999,
        2.0,
        False,
    )
    assert sm.alignment.momentum == 0.999 and sm.lambda_max == 1.0
    d = sm.describe()
    assert d["weighting"]["type"] == "softmatch" and len(d["p_model"]) == 10


def test_flexmatch_builds_with_the_pool_size_as_a_data_input():
    flex = build_algorithm("flexmatch", 10, num_unlabeled=37)
    assert flex.uses_strong and flex.sample_indices and flex.num_unlabeled == 37
    assert isinstance(flex.weighting, FlexMatchThreshold)
    w = flex.weighting
    assert (w.tau, w.warmup, flex.lambda_u) == (0.95, True, 1.0)  # USB classic-CV config
    assert w.selected_label.shape == (37,) and "weighting.selected_label" in flex.state_dict()
    assert not build_algorithm(
        "flexmatch", 3, num_unlabeled=5, threshold_warmup=False
    ).weighting.warmup
    # A data input, not an option: no Config field / flag; the others ignore it.
    assert "num_unlabeled" not in OPTIONS and "num_unlabeled" not in methods()["flexmatch"].options
    assert build_algorithm("fixmatch", 3, num_unlabeled=5).num_unlabeled is None
    with pytest.raises(ValueError, match="flexmatch needs num_unlabeled"):
        build_algorithm("flexmatch", 3)
    probs = torch.softmax(torch.randn(4, 10), dim=1)
    with pytest.raises(ValueError, match="needs indices"):
        flex.label(probs)


@pytest.mark.parametrize(
    "name, option",
    [
        ("softmatch", "tau"),
        ("fixmatch", "n_sigma"),
        ("fixmatch", "uniform_alignment"),
        ("pseudolabel", "per_class"),
        ("supervised", "tau"),
        ("supervised", "lambda_u"),
        ("softmatch", "momentun"),
    ],
)
def test_build_rejects_unused_options(name, option):
    with pytest.raises(ValueError, match=f"{option}.*{name}"):
        build_algorithm(name, 10, **{option: 0.5})


@pytest.mark.parametrize(
    "name, hint",
    [("fixmach", "fixmatch"), ("SoftMatch", "softmatch"), ("pseudo_label", "pseudolabel")],
)
def test_build_rejects_unknown_names_with_suggestion(name, hint):
    with pytest.raises(ValueError, match=f"unknown algorithm '{name}'.*did you mean '{hint}'"):
        build_algorithm(name, 10)


def test_build_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="supervised.*pseudolabel.*fixmatch.*softmatch"):
        build_algorithm("mixmatchx", 10)


@pytest.mark.parametrize("name", sorted(methods()))
def test_build_rejects_num_classes_below_two(name):
    # num_classes < 2 raises ValueError -- for every algorithm, not only for those
    # whose modules happen to need C.
    with pytest.raises(ValueError, match="num_classes"):
        build_algorithm(name, 1)


def test_build_invalid_values_are_named():
    with pytest.raises(ValueError, match=r"tau.*\(0, 1\]"):
        build_algorithm("fixmatch", 10, tau=1.5)
    with pytest.raises(ValueError, match=r"tau.*\(0, 1\]"):
        build_algorithm("pseudolabel", 10, tau=0.0)
    with pytest.raises(ValueError, match=r"stat_momentum must be in \[0, 1\)"):
        build_algorithm("softmatch", 10, stat_momentum=1.0)
    with pytest.raises(ValueError, match=r"momentum.*\[0, 1\)"):
        build_algorithm("softmatch", 10, ua_momentum=-0.5)
    with pytest.raises(ValueError, match="stats_on"):
        build_algorithm("softmatch", 10, stats_on="both")
    with pytest.raises(ValueError, match="stats_on='raw'.*alignment"):
        build_algorithm("softmatch", 10, stats_on="raw", uniform_alignment=False)
    with pytest.raises(ValueError, match="n_sigma"):
        build_algorithm("softmatch", 10, n_sigma=0)


def test_ua_momentum_errors_name_it():
    # The user passed ua_momentum: the message must say so, not "stat_momentum" (which is
    # another option of the same algorithm, the statistics' momentum).
    with pytest.raises(ValueError, match=r"ua_momentum.*\[0, 1\)"):
        build_algorithm("softmatch", 10, ua_momentum=1.0)
    # ua_momentum without alignment has no effect: an error, like stats_on='raw' without UA.
    with pytest.raises(ValueError, match="ua_momentum"):
        build_algorithm("softmatch", 10, uniform_alignment=False, ua_momentum=0.9)
    with pytest.raises(ValueError, match="ua_init has no effect with uniform_alignment=False"):
        build_algorithm("softmatch", 10, uniform_alignment=False, ua_init="uniform")


def test_ssl_algorithm_validates_its_parts():
    with pytest.raises(ValueError, match="weighting"):
        SSLAlgorithm(weighting=object())
    with pytest.raises(ValueError, match="student_view"):
        SSLAlgorithm(FixedThreshold(), student_view="medium")


def test_weigh_rejects_bad_probs():
    algorithm = build_algorithm("softmatch", 3)
    with pytest.raises(ValueError, match="num_classes=3"):
        algorithm.weigh(torch.full((4, 5), 0.2))
    with pytest.raises(ValueError, match="sum to 1"):
        algorithm.weigh(torch.full((4, 3), 0.2))
    assert not bool(algorithm.alignment.initialized)


# --- State lives in buffers ----------------------------------------------------------------------


@pytest.mark.parametrize("per_class", [False, True])
def test_algorithm_state_dict_checkpoint_round_trip(per_class, tmp_path):
    options = dict(stat_momentum=0.7, per_class=per_class, n_sigma=1.5)
    batches = skewed_batches(5, 6, seed=9)
    algorithm = build_algorithm("softmatch", 5, **options)
    run(algorithm, batches[:3])
    state = algorithm.state_dict()
    assert set(state) == {
        "weighting.mean",
        "weighting.var",
        "alignment.p_model",
        "alignment.initialized",
    }
    torch.save(state, tmp_path / "ckpt.pt")
    restored = build_algorithm("softmatch", 5, **options)
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    for a, b in zip(run(algorithm, batches[3:]), run(restored, batches[3:]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_algorithm_moves_to_float64():
    batches = skewed_batches(5, 3, seed=10)
    ref = build_algorithm("softmatch", 5, stat_momentum=0.7)
    double = build_algorithm("softmatch", 5, stat_momentum=0.7).to(torch.float64)
    for a, b in zip(run(ref, batches), run(double, batches), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_algorithm_runs_on_meta_device():
    """No host synchronisation inside weigh: it works on a device without data."""
    algorithm = build_algorithm("softmatch", 5, per_class=True).to("meta")
    weights, confidence = algorithm.weigh(t(skewed_batches(5, 1)[0]).to("meta"))
    assert weights.device.type == "meta" and weights.shape == confidence.shape == (64,)


def test_per_class_raw_statistics_are_looked_up_by_the_raw_class():
    """stats_on='raw' + per_class: a row is grouped by its raw argmax for update *and* weight.

    Uniform Alignment moves the first row's argmax from class 0 (raw) to class 1 (aligned); the
    statistics it updated are class 0's (mean 0.85, above its aligned confidence 0.82), so its
    weight is Gaussian (< 1).  Looked up by the aligned class (mean still 1/C) it would be 1.
    """
    options = dict(uniform_alignment=True, stats_on="raw", per_class=True, stat_momentum=0.1)
    algorithm = build_algorithm("softmatch", 2, **options)
    oracle = softmatch_oracle(2, **options)
    first = np.array([[0.6, 0.4], [0.6, 0.4]])
    second = np.array([[0.55, 0.45], [0.99, 0.01], [0.99, 0.01], [0.99, 0.01]])
    algorithm.weigh(t(first))
    oracle.weigh(first)
    weights, _ = algorithm.weigh(t(second))
    aligned = algorithm.alignment(t(second))
    assert aligned[0].argmax() == 1 and aligned[0].max() < algorithm.weighting.mean[0]
    assert weights[0] < 0.99 and bool((weights[1:] == 1).all())
    np.testing.assert_allclose(weights.numpy(), oracle.weigh(second)[0], atol=1e-6)
