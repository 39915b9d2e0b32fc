"""Supervised: labeled data only, the same recipe (the baseline every method is compared to)."""

from __future__ import annotations

from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["supervised"]


@register_method(presets=MethodPresets({"algorithm": "supervised"}, nlp=True))
def supervised(num_classes: int) -> SSLAlgorithm:
    """Labeled data only, same recipe (the baseline).

    Args:
        num_classes: number of classes.
    """
    return SSLAlgorithm(None, name="supervised")
