"""Tests of semimatch.models.normalize: InputNormalizer and ResizeInput."""

from __future__ import annotations

import pytest
import torch

from semimatch.models import InputNormalizer, ResizeInput, SmallCNN, wrn_28_2

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2471, 0.2435, 0.2616)


def test_input_normalizer_matches_manual_normalisation() -> None:
    torch.manual_seed(0)
    model = SmallCNN(10, 3).eval()
    wrapped = InputNormalizer(model, MEAN, STD)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    manual = (x.float() / 255.0 - mean) / std
    torch.testing.assert_close(wrapped.normalize(x), manual, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), model(manual), rtol=1e-4, atol=1e-5)
        # float input in [0, 1] gives the same result as the uint8 path
        torch.testing.assert_close(wrapped(x.float() / 255.0), wrapped(x), rtol=1e-4, atol=1e-5)
    assert wrapped.mean == pytest.approx(MEAN) and wrapped.std == pytest.approx(STD)


def test_input_normalizer_buffers_follow_module() -> None:
    wrapped = InputNormalizer(SmallCNN(10, 1), (0.5,), (0.25,))
    assert {"scale_uint8", "scale_float", "shift"} <= set(wrapped.state_dict())
    wrapped = wrapped.double()
    out = wrapped(torch.full((2, 1, 8, 8), 255, dtype=torch.uint8))
    assert out.dtype == torch.float64
    torch.testing.assert_close(
        wrapped.normalize(torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)),
        torch.full((1, 1, 2, 2), 2.0, dtype=torch.float64),
    )


def test_input_normalizer_errors() -> None:
    wrapped = InputNormalizer(SmallCNN(10, 3), MEAN, STD)
    with pytest.raises(ValueError, match="3 channels"):
        wrapped(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        wrapped(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="equal length"):
        InputNormalizer(SmallCNN(10, 3), MEAN, STD[:2])
    with pytest.raises(ValueError, match="std"):
        InputNormalizer(SmallCNN(10, 3), MEAN, (0.2, 0.0, 0.2))


def test_channels_last_forward_equals_contiguous() -> None:
    torch.manual_seed(0)
    wrapped = InputNormalizer(wrn_28_2(10), MEAN, STD)
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for train in (False, True):
        wrapped.train(train)
        with torch.no_grad():
            ref = wrapped(x)
            wrapped.to(memory_format=torch.channels_last)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            assert wrapped.normalize(x_cl).is_contiguous(memory_format=torch.channels_last)
            out = wrapped(x_cl)
            wrapped.to(memory_format=torch.contiguous_format)
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_autocast_bf16_close_to_fp32() -> None:
    torch.manual_seed(0)
    wrapped = InputNormalizer(wrn_28_2(10), MEAN, STD).eval()
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        ref = wrapped(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = wrapped(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    err = (out.float() - ref).abs().max() / ref.abs().max()
    assert err < 0.05
    assert torch.equal(out.float().argmax(1), ref.argmax(1))


@pytest.mark.parametrize(
    ("side", "mode", "antialias"),
    [(8, "bilinear", False), (40, "bicubic", True), (8, "nearest", None)],
)
def test_resize_input_interpolates_to_its_size(side, mode, antialias) -> None:
    """Upsizing plain, downsizing antialiased (PIL's and torchvision's behaviour)."""
    seen = []
    inner = torch.nn.Flatten()
    inner.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    wrapped = ResizeInput(inner, (16, 16), mode)
    x = torch.rand(2, 3, side, side)
    wrapped(x)
    assert tuple(seen[-1].shape) == (2, 3, 16, 16)
    kw = {} if antialias is None else dict(align_corners=False, antialias=antialias)
    expected = torch.nn.functional.interpolate(x, size=(16, 16), mode=mode, **kw)
    torch.testing.assert_close(seen[-1], expected, rtol=0, atol=0)
    wrapped(seen[-1])  # already at its size: passed through unchanged
    assert seen[-1] is seen[-2] or torch.equal(seen[-1], seen[-2])


def test_resize_input_rejects_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="interpolation must be one of"):
        ResizeInput(torch.nn.Identity(), (16, 16), "lanczos")
    with pytest.raises(ValueError, match="size must be"):
        ResizeInput(torch.nn.Identity(), (16, 0), "bilinear")
