"""Training streams and eval batches: shapes, determinism, sharding, resume, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from semimatch.data import (
    ArraySource,
    FeatureViews,
    TrainStream,
    balanced_split,
    eval_batches,
    from_arrays,
    from_features,
    given_split,
)
from semimatch.data.loaders import (
    VIEW_LABELED_WEAK,
    VIEW_UNLABELED_STRONG,
    VIEW_UNLABELED_WEAK,
)
from semimatch.data.order import view_generator
from semimatch.data.splits import Split

B, MU = 8, 3


@pytest.fixture(scope="module")
def rgb():
    """60 RGB 16x16 images, 3 classes x 20, plus 10 unlabeled (-1) rows and a 13-image test set."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (70, 16, 16, 3), dtype=np.uint8)
    y = np.array([i % 3 for i in range(60)] + [-1] * 10)
    xt = rng.integers(0, 256, (13, 16, 16, 3), dtype=np.uint8)
    return from_arrays(x, y, xt, np.arange(13) % 3)


@pytest.fixture(scope="module")
def split(rgb):
    return balanced_split(rgb.train.labels, 3, 24, seed=0)  # 24 labeled = 3 passes of B


def _stream(ds, split, **kw):
    args = {"batch_size": B, "uratio": MU, "seed": 11}
    args.update(kw)
    return TrainStream(ds, split, **args)


def _assert_batches_equal(a, b):
    for name, ta, tb in zip(a._fields, a, b, strict=True):
        if ta is None or tb is None:
            assert ta is None and tb is None, name
        elif isinstance(ta, tuple):  # u_strong_more: the further strong views
            assert len(ta) == len(tb) and all(map(torch.equal, ta, tb)), name
        else:
            assert torch.equal(ta, tb), name


@pytest.mark.parametrize("augment", ["pil", "batched"])
def test_shapes_and_dtypes(rgb, split, augment):
    b = _stream(rgb, split, augment=augment).batch(0)
    assert b.x_lb.shape == (B, 3, 16, 16) and b.x_lb.dtype == torch.uint8
    assert b.y_lb.shape == (B,) and b.y_lb.dtype == torch.int64
    assert b.u_weak.shape == b.u_strong.shape == (MU * B, 3, 16, 16)
    assert b.u_weak.dtype == b.u_strong.dtype == torch.uint8
    assert b.u_true.shape == (MU * B,) and b.u_true.dtype == torch.int64
    assert b.x_lb.is_contiguous() and b.u_strong.is_contiguous()
    assert not torch.equal(b.u_weak, b.u_strong)


def test_grayscale_digits_batches():
    from semimatch.data import load_dataset

    ds = load_dataset("digits")
    s = TrainStream(ds, balanced_split(ds.train.labels, 10, 20, 0), batch_size=4, uratio=2, seed=0)
    b = s.batch(3)
    assert b.x_lb.shape == (4, 1, 8, 8) and b.u_strong.shape == (8, 1, 8, 8)


@pytest.mark.parametrize("augment", ["pil", "batched"])
def test_same_seed_same_batches_different_seed_different(rgb, split, augment):
    a = list(_stream(rgb, split, augment=augment).batches(0, 3))
    b = list(_stream(rgb, split, augment=augment).batches(0, 3))
    for x, y in zip(a, b, strict=True):
        _assert_batches_equal(x, y)
    c = _stream(rgb, split, augment=augment, seed=12).batch(0)
    assert not torch.equal(a[0].u_strong, c.u_strong)


def test_pil_batches_do_not_depend_on_num_workers(rgb, split):
    ref = _stream(rgb, split)
    got = list(_stream(rgb, split, num_workers=2).batches(2, 6))
    assert len(got) == 4
    for k, b in zip(range(2, 6), got, strict=True):
        _assert_batches_equal(ref.batch(k), b)


def test_resume_from_any_iteration(rgb, split):
    full = list(_stream(rgb, split).batches(0, 6))
    resumed = list(_stream(rgb, split).batches(4, 6))
    for a, b in zip(full[4:], resumed, strict=True):
        _assert_batches_equal(a, b)


@pytest.mark.parametrize("augment", ["pil", "batched"])
def test_two_ranks_split_the_global_batch(rgb, split, augment):
    one = _stream(rgb, split, augment=augment)
    ranks = [_stream(rgb, split, augment=augment, rank=r, world_size=2) for r in range(2)]
    for k in range(4):
        g_lb, g_ulb = one.indices(k)
        parts = [r.indices(k) for r in ranks]
        # Rank r holds global positions r, r+2, ...: interleaving restores the global batch.
        np.testing.assert_array_equal(g_lb[0::2], parts[0][0])
        np.testing.assert_array_equal(g_lb[1::2], parts[1][0])
        np.testing.assert_array_equal(g_ulb[0::2], parts[0][1])
        np.testing.assert_array_equal(g_ulb[1::2], parts[1][1])
        if augment == "pil":  # augmentation draws are per global position: bit-identical
            g = one.batch(k)
            shares = [r.batch(k) for r in ranks]
            for field in ("x_lb", "y_lb", "u_weak", "u_strong", "u_true"):
                whole = getattr(g, field)
                assert torch.equal(whole[0::2], getattr(shares[0], field))
                assert torch.equal(whole[1::2], getattr(shares[1], field))
        else:
            b0 = ranks[0].batch(k)
            assert b0.x_lb.shape[0] == B // 2 and b0.u_strong.shape[0] == MU * B // 2


def test_each_labeled_index_once_per_pass_across_ranks(rgb, split):
    ranks = [_stream(rgb, split, rank=r, world_size=2) for r in range(2)]
    passes = len(split.labeled) // B  # 3 iterations per pass
    for p in range(2):
        seen = np.concatenate(
            [r.indices(k)[0] for k in range(p * passes, (p + 1) * passes) for r in ranks]
        )
        assert sorted(seen.tolist()) == sorted(split.labeled.tolist())
    # Labels of the labeled batch are those of the chosen indices.
    lb, _ = ranks[1].indices(5)
    np.testing.assert_array_equal(ranks[1].batch(5).y_lb.numpy(), rgb.train.labels[lb])


def test_unlabeled_stream_covers_the_pool_once_per_pass(rgb, split):
    s = _stream(rgb, split, batch_size=10, uratio=7)  # 70 images per step = the whole pool
    for k in range(2):
        _, pool = s.indices(k)
        assert sorted(pool.tolist()) == list(range(70))
    assert s.num_unlabeled == 70


def test_u_true_carries_the_hidden_ground_truth_only(rgb):
    """Quality is measured on labels hidden from training: a labeled sample in the pool and an
    extra unlabeled image read -1 (unknown); the other pool images carry their label."""
    extra = ArraySource(np.zeros((6, 16, 16, 3), np.uint8), np.full(6, -1))
    ds = type(rgb)(rgb.info, rgb.train, rgb.test, extra)
    sp = balanced_split(rgb.train.labels, 3, 24, seed=0)  # the labeled images are in the pool
    s = _stream(ds, sp, batch_size=8, uratio=10)  # 80 > 70 + 6: every pool image appears
    _, pool = s.indices(0)
    b = s.batch(0)
    n = len(sp.unlabeled)
    train_idx = sp.unlabeled[np.minimum(pool, n - 1)]
    hidden = (pool < n) & ~np.isin(train_idx, sp.labeled)
    expected = np.where(hidden, rgb.train.labels[train_idx], -1)
    np.testing.assert_array_equal(b.u_true.numpy(), expected)
    assert (pool >= n).any() and hidden.any() and ((pool < n) & ~hidden).any()
    # Every sample labeled (the dataset's own labels): no truth is hidden, quality is n/a.
    everything = _stream(rgb, given_split(rgb.train.labels), batch_size=8, uratio=2).batch(0)
    assert (everything.u_true == -1).all()
    # The extra images are all black; their weak views stay black (crop of black padding).
    assert (b.u_weak[torch.from_numpy(pool >= n)] == 0).all()


@pytest.mark.parametrize("augment", ["pil", "batched"])
@pytest.mark.parametrize("world_size", [1, 2])
def test_u_idx_covers_the_pool_once_per_epoch_on_any_world_size(rgb, augment, world_size):
    """FlexMatch's memory is indexed by u_idx: the global pool order (split.unlabeled, then the
    extra data), each index exactly once per pass across the ranks, the same on resume."""
    extra = ArraySource(np.zeros((6, 16, 16, 3), np.uint8), np.full(6, -1))
    ds = type(rgb)(rgb.info, rgb.train, rgb.test, extra)
    sp = balanced_split(rgb.train.labels, 3, 24, seed=0)
    n_pool = len(sp.unlabeled) + 6  # 76 (the 10 rows labeled -1 are in it)
    kw = dict(augment=augment, batch_size=4, uratio=5, world_size=world_size)  # 20 per step
    ranks = [_stream(ds, sp, rank=r, **kw) for r in range(world_size)]
    assert all(s.num_unlabeled == n_pool for s in ranks)
    steps = 8  # 160 positions: two passes over the pool (the second ends mid-batch)
    shares = [list(s.batches(0, steps)) for s in ranks]
    order = torch.empty(steps * 20, dtype=torch.long)
    for r, batches in enumerate(shares):
        for k, b in enumerate(batches):
            assert b.u_idx.dtype == torch.int64 and b.u_idx.shape == (20 // world_size,)
            np.testing.assert_array_equal(b.u_idx.numpy(), ranks[r].indices(k)[1])
            # The rows are the indexed samples (their hidden ground truth; -1 for the labeled
            # samples in the pool and for the extra images).
            hidden = np.where(np.isin(sp.unlabeled, sp.labeled), -1, rgb.train.labels[sp.unlabeled])
            pool_labels = np.concatenate([hidden, np.full(6, -1)])
            np.testing.assert_array_equal(b.u_true.numpy(), pool_labels[b.u_idx.numpy()])
            order[k * 20 + r : (k + 1) * 20 : world_size] = b.u_idx  # rank r: positions r mod W
    for epoch in range(2):
        seen = order[epoch * n_pool : (epoch + 1) * n_pool]
        assert sorted(seen.tolist()) == list(range(n_pool)), epoch
    one = _stream(ds, sp, augment=augment, batch_size=4, uratio=5)
    whole = torch.cat([b.u_idx for b in one.batches(0, steps)])
    assert torch.equal(whole, order)  # what one process sees, for any world size
    resumed = next(iter(ranks[-1].batches(5, 6)))  # a resume recomputes the same indices
    assert torch.equal(resumed.u_idx, shares[-1][5].u_idx)


@pytest.mark.parametrize("world_size", [1, 2])
def test_lb_idx_are_the_labeled_rows_positions_in_the_labeled_set(rgb, world_size):
    """SimMatch's bank is indexed by lb_idx: positions in split.labeled, whose labels are
    y_lb; what one process sees, dealt to the ranks in turn."""
    sp = balanced_split(rgb.train.labels, 3, 6, seed=0)
    ranks = [_stream(rgb, sp, rank=r, batch_size=4, world_size=world_size)
             for r in range(world_size)]  # fmt: skip
    one = [b.lb_idx for b in _stream(rgb, sp, batch_size=4).batches(0, 4)]
    for r, s in enumerate(ranks):
        for k, b in enumerate(s.batches(0, 4)):
            assert b.lb_idx.dtype == torch.int64
            np.testing.assert_array_equal(sp.labeled[b.lb_idx.numpy()], s.indices(k)[0])
            np.testing.assert_array_equal(rgb.train.labels[sp.labeled[b.lb_idx.numpy()]], b.y_lb)
            assert torch.equal(b.lb_idx, one[k][r::world_size])


def test_supervised_and_weak_only_streams(rgb, split):
    sup = _stream(rgb, split, use_unlabeled=False, uratio=0).batch(0)
    assert sup.u_weak.shape == (0, 3, 16, 16) and sup.u_strong is None
    assert sup.u_true.shape == (0,) and sup.u_idx.shape == (0,)
    weak_only = _stream(rgb, split, use_strong=False).batch(0)
    assert weak_only.u_strong is None and weak_only.u_weak.shape[0] == MU * B
    batched = _stream(rgb, split, use_unlabeled=False, uratio=0, augment="batched").batch(1)
    assert batched.u_weak.shape[0] == 0 and batched.u_strong is None


def test_batched_augmentation_elsewhere_hands_batches_to_the_training_device(rgb, split):
    """augment_device=cpu on a GPU run: augment on the CPU, train on the GPU (here the meta
    device stands in for the GPU: tensors move there, values are not kept)."""
    on_cpu = _stream(rgb, split, augment="batched").batch(1)
    elsewhere = _stream(rgb, split, augment="batched", device="meta", augment_device="cpu")
    assert elsewhere.views.batched
    batch = elsewhere.batch(1)
    for name, t in zip(batch._fields, batch, strict=True):
        assert all(v.device.type == "meta" for v in (t if isinstance(t, tuple) else (t,))), name
    assert batch.u_strong.shape == on_cpu.u_strong.shape and batch.x_lb.dtype == torch.uint8


def test_labeled_views_are_crops_of_the_right_images(rgb, split):
    s = _stream(rgb, split, augment="batched")
    lb, _ = s.indices(2)
    x = s.batch(2).x_lb.permute(0, 2, 3, 1).numpy()
    src = rgb.train.gather(lb)
    # 16 px image, 2 px reflect padding: the central 12x12 of the view lies inside the image.
    for view, img in zip(x, src, strict=True):
        core = view[2:14, 2:14]
        found = any(
            np.array_equal(core, cand[dy : dy + 12, dx : dx + 12])
            for cand in (img, img[:, ::-1])
            for dy in range(5)
            for dx in range(5)
        )
        assert found


def test_bad_stream_arguments(rgb, split):
    with pytest.raises(ValueError, match="not divisible by world_size"):
        _stream(rgb, split, batch_size=9, world_size=2)
    with pytest.raises(ValueError, match="rank"):
        _stream(rgb, split, rank=2, world_size=2)
    with pytest.raises(ValueError, match="augment"):
        _stream(rgb, split, augment="gpu")
    with pytest.raises(ValueError, match="strong_variant"):
        _stream(rgb, split, strong_variant="randaugment")
    with pytest.raises(ValueError, match="uratio"):
        _stream(rgb, split, uratio=0)
    with pytest.raises(ValueError, match="another dataset"):
        _stream(rgb, Split(np.array([0, 500]), np.arange(10), "balanced", 0))
    with pytest.raises(ValueError, match="labeled index 65 has label -1"):
        _stream(rgb, Split(np.array([0, 65]), np.arange(10), "given", None))
    with pytest.raises(ValueError, match="unlabeled pool is empty"):
        _stream(rgb, Split(np.array([0, 1]), np.zeros(0, np.int64), "given", None))


def test_eval_batches_cover_each_sample_once(rgb):
    x_all = torch.from_numpy(rgb.test.as_array()).permute(0, 3, 1, 2)
    seen = []
    for r in range(2):
        for x, y, idx in eval_batches(rgb.test, 4, "cpu", r, 2, return_indices=True):
            assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[0] <= 4
            assert torch.equal(x, x_all[idx])  # no augmentation
            np.testing.assert_array_equal(y.numpy(), rgb.test.labels[idx.numpy()])
            seen += idx.tolist()
    assert sorted(seen) == list(range(13))
    batches = list(eval_batches(rgb.test, 5, num_workers=2))
    assert [len(b[0]) for b in batches] == [5, 5, 3] and len(batches[0]) == 2
    with pytest.raises(ValueError, match="rank"):
        eval_batches(rgb.test, 4, rank=3, world_size=2)


# --- feature vectors -----------------------------------------------------------------------------
D = 6


@pytest.fixture(scope="module")
def feats():
    """50 feature vectors (D=6), 2 classes, 20 labeled; a 9-vector test set."""
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 3.0, (50, D))
    y = np.where(np.arange(50) < 20, np.arange(50) % 2, -1)
    return from_features(x, y, rng.normal(2.0, 3.0, (9, D)), np.arange(9) % 2)


def test_feature_batches_are_float_vectors(feats):
    s = _stream(feats, given_split(feats.train.labels))
    assert s.augment == "batched" and s.views.batched
    b = s.batch(0)
    assert b.x_lb.shape == (B, D) and b.x_lb.dtype == torch.float32
    assert b.u_weak.shape == b.u_strong.shape == (MU * B, D)
    assert b.u_weak.dtype == b.u_strong.dtype == torch.float32
    assert b.y_lb.dtype == b.u_true.dtype == torch.int64
    # weak view = the standardised vectors plus N(0, 0.1^2) noise
    lb, _ = s.indices(0)
    assert (b.x_lb - torch.from_numpy(feats.train.gather(lb))).abs().max() < 0.1 * 6
    assert torch.equal(b.y_lb, torch.from_numpy(feats.train.labels[lb]))
    assert not torch.equal(b.u_weak, b.u_strong)
    none = _stream(feats, given_split(feats.train.labels), use_unlabeled=False).batch(0)
    assert none.u_weak.shape == (0, D) and none.u_weak.dtype == torch.float32
    assert none.u_strong is None


def test_a_feature_batch_is_a_function_of_seed_iteration_rank_and_view(feats):
    """Recomputed from its definition: gathered raw vectors + each view's seeded draw."""
    split = given_split(feats.train.labels)
    s = _stream(feats, split, world_size=2, rank=1)
    k = 5
    b = s.batch(k)
    lb, pool = s.indices(k)
    raw_u = feats.train.gather(split.unlabeled[pool])
    weak, strong = feats.views.weak, feats.views.strong
    raw_lb = torch.from_numpy(feats.train.gather(lb))
    assert torch.equal(b.x_lb, weak(raw_lb, view_generator(11, k, 1, VIEW_LABELED_WEAK)))
    u = torch.from_numpy(raw_u)
    assert torch.equal(b.u_weak, weak(u, view_generator(11, k, 1, VIEW_UNLABELED_WEAK)))
    assert torch.equal(b.u_strong, strong(u, view_generator(11, k, 1, VIEW_UNLABELED_STRONG)))
    # the same four numbers give the same batch in a fresh stream, through the loader too
    _assert_batches_equal(b, _stream(feats, split, world_size=2, rank=1).batch(k))
    looped = list(_stream(feats, split, world_size=2, rank=1, num_workers=1).batches(k, k + 1))
    _assert_batches_equal(b, looped[0])
    other = _stream(feats, split, world_size=2, rank=0).batch(k)
    assert not torch.equal(b.u_weak, other.u_weak)


def test_feature_streams_refuse_image_pipelines(feats):
    split = given_split(feats.train.labels)
    with pytest.raises(ValueError, match="augment='pil' is the per-image PIL pipeline"):
        _stream(feats, split, augment="pil")
    with pytest.raises(ValueError, match="feature vectors have batched views"):
        TrainStream(
            dataclasses.replace(feats, views=None),
            split,
            batch_size=B,
            uratio=MU,
            seed=0,
            weak_view=lambda x, rng: x,
        )


def test_explicit_views_replace_the_datasets(feats):
    split = given_split(feats.train.labels)
    quiet = FeatureViews(0.0, 0.0, 0.0)
    b = _stream(feats, split, views=quiet).batch(2)
    lb, _ = _stream(feats, split).indices(2)
    assert torch.equal(b.x_lb, torch.from_numpy(feats.train.gather(lb)))
    assert torch.equal(b.u_weak, b.u_strong)


def test_eval_batches_of_feature_vectors(feats):
    seen = []
    for rank in (0, 1):
        for x, y, i in eval_batches(feats.test, 4, rank=rank, world_size=2, return_indices=True):
            assert x.dtype == torch.float32 and x.shape[1:] == (D,) and len(x) <= 4
            np.testing.assert_array_equal(x.numpy(), feats.test.gather(i.numpy()))
            np.testing.assert_array_equal(y.numpy(), feats.test.labels[i.numpy()])
            seen += i.tolist()
    assert sorted(seen) == list(range(9))


def test_strong_as_weak_draws_the_strong_places_with_the_weak_view(rgb, split):
    """MixMatch's second weak view: the ``use_strong`` views come from the weak pipeline."""
    weak = lambda x, rng: np.full_like(x, 7)  # noqa: E731
    strong = lambda x, rng: np.full_like(x, 200)  # noqa: E731
    b = _stream(rgb, split, augment="pil", weak_view=weak, strong_view=strong).batch(0)
    assert int(b.u_strong.max()) == 200
    b = _stream(rgb, split, augment="pil", weak_view=weak, strong_view=strong,
                strong_as_weak=True).batch(0)  # fmt: skip
    assert int(b.u_strong.max()) == 7 and b.u_strong.shape == b.u_weak.shape
