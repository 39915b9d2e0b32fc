"""Extra heads on the backbone's features, for the methods that train more than a classifier.

CoMatch and SimMatch project the features to an embedding, ReMixMatch and CRMatch predict the
rotation of an image: each is a small head on the *feature vector*, the classifier's input
(USB's ``feat``: the pooled features before ``fc``, or before a text model's MLP head).  A
method that needs features says so (``Needs.features``) and builds its heads with
``make_heads(num_features) -> nn.Module``; ``attach_heads`` hangs them on the model as the
submodule ``ssl_heads``, so the optimiser, the weight EMA, ``.to(device)``, checkpoints and
DDP's gradient all-reduce cover them with no code of their own.

The features are read, not recomputed: a forward pre-hook on the classifier records its input
while ``record_features`` is active (and does nothing otherwise), so any backbone works (ours,
torchvision, timm, Hugging Face), wrapped or not, and the step's one joint forward gives the
logits and the features of every row at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "HEADS",
    "FeatureTap",
    "attach_heads",
    "feature_layer",
    "heads_of",
    "num_features",
    "record_features",
    "unwrap",
]

HEADS = "ssl_heads"  # the submodule name: its keys in a checkpoint start with "ssl_heads."


def unwrap(model: nn.Module) -> nn.Module:
    """The model under a ``DistributedDataParallel`` or ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def feature_layer(model: nn.Module, num_classes: int) -> nn.Module:
    """The module whose input is the feature vector: a text classifier's head (a module with
    ``num_features`` and a ``head``: the MLP head's input is USB's pooled ``feat``), else the
    last ``nn.Linear`` with ``num_classes`` outputs (``fc`` of ours, torchvision's and timm's
    classifiers)."""
    for module in model.modules():
        head = getattr(module, "head", None)
        if hasattr(module, "num_features") and isinstance(head, (nn.Linear, nn.Sequential)):
            return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    linears = [m for m in linears if m.out_features == num_classes]
    if not linears:
        raise ValueError(
            f"this method trains heads on the backbone's features, but the model has no "
            f"nn.Linear classifier with {num_classes} outputs to read them from; use a backbone "
            "whose last layer is a Linear classifier"
        )
    return linears[-1]


def num_features(layer: nn.Module) -> int:
    """The feature vector's size: the first ``nn.Linear``'s ``in_features`` in ``layer``."""
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    raise ValueError(f"cannot tell the feature size of {type(layer).__name__}")


class FeatureTap:
    """Records the feature layer's input of every forward while recording (else nothing, so
    evaluation keeps no tensor alive)."""

    def __init__(self) -> None:
        self.records: list[torch.Tensor] | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        if self.records is not None:
            self.records.append(args[0])


def attach_heads(model: nn.Module, heads: nn.Module, num_classes: int) -> None:
    """Hang ``heads`` on ``model`` (submodule ``ssl_heads``) and tap its features."""
    model = unwrap(model)
    if hasattr(model, HEADS):
        raise ValueError(f"the model already has heads ({HEADS})")
    layer = feature_layer(model, num_classes)
    tap = FeatureTap()
    layer.register_forward_pre_hook(tap)
    model.add_module(HEADS, heads)
    # A plain attribute, not a submodule: the tap holds no state (deepcopy, as the weight EMA
    # does, copies the hook and its tap together).
    object.__setattr__(model, "_ssl_tap", tap)


def heads_of(model: nn.Module) -> nn.Module:
    """The heads ``attach_heads`` hung on ``model`` (wrapped or not)."""
    heads = getattr(unwrap(model), HEADS, None)
    if heads is None:
        raise ValueError("the model has no heads: build it with the method (attach_heads)")
    return heads


@contextmanager
def record_features(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``model`` appends its features (N, D) to the list
    yielded, in call order (a model that runs in chunks appends one tensor per chunk of the
    same forward: ``torch.cat`` them)."""
    tap = getattr(unwrap(model), "_ssl_tap", None)
    if tap is None:
        raise ValueError("the model has no feature tap: build it with the method (attach_heads)")
    if tap.records is not None:
        raise RuntimeError("record_features is already active on this model")
    records: list[torch.Tensor] = []
    tap.records = records
    try:
        yield records
    finally:
        tap.records = None
