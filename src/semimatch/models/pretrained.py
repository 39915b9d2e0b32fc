"""Pretrained weights for the ``torchvision:``/``timm:`` adapters, and their input resolution.

``build_model("torchvision:resnet18", 10, pretrained=...)`` (and ``timm:``) takes

* ``True``: the library's own weights (torchvision's ``DEFAULT`` weights or timm's
  ``pretrained=True``), downloaded into the library's cache on a machine with internet;
* a path to a local ``.pth``/``.pt``/``.bin`` (``torch.load``, ``weights_only``) or
  ``.safetensors`` state dict, loaded by ``load_pretrained`` with a clear error when it does
  not fit the architecture.

The classifier (the last Linear/Conv layer with ``num_classes`` outputs) is the one part allowed
not to fit: sized for other classes in the file (ImageNet's 1000), or absent from it, it keeps
its fresh initialisation.  ``input_spec(name)`` gives the resolution, mean and
standard deviation the weights were trained with (inputs must be resized to it; metadata only,
nothing is downloaded).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["InputSpec", "LoadResult", "input_spec", "load_pretrained", "load_state_dict_file"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
_PREFIXES = ("module.", "model.", "backbone.")


@dataclass(frozen=True)
class LoadResult:
    """What ``load_pretrained`` did: tensors loaded, and the classifier tensors left at init."""

    loaded: tuple[str, ...]
    head_kept: tuple[str, ...]


@dataclass(frozen=True)
class InputSpec:
    """The inputs pretrained weights expect: ``size`` (H, W), per-channel ``mean``/``std`` in
    [0, 1] units, and the resize ``interpolation`` (``"bilinear"``/``"bicubic"``)."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file.

    A checkpoint that wraps it (``{"state_dict": ...}``, ``{"model": ...}``) is unwrapped.
    Torch files are read with ``weights_only=True`` (no code runs).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"pretrained weights: no file at {p.resolve()}")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError(
                f"reading {p} needs safetensors: `pip install safetensors` (or the 'text' extra)"
            ) from e
        try:
            state: Any = load_file(str(p), device="cpu")
        except Exception as e:
            raise ValueError(f"pretrained weights: {p} is not a safetensors file: {e}") from e
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"pretrained weights: cannot read {p} as a torch state dict "
                f"({type(e).__name__}: {e})"
            ) from e
    for _ in range(2):  # {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(state, Mapping) and not any(torch.is_tensor(v) for v in state.values()):
            wrapped = [state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)]
            inner = wrapped[0] if wrapped else None
            if inner is not None:
                state = inner
    if not isinstance(state, Mapping) or not state:
        raise ValueError(f"pretrained weights: {p} holds no state dict (got {type(state)})")
    tensors = {str(k): v for k, v in state.items() if torch.is_tensor(v)}
    if not tensors:
        raise ValueError(f"pretrained weights: {p} holds no tensors")
    return tensors


def _strip_prefixes(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (DDP's ``module.``...) that every key has and the model lacks."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(
                k.startswith(prefix) for k in target
            ):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _classifier_keys(model: nn.Module, num_classes: int) -> set[str]:
    """The parameter names of the classifier: the last Linear/Conv2d with num_classes outputs."""
    last = None
    for qualname, m in model.named_modules():
        out = getattr(m, "out_features", None) or getattr(m, "out_channels", None)
        if isinstance(m, (nn.Linear, nn.Conv2d)) and out == num_classes:
            last = qualname
    if last is None:
        return set()
    prefix = f"{last}." if last else ""
    return {f"{prefix}{n}" for n, _ in model.get_submodule(last).named_parameters()}


def _preview(items: list[str], n: int = 5) -> str:
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_pretrained(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    num_classes: int,
    *,
    source: str = "the weights",
    ignore: tuple[str, ...] = (),
) -> LoadResult:
    """Copy ``state`` into ``model``, all of it, except a classifier sized for other classes.

    Every tensor of the model must be in ``state`` with its shape, and every tensor of
    ``state`` must be in the model, except: the classifier's weight and bias (the last
    Linear/Conv with ``num_classes`` outputs) when the file's are ``(k, *rest)`` for another
    ``k`` or absent (then kept at their initialisation), BatchNorm's ``num_batches_tracked``,
    and keys starting with a prefix in ``ignore``.  Anything else raises ``ValueError`` listing the
    missing, unexpected and mis-shaped tensors, naming ``source``.
    """
    target = model.state_dict()
    state = _strip_prefixes(dict(state), set(target))
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}

    classifier = _classifier_keys(model, num_classes)

    def is_head(key: str) -> bool:
        t = target[key]
        if key not in classifier:
            return False
        return key not in state or tuple(state[key].shape[1:]) == tuple(t.shape[1:])

    missing, mismatched, head = [], [], []
    for key, t in target.items():
        if key in state and state[key].shape == t.shape:
            continue
        if is_head(key):
            head.append(key)
        elif key not in state:
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
        else:
            mismatched.append(
                f"{key} {tuple(state[key].shape)} in the file, {tuple(t.shape)} in the model"
            )
    unexpected = sorted(set(state) - set(target))
    if missing or mismatched or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_preview(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_preview(unexpected)})")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape ({_preview(mismatched)})")
        raise ValueError(
            f"{source} do not fit the model ({type(model).__name__}): {'; '.join(parts)}. Are "
            "they the weights of this architecture?"
        )
    load = {k: v for k, v in state.items() if k not in head}
    with torch.no_grad():
        result = model.load_state_dict(load, strict=False)
    left = [k for k in result.missing_keys if k not in head and "num_batches_tracked" not in k]
    assert not left and not result.unexpected_keys, (left, result.unexpected_keys)
    return LoadResult(tuple(sorted(load)), tuple(head))


def torchvision_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's ``DEFAULT`` weights of ``arch`` (downloaded into torch's hub cache)."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT
    try:
        return weights.get_state_dict(progress=False)
    except Exception as e:
        raise RuntimeError(
            f"torchvision:{arch}: cannot get its pretrained weights {weights} ({type(e).__name__}: "
            f"{e}); on a machine without internet pass pretrained=<path of a local weights file>"
        ) from e


def input_spec(name: str) -> InputSpec:
    """The input resolution and normalisation of ``name``'s pretrained weights.

    ``"torchvision:<arch>"``: from its ``DEFAULT`` weights' transforms (the crop size);
    ``"timm:<arch>"``: from its default pretrained config.  Nothing is downloaded.
    """
    prefix, _, arch = name.partition(":")
    if prefix == "torchvision":
        import torchvision.models as tvm

        try:
            t = tvm.get_model_weights(arch).DEFAULT.transforms()
        except Exception as e:
            raise ValueError(f"input_spec: no torchvision pretrained weights for {arch!r}") from e
        crop = list(t.crop_size)
        size = (crop[0], crop[-1])
        interpolation = str(getattr(t.interpolation, "value", t.interpolation))
        return InputSpec(size, tuple(t.mean), tuple(t.std), interpolation)
    if prefix == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(arch)
        if cfg is None:
            raise ValueError(f"input_spec: timm has no pretrained config for {arch!r}")
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        _, h, w = cfg["input_size"]
        return InputSpec(
            (h, w), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic")
        )
    raise ValueError(f"input_spec: {name!r} is not a 'torchvision:' or 'timm:' backbone")
