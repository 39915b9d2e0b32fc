"""Source types, DatasetInfo (with its modality) and the shared label/statistics helpers."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest

from semimatch.data import ArraySource, DatasetInfo, FeatureSource, SSLDataset
from semimatch.data.sources import (
    FeatureSpec,
    ImageRecord,
    ImageSpec,
    channel_stats,
    check_labels,
)

OLD_DATASET_JSON = {  # a dataset.json written before DatasetInfo had ``kind``
    "name": "digits",
    "num_classes": 10,
    "class_names": [str(i) for i in range(10)],
    "image_size": [8, 8],
    "channels": 1,
    "mean": [0.3],
    "std": [0.4],
    "hflip": False,
}


def _round_trip(info: DatasetInfo) -> DatasetInfo:  # as a run folder keeps dataset.json
    return DatasetInfo.from_dict(json.loads(json.dumps(info.to_dict())))


def test_dataset_info_defaults_to_images_and_old_files_still_load():
    info = DatasetInfo.from_dict(OLD_DATASET_JSON)  # the flat form, before kinds
    assert info.kind == "image" and info.spec == ImageSpec((8, 8), 1, (0.3,), (0.4,), False)
    assert info.input_shape == (1, 8, 8) and info.sample_shape == (8, 8, 1)
    saved = json.loads(json.dumps(info.to_dict()))
    assert saved["kind"] == "image" and DatasetInfo.from_dict(saved) == info


def test_dataset_info_pickled_in_the_flat_form_unpickles():
    flat = DatasetInfo.from_dict(OLD_DATASET_JSON)
    state = {k: tuple(v) if isinstance(v, list) else v for k, v in OLD_DATASET_JSON.items()}
    old = DatasetInfo.__new__(DatasetInfo)
    old.__setstate__(state)  # as pickle restores an estimator saved before the specs
    assert old == flat and pickle.loads(pickle.dumps(flat)) == flat


def test_feature_info_round_trips_with_its_kind():
    info = DatasetInfo("f", 3, ("a", "b", "c"), FeatureSpec(5, (0.0,) * 5, (1.0,) * 5))
    assert info.input_shape == (5,) and info.sample_shape == (5,)
    assert _round_trip(info) == info
    flat = {**OLD_DATASET_JSON, "kind": "features", "image_size": [], "channels": 5}
    assert DatasetInfo.from_dict(flat).spec == FeatureSpec(5, (0.3,), (0.4,))  # D was channels
    with pytest.raises(ValueError, match="kind: must be one of"):
        DatasetInfo.from_dict({**OLD_DATASET_JSON, "kind": "audio"})
    with pytest.raises(ValueError, match="spec: must be one of ImageSpec"):
        DatasetInfo("f", 3, ("a", "b", "c"), (5,))  # type: ignore[arg-type]


def test_feature_source_holds_float32_vectors():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    src = FeatureSource(x, [0, 1, -1, 1])
    assert src.kind == "features" and src.sample_shape == (3,) and len(src) == 4
    np.testing.assert_array_equal(src.gather([2, 0]), x[[2, 0]])
    assert src.gather([1]).dtype == np.float32 and src[3].tolist() == [9.0, 10.0, 11.0]
    with pytest.raises(ValueError, match=r"float32 \(N, D\)"):
        FeatureSource(x.astype(np.float64), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="3 labels for 4 feature vectors"):
        FeatureSource(x, [0, 1, 0])


def test_image_sources_gather_one_by_one_when_not_in_memory():
    class OneByOne(ArraySource):
        def as_array(self):
            return None

    x = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 1), dtype=np.uint8)
    src = OneByOne(x, np.zeros(5))
    assert src.kind == "image" and src.sample_shape == (3, 4, 1)
    np.testing.assert_array_equal(src.gather([4, 1]), x[[4, 1]])
    ds = SSLDataset(DatasetInfo.from_dict(OLD_DATASET_JSON), src, None, None)
    assert ds.views is None and ds.labeled_folds is None


def test_image_record_is_typed():
    rec = ImageRecord("a.png", 2, None, gray=True)
    assert (rec.path, rec.label, rec.array, rec.gray) == ("a.png", 2, None, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.label = 3


def test_label_check_and_channel_statistics():
    with pytest.raises(ValueError, match="label 5 at index 1 is out of range"):
        check_labels(np.array([0, 5]), 3, "labels", allow_unknown=False)
    check_labels(np.array([-1, 2]), 3, "labels", allow_unknown=True)
    x = np.zeros((2, 2, 2, 3), np.uint8)
    x[..., 0] = 255
    mean, std = channel_stats(ArraySource(x, np.zeros(2)))
    assert mean == (1.0, 0.0, 0.0) and std == (0.001, 0.001, 0.001)  # floored: no zero division
