"""The seeded order of the training streams: per-epoch permutations and the seeds of views.

``EpochOrder`` maps the positions of an infinite stream to indices of ``[0, n)``: epoch ``e`` is
``default_rng([seed, stream_id, e]).permutation(n)``, so a position's index is a function of
(seed, stream, position) alone - what every rank and a resume agree on
(:mod:`semimatch.data.loaders`).  The generators below seed the augmentation of one sample or
one batched view.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import torch

__all__ = ["EpochOrder", "check_int", "own_generator", "sample_rng", "torch_seed", "view_generator"]


class EpochOrder:
    """Maps stream positions to indices in ``[0, n)`` via per-epoch seeded permutations."""

    def __init__(self, n: int, seed: int, stream_id: int, cache_size: int = 4) -> None:
        self.n, self.seed, self.stream_id = n, seed, stream_id
        self.cache_size = cache_size
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, self.stream_id, epoch])
            perm = rng.permutation(self.n)
            self._cache[epoch] = perm
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(epoch)
        return perm

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        epochs, offsets = np.divmod(positions, self.n)
        out = np.empty(len(positions), dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.permutation(int(e))[offsets[sel]]
        return out


def sample_rng(seed: int, stream_id: int, view: int, position: int) -> np.random.Generator:
    """The generator of one per-sample view of the sample at a global stream position."""
    return np.random.default_rng([seed, stream_id, view, position])


def torch_seed(*parts: int) -> int:
    """A 63-bit seed mixed from ``parts`` by numpy's SeedSequence (well-spread, reproducible)."""
    lo, hi = np.random.SeedSequence(list(parts)).generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & ((1 << 63) - 1)


def own_generator(seed: int) -> torch.Generator:  # not the global (dropout's): exact resume
    return torch.Generator().manual_seed(seed)


def view_generator(seed: int, k: int, rank: int, view: int) -> torch.Generator:
    """The CPU generator of batched view ``view`` at iteration ``k`` on ``rank``: the only
    randomness of a batched view (module docstring), so a batch is a function of these four."""
    # A CPU generator: batched views draw on the generator's device, and CPU draws keep an
    # accelerator free of syncs and make the draws device-independent.
    gen = torch.Generator()
    gen.manual_seed(torch_seed(seed, k, rank, view))
    return gen


def check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` and the minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)
