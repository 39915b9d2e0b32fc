"""In-memory arrays: images (from_arrays) and feature vectors (from_features)."""

from __future__ import annotations

import numpy as np
import pytest

from semimatch.data import from_arrays


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
    np.testing.assert_allclose(ds.info.mean[0], x.mean() / 255, atol=1e-3)
    rgb = from_arrays(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), [0, 1, 0, 1, -1])
    assert rgb.info.channels == 3 and rgb.info.num_classes == 2


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
