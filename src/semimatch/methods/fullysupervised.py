"""Fully supervised: every training label, the ceiling row of USB's table.

The same loss and recipe as ``supervised`` (labeled data only), but on **every** labeled
training sample: USB's ``fullysupervised`` replaces the labeled draw with the whole training
set (``lb_data = data`` in semilearn's CIFAR/SVHN/JSON loaders) and never reads the unlabeled
pool.  Here the method says so at registration (``all_labels``), so a run refuses
``--num-labels``, ``--lt-gamma``, ``--fold``, ``--split-seed`` and ``--exclude-labeled`` instead
of silently training on a subset, or of ignoring them.  The number in USB's config names
(``fullysupervised_cifar10_40_0``) only names the column it is reported in.
"""

from __future__ import annotations

from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["fullysupervised"]

#: USB publishes the row for CIFAR-10/100 and SVHN (``results/classic_cv.csv``), not STL-10
#: (whose loader has no fullysupervised branch: its configs train on the labeled draw).
PRESETS = MethodPresets(
    {"algorithm": "fullysupervised", "num_labels": None},
    source="usb",
    note="; every training label (the ceiling; the label count in the name is the column of "
    "USB's table it is reported in)",
    skip=("stl10-40", "stl10-1000"),
    nlp=True,
)


@register_method(presets=PRESETS, all_labels=True)
def fullysupervised(num_classes: int) -> SSLAlgorithm:
    """Every training label, labeled loss only (the ceiling).

    Args:
        num_classes: number of classes.
    """
    return SSLAlgorithm(None, name="fullysupervised")
