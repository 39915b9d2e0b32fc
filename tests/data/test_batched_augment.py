"""Batched tensor views against the PIL pipeline: each op on the same image and magnitude, whole
strong views from the same random parameters, the op-frequency statistics, Cutout geometry,
shapes, determinism and bad input (reference.md "Weak view" / "Strong view")."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from semimatch.data.augment import (
    CUTOUT_FILL,
    GEOMETRIC_OPS,
    INTEGER_OPS,
    OP_NAMES,
    OP_RANGES,
    VARIANTS,
    apply_op,
    magnitude_from_unit,
    sample_ops,
)
from semimatch.data.batched_augment import (
    BatchedStrongAugment,
    BatchedWeakAugment,
    StrongParams,
    batched_apply_op,
)


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Half noise, half smooth gradients with noise (natural-looking histograms and edges)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, size, size, channels))
    ramp = np.linspace(0, 1, size)
    smooth = (
        rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, :, None, None]
        + rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, None, :, None]
    ) / 2 + rng.normal(0, 8, (n, size, size, channels))
    out = np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, smooth)
    return np.clip(out, 0, 255).astype(np.uint8)


def _to_nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _to_nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)


def _np(img: Image.Image) -> np.ndarray:
    arr = np.array(img)
    return arr[..., None] if arr.ndim == 2 else arr


def _pil_strong_from_params(images: np.ndarray, params: StrongParams, pad: int) -> np.ndarray:
    """The PIL pipeline (np.pad crop, augment.apply_op, Cutout) replaying batched parameters."""
    out = []
    h, w = images.shape[1:3]
    for i, img in enumerate(images):
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        top, left = int(params.weak.top[i]), int(params.weak.left[i])
        view = padded[top : top + h, left : left + w]
        view = view[:, ::-1] if bool(params.weak.flip[i]) else view
        pil = _pil(np.ascontiguousarray(view))
        for op, m in zip(params.ops[i].tolist(), params.magnitudes[i].tolist(), strict=True):
            if op >= 0:
                pil = apply_op(pil, OP_NAMES[op], m)
        arr = _np(pil)
        y0, y1, x0, x1 = params.cutout[i].tolist()
        arr[y0:y1, x0:x1] = CUTOUT_FILL
        out.append(arr)
    return np.stack(out)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Small tensors: one thread is fastest and leaves the shared cores to others."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (28, 1), (8, 3), (96, 1)])
@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_matches_pil(name: str, size: int, channels: int) -> None:
    n = 24 if size <= 32 else 8
    images = _images(n, size, channels, seed=size)
    units = np.linspace(0.0, 0.999, n)
    mags = np.array([magnitude_from_unit(name, u) for u in units])
    got = _to_nhwc(batched_apply_op(_to_nchw(images), name, torch.from_numpy(mags)))
    want = np.stack(
        [_np(apply_op(_pil(img), name, m)) for img, m in zip(images, mags, strict=True)]
    )
    diff = np.abs(got.astype(int) - want.astype(int))
    if name in GEOMETRIC_OPS:
        # Same maps and NEAREST sampling; PIL's 16.16 fixed-point coordinates can pick the
        # neighbouring pixel where a sampling point lies within ~1e-5 of a pixel boundary.
        assert (diff.max(axis=-1) > 0).mean() < 0.005, (diff.max(axis=-1) > 0).mean()
    else:
        # Point ops reproduce PIL's integer arithmetic: identical up to float rounding.
        assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def test_ops_accept_a_scalar_magnitude_and_leave_the_input_alone() -> None:
    x = _to_nchw(_images(4, 32, 3))
    before = x.clone()
    out = batched_apply_op(x, "Solarize", 128.0)
    assert torch.equal(x, before) and out.shape == x.shape and out.dtype == torch.uint8
    assert torch.equal(batched_apply_op(x, "Identity", 0.0), x)


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
@pytest.mark.parametrize(("size", "channels"), [(32, 3), (28, 1)])
def test_whole_strong_views_match_pil_replaying_the_same_parameters(
    variant: str, size: int, channels: int
) -> None:
    images = _images(48, size, channels, seed=1)
    aug = BatchedStrongAugment((size, size), hflip=True, variant=variant)
    params = aug.sample_params(48, size, size, torch.Generator().manual_seed(0))
    got = _to_nhwc(aug.apply(_to_nchw(images), params))
    want = _pil_strong_from_params(images, params, pad=aug.weak.padding[0])
    diff = np.abs(got.astype(int) - want.astype(int))
    # Rare geometric boundary picks (see test_each_op_matches_pil) can shift a later
    # histogram-based op (Equalize, AutoContrast) by one level; nothing else differs.
    assert (diff > 1).mean() < 0.005 and diff.mean() < 0.05, ((diff > 1).mean(), diff.mean())


def test_weak_view_is_the_reflect_padded_window_of_its_parameters() -> None:
    images = _images(64, 32, 3)
    aug = BatchedWeakAugment((32, 32), hflip=True)
    params = aug.sample_params(64, 32, 32, torch.Generator().manual_seed(0))
    got = _to_nhwc(aug.apply(_to_nchw(images), params))
    for i, img in enumerate(images):
        padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect")
        t, left = int(params.top[i]), int(params.left[i])
        want = padded[t : t + 32, left : left + 32]
        want = want[:, ::-1] if bool(params.flip[i]) else want
        assert np.array_equal(got[i], want)
    # Offsets cover 0..8 (4 px of padding on each side); flips happen half the time.
    many = aug.sample_params(4000, 32, 32, torch.Generator().manual_seed(1))
    assert set(many.top.tolist()) == set(range(9)) == set(many.left.tolist())
    assert abs(many.flip.float().mean().item() - 0.5) < 0.04
    no_flip = BatchedWeakAugment((32, 32), hflip=False)
    assert not no_flip.sample_params(500, 32, 32, torch.Generator()).flip.any()


def test_weak_padding_larger_than_the_image_reflects_like_numpy() -> None:
    img = _images(1, 4, 1)
    aug = BatchedWeakAugment((8, 8), hflip=False, pad_frac=0.5)  # 4 px padding around 4 px
    params = aug.sample_params(16, 4, 4, torch.Generator().manual_seed(0))
    got = _to_nhwc(aug.apply(_to_nchw(np.repeat(img, 16, axis=0)), params))
    padded = np.pad(img[0], ((4, 4), (4, 4), (0, 0)), mode="reflect")
    for i in range(16):
        t, left = int(params.top[i]), int(params.left[i])
        assert np.array_equal(got[i], padded[t : t + 8, left : left + 8])


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
def test_op_frequencies_match_the_reference_and_the_pil_sampler(variant: str) -> None:
    spec = VARIANTS[variant]
    n = 20_000
    params = BatchedStrongAugment((32, 32), True, variant).sample_params(
        n, 32, 32, torch.Generator().manual_seed(0)
    )
    ops, mags = params.ops.numpy(), params.magnitudes.numpy()
    assert ops.shape == mags.shape == (n, spec.num_ops)
    counts = np.bincount(ops[ops >= 0], minlength=len(OP_NAMES))
    p_op = spec.apply_prob / len(OP_NAMES)
    mean, sd = n * spec.num_ops * p_op, math.sqrt(n * spec.num_ops * p_op * (1 - p_op))
    assert np.all(np.abs(counts - mean) < 4.5 * sd), counts
    assert stats.chisquare(counts).pvalue > 1e-3
    applied = (ops >= 0).mean()
    assert abs(applied - spec.apply_prob) < 4.5 * math.sqrt(0.25 / ops.size) + 1e-12
    # Same distribution as the PIL sampler: a two-sample test on the op counts.
    rng = np.random.default_rng(0)
    pil_counts = np.zeros(len(OP_NAMES))
    for _ in range(n):
        for name, _m in sample_ops(rng, variant):
            pil_counts[OP_NAMES.index(name)] += 1
    assert stats.chi2_contingency(np.stack([counts, pil_counts])).pvalue > 1e-3
    for j, name in enumerate(OP_NAMES):
        values = mags[ops == j]
        bounds = OP_RANGES[name]
        if bounds is None:
            assert np.all(values == 0.0)
        elif name in INTEGER_OPS:
            levels, level_counts = np.unique(values, return_counts=True)
            assert levels.tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
            assert stats.chisquare(level_counts).pvalue > 1e-3
        else:
            lo, hi = bounds
            assert values.min() >= lo and values.max() < hi
            assert stats.kstest((values - lo) / (hi - lo), "uniform").pvalue > 1e-3


def _expected_cutout_area(size: int, sides: dict[int, float]) -> float:
    def mean_len(s: int) -> float:
        return float(np.mean([min(c - s // 2 + s, size) - max(c - s // 2, 0) for c in range(size)]))

    return sum(p * mean_len(s) ** 2 for s, p in sides.items())


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
@pytest.mark.parametrize("size", [28, 32])
def test_cutout_area_equals_expectation(variant: str, size: int) -> None:
    aug = BatchedStrongAugment((size, size), True, variant)
    n = 20_000
    params = aug.sample_params(n, size, size, torch.Generator().manual_seed(0))
    y0, y1, x0, x1 = params.cutout.T
    areas = ((y1 - y0) * (x1 - x0)).double()
    half = size // 2
    sides = {half: 1.0} if variant == "fixmatch" else {s: 1 / half for s in range(half)}
    expected = _expected_cutout_area(size, sides)
    assert abs(areas.mean().item() - expected) < 4 * areas.std().item() / math.sqrt(n)
    # The pixels: without ops, an all-black batch has exactly `area` pixels of value 127.
    k = 256
    quiet = params._replace(
        weak=type(params.weak)(*(t[:k] for t in params.weak)),
        ops=torch.full((k, params.ops.shape[1]), -1),
        magnitudes=params.magnitudes[:k],
        cutout=params.cutout[:k],
    )
    out = aug.apply(torch.zeros(k, 3, size, size, dtype=torch.uint8), quiet)
    counts = (out[:, 0] == CUTOUT_FILL).sum(dim=(1, 2))
    assert torch.equal(counts, areas[:k].long())
    assert torch.equal(out[:, 0], out[:, 2])  # gray: every channel


@pytest.mark.parametrize("size", [8, 28, 32, 96])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_and_devices(size: int, channels: int) -> None:
    x = _to_nchw(_images(6, size, channels))
    g = torch.Generator().manual_seed(0)
    for aug in (
        BatchedWeakAugment((size, size), True),
        BatchedStrongAugment((size, size), True),
        BatchedStrongAugment((size, size), False, "usb"),
    ):
        out = aug(x, g)
        assert out.shape == x.shape and out.dtype == torch.uint8 and out.device == x.device
    bigger = _to_nchw(_images(3, size + 8, channels))
    assert BatchedStrongAugment((size, size), True)(bigger, g).shape == (3, channels, size, size)


def test_determinism_and_input_untouched() -> None:
    x = _to_nchw(_images(32, 32, 3))
    before = x.clone()
    for aug in (BatchedWeakAugment((32, 32), True), BatchedStrongAugment((32, 32), True)):
        a = aug(x, torch.Generator().manual_seed(5))
        b = aug(x, torch.Generator().manual_seed(5))
        c = aug(x, torch.Generator().manual_seed(6))
        assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)


def test_strong_differs_from_weak() -> None:
    x = _to_nchw(_images(32, 32, 3))
    weak = BatchedWeakAugment((32, 32), True)(x, torch.Generator().manual_seed(0))
    strong = BatchedStrongAugment((32, 32), True)(x, torch.Generator().manual_seed(0))
    per_image = (weak.int() - strong.int()).abs().flatten(1).sum(1)
    assert (per_image > 0).all()  # at least the 16 px Cutout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator() -> None:
    x = _to_nchw(_images(64, 32, 3))
    aug = BatchedStrongAugment((32, 32), True)
    cpu = aug(x, torch.Generator().manual_seed(0))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(0))
    assert gpu.device.type == "cuda"
    assert (cpu.int() - gpu.cpu().int()).abs().float().mean() < 0.05


def test_bad_input_raises_value_error() -> None:
    aug, g = BatchedStrongAugment((32, 32), True), torch.Generator()
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 3, 32, 32), g)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.zeros(2, 32, 32, 3, dtype=torch.uint8), g)  # channels-last by mistake
    with pytest.raises(ValueError, match="torch"):
        aug(np.zeros((2, 3, 32, 32), np.uint8), g)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="generator"):
        aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        aug(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="variant"):
        BatchedStrongAugment((32, 32), True, "randaugment")
    with pytest.raises(ValueError, match="op name"):
        batched_apply_op(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "Invert", 0.0)
