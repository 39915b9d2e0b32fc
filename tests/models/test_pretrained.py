"""Tests of pretrained image backbones: local weight files, torchvision's weights (mocked: no
download in tests), clear errors on a mismatch, the input spec."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from semimatch.models import build_model
from semimatch.models.pretrained import input_spec, load_pretrained, load_state_dict_file

ARCH = "mobilenet_v3_small"  # small (2.5M parameters); its classifier is classifier.3 (Linear)


@pytest.fixture(scope="module")
def imagenet_state() -> dict[str, torch.Tensor]:
    """A 1000-class state dict standing in for ImageNet weights (random, seeded)."""
    torch.manual_seed(123)
    model = tvm.get_model(ARCH, weights=None, num_classes=1000)
    with torch.no_grad():  # BN statistics too, so "loaded" differs from a fresh model
        for name, b in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                b.uniform_(0.5, 1.5)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _check_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier.3."):
            assert got[key].shape[0] == 10  # re-initialised for 10 classes
        else:
            assert torch.equal(got[key], value), key


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weights_file_loads_and_the_head_is_reinitialised(
    tmp_path: Path, imagenet_state: dict[str, torch.Tensor], fmt: str
) -> None:
    path = tmp_path / f"weights.{fmt}"
    if fmt == "pth":
        torch.save(imagenet_state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in imagenet_state.items()}, str(path))
    model = build_model(f"torchvision:{ARCH}", 10, pretrained=str(path))
    _check_loaded(model, imagenet_state)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_wrapped_checkpoint_with_ddp_prefix_and_same_classes(
    tmp_path: Path, imagenet_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in imagenet_state.items()}}, path
    )
    assert set(load_state_dict_file(path)) == {f"module.{k}" for k in imagenet_state}
    model = build_model(f"torchvision:{ARCH}", 1000, pretrained=path)  # a Path works too
    for key, value in model.state_dict().items():
        assert torch.equal(value, imagenet_state[key]), key  # the head too: same classes


def test_torchvision_weights_when_asked(
    monkeypatch: pytest.MonkeyPatch, imagenet_state: dict[str, torch.Tensor]
) -> None:
    """pretrained=True asks torchvision for its DEFAULT weights (mocked: no download here)."""
    asked = []

    def fake_get_state_dict(self: object, *args: object, **kwargs: object) -> dict:
        asked.append(str(self))
        return imagenet_state

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = build_model(f"torchvision:{ARCH}", 10, pretrained=True)
    assert asked == [str(tvm.get_model_weights(ARCH).DEFAULT)]
    _check_loaded(model, imagenet_state)

    def offline(self: object, *args: object, **kwargs: object) -> dict:
        raise OSError("no network")

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="local weights file"):
        build_model(f"torchvision:{ARCH}", 10, pretrained=True)


def test_pretrained_gray_stem_sums_rgb(
    tmp_path: Path, imagenet_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "w.pth"
    torch.save(imagenet_state, path)
    model = build_model(f"torchvision:{ARCH}", 10, in_channels=1, pretrained=path)
    stem = imagenet_state["features.0.0.weight"]
    assert torch.equal(model.features[0][0].weight, stem.sum(dim=1, keepdim=True))
    # A gray image through the adapted stem = the same image as RGB through the original.
    x = torch.rand(2, 1, 32, 32)
    a = torch.nn.functional.conv2d(x, model.features[0][0].weight, stride=2, padding=1)
    b = torch.nn.functional.conv2d(x.expand(-1, 3, -1, -1), stem, stride=2, padding=1)
    assert torch.allclose(a, b, atol=1e-5)
    two = build_model(f"torchvision:{ARCH}", 10, in_channels=2, pretrained=path)
    assert torch.allclose(two.features[0][0].weight, stem[:, [0, 1]] * 1.5)


def test_mismatches_give_clear_errors(
    tmp_path: Path, imagenet_state: dict[str, torch.Tensor]
) -> None:
    other = tmp_path / "large.pth"
    torch.save(tvm.get_model("mobilenet_v3_large", num_classes=1000).state_dict(), other)
    with pytest.raises(ValueError, match=rf"the weights in {other} do not fit.*missing.*shape"):
        build_model(f"torchvision:{ARCH}", 10, pretrained=str(other))
    extra = dict(imagenet_state, **{"extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"1 unexpected \(extra.weight\)"):
        load_pretrained(tvm.get_model(ARCH, num_classes=10), extra, 10)
    # A wrong shape outside the classifier is an error even when it starts with num_classes.
    bad = dict(imagenet_state)
    bad["features.0.0.weight"] = torch.zeros(16, 1, 3, 3)
    with pytest.raises(ValueError, match=r"features.0.0.weight \(16, 1, 3, 3\) in the file"):
        load_pretrained(tvm.get_model(ARCH, num_classes=16), bad, 16)
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=f"no file at {missing}"):
        build_model(f"torchvision:{ARCH}", 10, pretrained=str(missing))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_model(f"torchvision:{ARCH}", 10, pretrained=junk)
    fake = tmp_path / "junk.safetensors"
    fake.write_text("not safetensors")
    with pytest.raises(ValueError, match="not a safetensors file"):
        load_state_dict_file(fake)
    with pytest.raises(ValueError, match="pretrained must be"):
        build_model(f"torchvision:{ARCH}", 10, pretrained=1)


def test_input_spec() -> None:
    spec = input_spec("torchvision:resnet18")
    assert spec.size == (224, 224) and spec.interpolation == "bilinear"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match="not a 'torchvision:' or 'timm:'"):
        input_spec("wrn_28_2")


def test_timm_adapter_loads_a_local_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, imagenet_state: dict[str, torch.Tensor]
) -> None:
    """The timm glue with a stand-in timm module (timm is optional): a file is loaded by
    semimatch, never by timm (``pretrained=False`` reaches ``create_model``)."""
    import sys
    import types

    calls = []

    def create_model(arch: str, pretrained: bool, num_classes: int, in_chans: int) -> object:
        calls.append((arch, pretrained, num_classes, in_chans))
        model = tvm.get_model(ARCH, weights=None, num_classes=num_classes)
        if in_chans != 3:  # timm adapts the stem itself
            model.features[0][0] = torch.nn.Conv2d(in_chans, 16, 3, 2, 1, bias=False)
        return model

    fake = types.ModuleType("timm")
    fake.is_model = lambda arch: arch == "fake_net"
    fake.create_model = create_model
    monkeypatch.setitem(sys.modules, "timm", fake)
    path = tmp_path / "w.pth"
    torch.save(imagenet_state, path)
    model = build_model("timm:fake_net", 10, in_channels=1, pretrained=path)
    assert calls == [("fake_net", False, 10, 3)]
    _check_loaded(model, {k: v for k, v in imagenet_state.items() if "features.0.0" not in k})
    assert model.features[0][0].weight.shape[1] == 1
    build_model("timm:fake_net", 10, in_channels=1, pretrained=True)  # timm's own weights
    assert calls[-1] == ("fake_net", True, 10, 1)
