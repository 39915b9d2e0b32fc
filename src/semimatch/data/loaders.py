"""Infinite, seeded, sharded training streams and evaluation batches.

Training batches are a **stateless function of (seed, iteration)** (the contract, stated here):

* Each stream (labeled: id 0, unlabeled: id 1) walks the infinite concatenation of per-epoch
  permutations ``perm_e = default_rng([seed, stream_id, e]).permutation(n)``. Iteration ``k``'s
  global labeled batch is positions ``[k*B, (k+1)*B)`` of that sequence, its unlabeled batch
  positions ``[k*mu*B, (k+1)*mu*B)``. Every index is seen once per pass of its stream; a pass
  may end in the middle of a batch (no sample is dropped or repeated within an epoch).
* Rank ``r`` of ``W`` takes the positions ``j`` of the global batch with ``j % W == r``, so the
  ranks' shares are disjoint and their union is the single-process global batch.
* ``augment="pil"``: sample at global position ``g`` of view ``v`` is augmented with
  ``default_rng([seed, stream_id, v, g])`` (views: 0 labeled weak, 1 unlabeled weak,
  2 unlabeled strong). A batch is therefore bit-identical for any ``num_workers`` and any
  number of processes, and resuming needs nothing but the iteration number.
* ``augment="batched"``, and feature vectors (always): the loader only gathers raw samples;
  the batched views run on ``augment_device`` with a CPU ``torch.Generator`` seeded from
  ``(seed, k, rank, view)``. Sample selection is still rank-independent, but the random
  augmentation draws **depend on the rank**: changing ``world_size`` changes the
  augmentations (not which samples are used). They do not depend on ``num_workers`` or on
  the device.

Samples may be of any modality (``DatasetInfo.kind``): the views come from
:mod:`semimatch.data.views` (the dataset's own, else the modality's defaults) and the batch
tensors from :mod:`semimatch.data.modalities` (uint8 NCHW images, float32 ``(N, D)`` features,
int64 ``(N, 2, L)`` token ids + attention masks). Views that learn from the unlabeled pool
(UDA's TF-IDF text view) are fitted once, in the constructor, on the pool's stored samples.

* Text (per-sample views on token ids, seeded like ``augment="pil"``; the ``augment``
  argument does not apply): the three views of a step are padded to **one common length**
  ``L`` (the longest of the step's sequences, at most ``max_length``), so the step can
  concatenate them along dim 0; ``L`` changes from step to step (dynamic padding).

The DataLoader's item ``k`` is a whole per-rank batch (``batch_size=None``), so worker
processes prepare upcoming iterations while the model trains on the current one.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from semimatch.data.modalities import modality
from semimatch.data.order import (
    EpochOrder,
    check_int,
    own_generator,
    sample_rng,
    view_generator,
)
from semimatch.data.sources import SampleSource, SSLDataset
from semimatch.data.splits import Split
from semimatch.data.views import Views

__all__ = [
    "AUGMENT_MODES",
    "STREAM_LABELED",
    "STREAM_UNLABELED",
    "VIEW_LABELED_WEAK",
    "VIEW_UNLABELED_STRONG",
    "VIEW_UNLABELED_WEAK",
    "SSLBatch",
    "TrainStream",
    "eval_batches",
]

STREAM_LABELED = 0
STREAM_UNLABELED = 1
VIEW_LABELED_WEAK = 0
VIEW_UNLABELED_WEAK = 1
VIEW_UNLABELED_STRONG = 2
AUGMENT_MODES = ("pil", "batched")
_VARIANTS = ("fixmatch", "usb", "ctaugment")


class SSLBatch(NamedTuple):
    """One training step's (per-rank) batch on the training device.

    Sample tensors are uint8 NCHW images, float32 ``(N, D)`` feature vectors or int64
    ``(N, 2, L)`` texts (``[:, 0]`` input ids, ``[:, 1]`` attention mask; ``x_lb``, ``u_weak``
    and ``u_strong`` share one ``L`` per step) - the data's modality; below, ``S`` is the
    per-sample shape (``C, H, W``, ``D`` or ``2, L``).
    """

    x_lb: torch.Tensor  # (B, *S), weak view of labeled samples
    y_lb: torch.Tensor  # (B,) int64
    u_weak: torch.Tensor  # (mu*B, *S); (0, *S) without unlabeled data
    u_strong: torch.Tensor | None  # None when no strong view is used (or no unlabeled data)
    u_true: torch.Tensor  # (mu*B,) int64 ground truth, -1 unknown; monitoring only
    #: (mu*B,) int64 indices into the unlabeled pool (``split.unlabeled`` then the extra
    #: unlabeled data): global, the same under any world size and on resume (FlexMatch's memory)
    u_idx: torch.Tensor | None = None
    #: The further strong views of a method that needs more than one (``use_strong=n``), each
    #: like ``u_strong`` (views ``VIEW_UNLABELED_STRONG + 1``, ``+ 2``, ...)
    u_strong_more: tuple[torch.Tensor, ...] = ()
    #: (B,) int64 positions of the labeled rows in the labeled set (``split.labeled``): global,
    #: the same under any world size and on resume (SimMatch's labeled memory bank)
    lb_idx: torch.Tensor | None = None


def _strong_name(j: int) -> str:
    """The batch key of strong view ``j`` (``u_strong``, then ``u_strong1``, ...)."""
    return "u_strong" if j == 0 else f"u_strong{j}"


class _Pool(Sequence):
    """A read-only sequence of ``n`` samples fetched on access."""

    def __init__(self, fetch: Callable[[int], Any], n: int) -> None:
        self.fetch, self.n = fetch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, p: int) -> Any:  # type: ignore[override]
        if not 0 <= p < self.n:
            raise IndexError(p)
        return self.fetch(p)


# --------------------------------------------------------------------------------------------
# Per-rank batch construction (runs in DataLoader workers)
# --------------------------------------------------------------------------------------------
class _StepBatches(Dataset):
    """Map-style dataset whose item ``k`` is the per-rank batch of iteration ``k`` (CPU)."""

    def __init__(self, stream: TrainStream) -> None:
        self.train = stream.dataset.train
        self.extra = stream.dataset.extra_unlabeled if stream.use_unlabeled else None
        self.labeled = stream.split.labeled
        self.unlabeled = stream.split.unlabeled if stream.use_unlabeled else np.zeros(0, np.int64)
        self.seed = stream.seed
        self.batch_size = stream.batch_size
        self.u_batch_size = stream.u_batch_size
        self.rank, self.world_size = stream.rank, stream.world_size
        self.batched = stream.views.batched
        self.use_unlabeled, self.use_strong = stream.use_unlabeled, stream.use_strong
        self.strong_views = stream.strong_views
        self.sample_shape = stream.sample_shape
        self.dtype = self.train.dtype
        self.modality = modality(stream.dataset.info)
        self.ragged = self.modality.ragged
        #: How the modality stacks this data's samples (text: the tokenizer's encoding).
        self.encoding = self.train.encoding
        # Per-sample views run here (in workers); batched ones stay in the main process.
        self.weak = None if self.batched else stream.views.weak
        self.strong = None if self.batched else stream.views.strong
        self.lb_order = EpochOrder(len(self.labeled), self.seed, STREAM_LABELED)
        n_pool = len(self.unlabeled) + (len(self.extra) if self.extra is not None else 0)
        self.ulb_order = EpochOrder(max(n_pool, 1), self.seed, STREAM_UNLABELED)
        # Pseudo-label quality is measured on labels hidden from training: a labeled sample in
        # the pool (the papers include them) trains on its label, so its truth reads -1 here.
        # Otherwise data whose unlabeled truth is unknown would report the labeled rows'
        # accuracy as "quality" (all labeled: 1.0).
        self.truth_hidden = ~np.isin(self.unlabeled, self.labeled)

    # positions ------------------------------------------------------------------------------
    def positions(self, k: int, global_batch: int) -> np.ndarray:
        """Global stream positions of this rank's share of iteration ``k``."""
        return k * global_batch + np.arange(self.rank, global_batch, self.world_size)

    def lb_positions(self, k: int) -> np.ndarray:
        """This rank's labeled rows at iteration ``k`` as positions in ``split.labeled``."""
        return self.lb_order(self.positions(k, self.batch_size))

    def indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(train indices of the labeled share, unlabeled-pool indices of the unlabeled share)."""
        lb = self.labeled[self.lb_positions(k)]
        if not self.use_unlabeled:
            return lb, np.zeros(0, dtype=np.int64)
        return lb, self.ulb_order(self.positions(k, self.u_batch_size))

    # pool access ------------------------------------------------------------------------------
    def _pool_split(self, pool_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Split pool indices into (mask of train rows, train indices, extra indices)."""
        in_train = pool_idx < len(self.unlabeled)
        return (
            in_train,
            self.unlabeled[pool_idx[in_train]],
            pool_idx[~in_train] - len(self.unlabeled),
        )

    def _pool_labels(self, pool_idx: np.ndarray) -> np.ndarray:
        in_train, t_idx, e_idx = self._pool_split(pool_idx)
        out = np.empty(len(pool_idx), dtype=np.int64)
        hidden = self.truth_hidden[pool_idx[in_train]]
        out[in_train] = np.where(hidden, self.train.labels[t_idx], -1)
        if e_idx.size:
            out[~in_train] = self.extra.labels[e_idx]
        return out

    def _pool_sample(self, p: int) -> np.ndarray:
        n = len(self.unlabeled)
        return self.train[int(self.unlabeled[p])] if p < n else self.extra[int(p - n)]

    def pool(self) -> _Pool:
        """The unlabeled pool's stored samples, read lazily in pool order (:meth:`Views.fit`;
        views that learn nothing never read an image)."""
        n = len(self.unlabeled) + (len(self.extra) if self.extra is not None else 0)
        return _Pool(self._pool_sample, n)

    def _pool_gather(self, pool_idx: np.ndarray) -> np.ndarray:
        in_train, t_idx, e_idx = self._pool_split(pool_idx)
        out = np.empty((len(pool_idx), *self.sample_shape), dtype=self.dtype)
        out[in_train] = self.train.gather(t_idx)
        if e_idx.size:
            out[~in_train] = self.extra.gather(e_idx)
        return out

    # items ---------------------------------------------------------------------------------------
    def _augment(
        self,
        fetch: Any,
        idx: np.ndarray,
        positions: np.ndarray,
        views: Iterable[tuple[int, int, Any]],
    ) -> list[Any]:
        """Augment each sample once per view with its (seed, stream, view, position) rng: one
        ``(n, *sample_shape)`` array per view (a list of samples for ragged modalities)."""
        views = list(views)
        outs: list[Any] = [
            [None] * len(idx)
            if self.ragged
            else np.empty((len(idx), *self.sample_shape), dtype=self.dtype)
            for _ in views
        ]
        for j, (i, g) in enumerate(zip(idx.tolist(), positions.tolist(), strict=True)):
            img = fetch(i)
            for out, (stream_id, view, aug) in zip(outs, views, strict=True):
                res = aug(img, sample_rng(self.seed, stream_id, view, g))
                out[j] = res if self.ragged else res.reshape(self.sample_shape)
        return outs

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        k = int(k)
        lb_idx, pool_idx = self.indices(k)
        item: dict[str, torch.Tensor] = {
            "y_lb": torch.from_numpy(self.train.labels[lb_idx].copy()),
            "u_true": torch.from_numpy(self._pool_labels(pool_idx)),
            "u_idx": torch.from_numpy(np.ascontiguousarray(pool_idx, dtype=np.int64)),
            "lb_idx": torch.from_numpy(self.lb_positions(k).astype(np.int64)),
        }
        stack = self.modality.stack
        if self.batched:
            item["x_lb"] = stack(self.train.gather(lb_idx), self.encoding)
            item["u_raw"] = stack(self._pool_gather(pool_idx), self.encoding)
            return item
        lb_pos = self.positions(k, self.batch_size)
        groups = self._augment(
            lambda i: self.train[i],
            lb_idx,
            lb_pos,
            [(STREAM_LABELED, VIEW_LABELED_WEAK, self.weak)],
        )
        names = ["x_lb"]
        if self.use_unlabeled:
            views = [(STREAM_UNLABELED, VIEW_UNLABELED_WEAK, self.weak)]
            names.append("u_weak")
            for j in range(self.strong_views):
                views.append((STREAM_UNLABELED, VIEW_UNLABELED_STRONG + j, self.strong))
                names.append(_strong_name(j))
            u_pos = self.positions(k, self.u_batch_size)
            groups += self._augment(self._pool_sample, pool_idx, u_pos, views)
        # Stacked together: text pads the step's views to one common length.
        item.update(zip(names, self.modality.stack_groups(groups, self.encoding), strict=True))
        return item


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
class TrainStream:
    """Seeded, sharded, infinite labeled + unlabeled training batches (see module docstring).

    ``batch_size`` is the **global** labeled batch B (each of ``world_size`` processes gets
    ``B // world_size``); the unlabeled batch is ``uratio * B``. The unlabeled pool is
    ``train[split.unlabeled]`` followed by ``dataset.extra_unlabeled``.

    Views (:mod:`semimatch.data.views`): ``views`` if given, else ``dataset.views``, else the
    modality's defaults; for images ``augment`` (default ``"pil"``) picks the PIL per-image
    pipelines (``weak_view``/``strong_view`` replace them) or the batched tensor ones.
    Feature vectors have batched views only (``augment`` defaults to ``"batched"``); text has
    per-sample views on token ids (``augment`` does not apply) and must be tokenized
    (:func:`semimatch.data.text.tokenize_dataset`).  ``strong_as_weak``: the ``use_strong``
    views are drawn with the weak view (MixMatch's second weak view; their own seeds).
    """

    def __init__(
        self,
        dataset: SSLDataset,
        split: Split,
        *,
        batch_size: int,
        uratio: int,
        seed: int,
        use_unlabeled: bool = True,
        use_strong: bool | int = True,
        strong_as_weak: bool = False,
        strong_variant: str = "fixmatch",
        augment: str | None = None,
        device: str | torch.device = "cpu",
        augment_device: str | torch.device | None = None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        pad_frac: float = 0.125,
        weak_view: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        strong_view: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
        views: Views | None = None,
    ) -> None:
        self.dataset, self.split = dataset, split
        self._set_sizes(batch_size, uratio, seed, use_unlabeled, rank, world_size)
        self.use_strong = bool(use_strong)
        # A count of strong views for a method that needs several (True: one).
        self.strong_views = check_int(int(use_strong), "use_strong", 0) if self.use_strong else 0
        self.num_workers = check_int(num_workers, "num_workers", 0)
        self.prefetch_factor = check_int(prefetch_factor, "prefetch_factor", 1)
        if augment is None:  # the modality's default: PIL for images, batched otherwise
            kind = getattr(getattr(dataset, "info", None), "kind", "image")  # checked below
            augment = modality(kind).default_augment
        if augment not in AUGMENT_MODES:
            raise ValueError(f"augment: must be one of {AUGMENT_MODES}, got {augment!r}")
        if strong_variant not in _VARIANTS:
            raise ValueError(f"strong_variant: must be one of {_VARIANTS}, got {strong_variant!r}")
        self.augment, self.strong_variant = augment, strong_variant
        self.device = torch.device(device)
        # Batched augmentation may run elsewhere (e.g. on the CPU of a GPU run); batches are
        # handed out on ``device`` either way.
        self.augment_device = (
            self.device if augment_device is None else torch.device(augment_device)
        )
        self._check_data()
        self.sample_shape = dataset.info.sample_shape
        self.modality = modality(dataset.info)
        #: The weak/strong views (``views.batched``: applied in ``_finish``, else in workers).
        self.views = self._views(views, pad_frac, weak_view, strong_view)
        if strong_as_weak:  # further weak views in the strong views' places (MixMatch's K = 2)
            self.views = copy.copy(self.views)
            self.views.strong = self.views.weak
        self._steps = _StepBatches(self)
        if self.use_unlabeled:  # e.g. UDA's TF-IDF statistics of the unlabeled texts
            fitted = self.views.fit(self._steps.pool())
            if fitted is not self.views:
                self.views = fitted
                self._steps = _StepBatches(self)

    def _set_sizes(
        self,
        batch_size: int,
        uratio: int,
        seed: int,
        use_unlabeled: bool,
        rank: int,
        world_size: int,
    ) -> None:
        """The batch sizes, seed and shard, checked."""
        self.world_size = check_int(world_size, "world_size", 1)
        self.rank = check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: must be < world_size={self.world_size}, got {rank}")
        self.batch_size = check_int(batch_size, "batch_size", 1)
        if self.batch_size % self.world_size:
            raise ValueError(
                f"batch_size: the global batch {self.batch_size} is not divisible by "
                f"world_size={self.world_size}; use a multiple of {self.world_size}"
            )
        self.use_unlabeled = bool(use_unlabeled)
        self.uratio = check_int(uratio, "uratio", 1 if self.use_unlabeled else 0)
        self.u_batch_size = self.uratio * self.batch_size if self.use_unlabeled else 0
        self.seed = check_int(seed, "seed", 0)

    def _views(self, views: Views | None, pad_frac: float, weak: Any, strong: Any) -> Views:
        """``views``, else the data's, else the modality's own (``weak``/``strong``: user
        callables replacing the PIL pipelines), on the augmentation device."""
        info = self.dataset.info
        if self.augment == "pil" and not self.modality.per_sample_views:
            raise ValueError(
                f"augment='pil' is the per-image PIL pipeline; {info.kind} data has batched "
                "views: use augment='batched' (or 'auto')"
            )
        custom = weak is not None or strong is not None
        if views is None and not custom:
            views = self.dataset.views
        if views is None:
            views = self.modality.default_views(
                info, self.augment, self.strong_variant, pad_frac, weak, strong
            )
        elif custom:
            raise ValueError("weak_view/strong_view: pass them or views=, not both")
        if self.modality.ragged and views.batched:
            raise ValueError(f"{info.kind} data needs per-sample views (SampleViews)")
        return views.to(self.augment_device)

    def _check_data(self) -> None:
        ds, split = self.dataset, self.split
        if not isinstance(ds, SSLDataset):
            raise ValueError(f"dataset: expected an SSLDataset, got {type(ds).__name__}")
        if not isinstance(split, Split):
            raise ValueError(f"split: expected a semimatch.data.splits.Split, got {type(split)}")
        train, info = ds.train, ds.info
        split.validate(len(train))
        if len(split.labeled) == 0:
            raise ValueError("split: no labeled indices; a training stream needs labeled images")
        y = train.labels[split.labeled]
        bad = (y < 0) | (y >= info.num_classes)
        if bad.any():
            i = int(split.labeled[np.flatnonzero(bad)[0]])
            raise ValueError(
                f"split: labeled index {i} has label {int(train.labels[i])}, outside 0.."
                f"{info.num_classes - 1}; labeled indices must point at labeled images"
            )
        for what, src in (("train", train), ("extra_unlabeled", ds.extra_unlabeled)):
            if src is None:
                continue
            if src.kind != info.kind:
                raise ValueError(
                    f"dataset.{what}: holds {src.kind} samples but the dataset info says "
                    f"{info.kind!r}"
                )
            modality(info).check_source(src, info, what)
        n_extra = len(ds.extra_unlabeled) if ds.extra_unlabeled is not None else 0
        if self.use_unlabeled and len(split.unlabeled) + n_extra == 0:
            raise ValueError(
                "split: the unlabeled pool is empty (no unlabeled indices and no extra "
                "unlabeled images); use a supervised algorithm or add unlabeled data"
            )

    # ------------------------------------------------------------------------------------------
    @property
    def num_unlabeled(self) -> int:
        """Size of the unlabeled pool (``split.unlabeled`` + extra unlabeled images)."""
        return len(self._steps.unlabeled) + (
            len(self._steps.extra) if self._steps.extra is not None else 0
        )

    def indices(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's indices at iteration ``k``: (train indices of the labeled images,
        unlabeled-pool indices, where ``p < len(split.unlabeled)`` means
        ``train[split.unlabeled[p]]`` and larger ``p`` index ``extra_unlabeled``)."""
        return self._steps.indices(check_int(k, "k", 0))

    def batch(self, k: int) -> SSLBatch:
        """The batch of iteration ``k``, computed in this process (no workers)."""
        return self._finish(self._steps[check_int(k, "k", 0)], int(k))

    def batches(self, start: int, stop: int | None) -> Iterator[SSLBatch]:
        """Batches of iterations ``start .. stop-1`` (``stop=None``: endless), on ``device``.

        Each call starts its own DataLoader workers, so iterate one long range (e.g. resume
        iteration to the end of training) rather than many short ones.
        """
        start = check_int(start, "start", 0)
        if stop is not None and check_int(stop, "stop", 0) < start:
            raise ValueError(f"stop: must be >= start={start}, got {stop}")
        sampler: Iterable[int] = range(start, stop) if stop is not None else itertools.count(start)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["prefetch_factor"] = self.prefetch_factor
        loader = DataLoader(
            self._steps,
            batch_size=None,
            sampler=sampler,
            num_workers=self.num_workers,
            # Pinned pages make the copy to a GPU asynchronous; the first copy goes where the
            # batched augmentation runs, or straight to the training device.
            pin_memory=(self.augment_device if self.views.batched else self.device).type == "cuda",
            generator=own_generator(self.seed),
            **kwargs,
        )
        for k, item in zip(itertools.count(start), loader):
            yield self._finish(item, k)

    def _finish(self, item: dict[str, torch.Tensor], k: int) -> SSLBatch:
        """Move a CPU batch to the device and, for batched views, augment it on augment_device."""
        dev, nb = self.device, self.device.type == "cuda"
        y_lb = item["y_lb"].to(dev, non_blocking=nb)
        u_true = item["u_true"].to(dev, non_blocking=nb)
        u_idx = item["u_idx"].to(dev, non_blocking=nb)
        lb_idx = item["lb_idx"].to(dev, non_blocking=nb)
        u_weak = u_strong = None
        more: tuple[torch.Tensor, ...] = ()
        if self.views.batched:
            adev, anb = self.augment_device, self.augment_device.type == "cuda"
            weak, strong = self.views.weak, self.views.strong

            def view(x: torch.Tensor, aug: torch.nn.Module, which: int) -> torch.Tensor:
                return aug(x, self._generator(k, which)).to(dev, non_blocking=nb)

            x_lb = view(item["x_lb"].to(adev, non_blocking=anb), weak, VIEW_LABELED_WEAK)
            if self.use_unlabeled:
                u_raw = item["u_raw"].to(adev, non_blocking=anb)
                u_weak = view(u_raw, weak, VIEW_UNLABELED_WEAK)
                if self.use_strong:
                    u_strong, *rest = (
                        view(u_raw, strong, VIEW_UNLABELED_STRONG + j)
                        for j in range(self.strong_views)
                    )
                    more = tuple(rest)
        else:
            x_lb = item["x_lb"].to(dev, non_blocking=nb)
            if self.use_unlabeled:
                u_weak = item["u_weak"].to(dev, non_blocking=nb)
                if self.use_strong:
                    u_strong, *rest = (
                        item[_strong_name(j)].to(dev, non_blocking=nb)
                        for j in range(self.strong_views)
                    )
                    more = tuple(rest)
        if u_weak is None:
            shape = (0, *x_lb.shape[1:])
            u_weak = torch.empty(shape, dtype=self.modality.dtype, device=dev)
        return SSLBatch(x_lb, y_lb, u_weak, u_strong, u_true, u_idx, more, lb_idx)

    def probe_views(
        self, indices: np.ndarray, stream_id: int, strong: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weak and (with ``strong``) the strong view of ``train[indices]`` (CPU tensors),
        made by the views this stream trains with; the draws are seeded by
        ``(seed, stream_id, view, position)`` (``position``: the place in ``indices``; batched
        views: a generator of ``(seed, 2**40 + stream_id, 0, view)``, an iteration no run
        reaches), so the same indices get the same views in every call and every process."""
        steps, idx = self._steps, np.asarray(indices, dtype=np.int64)
        augs = (self.views.weak, self.views.strong) if strong else (self.views.weak,)
        if not self.views.batched:
            views = [(stream_id, v, aug) for v, aug in enumerate(augs)]
            groups = steps._augment(lambda i: steps.train[i], idx, np.arange(len(idx)), views)
            out = self.modality.stack_groups(groups, steps.encoding)
        else:
            raw = self.modality.stack(steps.train.gather(idx), steps.encoding)
            raw = raw.to(self.augment_device)
            out = [
                aug(raw, view_generator(self.seed, 2**40 + stream_id, 0, v)).cpu()
                for v, aug in enumerate(augs)
            ]
        return out[0], out[1] if strong else None

    def _generator(self, k: int, view: int) -> torch.Generator:
        return view_generator(self.seed, k, self.rank, view)


class _EvalChunks(Dataset):
    def __init__(self, source: SampleSource, chunks: list[np.ndarray]) -> None:
        self.source, self.chunks = source, chunks
        self.stack = modality(source.kind).stack
        self.encoding = source.encoding

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = self.chunks[b]
        x = self.stack(self.source.gather(idx), self.encoding)
        return x, torch.from_numpy(self.source.labels[idx].copy()), torch.from_numpy(idx)


def eval_batches(
    source: SampleSource,
    batch_size: int,
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    *,
    num_workers: int = 0,
    return_indices: bool = False,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Un-augmented ``(samples, int64 labels)`` batches on ``device``: uint8 NCHW images,
    float32 ``(N, D)`` feature vectors or int64 ``(N, 2, L)`` tokens (each batch padded to its
    own longest text), as the source's modality stacks them.

    Rank ``r`` of ``world_size`` gets indices ``r, r+W, r+2W, ...`` so every sample is
    evaluated exactly once across ranks (shares differ by at most one sample; sum counts
    across ranks rather than averaging per-rank means). ``return_indices=True`` adds a third
    tensor with the samples' indices in ``source`` (CPU).
    """
    batch_size = check_int(batch_size, "batch_size", 1)
    world_size = check_int(world_size, "world_size", 1)
    rank = check_int(rank, "rank", 0)
    if rank >= world_size:
        raise ValueError(f"rank: must be < world_size={world_size}, got {rank}")
    device = torch.device(device)
    nb = device.type == "cuda"
    idx = np.arange(rank, len(source), world_size, dtype=np.int64)
    chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
    loader = DataLoader(
        _EvalChunks(source, chunks),
        batch_size=None,
        shuffle=False,
        num_workers=check_int(num_workers, "num_workers", 0),
        pin_memory=nb,
        generator=own_generator(0),
    )

    # Arguments are checked above, when eval_batches is called, not at the first next().
    def generate() -> Iterator[tuple[torch.Tensor, ...]]:
        for x, y, i in loader:
            out = (x.to(device, non_blocking=nb), y.to(device, non_blocking=nb))
            yield (*out, i) if return_indices else out

    return generate()
