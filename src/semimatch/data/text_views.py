"""Text views: weak = the original text (USB); strong = a precomputed augmentation or a seeded
perturbation of the token ids that needs no model and no network.

Every view is a per-sample callable ``(TextSample, rng) -> content ids`` (int32, without the
special tokens, which batching adds), run in the loader's workers with the image views' seeding:
``rng = numpy.random.default_rng([seed, stream, view, position])``, so a batch is a pure function
of (seed, iteration) for any number of workers or processes (``semimatch.data.loaders``).
A *word* is a tokenizer word (the ids of one pre-tokenized word; every token for tokenizers
without word ids). The strong views:

* ``precomputed`` - one of the text's own augmentations (USB's back-translations ``aug_0``/
  ``aug_1``), chosen uniformly per sample and step (USB draws one of the two at random); texts
  without any use the fallback view (:data:`DEFAULT_STRONG`).
* ``tfidf`` - UDA's TF-IDF word replacement (Xie et al. 2020, appendix; google-research/uda
  ``TfIdfWordRep``), fitted on the unlabeled pool: ``idf(w) = log(N / df(w))``; in a text of
  ``n`` words, ``s_i = tf_i * idf(w_i)`` (``tf_i`` = count / n), ``C = max s``, and word ``i``
  is replaced with probability ``p (C - s_i) / mean(C - s)`` (UDA: ``p`` times the normalised
  ``C - s_i`` times ``n``; all ``s`` equal: ``p``), so uninformative words go first; a
  replacement is drawn from the pool's words with probability ``∝ max S - S(w)``,
  ``S(w) = Σ_docs tf · idf`` (UDA's corpus score), i.e. other uninformative words.
  Words never seen in the pool count as seen once.
* ``deletion`` - each word deleted with probability ``p`` (EDA's random deletion; one random
  word survives when all would go).
* ``swap`` - ``max(1, round(ratio * n))`` swaps of two distinct random words (EDA's random
  swap; none for one word).
* ``cutoff`` - a contiguous span of ``max(1, round(ratio * n_tokens))`` tokens removed, its
  start uniform (Shen et al. 2020's span cutoff, applied to the ids).

Default (:data:`DEFAULT_STRONG`): ``precomputed`` when the data brings augmentations (USB),
else ``tfidf`` with ``p = 0.3``: UDA's model-free alternative to back-translation, which
keeps the keywords that carry the class.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from semimatch.data.text import TextSample
from semimatch.data.views import SampleViews

__all__ = [
    "DEFAULT_STRONG",
    "STRONG_TEXT_VIEWS",
    "OriginalText",
    "Precomputed",
    "SpanCutoff",
    "TextViews",
    "TfIdfReplace",
    "WordDeletion",
    "WordSwap",
    "text_views",
]

#: The strong text view used when the data brings no precomputed augmentations.
DEFAULT_STRONG = "tfidf"


def _words(sample: TextSample) -> list[np.ndarray]:
    """The sample's words as slices of its ids."""
    ids, starts = sample.ids, sample.word_starts
    bounds = np.r_[starts, len(ids)]
    return [ids[bounds[j] : bounds[j + 1]] for j in range(len(starts))]


def _join(words: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(words).astype(np.int32) if len(words) else np.zeros(0, np.int32)


def _check_prob(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{what}: expected a number in [0, 1], got {value!r}")
    return float(value)


class OriginalText:
    """The weak view: the text as it is (USB)."""

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        return sample.ids

    def __repr__(self) -> str:
        return "OriginalText()"


class WordDeletion:
    """Delete each word with probability ``p`` (module docstring)."""

    def __init__(self, p: float = 0.1) -> None:
        self.p = _check_prob(p, "p")

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        words = _words(sample)
        if not words:
            return sample.ids
        keep = rng.random(len(words)) >= self.p
        if not keep.any():
            keep[rng.integers(len(words))] = True
        return _join([w for w, k in zip(words, keep) if k])

    def __repr__(self) -> str:
        return f"WordDeletion(p={self.p})"


class WordSwap:
    """``max(1, round(ratio * n))`` swaps of two distinct random words (module docstring)."""

    def __init__(self, ratio: float = 0.1) -> None:
        self.ratio = _check_prob(ratio, "ratio")

    def swaps(self, n_words: int) -> int:
        """Swaps made in a text of ``n_words`` words."""
        return 0 if n_words < 2 else max(1, round(self.ratio * n_words))

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        words = _words(sample)
        for _ in range(self.swaps(len(words))):
            i, j = rng.choice(len(words), 2, replace=False)
            words[i], words[j] = words[j], words[i]
        return _join(words)

    def __repr__(self) -> str:
        return f"WordSwap(ratio={self.ratio})"


class SpanCutoff:
    """Remove a contiguous span of ``max(1, round(ratio * n))`` of the ``n`` tokens (at most
    ``n - 1``), its start uniform (module docstring)."""

    def __init__(self, ratio: float = 0.1) -> None:
        self.ratio = _check_prob(ratio, "ratio")

    def span(self, n_tokens: int) -> int:
        """Tokens removed from a text of ``n_tokens`` tokens."""
        return 0 if n_tokens < 2 else min(n_tokens - 1, max(1, round(self.ratio * n_tokens)))

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        ids = sample.ids
        length = self.span(len(ids))
        if not length:
            return ids
        start = int(rng.integers(0, len(ids) - length + 1))
        return np.concatenate([ids[:start], ids[start + length :]])

    def __repr__(self) -> str:
        return f"SpanCutoff(ratio={self.ratio})"


class TfIdfReplace:
    """UDA's TF-IDF word replacement with magnitude ``p`` (module docstring); :meth:`fit` on
    the unlabeled pool first."""

    def __init__(self, p: float = 0.3) -> None:
        self.p = _check_prob(p, "p")
        self.idf: dict[bytes, float] = {}
        self.vocab: list[np.ndarray] = []
        self.cdf = np.zeros(0)
        self.num_docs = 0

    def fit(self, pool: Sequence[TextSample]) -> TfIdfReplace:
        """IDF and the replacement distribution of the texts in ``pool`` (UDA's
        ``get_data_stats``)."""
        df: Counter[bytes] = Counter()
        score: dict[bytes, float] = {}
        docs = []
        first: dict[bytes, np.ndarray] = {}
        for s in pool:
            words = _words(s)
            keys = [w.tobytes() for w in words]
            for k, w in zip(keys, words):
                first.setdefault(k, w)
            df.update(set(keys))
            docs.append(keys)
        n = len(docs)
        if n == 0:
            raise ValueError("TfIdfReplace.fit: the unlabeled pool holds no texts")
        self.num_docs = n
        self.idf = {k: math.log(n / c) for k, c in df.items()}
        for keys in docs:
            for k, c in Counter(keys).items():
                score[k] = score.get(k, 0.0) + c / len(keys) * self.idf[k]
        order = sorted(score, key=lambda k: (-score[k], k))  # UDA sorts by decreasing score
        s = np.array([score[k] for k in order], dtype=np.float64)
        weight = s.max() - s if s.size else s
        if s.size and weight.sum() <= 0:
            weight = np.ones_like(s)
        self.vocab = [first[k] for k in order]
        self.cdf = np.cumsum(weight) / weight.sum() if s.size else s
        return self

    def replace_probs(self, keys: Sequence[bytes]) -> np.ndarray:
        """Each word's replacement probability in a text of words ``keys``."""
        n = len(keys)
        unseen = math.log(max(self.num_docs, 1))
        count = Counter(keys)
        s = np.array([count[k] / n * self.idf.get(k, unseen) for k in keys])
        gap = s.max() - s
        if gap.sum() <= 0:
            return np.full(n, self.p)
        return self.p * gap / gap.mean()

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        if not self.vocab:
            raise ValueError("TfIdfReplace: fit it on the unlabeled texts first (TrainStream does)")
        words = _words(sample)
        if not words:
            return sample.ids
        probs = self.replace_probs([w.tobytes() for w in words])
        hit = np.flatnonzero(rng.random(len(words)) < probs)
        picks = np.searchsorted(self.cdf, rng.random(len(hit)), side="right")
        for i, v in zip(hit, np.minimum(picks, len(self.vocab) - 1)):
            words[i] = self.vocab[int(v)]
        return _join(words)

    def __repr__(self) -> str:
        return f"TfIdfReplace(p={self.p})"


class Precomputed:
    """One of the sample's precomputed augmentations, uniformly; ``fallback`` (or the original
    text when ``None``) for samples without any."""

    def __init__(self, fallback: Callable[[TextSample, np.random.Generator], np.ndarray] | None):
        self.fallback = fallback

    def fit(self, pool: Sequence[TextSample]) -> Precomputed:
        if hasattr(self.fallback, "fit"):
            self.fallback.fit(pool)
        return self

    def __call__(self, sample: TextSample, rng: np.random.Generator) -> np.ndarray:
        if sample.augs:
            return sample.augs[int(rng.integers(len(sample.augs)))]
        return sample.ids if self.fallback is None else self.fallback(sample, rng)

    def __repr__(self) -> str:
        return f"Precomputed(fallback={self.fallback!r})"


#: Strong text views by name, with their default parameters.
STRONG_TEXT_VIEWS: dict[str, Callable[[], Any]] = {
    "tfidf": lambda: TfIdfReplace(0.3),
    "deletion": lambda: WordDeletion(0.1),
    "swap": lambda: WordSwap(0.1),
    "cutoff": lambda: SpanCutoff(0.1),
    "precomputed": lambda: Precomputed(STRONG_TEXT_VIEWS[DEFAULT_STRONG]()),
}


class TextViews(SampleViews):
    """Per-sample text views; :meth:`fit` fits a strong view that learns from the unlabeled
    pool (UDA's TF-IDF) before the stream starts."""

    def fit(self, pool: Sequence[Any]) -> TextViews:
        """Views fitted on ``pool``: a copy when a view learns (so streams over different
        splits of one dataset do not share statistics), else ``self``."""
        if not any(hasattr(v, "fit") for v in (self.weak, self.strong)):
            return self
        weak, strong = copy.deepcopy(self.weak), copy.deepcopy(self.strong)
        for view in (weak, strong):
            if hasattr(view, "fit"):
                view.fit(pool)
        return TextViews(weak, strong)


def text_views(strong: str | Any = None, precomputed: bool = False) -> TextViews:
    """Weak = :class:`OriginalText`; strong = the view named ``strong`` (a key of
    :data:`STRONG_TEXT_VIEWS`, or a callable ``(TextSample, rng) -> ids``), by default
    ``precomputed`` when the data has augmentations, else :data:`DEFAULT_STRONG`."""
    if strong is None:
        strong = "precomputed" if precomputed else DEFAULT_STRONG
    if isinstance(strong, str):
        if strong not in STRONG_TEXT_VIEWS:
            raise ValueError(
                f"strong text view {strong!r}: must be one of {', '.join(STRONG_TEXT_VIEWS)}"
            )
        strong = STRONG_TEXT_VIEWS[strong]()
    elif not callable(strong):
        raise ValueError(f"strong: expected a view name or a callable, got {strong!r}")
    return TextViews(OriginalText(), strong)
