"""``SemiSupervisedClassifier`` on texts (a list of strings, ``y == -1`` unlabeled) with a tiny
random BERT: scikit-learn's conventions that apply to string input, pipelines and searches."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from helpers.text_fixtures import text_corpus
from semimatch.sklearn import SemiSupervisedClassifier

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def texts():
    """48 texts of 4 classes, 3 labels per class, the rest unlabeled (-1); 16 test texts."""
    X, names = text_corpus(64, seed=1)
    y = np.array(names, dtype=object)
    y_semi = y[:48].copy()
    y_semi[12:] = -1
    return X[:48], y_semi, X[48:], y[48:]


def fast(bert, **kw) -> SemiSupervisedClassifier:
    base = dict(
        backbone=f"hf:{bert}", max_iter=6, batch_size=4, uratio=1, lr=3e-3, random_state=0,
        device="cpu", config={"threads": 1, "max_length": 24},
    )  # fmt: skip
    return SemiSupervisedClassifier(**{**base, **kw})


def test_fit_predict_score_on_strings(tiny_bert_dir, texts):
    X, y, X_te, y_te = texts
    clf = fast(tiny_bert_dir)
    with pytest.raises(NotFittedError):
        clf.predict(X_te)
    assert clf.fit(X, y) is clf
    assert clf.input_kind_ == "texts" and not hasattr(clf, "n_features_in_")
    assert list(clf.classes_) == ["business", "science", "sport", "world"]
    assert clf.config_.optimizer == "adamw" and clf.config_.max_length == 24
    proba = clf.predict_proba(X_te)
    assert proba.shape == (16, 4) and np.allclose(proba.sum(axis=1), 1.0)
    pred = clf.predict(np.array(X_te, dtype=object))  # a 1-d object array works like a list
    assert set(pred) <= set(clf.classes_) and len(pred) == 16
    # score ignores unlabeled rows
    y_mixed = y_te.copy()
    y_mixed[:8] = -1
    assert clf.score(X_te, y_mixed) == np.mean(pred[8:] == y_te[8:])
    # same random_state, same model; a pickled copy predicts the same
    again = clone(clf).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X_te), proba)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(clf)).predict_proba(X_te), proba)


def test_string_input_errors_are_clear(tiny_bert_dir, texts):
    X, y, X_te, _ = texts
    with pytest.raises(ValueError, match="backbone='auto' cannot read texts"):
        fast(tiny_bert_dir, backbone="auto").fit(X, y)
    with pytest.raises(ValueError, match="got one string"):
        fast(tiny_bert_dir).fit("one text", y[:1])
    with pytest.raises(ValueError, match="item 1 is a int"):
        fast(tiny_bert_dir).fit([X[0], 3, X[2]], y[:3])
    with pytest.raises(ValueError, match="labels for 48 texts"):
        fast(tiny_bert_dir).fit(X, y[:10])
    clf = fast(tiny_bert_dir).fit(X, y)
    with pytest.raises(ValueError, match="fitted on texts; pass a list of strings"):
        clf.predict(np.zeros((2, 8)))


def test_pipeline_and_grid_search_on_strings(tiny_bert_dir, texts):
    X, y, X_te, y_te = texts
    # Labels all strings (scikit-learn's stratified folds sort y): "?" marks unlabeled rows.
    y = np.where(y == -1, "?", y).astype(str)
    lower = FunctionTransformer(lambda rows: [t.lower() for t in rows])
    pipe = make_pipeline(lower, fast(tiny_bert_dir, max_iter=4, unlabeled_label="?"))
    search = GridSearchCV(pipe, {"semisupervisedclassifier__lr": [1e-3, 3e-3]}, cv=2)
    search.fit(X, y)
    assert search.best_params_["semisupervisedclassifier__lr"] in (1e-3, 3e-3)
    assert all(0.0 <= s <= 1.0 for s in search.cv_results_["mean_test_score"])
    assert search.predict([t.upper() for t in X_te]).shape == (16,)


def test_text_batch_defaults_and_verbose_progress(tiny_bert_dir, texts, capsys):
    """Without batch arguments a text fit takes USB's NLP batch, 8 + 8 (derived and recorded,
    as the other doors do). ``verbose=0`` is silent; ``verbose=1`` says what ``fit`` does before
    it trains (stderr), then shows the progress bar."""
    X, y, _, _ = texts
    assert SemiSupervisedClassifier().get_params()["batch_size"] is None
    clf = fast(tiny_bert_dir, batch_size=None, uratio=None, max_iter=2).fit(X, y)
    assert (clf.config_.batch_size, clf.config_.uratio) == (8, 1)
    assert "USB's NLP batch" in clf.config_.auto["batch_size"]
    quiet = capsys.readouterr()
    assert "tokenizing" not in quiet.err and quiet.out == ""
    clf.set_params(verbose=1).fit(X, y)
    err = capsys.readouterr().err
    said = [
        f"loading the tokenizer of hf:{tiny_bert_dir}",
        "tokenizing 48 texts",
        f"loading the encoder hf:{tiny_bert_dir}",
    ]
    assert all(line in err.splitlines() for line in said), err
    assert [err.index(line) for line in said] == sorted(err.index(line) for line in said)
    assert "2/2" in err  # the progress bar
    with pytest.raises(ValueError, match="verbose must be an integer >= 0"):
        fast(tiny_bert_dir, verbose=-1).fit(X, y)
