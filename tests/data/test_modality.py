"""Modalities: stored samples and raw user inputs -> model tensors, and the model wrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semimatch.data import from_arrays, from_features, to_model_input, wrap_model
from semimatch.data.modality import MODALITIES, modality
from semimatch.models import InputNormalizer


def _image_info(size=(6, 5), channels=1):
    x = np.zeros((4, *size, channels), np.uint8)
    return from_arrays(x, [0, 1, 0, 1]).info


def test_images_become_uint8_nchw_of_the_training_size():
    info = _image_info()
    x = np.arange(2 * 6 * 5, dtype=np.uint8).reshape(2, 6, 5)
    t = to_model_input(x, info)
    assert t.dtype == torch.uint8 and t.shape == (2, 1, 6, 5)
    assert torch.equal(t[:, 0], torch.from_numpy(x))
    assert torch.equal(to_model_input(x / 255.0, info), t)  # float in [0, 1] -> the same bytes
    with pytest.raises(ValueError, match="this model takes 6x5 with 1"):
        to_model_input(np.zeros((2, 5, 6), np.uint8), info)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, C\)"):
        to_model_input(np.zeros((2, 30), np.uint8), info)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        to_model_input(np.full((2, 6, 5), 3.0), info)
    assert to_model_input(np.zeros((0, 6, 5), np.uint8), info).shape == (0, 1, 6, 5)


def test_features_become_standardised_float32_vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (20, 4))
    ds = from_features(x, np.arange(20) % 2)
    t = to_model_input(x, ds.info)
    assert t.dtype == torch.float32 and t.shape == (20, 4)
    # the same numbers the training samples hold, bit for bit
    np.testing.assert_array_equal(t.numpy(), ds.train.as_array())
    with pytest.raises(ValueError, match="rows have 3 features; this model takes 4"):
        to_model_input(x[:, :3], ds.info)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        to_model_input(x[None], ds.info)


def test_the_model_wrapper_follows_the_modality():
    model = nn.Linear(4, 2)
    image = wrap_model(nn.Identity(), _image_info(channels=3))
    assert isinstance(image, InputNormalizer)
    feats = from_features(np.random.default_rng(0).normal(size=(6, 4)), [0, 1] * 3).info
    assert wrap_model(model, feats) is model  # batches are standardised already


def test_modalities_are_looked_up_by_kind():
    assert set(MODALITIES) == {"image", "features", "text"}
    assert modality("features").dtype == torch.float32 and modality("image").dtype == torch.uint8
    assert modality("text").dtype == torch.int64 and modality("text").ragged
    with pytest.raises(ValueError, match="unknown data kind 'audio'"):
        modality("audio")
