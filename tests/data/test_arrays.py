"""In-memory arrays: images (from_arrays) and feature vectors (from_features)."""

from __future__ import annotations

import numpy as np
import pytest

from semimatch.data import FeatureViews, from_arrays, from_features


# --- arrays -----------------------------------------------------------------------------------
def test_from_arrays_sklearn_convention():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    y = np.array([0, 1, 2] * 6 + [-1, -1])
    xt, yt = rng.random((4, 6, 6)), np.array([0, 1, 2, 0])
    ds = from_arrays(x, y, xt, yt, class_names=["a", "b", "c"])
    assert ds.train.as_array().shape == (20, 6, 6, 1)
    assert ds.info.num_classes == 3 and ds.info.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(ds.train.labels, y)
    np.testing.assert_array_equal(ds.test.as_array()[..., 0], np.rint(xt * 255).astype(np.uint8))
    np.testing.assert_allclose(ds.info.spec.mean[0], x.mean() / 255, atol=1e-3)
    rgb = from_arrays(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), [0, 1, 0, 1, -1])
    assert rgb.info.spec.channels == 3 and rgb.info.num_classes == 2


def test_from_arrays_bad_inputs():
    x = np.zeros((4, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        from_arrays(x, [0, 1, 5, 0], class_names=["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        from_arrays(x, [0, 1, -3, 0])
    with pytest.raises(ValueError, match="one label per"):
        from_arrays(x, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        from_arrays(x * 2.0 + 3.0, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="channels-first"):
        from_arrays(np.zeros((4, 3, 5, 5), np.uint8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        from_arrays(x, [0, 0, -1, 0])
    with pytest.raises(ValueError, match="integers"):
        from_arrays(x, ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="test_labels"):
        from_arrays(x, [0, 1, 0, 1], x, [0, 1, 2, -1], class_names=["a", "b", "c"])


def test_from_arrays_refuses_feature_vectors_and_names_from_features():
    with pytest.raises(ValueError, match="from_features"):
        from_arrays(np.zeros((4, 64)), [0, 1, 0, 1])


# --- feature vectors ----------------------------------------------------------------------------
def test_from_features_standardises_and_records_how():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (30, 4))
    x[:, 2] = 7.0  # a constant feature keeps scale 1 (nothing to scale)
    xt = rng.normal(5.0, 3.0, (6, 4))
    ds = from_features(x, np.arange(30) % 3 - (np.arange(30) > 20), xt, np.arange(6) % 3)
    info = ds.info
    assert info.kind == "features" and info.spec.dim == 4 and info.sample_shape == (4,)
    assert info.num_classes == 3 and not hasattr(info.spec, "hflip") and info.input_shape == (4,)
    z = ds.train.as_array()
    assert z.dtype == np.float32 and z.shape == (30, 4)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.delete(z.std(axis=0), 2), 1, rtol=1e-4)
    assert info.spec.std[2] == 1.0 and np.all(z[:, 2] == 0)
    # the test set gets the training set's standardisation
    expected = (xt.astype(np.float32) - np.float32(info.spec.mean)) / np.float32(info.spec.std)
    np.testing.assert_array_equal(ds.test.as_array(), expected)
    assert isinstance(ds.views, FeatureViews)


def test_from_features_keeps_given_statistics_and_view_parameters():
    x = np.arange(12.0).reshape(6, 2)
    ds = from_features(
        x, [0, 1, -1, -1, 0, 1], mean=[0, 0], std=[1, 1], weak_noise=0.2, strong_dropout=0.1
    )
    np.testing.assert_array_equal(ds.train.as_array(), x.astype(np.float32))
    assert ds.views.weak.noise == 0.2 and ds.views.strong.dropout == 0.1


def test_from_features_bad_inputs():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        from_features(np.zeros((4, 3, 2)), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="finite"):
        from_features(np.full((4, 3), np.nan), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="one label per"):
        from_features(x, [0, 1])
    with pytest.raises(ValueError, match="rows have 2 features; this model takes 3"):
        from_features(x, [0, 1, 0, 1], np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="pass both or neither"):
        from_features(x, [0, 1, 0, 1], x)
    with pytest.raises(ValueError, match="need 3 values"):
        from_features(x, [0, 1, 0, 1], mean=[0, 0])
    with pytest.raises(ValueError, match="std: must be finite and > 0"):
        from_features(x, [0, 1, 0, 1], std=[1, 0, 1])
    with pytest.raises(ValueError, match="dropout must be in"):
        from_features(x, [0, 1, 0, 1], strong_dropout=1.5)


def test_one_based_labels_are_refused_not_trained_with_an_empty_class_0():
    """Labels 1..4 with the number of classes inferred (largest + 1) would train 5 classes,
    class 0 empty; named classes or an explicit num_classes say what is meant."""
    x = np.zeros((8, 4, 4), np.uint8)
    y = np.array([1, 2, 3, 4, 1, 2, 3, -1])
    with pytest.raises(ValueError, match=r"labels: class 0 has no labeled sample.*subtract 1"):
        from_arrays(x, y)
    with pytest.raises(ValueError, match=r"class 0 has no labeled sample"):
        from_features(np.zeros((8, 3), np.float32), y)
    assert from_arrays(x, y, num_classes=5).info.num_classes == 5  # said so: class 0 unlabeled
    assert from_arrays(x, y - 1 + (y < 0)).info.num_classes == 4
