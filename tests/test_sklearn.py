"""The scikit-learn door: ``SemiSupervisedClassifier`` conventions, inputs, labels, pipelines,
the estimator checks, and the comparison with ``SelfTrainingClassifier`` (slow)."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import check_classifiers_classes, parametrize_with_checks
from torch import nn

from semimatch.data import FeatureViews
from semimatch.models import MLP
from semimatch.runs.run import Run
from semimatch.sklearn import SemiSupervisedClassifier

#: Settings small enough for dozens of fits in a test run (CPU, a few hundred ms each).
FAST = dict(
    max_iter=30,
    batch_size=16,
    uratio=2,
    lr=0.1,
    random_state=0,
    device="cpu",
    config={"threads": 1},
)

#: Estimator checks that cannot pass, and why (each is also covered by a test below).
EXPECTED_FAILED = {
    "check_classifiers_classes": (
        "its binary problems use the label -1 as a class, which is scikit-learn's (and this "
        "estimator's default) marker of an unlabeled row; the check passes with "
        "unlabeled_label=None (test_classes_check_passes_without_the_sentinel)"
    ),
}


def fast(**kw) -> SemiSupervisedClassifier:
    return SemiSupervisedClassifier(**{**FAST, **kw})


def test_batch_parameters_default_to_the_derived_batch():
    """batch_size/uratio None: FixMatch's 64 + 7 x 64 for feature vectors, as every door."""
    X = np.random.default_rng(0).normal(size=(40, 5))
    y = np.where(np.arange(40) < 8, np.arange(40) % 4, -1)
    clf = fast(batch_size=None, uratio=None, max_iter=1).fit(X, y)
    assert (clf.config_.batch_size, clf.config_.uratio) == (64, 7)
    assert "FixMatch" in clf.config_.auto["batch_size"]


@pytest.fixture(scope="module")
def digits_split():
    """Digits features: 5 labels per class in the training part, the rest marked -1."""
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=360, stratify=y, random_state=0)
    rng = np.random.default_rng(0)
    labeled = np.concatenate([rng.permutation(np.flatnonzero(y_tr == c))[:5] for c in range(10)])
    y_semi = np.full_like(y_tr, -1)
    y_semi[labeled] = y_tr[labeled]
    return X_tr, y_semi, X_te, y_te, labeled


# ----------------------------------------------------------------------------------------------
# scikit-learn's estimator checks
# ----------------------------------------------------------------------------------------------
@parametrize_with_checks([fast()], expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_classes_check_passes_without_the_sentinel():
    check_classifiers_classes("SemiSupervisedClassifier", fast(unlabeled_label=None))


# ----------------------------------------------------------------------------------------------
# Parameters, cloning, pickling
# ----------------------------------------------------------------------------------------------
def test_init_only_stores_parameters_and_clone_round_trips():
    est = SemiSupervisedClassifier(algorithm="nonsense", max_iter=-3)  # checked at fit, not here
    assert est.get_params()["algorithm"] == "nonsense"
    est.set_params(algorithm="fixmatch", max_iter=7, config={"tau": 0.9})
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        fast(max_iter=0).fit(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="algorithm='nonsense'"):
        fast(algorithm="nonsense").fit(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="through the estimator parameter 'max_iter'"):
        fast(config={"iterations": 5}).fit(np.zeros((4, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="did you mean 'tau'"):
        fast(config={"taus": 0.5}).fit(np.zeros((4, 2)), [0, 1, 0, 1])
    # The estimator's own choices for logging are defaults a config may change.
    est = fast(max_iter=4, config={"threads": 1, "eval_every": 2, "log_every": 1})
    est.fit(np.random.default_rng(0).normal(size=(20, 2)), [0, 1] * 5 + [-1] * 10)
    assert [r["iteration"] for r in est.run_.history if r["kind"] == "eval"] == [2, 4]


def test_fit_learns_attributes_and_pickles(digits_split):
    X, y, X_te, _, _ = digits_split
    est = fast().fit(X, y)
    assert est.classes_.tolist() == list(range(10)) and est.n_features_in_ == 64
    assert est.input_kind_ == "features" and est.input_shape_ == (64,) and est.n_iter_ == 30
    assert est.config_.backbone == "mlp" and est.config_.iterations == 30
    assert est.run_.data is None and est.model_ is est.run_.ema_model
    proba = est.predict_proba(X_te)
    assert proba.shape == (360, 10) and np.allclose(proba.sum(axis=1), 1)
    again = pickle.loads(pickle.dumps(est))
    assert np.array_equal(again.predict_proba(X_te), proba)


def test_an_estimator_pickled_before_the_run_module_moved_still_loads():
    # Such a pickle names the fitted ``run_`` by its old module: ``semimatch.run.Run``.
    old_reference = b"csemimatch.run\nRun\n."
    assert pickle.loads(old_reference) is Run


def test_same_random_state_same_model_and_none_draws_a_seed(digits_split):
    X, y, X_te, _, _ = digits_split
    a, b = fast().fit(X, y), fast().fit(X, y)
    assert np.array_equal(a.predict_proba(X_te), b.predict_proba(X_te))
    c = fast(random_state=None).fit(X, y)
    assert 0 <= c.config_.seed < 2**31


def test_verbose_false_prints_nothing(digits_split, capsys):
    X, y, _, _, _ = digits_split
    fast(max_iter=3).fit(X, y)
    assert capsys.readouterr().out == ""
    fast(max_iter=3, verbose=True).fit(X, y)
    assert "done: softmatch" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------
def test_string_labels_with_a_string_sentinel(digits_split):
    X, y, X_te, _, _ = digits_split
    names = np.array([f"digit-{i}" for i in range(10)])  # sorts like 0..9
    y_str = np.where(y == -1, "?", names[np.maximum(y, 0)])
    est = fast(unlabeled_label="?").fit(X, y_str)
    assert est.classes_.tolist() == names.tolist()
    # the same problem with integer labels trains the same model; predictions map through classes_
    ref = fast().fit(X, y)
    assert np.array_equal(est.predict_proba(X_te), ref.predict_proba(X_te))
    assert np.array_equal(est.predict(X_te), names[ref.predict(X_te)])


def test_string_labels_with_the_numeric_sentinel():
    X = np.random.default_rng(0).normal(size=(30, 3))
    y_obj = np.array(["a", "b", -1] * 10, dtype=object)  # object array: -1 stays an int
    y_str = np.array(["a", "b", -1] * 10)  # NumPy turns -1 into the string "-1"
    for y in (y_obj, y_str):
        est = fast(max_iter=3).fit(X, y)
        assert est.classes_.tolist() == ["a", "b"]


def test_label_errors_are_clear():
    X = np.zeros((6, 2))
    with pytest.raises(ValueError, match="every row is unlabeled"):
        fast().fit(X, [-1] * 6)
    with pytest.raises(ValueError, match="only one class"):
        fast().fit(X, [1, 1, -1, -1, -1, -1])
    with pytest.raises(ValueError, match="Unknown label type"):
        fast().fit(X, [0.5, 1.5, 0.5, 1.5, 0.5, 1.5])


def test_score_ignores_unlabeled_rows(digits_split):
    X, y, X_te, y_te, _ = digits_split
    est = fast().fit(X, y)
    y_masked = y_te.copy()
    y_masked[::2] = -1
    keep = y_masked != -1
    assert est.score(X_te, y_masked) == pytest.approx(est.score(X_te[keep], y_te[keep]))
    with pytest.raises(ValueError, match="score needs labeled rows"):
        est.score(X_te, np.full(len(y_te), -1))


# ----------------------------------------------------------------------------------------------
# Inputs: images, feature vectors, custom backbones
# ----------------------------------------------------------------------------------------------
def test_uint8_and_float_images_give_the_same_model(digits_split):
    X, y, X_te, _, _ = digits_split
    images = np.rint(X.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    test_images = np.rint(X_te.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    a = fast(max_iter=5).fit(images, y)
    b = fast(max_iter=5).fit(images.astype(np.float32) / 255, y)
    assert a.input_kind_ == "images" and a.config_.backbone == "cnn"
    assert a.n_features_in_ == 8 and a.input_shape_ == (8, 8)
    assert np.array_equal(a.predict_proba(test_images), b.predict_proba(test_images / 255))
    with pytest.raises(ValueError, match=r"fitted on \(8, 8\)"):
        a.predict(np.zeros((2, 8, 9), np.uint8))
    with pytest.raises(ValueError, match="float images must lie in"):
        fast().fit(images * 2.0, y)


def test_features_train_as_a_native_float_stream(digits_split):
    """(N, D) input: a feature dataset, float32 (N, D) batches straight into the MLP."""
    X, y, X_te, _, _ = digits_split
    est = fast(max_iter=3).fit(X, y)
    info = est.run_.info
    assert est.input_kind_ == "features" and info.kind == "features"
    assert info.input_shape == (64,) and info.spec.dim == 64
    assert isinstance(est.run_.model, MLP)  # no image wrapper, no byte decoding
    assert est.config_.augment == "batched" and est.config_.num_workers == 0
    # the standardisation of fit is the one predict applies (run.predict_proba on raw X)
    scale = X.astype(np.float32).std(axis=0)
    np.testing.assert_array_equal(est.feature_mean_, X.astype(np.float32).mean(axis=0))
    np.testing.assert_array_equal(est.feature_scale_, np.where(scale > 1e-12, scale, 1))
    seen = []
    hook = est.model_.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    est.predict_proba(X_te[:4])
    hook.remove()
    expected = (X_te[:4].astype(np.float32) - est.feature_mean_) / est.feature_scale_
    assert seen[0].dtype == torch.float32
    np.testing.assert_array_equal(seen[0][:4].numpy(), expected)


def test_feature_views_follow_the_estimator_parameters(digits_split, monkeypatch):
    import semimatch.sklearn as sk

    made = []
    real = sk.from_features
    monkeypatch.setattr(sk, "from_features", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    X, y, _, _, _ = digits_split
    fast(max_iter=1, weak_noise=0.2, strong_noise=0.7, strong_dropout=0.25).fit(X, y)
    views = made[0].views
    assert isinstance(views, FeatureViews)
    assert (views.weak.noise, views.weak.dropout) == (0.2, 0.0)
    assert (views.strong.noise, views.strong.dropout) == (0.7, 0.25)


class FeatureNet(nn.Module):
    """A user backbone for feature vectors: (N, D) float in, logits out."""

    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, c)
        self.shapes: set[tuple[int, ...]] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.add(tuple(x.shape[1:]))
        return self.fc(x)


def test_a_custom_backbone_module_is_copied_and_trained(digits_split):
    X, y, X_te, _, _ = digits_split
    net = FeatureNet(64, 10)
    before = net.fc.weight.detach().clone()
    est = fast(backbone=net, max_iter=5).fit(X, y)
    assert torch.equal(net.fc.weight, before) and not net.shapes  # the parameter is untouched
    trained = est.run_.model  # the copy itself: feature batches need no wrapper
    assert isinstance(trained, FeatureNet) and trained.shapes == {(64,)}
    assert est.config_.backbone == "custom:FeatureNet"
    assert est.predict(X_te).shape == (360,)
    with pytest.raises(ValueError, match="takes images"):
        fast(backbone="wrn_28_2").fit(X, y)


# ----------------------------------------------------------------------------------------------
# Pipelines and model selection
# ----------------------------------------------------------------------------------------------
def test_pipeline_and_grid_search(digits_split):
    X, y, X_te, y_te, labeled = digits_split
    rows = np.concatenate([labeled, np.flatnonzero(y == -1)[:150]])  # keep the search small
    pipe = make_pipeline(MinMaxScaler(), fast(max_iter=10))
    search = GridSearchCV(pipe, {"semisupervisedclassifier__lr": [0.03, 0.1]}, cv=2)
    search.fit(X[rows], y[rows])
    assert search.best_params_["semisupervisedclassifier__lr"] in (0.03, 0.1)
    assert len(search.cv_results_["mean_test_score"]) == 2
    # each fold's score counts labeled validation rows only (so it is a real accuracy)
    assert all(0.0 <= s <= 1.0 for s in search.cv_results_["mean_test_score"])
    assert 0.0 <= search.score(X_te, y_te) <= 1.0


# ----------------------------------------------------------------------------------------------
# The comparison the estimator guide quotes (docs/guides/sklearn.md)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("as_images", [False, True], ids=["features", "images"])
def test_beats_self_training_logistic_regression_on_digits(digits_split, as_images):
    """5 labels per class, default settings: vs SelfTrainingClassifier(LogisticRegression())."""
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import SelfTrainingClassifier

    X, y, X_te, y_te, _ = digits_split
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence warnings on raw pixel counts
        baseline = SelfTrainingClassifier(LogisticRegression()).fit(X, y)
    t_base = time.perf_counter() - t
    acc_base = baseline.score(X_te, y_te)
    if as_images:  # the same pixels as (N, 8, 8) images in [0, 1]: CNN + image augmentations
        X, X_te = X.reshape(-1, 8, 8) / 16, X_te.reshape(-1, 8, 8) / 16
    t = time.perf_counter()
    ours = SemiSupervisedClassifier(random_state=0).fit(X, y)
    t_ours = time.perf_counter() - t
    acc_ours = ours.score(X_te, y_te)
    print(
        f"\nSelfTraining(LogReg): {acc_base:.4f} ({t_base:.1f} s); SemiSupervisedClassifier "
        f"({ours.input_kind_}): {acc_ours:.4f} ({ours.n_iter_} it, {t_ours:.1f} s)"
    )
    assert acc_ours > acc_base
