"""Per-modality views: image views (PIL per-sample or batched) and the feature-space views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semimatch.data import BatchViews, FeatureViews, SampleViews, from_arrays
from semimatch.data.augment import StrongAugment, WeakAugment
from semimatch.data.batched_augment import BatchedStrongAugment, BatchedWeakAugment
from semimatch.data.views import FeatureNoise, image_views


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- image views -------------------------------------------------------------------------------
def test_image_views_are_the_pil_or_the_batched_pipelines():
    info = from_arrays(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1]).info
    pil = image_views(info, "pil")
    assert isinstance(pil, SampleViews) and not pil.batched
    assert isinstance(pil.weak, WeakAugment) and isinstance(pil.strong, StrongAugment)
    batched = image_views(info, "batched", strong_variant="usb")
    assert isinstance(batched, BatchViews) and batched.batched
    assert isinstance(batched.weak, BatchedWeakAugment)
    assert isinstance(batched.strong, BatchedStrongAugment)

    def mine(img, rng):
        return img

    custom = image_views(info, "pil", weak=mine)
    assert custom.weak is mine and isinstance(custom.strong, StrongAugment)
    with pytest.raises(ValueError, match="need augment='pil'"):
        image_views(info, "batched", strong=mine)


# --- feature views -----------------------------------------------------------------------------
def test_feature_noise_keeps_shape_dtype_and_device():
    x = torch.randn(7, 5)
    for view in FeatureViews().weak, FeatureViews().strong:
        out = view(x, _gen(0))
        assert out.shape == (7, 5) and out.dtype == torch.float32 and out.device == x.device
    assert torch.equal(FeatureNoise(0.0)(x, _gen(0)), x)  # no noise, no dropout: identity
    with pytest.raises(ValueError, match=r"float \(N, D\)"):
        FeatureNoise(0.1)(torch.zeros(2, 3, 4), _gen(0))
    with pytest.raises(ValueError, match=r"float \(N, D\)"):
        FeatureNoise(0.1)(torch.zeros(2, 3, dtype=torch.uint8), _gen(0))


def test_feature_views_are_a_function_of_the_generator_seed():
    x = torch.randn(64, 16)
    strong = FeatureViews().strong
    assert torch.equal(strong(x, _gen(3)), strong(x, _gen(3)))
    assert not torch.equal(strong(x, _gen(3)), strong(x, _gen(4)))


def test_feature_noise_has_the_requested_mean_and_variance():
    # 200k draws: the sample mean's standard error is 0.1/447 = 2.2e-4 and the sample std's
    # relative error ~0.16%; the tolerances are 5+ standard errors, not a CPU's rounding.
    x = torch.zeros(400, 500)
    e = FeatureNoise(0.1)(x, _gen(0))
    assert abs(e.mean().item()) < 1.5e-3
    assert e.std().item() == pytest.approx(0.1, rel=0.01)


def test_strong_view_drops_the_requested_fraction_of_features():
    x = torch.ones(400, 500)
    masked = FeatureNoise(0.0, dropout=0.3)(x, _gen(1))
    assert set(masked.unique().tolist()) == {0.0, 1.0}  # a dropped feature sits at 0 (its mean)
    assert (masked == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)  # SE 0.001
    # with noise, the kept features carry it and the dropped ones are noise only
    both = FeatureNoise(0.5, dropout=0.3)(x, _gen(1))
    dropped = both[masked == 0]  # the mask is drawn first, from the same generator state
    assert dropped.std().item() == pytest.approx(0.5, rel=0.02)
    assert (both[masked == 1] - 1).std().item() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise": -0.1}, "noise must be"),
        ({"noise": 0.1, "dropout": 1.0}, "dropout must be in"),
        ({"noise": 0.1, "dropout": True}, "dropout must be"),
    ],
)
def test_feature_noise_refuses_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureNoise(**kwargs)
