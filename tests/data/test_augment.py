"""PIL weak/strong views: shapes, determinism, the op table and its sampling distribution,
Cutout geometry and bad input (reference.md "Weak view" / "Strong view")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from semimatch.data import augment
from semimatch.data.augment import (
    CUTOUT_FILL,
    GEOMETRIC_FILL,
    GEOMETRIC_OPS,
    INTEGER_OPS,
    OP_NAMES,
    OP_RANGES,
    VARIANTS,
    StrongAugment,
    WeakAugment,
    apply_op,
    crop_padding,
    cutout_box,
    cutout_side,
    magnitude_from_unit,
    sample_ops,
)


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)


def expected_cutout_area(height: int, width: int, sides: dict[int, float]) -> float:
    """E[area] of a side-s square centred on a uniform pixel, clipped at the borders, written
    independently of cutout_box: rows cy - s//2 ... cy - s//2 + s - 1 intersected with [0, H)."""

    def mean_len(n: int, s: int) -> float:
        return float(np.mean([min(c - s // 2 + s, n) - max(c - s // 2, 0) for c in range(n)]))

    return sum(p * mean_len(height, s) * mean_len(width, s) for s, p in sides.items())


def test_op_table_is_the_fixmatch_table() -> None:
    assert len(OP_NAMES) == 14 and len(set(OP_NAMES)) == 14
    assert OP_RANGES["Rotate"] == (-30.0, 30.0)
    assert OP_RANGES["Solarize"] == (0.0, 256.0)
    assert OP_RANGES["Posterize"] == (4.0, 8.0)
    for name in ("Brightness", "Color", "Contrast", "Sharpness"):
        assert OP_RANGES[name] == (0.05, 0.95)
    for name in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
        assert OP_RANGES[name] == (-0.3, 0.3)
    for name in ("AutoContrast", "Equalize", "Identity"):
        assert OP_RANGES[name] is None
    assert set(OP_NAMES) >= GEOMETRIC_OPS
    assert {"Posterize"} == INTEGER_OPS
    assert (VARIANTS["fixmatch"].num_ops, VARIANTS["fixmatch"].apply_prob) == (2, 0.5)
    assert (VARIANTS["usb"].num_ops, VARIANTS["usb"].apply_prob) == (3, 1.0)


def test_magnitude_from_unit_covers_the_range() -> None:
    assert magnitude_from_unit("Rotate", 0.0) == -30.0
    assert magnitude_from_unit("Rotate", 0.5) == pytest.approx(0.0)
    assert magnitude_from_unit("Brightness", 0.999999) == pytest.approx(0.95, abs=1e-5)
    assert magnitude_from_unit("Identity", 0.7) == 0.0
    # Posterize: each of 4, 5, 6, 7, 8 bits on a fifth of [0, 1).
    units = (0.0, 0.19, 0.21, 0.5, 0.79, 0.81)
    assert [magnitude_from_unit("Posterize", u) for u in units] == [4, 4, 5, 6, 7, 8]
    assert magnitude_from_unit("Posterize", 1.0 - 1e-12) == 8.0


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
def test_sample_ops_frequencies_match_the_reference(variant: str) -> None:
    spec = VARIANTS[variant]
    rng = np.random.default_rng(1)
    n = 20_000
    draws = [sample_ops(rng, variant) for _ in range(n)]
    counts = np.zeros(len(OP_NAMES))
    per_image = np.zeros(spec.num_ops + 1)
    magnitudes: dict[str, list[float]] = {name: [] for name in OP_NAMES}
    for ops in draws:
        per_image[len(ops)] += 1
        for name, m in ops:
            counts[OP_NAMES.index(name)] += 1
            magnitudes[name].append(m)
    # Each op: num_ops * apply_prob / 14 applications per image (fixmatch 1/14, usb 3/14);
    # counts ~ Binomial(n * num_ops, apply_prob / 14), and uniform over ops given their total.
    p_op = spec.apply_prob / len(OP_NAMES)
    mean, sd = n * spec.num_ops * p_op, math.sqrt(n * spec.num_ops * p_op * (1 - p_op))
    assert np.all(np.abs(counts - mean) < 4.5 * sd), counts
    assert stats.chisquare(counts).pvalue > 1e-3
    # Number of applied ops per image ~ Binomial(num_ops, apply_prob).
    binom = stats.binom.pmf(np.arange(spec.num_ops + 1), spec.num_ops, spec.apply_prob) * n
    mask = binom > 0
    assert per_image[~mask].sum() == 0
    if mask.sum() > 1:  # usb: always all 3 ops
        assert stats.chisquare(per_image[mask], binom[mask]).pvalue > 1e-3
    for name, values in magnitudes.items():
        values_a = np.asarray(values)
        bounds = OP_RANGES[name]
        if bounds is None:
            assert np.all(values_a == 0.0)
        elif name in INTEGER_OPS:
            levels, level_counts = np.unique(values_a, return_counts=True)
            assert levels.tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]
            assert stats.chisquare(level_counts).pvalue > 1e-3
        else:
            lo, hi = bounds
            assert values_a.min() >= lo and values_a.max() < hi
            assert stats.kstest((values_a - lo) / (hi - lo), "uniform").pvalue > 1e-3


@pytest.mark.parametrize("size", [8, 28, 32, 96])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_and_value_ranges(size: int, channels: int) -> None:
    rng = np.random.default_rng(0)
    img = _images(1, size, channels)[0]
    for aug in (
        WeakAugment((size, size), hflip=True),
        StrongAugment((size, size), hflip=True),
        StrongAugment((size, size), hflip=False, variant="usb"),
    ):
        for _ in range(5):
            out = aug(img, rng)
            assert out.shape == (size, size, channels) and out.dtype == np.uint8
            assert out.flags.c_contiguous and out.flags.writeable


def test_crop_to_image_size_from_larger_images() -> None:
    out = StrongAugment((32, 32), hflip=True)(_images(1, 40, 3)[0], np.random.default_rng(0))
    assert out.shape == (32, 32, 3)


def test_weak_is_a_reflect_padded_window_possibly_flipped() -> None:
    img = _images(1, 32, 3)[0]
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    assert crop_padding((32, 32), 0.125) == (4, 4) and crop_padding((28, 28), 0.125) == (4, 4)
    windows = {
        np.ascontiguousarray(window[:, ::-1] if f else window).tobytes(): (y, x, f)
        for y in range(9)
        for x in range(9)
        for window in [padded[y : y + 32, x : x + 32]]
        for f in (False, True)
    }
    rng = np.random.default_rng(0)
    for hflip in (True, False):
        aug, seen = WeakAugment((32, 32), hflip=hflip), set()
        for _ in range(400):
            key = aug(img, rng).tobytes()
            assert key in windows, "weak view is not a window of the reflect-padded image"
            seen.add(windows[key])
        assert {k[0] for k in seen} == set(range(9)) and {k[1] for k in seen} == set(range(9))
        assert {k[2] for k in seen} == ({False, True} if hflip else {False})


def test_determinism_given_the_seed() -> None:
    img = _images(1, 32, 3)[0]
    for aug in (WeakAugment((32, 32), True), StrongAugment((32, 32), True)):
        a = [aug(img, np.random.default_rng(7)) for _ in range(2)]
        assert np.array_equal(a[0], a[1])
        others = [aug(img, np.random.default_rng(s)) for s in range(8, 12)]
        assert any(not np.array_equal(a[0], o) for o in others)


def test_strong_differs_from_weak() -> None:
    img = _images(1, 32, 3)[0]
    weak, strong = WeakAugment((32, 32), True), StrongAugment((32, 32), True)
    for s in range(20):
        w, st = weak(img, np.random.default_rng(s)), strong(img, np.random.default_rng(s))
        assert np.abs(w.astype(int) - st).sum() > 0  # FixMatch always cuts out a 16 px square


@pytest.mark.parametrize("variant", ["fixmatch", "usb"])
@pytest.mark.parametrize("size", [28, 32])
def test_cutout_area_equals_expectation(
    variant: str, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without RandAugment ops (some can create the value 127, e.g. Solarize of the 128 fill), the
    # 127 pixels of a strong view of an all-black image are exactly the Cutout square.
    monkeypatch.setattr(augment, "sample_ops", lambda rng, variant: [])
    aug, rng = StrongAugment((size, size), hflip=True, variant=variant), np.random.default_rng(3)
    img = np.zeros((size, size, 3), np.uint8)
    n = 4000
    areas = np.array([(aug(img, rng)[..., 0] == CUTOUT_FILL).sum() for _ in range(n)])
    half = size // 2
    sides = {half: 1.0} if variant == "fixmatch" else {s: 1 / half for s in range(half)}
    expected = expected_cutout_area(size, size, sides)
    assert abs(areas.mean() - expected) < 4 * areas.std() / math.sqrt(n)
    assert areas.max() <= half * half


def test_cutout_helpers() -> None:
    assert cutout_side(32, "fixmatch", 0.9) == 16
    assert cutout_side(32, "usb", 0.5) == 8 and cutout_side(32, "usb", 0.0) == 0
    assert cutout_box(32, 32, 16, 16, 16) == (8, 24, 8, 24)
    assert cutout_box(32, 32, 16, 0, 31) == (0, 8, 23, 32)  # clipped, not shifted inside


def test_trace_records_the_applied_ops() -> None:
    aug, rng = StrongAugment((32, 32), True), np.random.default_rng(0)
    img = _images(1, 32, 3)[0]
    lengths = []
    for _ in range(200):
        trace: list[tuple[str, float]] = []
        aug(img, rng, trace=trace)
        assert all(name in OP_NAMES for name, _ in trace)
        lengths.append(len(trace))
    assert set(lengths) == {0, 1, 2}
    assert abs(np.mean(lengths) - 1.0) < 0.2


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_every_op_runs_on_grayscale_and_rgb(mode: str) -> None:
    arr = _images(1, 32, 3 if mode == "RGB" else 1)[0]
    img = Image.fromarray(arr if mode == "RGB" else arr[..., 0])
    for name in OP_NAMES:
        for u in (0.0, 0.5, 0.99):
            out = apply_op(img, name, magnitude_from_unit(name, u))
            assert out.mode == mode and out.size == img.size
    assert np.array_equal(np.asarray(apply_op(img, "Identity", 0.0)), np.asarray(img))


def test_op_semantics_on_known_inputs() -> None:
    black = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    rotated = np.asarray(apply_op(black, "Rotate", 30.0))
    assert (rotated[0, 0] == GEOMETRIC_FILL).all() and (rotated[16, 16] == 0).all()
    shifted = np.asarray(apply_op(black, "TranslateX", 0.25))  # 8 px to the right
    assert (shifted[:, :8] == GEOMETRIC_FILL).all() and (shifted[:, 8:] == 0).all()
    ramp = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    solarized = np.asarray(apply_op(ramp, "Solarize", 128.0))[0]
    assert solarized[127] == 127 and solarized[128] == 127 and solarized[255] == 0
    assert set(np.asarray(apply_op(ramp, "Posterize", 4.0)).ravel() % 16) == {0}


def test_bad_input_raises_value_error() -> None:
    rng = np.random.default_rng(0)
    aug = StrongAugment((32, 32), True)
    with pytest.raises(ValueError, match="uint8"):
        aug(np.zeros((32, 32, 3), np.float32), rng)
    with pytest.raises(ValueError, match="channel axis"):
        aug(np.zeros((32, 32), np.uint8), rng)
    with pytest.raises(ValueError, match="numpy"):
        aug([[0]], rng)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        aug(np.zeros((16, 16, 3), np.uint8), rng)
    with pytest.raises(ValueError, match="variant"):
        StrongAugment((32, 32), True, variant="ctaugment")
    with pytest.raises(ValueError, match="image_size"):
        WeakAugment((32, -1), True)
    with pytest.raises(ValueError, match="pad_frac"):
        WeakAugment((32, 32), True, pad_frac=1.5)
    with pytest.raises(ValueError, match="op name"):
        apply_op(Image.new("RGB", (8, 8)), "Invert", 0.0)
