"""Text views: what each strong view does to a text, measured over many seeded draws (counts
with wide statistical margins: nothing depends on floating-point rounding), and their seeding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semimatch.data.text import TextSample
from semimatch.data.text_views import (
    STRONG_TEXT_VIEWS,
    OriginalText,
    Precomputed,
    SpanCutoff,
    TextViews,
    TfIdfReplace,
    WordDeletion,
    WordSwap,
    text_views,
)


def _sample(words: list[list[int]], augs: tuple = ()) -> TextSample:
    """A text whose words have the given token ids."""
    ids = np.array([t for w in words for t in w], dtype=np.int32)
    starts = np.cumsum([0] + [len(w) for w in words[:-1]]).astype(np.int32)
    return TextSample(ids, starts if words else np.zeros(0, np.int32), augs)


def _rng(i: int) -> np.random.Generator:
    return np.random.default_rng([7, 1, 2, i])  # as the stream seeds (seed, stream, view, g)


def _words_of(out: np.ndarray, width: int) -> list[tuple[int, ...]]:
    return [tuple(out[i : i + width].tolist()) for i in range(0, len(out), width)]


def test_weak_view_is_the_original():
    s = _sample([[5, 6], [7]])
    assert OriginalText()(s, _rng(0)) is s.ids


def test_deletion_removes_whole_words_at_the_rate_p():
    words = [[2 * i, 2 * i + 1] for i in range(100)]  # two-token words
    s, view = _sample(words), WordDeletion(0.2)
    deleted, draws = 0, 400
    for i in range(draws):
        out = view(s, _rng(i))
        kept = _words_of(out, 2)
        assert all(w[1] == w[0] + 1 and w[0] % 2 == 0 for w in kept)  # words stay whole
        assert kept == sorted(kept)  # order kept
        deleted += 100 - len(kept)
    n = 100 * draws
    assert abs(deleted - 0.2 * n) < 5 * math.sqrt(n * 0.2 * 0.8)  # 5 sigma
    one = _sample([[9]])
    assert all(WordDeletion(0.99)(one, _rng(i)).tolist() == [9] for i in range(20))


def test_swap_makes_the_stated_number_of_swaps():
    view = WordSwap(0.1)
    assert [view.swaps(n) for n in (0, 1, 2, 3, 50, 55)] == [0, 0, 1, 1, 5, 6]
    words = [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(50)]
    s = _sample(words)
    moved = []
    for i in range(300):
        out = _words_of(view(s, _rng(i)), 3)
        assert sorted(out) == [tuple(w) for w in words]  # a permutation of whole words
        changed = sum(a != tuple(b) for a, b in zip(out, words))
        assert 0 <= changed <= 2 * 5 and changed != 1
        moved.append(changed)
    assert np.mean(moved) > 6  # five swaps rarely undo each other
    two = _sample([[1], [2]])
    assert all(view(two, _rng(i)).tolist() == [2, 1] for i in range(10))


def test_cutoff_removes_one_contiguous_span_with_a_uniform_start():
    view = SpanCutoff(0.1)
    assert [view.span(n) for n in (0, 1, 2, 10, 15, 100)] == [0, 0, 1, 1, 2, 10]
    ids = list(range(100))
    s = _sample([[t] for t in ids])
    starts = []
    for i in range(2000):
        out = view(s, _rng(i)).tolist()
        assert len(out) == 90
        start = next((j for j in range(90) if out[j] != j), 90)
        assert out == ids[:start] + ids[start + 10 :]
        starts.append(start)
    counts = np.bincount(starts, minlength=91)
    assert counts.sum() == 2000 and len(counts) == 91
    # uniform over 91 starts: mean 45 (sd of the mean 26.3 / sqrt(2000) = 0.59)
    assert abs(np.mean(starts) - 45) < 3 and counts.min() > 0


def _corpus() -> list[TextSample]:
    # word 1 ("the") is in every text, words 100+ are each in one text only
    return [_sample([[1], [100 + d], [1], [2 + d % 3]]) for d in range(30)]


def test_tfidf_statistics_follow_uda():
    view = TfIdfReplace(0.5).fit(_corpus())
    key = lambda t: np.array([t], np.int32).tobytes()  # noqa: E731
    assert view.num_docs == 30
    assert view.idf[key(1)] == 0.0 and math.isclose(view.idf[key(100)], math.log(30))
    assert math.isclose(view.idf[key(2)], math.log(3))
    # replacements are drawn with probability (max S - S(w)) / Z, S(w) = sum over texts of
    # tf * idf (UDA's corpus score): "the" (S = 0) most, words 2..4 (S = 10 / 4 * log 3) never
    probs = np.diff(np.r_[0.0, view.cdf])
    by_word = {int(w[0]): p for w, p in zip(view.vocab, probs)}
    s_max, s_rare = 10 / 4 * math.log(3), math.log(30) / 4
    z = 31 * s_max - 30 * s_rare
    assert math.isclose(by_word[1], s_max / z) and math.isclose(by_word[100], (s_max - s_rare) / z)
    assert by_word[2] == by_word[3] == by_word[4] == 0.0
    # replacement probabilities in a text: p (C - s_i) / mean(C - s); mean = p
    keys = [key(1), key(100), key(1), key(2)]
    p = view.replace_probs(keys)
    assert math.isclose(p.mean(), 0.5) and p[1] == 0.0 and p[0] == p[2] > p[3] > 0


def test_tfidf_replaces_low_tfidf_words_more_often():
    corpus = _corpus()
    view = TfIdfReplace(0.3).fit(corpus)
    s = corpus[0]  # words: the(1) 100 the(1) 2
    hits = np.zeros(4)
    draws = 3000
    sampled_the = sampled = 0
    for i in range(draws):
        out = view(s, _rng(i)).tolist()
        assert len(out) == 4  # one-token words replaced by one-token words
        changed = [a != b for a, b in zip(out, s.ids.tolist())]
        hits += changed
        for j in np.flatnonzero(changed):
            sampled += 1
            sampled_the += out[j] == 1
    expected = view.replace_probs([w.tobytes() for w in [s.ids[i : i + 1] for i in range(4)]])
    # a replacement may draw the same word back, so hits <= expected; "the" draws itself ~often
    assert hits[1] == 0  # the keyword of this text is never replaced
    assert hits[0] > hits[3] and hits[2] > hits[3]
    assert abs(hits[3] / draws - expected[3]) < 0.05
    assert sampled > 0 and sampled_the / sampled < 0.5  # "the" itself never counts as changed


def test_tfidf_needs_fitting_and_handles_unseen_words():
    with pytest.raises(ValueError, match="fit it on the unlabeled texts first"):
        TfIdfReplace()(_sample([[1]]), _rng(0))
    view = TfIdfReplace(0.3).fit(_corpus())
    out = view(_sample([[999], [1]]), _rng(0))  # 999 never seen: as rare as can be
    assert len(out) == 2
    equal = view.replace_probs([b"x", b"y"])
    assert equal.tolist() == [0.3, 0.3]  # all scores equal: p each


def test_precomputed_picks_each_augmentation_uniformly():
    a0, a1 = np.array([1, 2], np.int32), np.array([3], np.int32)
    s = _sample([[9], [8]], augs=(a0, a1))
    view = Precomputed(fallback=None)
    picks = [view(s, _rng(i)).tolist() for i in range(2000)]
    n0 = sum(p == [1, 2] for p in picks)
    assert n0 + sum(p == [3] for p in picks) == 2000
    assert abs(n0 - 1000) < 5 * math.sqrt(500)
    bare = _sample([[9], [8]])
    assert view(bare, _rng(0)) is bare.ids
    fallback = Precomputed(SpanCutoff(0.5))
    assert len(fallback(bare, _rng(0))) == 1


def test_views_are_seeded_by_their_rng():
    s = _sample([[t] for t in range(40)])
    tfidf = TfIdfReplace(0.3).fit(_corpus() + [s])
    for view in (WordDeletion(0.3), WordSwap(0.2), SpanCutoff(0.2), tfidf):
        a = view(s, np.random.default_rng([1, 1, 2, 5]))
        assert np.array_equal(a, view(s, np.random.default_rng([1, 1, 2, 5])))  # same seed
        others = [view(s, np.random.default_rng([1, 1, 2, g])) for g in range(6, 12)]
        assert any(not np.array_equal(o, a) for o in others)  # other positions differ


def test_text_views_by_name():
    assert set(STRONG_TEXT_VIEWS) == {"tfidf", "deletion", "swap", "cutoff", "precomputed"}
    assert isinstance(text_views().strong, TfIdfReplace)
    assert isinstance(text_views(precomputed=True).strong, Precomputed)
    custom = text_views(lambda s, rng: s.ids[:1])
    assert isinstance(custom, TextViews) and not custom.batched
    assert text_views("swap").fit([]) is not None
    with pytest.raises(ValueError, match="expected a view name or a callable"):
        text_views(3)
    with pytest.raises(ValueError, match=r"p: expected a number in \[0, 1\]"):
        WordDeletion(1.5)
