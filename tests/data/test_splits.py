"""Splits: balance, determinism, saved indices, long-tail counts, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from semimatch.data.splits import (
    Split,
    balanced_split,
    fold_split,
    given_split,
    load_split,
    long_tailed_counts,
    long_tailed_split,
    save_split,
    split_summary,
)

LABELS = np.repeat(np.arange(10), 50)  # 10 classes x 50 images, sorted
np.random.default_rng(0).shuffle(LABELS)


def test_balanced_split_is_balanced_and_covers_everything():
    s = balanced_split(LABELS, 10, 40, seed=1)
    assert s.kind == "balanced" and s.seed == 1
    np.testing.assert_array_equal(np.bincount(LABELS[s.labeled], minlength=10), [4] * 10)
    assert len(np.unique(s.labeled)) == 40
    np.testing.assert_array_equal(s.unlabeled, np.arange(len(LABELS)))  # papers' convention
    assert s.labeled.dtype == np.int64 and s.meta["per_class"] == 4
    assert split_summary(s, LABELS, 10) == (
        f"balanced split (seed 1): 40 labeled {[4] * 10} per class, 500 unlabeled"
    )


def test_balanced_split_can_exclude_labeled_from_unlabeled():
    s = balanced_split(LABELS, 10, 100, seed=0, include_labeled_in_unlabeled=False)
    assert len(s.unlabeled) == 400 and not set(s.labeled) & set(s.unlabeled)
    assert set(s.labeled) | set(s.unlabeled) == set(range(500))


def test_balanced_split_is_deterministic_given_the_seed():
    a, b = balanced_split(LABELS, 10, 40, seed=7), balanced_split(LABELS, 10, 40, seed=7)
    np.testing.assert_array_equal(a.labeled, b.labeled)
    c = balanced_split(LABELS, 10, 40, seed=8)
    assert not np.array_equal(a.labeled, c.labeled)


def test_balanced_split_never_labels_unknown_images():
    y = LABELS.copy()
    y[::2] = -1
    s = balanced_split(y, 10, 100, seed=0)
    assert (y[s.labeled] >= 0).all() and len(s.unlabeled) == len(y)


def test_balanced_split_bad_num_labels():
    with pytest.raises(ValueError, match="not divisible"):
        balanced_split(LABELS, 10, 45, seed=0)
    with pytest.raises(ValueError, match="fewer") as err:
        balanced_split(LABELS, 10, 510, seed=0)
    assert "500" in str(err.value)  # says the maximum the data allows
    with pytest.raises(ValueError, match="num_labels"):
        balanced_split(LABELS, 10, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        balanced_split(LABELS, 10, 40, seed=-1)


def test_labels_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        balanced_split(np.array([0, 1, 2, 10]), 10, 10, seed=0)
    with pytest.raises(ValueError, match="out of range"):
        long_tailed_split(np.array([0, -2, 1]), 2, 1, 1, 2.0, seed=0)
    with pytest.raises(ValueError, match="-1"):
        given_split(np.array([0, 1, -5]))


def test_long_tailed_counts_match_the_reference_formula():
    counts = long_tailed_counts(1500, 100, 10)
    assert counts == [1500, 899, 539, 323, 193, 116, 69, 41, 25, 15]
    for c in range(10):
        assert counts[c] == math.floor(1500 * 100 ** (-c / 9) + 1e-9)
    assert (
        long_tailed_counts(3000, 150, 10, reverse=True) == long_tailed_counts(3000, 150, 10)[::-1]
    )
    assert long_tailed_counts(10, 1, 3) == [10, 10, 10]


def test_long_tailed_split_counts_and_disjointness():
    y = np.repeat(np.arange(4), 100)
    s = long_tailed_split(y, 4, n1=30, m1=60, gamma=10, seed=3)
    n_c = np.bincount(y[s.labeled], minlength=4)
    m_c = np.bincount(y[s.unlabeled], minlength=4)
    np.testing.assert_array_equal(n_c, long_tailed_counts(30, 10, 4))  # [30, 13, 6, 3]
    np.testing.assert_array_equal(m_c, long_tailed_counts(60, 10, 4))
    assert not set(s.labeled) & set(s.unlabeled)
    assert s.kind == "long_tailed" and s.meta["labeled_per_class"] == [30, 13, 6, 3]
    again = long_tailed_split(y, 4, n1=30, m1=60, gamma=10, seed=3)
    np.testing.assert_array_equal(s.unlabeled, again.unlabeled)


def test_long_tailed_split_reversed_unlabeled():
    y = np.repeat(np.arange(4), 100)
    s = long_tailed_split(y, 4, n1=30, m1=60, gamma=10, seed=3, reverse_unlabeled=True)
    np.testing.assert_array_equal(np.bincount(y[s.labeled]), [30, 13, 6, 3])
    np.testing.assert_array_equal(np.bincount(y[s.unlabeled]), [6, 12, 27, 60])


def test_long_tailed_split_bad_input():
    y = np.repeat(np.arange(4), 50)
    with pytest.raises(ValueError, match="class 0 needs 30 labeled \\+ 60"):
        long_tailed_split(y, 4, n1=30, m1=60, gamma=10, seed=0)
    with pytest.raises(ValueError, match="gamma"):
        long_tailed_split(y, 4, n1=3, m1=6, gamma=0.5, seed=0)


def test_given_split_uses_the_users_labels():
    y = np.array([0, -1, 1, -1, 2])
    s = given_split(y)
    np.testing.assert_array_equal(s.labeled, [0, 2, 4])
    np.testing.assert_array_equal(s.unlabeled, np.arange(5))
    assert s.kind == "given" and s.seed is None
    np.testing.assert_array_equal(
        given_split(y, include_labeled_in_unlabeled=False).unlabeled, [1, 3]
    )
    with pytest.raises(ValueError, match="every label is -1"):
        given_split(np.array([-1, -1]))


def test_fold_split_labels_exactly_the_fold():
    folds = (np.array([5, 1, 3]), np.array([0, 2, 2, 4]))
    s = fold_split(folds, 1, num_train=6)
    np.testing.assert_array_equal(s.labeled, [0, 2, 4])  # sorted, duplicates dropped
    np.testing.assert_array_equal(s.unlabeled, np.arange(6))  # the papers' convention
    assert s.kind == "fold" and s.seed is None and s.meta["fold"] == 1
    assert s.meta["num_folds"] == 2
    assert "fold 1" in split_summary(s, np.arange(6) % 3, 3)
    np.testing.assert_array_equal(
        fold_split(folds, 0, 6, include_labeled_in_unlabeled=False).unlabeled, [0, 2, 4]
    )
    t = Split.from_dict(json.loads(json.dumps(s.to_dict())))
    assert t.kind == "fold" and t.meta == s.meta


@pytest.mark.parametrize(
    "folds, fold, match",
    [
        ((np.array([0]),), 1, r"fold: must be in 0\.\.0, got 1"),
        ((np.array([0]),), -1, r"must be in 0\.\.0"),
        ((np.array([0]),), True, "integer fold number"),
        ((np.array([0, 9]),), 0, "index 9 is outside the training set of 6"),
        ((np.array([], dtype=np.int64),), 0, "fold 0 is empty"),
        ((), 0, "defines no labeled folds"),
    ],
)
def test_fold_split_bad_input(folds, fold, match):
    with pytest.raises(ValueError, match=match):
        fold_split(folds, fold, num_train=6)


def test_save_and_load_roundtrip(tmp_path):
    s = long_tailed_split(np.repeat(np.arange(3), 20), 3, 8, 10, 4.0, seed=5)
    path = tmp_path / "run" / "split.json"
    save_split(s, path)
    d = json.loads(path.read_text())
    assert {"labeled", "unlabeled", "seed", "kind"} <= set(d) and d["seed"] == 5
    t = load_split(path)
    np.testing.assert_array_equal(t.labeled, s.labeled)
    np.testing.assert_array_equal(t.unlabeled, s.unlabeled)
    assert (t.kind, t.seed, t.meta) == (s.kind, s.seed, s.meta)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp files left


def test_load_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_split(bad)
    bad.write_text(json.dumps({"labeled": [1, 2]}))
    with pytest.raises(ValueError, match="missing key"):
        load_split(bad)
    bad.write_text(json.dumps({"labeled": [0.5], "unlabeled": [], "kind": "given"}))
    with pytest.raises(ValueError, match="integer indices"):
        load_split(bad)


def test_split_validate_catches_a_foreign_split():
    s = Split(np.array([0, 5]), np.arange(10), "balanced", 0)
    s.validate(10)
    with pytest.raises(ValueError, match="another dataset"):
        s.validate(5)
    with pytest.raises(ValueError, match="kind"):
        Split([0], [0], "random", 0)
