"""The model factory: ``build_model(name, ...)`` over the built-in table and the adapters.

``build_model(name, num_classes, ...)`` returns an ``nn.Module`` mapping float NCHW images (or,
for ``"mlp"``, float (N, D) vectors) to logits (N, num_classes).  Built-in names (``MODELS``):
``wrn_28_2``, ``wrn_28_8``, ``wrn_37_2`` (reference "Shared recipe": Backbones; BN momentum
0.001), ``cnn`` (``SmallCNN``, BN momentum 0.1) and ``mlp`` (``MLP``, needs ``in_features``).
Adapters: ``"torchvision:<name>"`` for any ``torchvision.models`` classifier and
``"timm:<name>"`` when timm is installed (random init, or ``pretrained=True``/a weights file:
``pretrained.py``); both are probed with one forward so an unsupported input size fails when
the model is built.  ``"hf:<model name or local
folder>"`` builds a Hugging Face text classifier (``hf.py``: token ids and attention mask in,
logits out; transformers is imported only then).
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from semimatch.models.cnn import MLP, SmallCNN
from semimatch.models.pretrained import load_pretrained, load_state_dict_file, torchvision_state
from semimatch.models.wrn import wrn_28_2, wrn_28_8, wrn_37_2

__all__ = ["MODELS", "build_model", "count_parameters", "set_bn_momentum"]

_BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "wrn_28_2": wrn_28_2,
    "wrn_28_8": wrn_28_8,
    "wrn_37_2": wrn_37_2,
    "cnn": SmallCNN,
    "mlp": MLP,
}
MODELS: tuple[str, ...] = tuple(_BUILTINS)
_PREFIXES = ("torchvision:", "timm:", "hf:")
# Arguments build_model fills itself; passing them again through **kwargs is an error.
_RESERVED = {"num_classes", "in_channels", "bn_momentum", "image_size"}


_AUX = ("aux1.", "aux2.", "AuxLogits.")


def _pretrained(value: Any) -> bool:
    """Whether ``pretrained`` asks for weights: True or a path (None/False: random init)."""
    if value is None or value is False:
        return False
    if value is True or isinstance(value, (str, os.PathLike)):
        return True
    raise ValueError(
        f"build_model: pretrained must be True (the library's weights), False or the path of a "
        f"weights file, got {value!r}"
    )


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum (PyTorch convention) of every BatchNorm layer.

    Returns the number of layers changed (0 for models without BatchNorm, e.g. ViTs).
    """
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise ValueError(f"momentum must be a number in (0, 1], got {momentum!r}")
    if not 0.0 < momentum <= 1.0:
        raise ValueError(
            f"momentum must be in (0, 1] (PyTorch convention: 0.001 = TF decay 0.999), "
            f"got {momentum!r}"
        )
    n = 0
    for m in model.modules():
        # _BatchNorm covers BatchNorm1d/2d/3d, their lazy versions and SyncBatchNorm.
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = float(momentum)
            n += 1
    return n


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model`` (only those requiring grad if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _suggest(name: str, candidates: Sequence[str]) -> str:
    # Case and '-' vs '_' are the usual slips ("WRN-28-2"); compare in a normalised form.
    keys = {c.lower().replace("-", "_"): c for c in candidates}
    close = difflib.get_close_matches(name.lower().replace("-", "_"), list(keys), n=1, cutoff=0.5)
    close = [keys[c] for c in close]
    return f" Did you mean {close[0]!r}?" if close else ""


def _unknown_model(name: str) -> ValueError:
    valid = ", ".join(MODELS)
    return ValueError(
        f"unknown model name {name!r}.{_suggest(name, MODELS)} Valid names: {valid}, "
        "'torchvision:<name>' (any torchvision.models classifier, e.g. 'torchvision:resnet18') "
        "'timm:<name>' (needs timm) or 'hf:<model name or local folder>' (a Hugging Face "
        "transformer for text; needs the 'text' extra)."
    )


def _positive_int(value: Any, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"build_model: {arg} must be a positive int, got {value!r}")
    return value


def _image_size(image_size: Any) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    if (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        raise ValueError(
            f"build_model: image_size must be (height, width) positive ints, got {image_size!r}"
        )
    return int(image_size[0]), int(image_size[1])


def _check_kwargs(name: str, fn: Callable[..., nn.Module], kwargs: dict[str, Any]) -> None:
    accepted = [p for p in inspect.signature(fn).parameters if p not in _RESERVED]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"build_model({name!r}): unexpected option(s) {unknown}; "
            f"accepted options: {accepted or 'none'}"
        )


def _replace_first_conv(
    model: nn.Module, in_channels: int, name: str, pretrained: bool = False
) -> None:
    """Swap the stem convolution (first Conv2d taking 3 channels) for one taking ``in_channels``.

    The new weight repeats the old one's RGB slices cyclically, so each element keeps the
    distribution of the model's own initialisation scheme (torchvision init is per-model).
    With pretrained weights, one channel gets the sum of the RGB slices (a gray image then
    acts as the same image in RGB) and ``C`` channels the cyclic repeat scaled by ``3 / C``.
    """
    stem = next(
        (
            (qualname, m)
            for qualname, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == 3
        ),
        None,
    )
    if stem is None:
        raise ValueError(
            f"build_model({name!r}): found no 3-channel Conv2d to adapt to in_channels="
            f"{in_channels}; use in_channels=3 (e.g. repeat gray images to RGB)"
        )
    qualname, module = stem
    if module.groups != 1:
        raise ValueError(
            f"build_model({name!r}): the stem conv {qualname!r} is grouped; cannot adapt it to "
            f"in_channels={in_channels}"
        )
    new = nn.Conv2d(
        in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )
    with torch.no_grad():
        cyclic = module.weight[:, [c % 3 for c in range(in_channels)]]
        if pretrained and in_channels == 1:
            new.weight.copy_(module.weight.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(cyclic * (3 / in_channels) if pretrained else cyclic)
        if module.bias is not None:
            new.bias.copy_(module.bias)
    parent_name, _, attr = qualname.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def _build_torchvision(arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)  # classification models only
    if arch not in valid:
        raise ValueError(
            f"unknown torchvision classifier {arch!r}.{_suggest(arch, valid)} "
            f"Valid names: {', '.join(valid)}"
        )
    if kwargs.get("weights") is not None:
        raise ValueError(
            "build_model: pass pretrained=True (torchvision's weights, downloaded) or "
            "pretrained=<path of a weights file> rather than 'weights'"
        )
    pretrained = kwargs.get("pretrained")
    kwargs = {k: v for k, v in kwargs.items() if k not in ("weights", "pretrained")}
    if arch in ("googlenet", "inception_v3"):
        # Auxiliary heads make train-mode forward return a tuple instead of logits.
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        model = tvm.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as e:
        raise ValueError(f"build_model('torchvision:{arch}'): bad option: {e}") from e
    if _pretrained(pretrained):
        if pretrained is True:
            state, source = torchvision_state(arch), f"torchvision's weights of {arch}"
        else:
            state, source = load_state_dict_file(pretrained), f"the weights in {pretrained}"
        # googlenet/inception_v3 are built without their auxiliary heads.
        load_pretrained(model, state, num_classes, source=source, ignore=_AUX)
    if in_channels != 3:
        _replace_first_conv(model, in_channels, f"torchvision:{arch}", _pretrained(pretrained))
    return model


def _build_timm(arch: str, num_classes: int, in_channels: int, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError as e:
        raise ImportError(
            f"build_model('timm:{arch}') needs the optional package timm, which is not "
            "installed: `pip install timm`, or use a built-in or 'torchvision:<name>' model"
        ) from e
    if not timm.is_model(arch):
        valid = timm.list_models()
        raise ValueError(f"unknown timm model {arch!r}.{_suggest(arch, valid)}")
    pretrained = kwargs.get("pretrained")
    kwargs = {k: v for k, v in kwargs.items() if k != "pretrained"}
    from_file = _pretrained(pretrained) and pretrained is not True
    try:  # True: timm's own weights (downloaded; timm resets the head and adapts in_chans)
        model = timm.create_model(
            arch,
            pretrained=pretrained is True,
            num_classes=num_classes,
            in_chans=3 if from_file else in_channels,
            **kwargs,
        )
    except TypeError as e:
        raise ValueError(f"build_model('timm:{arch}'): bad option: {e}") from e
    if from_file:
        state = load_state_dict_file(pretrained)
        load_pretrained(model, state, num_classes, source=f"the weights in {pretrained}")
        if in_channels != 3:
            _replace_first_conv(model, in_channels, f"timm:{arch}", pretrained=True)
    return model


def _probe(model: nn.Module, name: str, num_classes: int, in_channels: int, size: tuple) -> None:
    """Run one eval-mode forward so size/channel problems surface as a clear ValueError now."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, *size))
    except Exception as e:  # any failure inside a third-party model means "unsupported input"
        raise ValueError(
            f"build_model({name!r}) cannot process images of shape ({in_channels}, {size[0]}, "
            f"{size[1]}): {type(e).__name__}: {e}. Use a larger image_size or another model."
        ) from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"build_model({name!r}): the model returns {got}, not logits of shape "
            f"(N, {num_classes}); it is not a plain classifier"
        )


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    bn_momentum: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a backbone returning logits (N, num_classes) from float NCHW input.

    Args:
        name: one of ``MODELS``, ``"torchvision:<name>"`` or ``"timm:<name>"``.
        num_classes: number of classes (>= 2).
        in_channels: image channels. torchvision models get their stem conv replaced when it is
            not 3 (weights repeat the RGB slices); timm models use their own ``in_chans``.
        image_size: (H, W) of the inputs. Built-in image models accept any size (global
            pooling); adapters are probed with one forward at this size so an unsupported size
            fails here with a ValueError rather than in the training loop.
        bn_momentum: None keeps the model's default (0.001 for WRNs, 0.1 for cnn/mlp and
            torchvision); a number is applied to every BatchNorm layer via ``set_bn_momentum``.
        **kwargs: passed to the constructor, e.g. ``hidden`` (and ``in_features``, default
            ``in_channels*H*W``: flattened images) for ``"mlp"``,
            ``width`` for ``"cnn"``, ``drop_rate`` for built-ins.  Adapters take
            ``pretrained``: True (the library's weights, downloaded on a machine with internet)
            or the path of a ``.pth``/``.safetensors`` state dict (``pretrained.py``; the
            classifier is re-initialised when sized for other classes).  ``"hf:"`` takes
            ``pretrained`` (default True: the folder's weights), ``dropout``, ``head``,
            ``local_files_only``, ``length_chunks``, ``chunk_overhead`` (``hf.build_hf``) and
            ignores ``in_channels``/``image_size``.
    """
    if not isinstance(name, str):
        raise ValueError(f"build_model: name must be a str, got {type(name).__name__}")
    _positive_int(num_classes, "num_classes")
    if num_classes < 2:
        raise ValueError(f"build_model: num_classes must be >= 2, got {num_classes}")
    _positive_int(in_channels, "in_channels")
    size = _image_size(image_size)
    if bn_momentum is not None and (
        isinstance(bn_momentum, bool)
        or not isinstance(bn_momentum, (int, float))
        or not 0.0 < bn_momentum <= 1.0
        or math.isnan(bn_momentum)
    ):
        raise ValueError(
            f"build_model: bn_momentum must be None (model default) or in (0, 1], "
            f"got {bn_momentum!r}"
        )

    prefix, sep, arch = name.partition(":")
    if sep:
        if f"{prefix}:" not in _PREFIXES or not arch:
            raise _unknown_model(name)
        if prefix == "hf":  # text: in_channels and image_size do not apply
            from semimatch.models.hf import build_hf

            _check_kwargs(name, build_hf, kwargs)
            model = build_hf(arch, num_classes, **kwargs)
            if bn_momentum is not None:
                set_bn_momentum(model, bn_momentum)
            return model
        build = _build_torchvision if prefix == "torchvision" else _build_timm
        model = build(arch, num_classes, in_channels, kwargs)
        _probe(model, name, num_classes, in_channels, size)
    elif name in _BUILTINS:
        ctor = _BUILTINS[name]
        _check_kwargs(name, ctor, kwargs)
        if name == "mlp":  # on images: the flattened C*H*W pixels, unless told otherwise
            kwargs.setdefault("in_features", in_channels * size[0] * size[1])
            model = ctor(num_classes=num_classes, **kwargs)
        else:
            model = ctor(num_classes=num_classes, in_channels=in_channels, **kwargs)
    else:
        raise _unknown_model(name)

    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    return model
