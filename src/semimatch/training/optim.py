"""The fine-tuning recipe of USB's pretrained settings: AdamW, layer-wise lr decay, warm-up.

``make_adamw(model, lr, weight_decay, layer_decay)`` builds ``torch.optim.AdamW`` with one
parameter group per (depth, decay) pair, as USB's ``get_optimizer(..., 'AdamW', ...)``
(``semilearn/core/utils/build.py``, ``param_groups_layer_decay``):

* no weight decay on 1-d parameters (biases, LayerNorm/BatchNorm weights), on names ending in
  ``.bias`` and on the names a model lists in ``no_weight_decay()`` (timm: position embeddings,
  class token);
* the learning rate of a parameter at depth ``i`` of ``n`` is ``lr * layer_decay ** (n - 1 - i)``
  (the top layer, i.e. the head, trains at ``lr``; the embeddings at ``lr * layer_decay ** (n-1)``).
  Depths come from ``layer_ids(model)``: a submodule's own ``layer_ids()`` (``HFClassifier``:
  embeddings 0, block ``i`` -> ``i + 1``, head on top) or a timm-style ``group_matcher()``.

``warmup_schedule(iterations, warmup_iterations)`` is the multiplicative factor of
``torch.optim.lr_scheduler.LambdaLR`` that USB uses for every setting, NLP included
(``get_cosine_schedule_with_warmup``): ``k / W`` during the ``W`` warm-up iterations (0 at the
first), then ``cos(7 pi / 16 * (k - W) / (K - W))``.  ``LambdaLR`` multiplies each group's own
(layer-decayed) learning rate by it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["SCHEDULES", "layer_ids", "make_adamw", "param_group_lrs", "warmup_schedule"]

SCHEDULES = ("cosine", "linear", "constant")
_MATCH_PREVIOUS = 99999.0  # timm's MATCH_PREV_GROUP: a suffix that joins the previous group


def _ordinal_fn(matcher: Any) -> Callable[[str], tuple[float, ...]]:
    """``name -> sortable ordinal`` of a timm-style group matcher (dict of regexes or callable)."""
    if callable(matcher):

        def call(name: str) -> tuple[float, ...]:
            value = matcher(name)
            return tuple(map(float, value)) if isinstance(value, (tuple, list)) else (float(value),)

        return call
    if not isinstance(matcher, Mapping):
        raise ValueError(f"group_matcher must return a dict or a callable, got {type(matcher)}")
    rules: list[tuple[re.Pattern[str], int, tuple[float, ...]]] = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        specs = spec if isinstance(spec, (tuple, list)) else [(spec, None)]
        for pattern, suffix in specs:
            rules.append((re.compile(pattern), ordinal, tuple(map(float, suffix or ()))))

    def match(name: str) -> tuple[float, ...]:
        for pattern, ordinal, suffix in rules:
            m = pattern.match(name)
            if m:
                groups = tuple(float(g) for g in m.groups() if g is not None)
                return (float(ordinal), *groups, *suffix)
        return (math.inf,)  # unmatched (neck, head): the top

    return match


def _ids_from_matcher(module: nn.Module) -> tuple[dict[str, int], int]:
    ordinal = _ordinal_fn(module.group_matcher(coarse=False))
    keys = {name: ordinal(name) for name, _ in module.named_parameters()}
    depth: dict[tuple[float, ...], int] = {}
    current = -1
    for key in sorted(set(keys.values())):
        if current < 0 or key[-1] != _MATCH_PREVIOUS:
            current += 1
        depth[key] = current
    return {name: depth[key] for name, key in keys.items()}, current + 1


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """``({parameter name: depth}, number of depths)`` for layer-wise learning-rate decay.

    The outermost submodule of ``model`` (``model`` itself included) with a ``layer_ids()``
    method (``HFClassifier``) or a timm-style ``group_matcher(coarse=False)`` defines the
    depths; parameters outside it (e.g. of a wrapper) join the top.  Raises ``ValueError`` when
    no submodule has either.
    """
    for prefix, module in model.named_modules():
        if hasattr(module, "layer_ids") and callable(module.layer_ids):
            inner, n = module.layer_ids()
        elif hasattr(module, "group_matcher") and callable(module.group_matcher):
            inner, n = _ids_from_matcher(module)
        else:
            continue
        head = f"{prefix}." if prefix else ""
        ids = {}
        for name, _ in model.named_parameters():
            local = name[len(head) :] if name.startswith(head) else None
            ids[name] = inner[local] if local in inner else n - 1
        return ids, n
    raise ValueError(
        f"layer-wise lr decay needs the depth of each layer, and {type(model).__name__} has no "
        "submodule with layer_ids() ('hf:' backbones) or group_matcher() (timm models); use "
        "layer_decay=1.0"
    )


def _no_decay_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if callable(fn):
            head = f"{prefix}." if prefix else ""
            names.update(head + n for n in fn())
    return names


def _check_number(value: Any, name: str, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"make_adamw: {name} must be a number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"make_adamw: {name} must be in {bounds}, got {value!r}")
    return float(value)


def make_adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters with USB's decay groups and layer-wise lr.

    Each group holds the parameters of one depth with or without weight decay and records
    ``layer_id``, ``lr_scale`` (``layer_decay ** (n - 1 - layer_id)``) and ``param_names``.
    ``layer_decay=1.0`` needs no layer structure (any model: two groups).  USB's NLP configs:
    lr 1e-5 ... 1e-4, weight_decay 5e-4, layer_decay 0.65 ... 0.75; AdamW's betas and eps are
    torch's defaults, as in USB.
    """
    lr = _check_number(lr, "lr", 0.0, math.inf, True)
    weight_decay = _check_number(weight_decay, "weight_decay", 0.0, math.inf, False)
    layer_decay = _check_number(layer_decay, "layer_decay", 0.0, 1.0, True)
    if layer_decay == 1.0:
        ids, n = {name: 0 for name, _ in model.named_parameters()}, 1
    else:
        ids, n = layer_ids(model)
    skip = _no_decay_names(model)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or name in skip)
        depth = ids[name]
        key = (depth, decay)
        if key not in groups:
            scale = layer_decay ** (n - 1 - depth)
            groups[key] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "layer_id": depth,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    if not groups:
        raise ValueError("make_adamw: the model has no trainable parameters")
    ordered = [groups[k] for k in sorted(groups)]
    return torch.optim.AdamW(ordered, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def param_group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, tuple[float, float]]:
    """``{parameter name: (lr, weight_decay)}`` of an optimizer made by ``make_adamw``."""
    return {
        name: (float(g["lr"]), float(g["weight_decay"]))
        for g in optimizer.param_groups
        for name in g.get("param_names", ())
    }


def warmup_schedule(
    iterations: int,
    warmup_iterations: int,
    shape: str = "cosine",
    num_cycles: float = 7.0 / 16.0,
) -> Callable[[int], float]:
    """The ``LambdaLR`` factor at iteration ``k``: linear warm-up, then ``shape``.

    ``k < W``: ``k / W`` (USB: 0 at the first iteration).  Then, with ``t = (k - W) / (K - W)``:
    ``"cosine"`` ``max(0, cos(pi * num_cycles * t))`` (USB's ``get_cosine_schedule_with_warmup``,
    ``num_cycles = 7/16``; USB's NLP settings use it with ``W = 5120``, ``K = 102400``),
    ``"linear"`` ``max(0, 1 - t)`` (BERT's original fine-tuning schedule), ``"constant"`` 1.

    Args:
        iterations: ``K``, the total number of training iterations (>= 1).
        warmup_iterations: ``W`` (0 = no warm-up; < ``iterations``).
        shape: one of ``SCHEDULES``.
        num_cycles: cosine cycles over the post-warm-up span (7/16: the lr ends at 0.195x).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"warmup_schedule: iterations must be an int >= 1, got {iterations!r}")
    if (
        isinstance(warmup_iterations, bool)
        or not isinstance(warmup_iterations, int)
        or not 0 <= warmup_iterations < iterations
    ):
        raise ValueError(
            f"warmup_schedule: warmup_iterations must be an int in [0, {iterations}), got "
            f"{warmup_iterations!r}"
        )
    if shape not in SCHEDULES:
        raise ValueError(f"warmup_schedule: shape must be one of {SCHEDULES}, got {shape!r}")
    span = max(1, iterations - warmup_iterations)

    def factor(k: int) -> float:
        if k < warmup_iterations:
            return k / warmup_iterations
        t = (k - warmup_iterations) / span
        if shape == "cosine":
            return max(0.0, math.cos(math.pi * num_cycles * t))
        if shape == "linear":
            return max(0.0, 1.0 - t)
        return 1.0

    return factor
