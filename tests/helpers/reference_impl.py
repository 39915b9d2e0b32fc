"""Independent oracle of the reference equations (/work/shared/docs/reference.md).

Written from the specification only, in plain numpy float64 with explicit loops, so that the
tests compare the product against the equations rather than against itself.  Nothing from
``semimatch`` is imported here on purpose.

Conventions the reference leaves open, fixed here and checked by the tests:
- the unbiased variance of a single value is undefined, so a group (the whole batch, or one
  predicted class) holding one sample updates its mean and keeps its variance; an empty group
  keeps both;
- per-class statistics are indexed by the argmax of the probabilities the weighting function
  receives (the class whose probability is ``q_max``);
- Uniform Alignment guards its divisions with ``eps``: ``p * u / (p_model + eps)`` and a row sum
  of at least ``eps``.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "softmax",
    "cross_entropy",
    "fixed_threshold_weights",
    "SoftMatchOracle",
    "UniformAlignmentOracle",
    "AlgorithmOracle",
    "step_loss",
    "pseudo_label_metrics",
    "random_probs",
    "prob_batches",
    "softmatch_shape_weight",
    "FlexMatchOracle",
    "FreeMatchOracle",
    "freematch_fairness_oracle",
    "adamatch_weights",
    "DistributionAlignmentOracle",
    "sharpen_oracle",
    "DashOracle",
    "rampup_oracle",
    "squared_consistency_oracle",
    "kl_oracle",
    "entropy_oracle",
    "batchnorm_train_oracle",
    "vat_linear_oracle",
]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-sample ``H(y, softmax(logits)) = -log softmax(logits)[y]``."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty(z.shape[0])
    for i in range(z.shape[0]):
        m = z[i].max()
        log_norm = m + math.log(sum(math.exp(v - m) for v in z[i]))
        out[i] = log_norm - z[i, int(targets[i])]
    return out


def fixed_threshold_weights(
    probs: np.ndarray, tau: float = 0.95, lambda_max: float = 1.0
) -> np.ndarray:
    """FixMatch weight: ``w_i = lambda_max * 1[max_c p_ic >= tau]``."""
    probs = np.asarray(probs, dtype=np.float64)
    return np.array([lambda_max if max(row) >= tau else 0.0 for row in probs])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _unbiased_var(values: list[float]) -> float:
    mu = _mean(values)
    return sum((v - mu) ** 2 for v in values) / (len(values) - 1)


class SoftMatchOracle:
    """SoftMatch steps 2-3: EMA of mean/unbiased variance of ``q_max``, truncated Gaussian.

    ``mu_t = m mu_{t-1} + (1-m) mean(q)``, ``var_t = m var_{t-1} + (1-m) var(q)``, with
    ``mu_0 = 1/C`` and ``var_0 = 1``; ``w = lambda_max`` if ``q >= mu_t`` else
    ``lambda_max * exp(-(q - mu_t)^2 / (2 var_t / n_sigma^2))``.
    """

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        n_sigma: float = 2.0,
        per_class: bool = False,
        lambda_max: float = 1.0,
    ) -> None:
        self.num_classes = num_classes
        self.momentum = momentum
        self.n_sigma = n_sigma
        self.per_class = per_class
        self.lambda_max = lambda_max
        groups = num_classes if per_class else 1
        self.mean = [1.0 / num_classes] * groups
        self.var = [1.0] * groups

    def _group(self, row: np.ndarray) -> int:
        return int(np.argmax(row)) if self.per_class else 0

    def update(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        buckets: dict[int, list[float]] = {}
        for row in probs:
            buckets.setdefault(self._group(row), []).append(float(max(row)))
        m = self.momentum
        for g, values in buckets.items():
            self.mean[g] = m * self.mean[g] + (1 - m) * _mean(values)
            if len(values) > 1:
                self.var[g] = m * self.var[g] + (1 - m) * _unbiased_var(values)

    def weights(self, probs: np.ndarray, group_by: np.ndarray | None = None) -> np.ndarray:
        """Weights of ``probs``; per-class groups from the rows of ``group_by`` (default probs)."""
        probs = np.asarray(probs, dtype=np.float64)
        group_by = probs if group_by is None else np.asarray(group_by, dtype=np.float64)
        out = np.empty(probs.shape[0])
        for i, row in enumerate(probs):
            g = self._group(group_by[i])
            q, mu, var = float(max(row)), self.mean[g], self.var[g]
            if q >= mu:
                out[i] = self.lambda_max
            else:
                out[i] = self.lambda_max * math.exp(-((q - mu) ** 2) / (2 * var / self.n_sigma**2))
        return out


class UniformAlignmentOracle:
    """SoftMatch step 1: ``p_ua = normalize(p * (1/C) / p_model)``.

    ``p_model`` is the first batch's mean, then ``p_model = m p_model + (1-m) mean(p)``; with
    ``init="uniform"`` (TorchSSL) it starts at ``1/C`` and every batch is an EMA step.
    """

    def __init__(
        self, num_classes: int, momentum: float = 0.999, eps: float = 1e-6, init: str = "batch"
    ) -> None:
        self.num_classes = num_classes
        self.momentum = momentum
        self.eps = eps
        self.p_model: np.ndarray | None = (
            np.full(num_classes, 1.0 / num_classes) if init == "uniform" else None
        )

    def update(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[0] == 0:
            return
        batch_mean = np.array(
            [
                sum(probs[i, c] for i in range(probs.shape[0])) / probs.shape[0]
                for c in range(self.num_classes)
            ]
        )
        if self.p_model is None:
            self.p_model = batch_mean
        else:
            self.p_model = self.momentum * self.p_model + (1 - self.momentum) * batch_mean

    def align(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        p_model = (
            np.full(self.num_classes, 1.0 / self.num_classes)
            if self.p_model is None
            else self.p_model
        )
        u = 1.0 / self.num_classes
        out = np.empty_like(probs)
        for i, row in enumerate(probs):
            scaled = [row[c] * u / (p_model[c] + self.eps) for c in range(self.num_classes)]
            total = max(sum(scaled), self.eps)
            out[i] = [s / total for s in scaled]
        return out


class AlgorithmOracle:
    """SoftMatch's per-step order: align (update, then apply) -> update statistics -> weight.

    ``weighting`` is a ``SoftMatchOracle`` or ``("fixed", tau)``; pseudo-labels come from the
    raw probabilities.
    """

    def __init__(
        self,
        weighting: SoftMatchOracle | tuple[str, float],
        alignment: UniformAlignmentOracle | None = None,
        stats_on: str = "aligned",
    ) -> None:
        self.weighting = weighting
        self.alignment = alignment
        self.stats_on = stats_on

    def weigh(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(weights, pseudo_labels, confidence seen by the weighting)``."""
        probs = np.asarray(probs, dtype=np.float64)
        aligned = probs
        if self.alignment is not None:
            self.alignment.update(probs)
            aligned = self.alignment.align(probs)
        if isinstance(self.weighting, tuple):
            weights = fixed_threshold_weights(aligned, self.weighting[1])
        else:
            # One class per row for statistics and lookup: that of the probabilities the
            # statistics are computed on.
            stats = aligned if self.stats_on == "aligned" else probs
            self.weighting.update(stats)
            weights = self.weighting.weights(aligned, group_by=stats)
        pseudo = np.array([int(np.argmax(row)) for row in probs])
        return weights, pseudo, aligned.max(axis=1)


def step_loss(
    logits_lb: np.ndarray,
    y_lb: np.ndarray,
    logits_student: np.ndarray,
    pseudo: np.ndarray,
    weights: np.ndarray,
    lambda_u: float = 1.0,
) -> tuple[float, float, float]:
    """``L = mean_B H(y, f(x)) + lambda_u (1/(mu B)) sum_i w_i H(y_hat_i, f(strong(u_i)))``.

    Returns ``(loss, sup_loss, unsup_loss)``; the unlabeled mean runs over **all** samples.
    """
    sup = float(np.mean(cross_entropy(logits_lb, y_lb)))
    ce_u = cross_entropy(logits_student, pseudo)
    unsup = sum(float(w) * float(h) for w, h in zip(weights, ce_u, strict=True)) / len(ce_u)
    return sup + lambda_u * unsup, sup, unsup


def pseudo_label_metrics(
    weights: np.ndarray, pseudo: np.ndarray, y_true: np.ndarray, lambda_max: float = 1.0
) -> dict[str, float | None]:
    """Quantity ``f = mean(w)/lambda_max``; quality ``g = sum w 1[y_hat = y] / sum w`` and plain
    pseudo-label accuracy, both over samples whose label is known (``y_true >= 0``)."""
    n = len(weights)
    quantity = sum(float(w) for w in weights) / (n * lambda_max) if n else None
    w_known = sum(float(w) for w, y in zip(weights, y_true, strict=True) if y >= 0)
    w_correct = sum(
        float(w) for w, p, y in zip(weights, pseudo, y_true, strict=True) if y >= 0 and p == y
    )
    known = sum(1 for y in y_true if y >= 0)
    correct = sum(1 for p, y in zip(pseudo, y_true, strict=True) if y >= 0 and p == y)
    return {
        "quantity": quantity,
        "quality": w_correct / w_known if w_known > 0 else None,
        "pl_acc": correct / known if known else None,
    }


# --- Random inputs (test data, not equations) ----------------------------------------------------


def random_probs(
    rng: np.random.Generator,
    n: int,
    num_classes: int,
    scale: float = 3.0,
    bias: float = 0.0,
    zero_frac: float = 0.0,
    onehot_frac: float = 0.0,
) -> np.ndarray:
    """A float32 batch (n, C) of valid probability rows.

    ``scale`` sharpens the rows, ``bias`` skews the predicted-class distribution (imbalance, so
    that alignment matters), ``zero_frac`` sets that fraction of non-maximal entries to exact
    zero and ``onehot_frac`` turns that fraction of rows into exact one-hot vectors.
    """
    logits = rng.normal(size=(n, num_classes)) * scale
    logits += rng.normal(size=num_classes) * bias
    probs = softmax(logits)
    if zero_frac > 0 and n:
        drop = rng.random(probs.shape) < zero_frac
        drop[np.arange(n), probs.argmax(axis=1)] = False
        probs[drop] = 0.0
    if onehot_frac > 0 and n:
        rows = rng.random(n) < onehot_frac
        hot = rng.integers(0, num_classes, size=n)
        probs[rows] = 0.0
        probs[rows, hot[rows]] = 1.0
    probs /= probs.sum(axis=1, keepdims=True)
    return probs.astype(np.float32)


@st.composite
def prob_batches(draw, num_classes: int | None = None, steps: int | None = None, min_n: int = 0):
    """Hypothesis strategy: ``(C, [batches])`` of random probability rows (see ``random_probs``),
    mixing smooth and sharp rows, class skew, exact zeros and one-hot rows."""
    c = num_classes if num_classes is not None else draw(st.integers(2, 12))
    k = steps if steps is not None else draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(k):
        out.append(
            random_probs(
                rng,
                draw(st.integers(min_n, 48)),
                c,
                scale=draw(st.floats(0.1, 8.0)),
                bias=draw(st.floats(0.0, 3.0)),
                zero_frac=draw(st.sampled_from([0.0, 0.0, 0.5])),
                onehot_frac=draw(st.sampled_from([0.0, 0.0, 0.3])),
            )
        )
    return c, out


# --- SoftMatch ablation shapes and the threshold family (reference, "The threshold family") ----


def softmatch_shape_weight(
    q: float, mu: float, var: float, n_sigma: float, shape: str, lambda_max: float = 1.0
) -> float:
    """lambda(q) of a SoftMatch shape: ``lambda_max`` at or above mu; below it, with
    ``s^2 = var / n_sigma^2`` and ``d = mu - q``: gaussian ``exp(-d^2 / (2 s^2))``, quadratic
    ``max(0, 1 - d^2 / (2 s^2))``, linear ``max(0, 1 - d / sqrt(2 s^2))``."""
    if q >= mu:
        return lambda_max
    two_s2 = 2 * var / n_sigma**2
    d = mu - q
    if shape == "gaussian":
        return lambda_max * math.exp(-(d**2) / two_s2)
    if shape == "quadratic":
        return lambda_max * max(0.0, 1 - d**2 / two_s2)
    if shape == "linear":
        return lambda_max * max(0.0, 1 - d / math.sqrt(two_s2))
    raise ValueError(shape)


def _argmax(row) -> int:
    best = 0
    for k in range(1, len(row)):
        if row[k] > row[best]:
            best = k
    return best


class FlexMatchOracle:
    """FlexMatch, in USB's order: weigh with the class-wise values of the previous step, then
    write the confident rows into the memory, then recompute beta.

    ``beta(k) = count(sel == k) / max(count over the classes and the -1 bucket)`` with warm-up;
    without it the max runs over the classes only (beta stays 0 while nothing is selected).
    ``T(k) = tau * beta(k) / (2 - beta(k))``; ``w = lambda_max * 1[q >= T(argmax)]``.
    """

    def __init__(self, num_classes, num_unlabeled, tau=0.95, warmup=True, lambda_max=1.0):
        self.c, self.n, self.tau, self.warmup = num_classes, num_unlabeled, tau, warmup
        self.lambda_max = lambda_max
        self.sel = [-1] * num_unlabeled
        self.beta = [0.0] * num_classes

    def threshold(self, k: int) -> float:
        return self.tau * self.beta[k] / (2.0 - self.beta[k])

    def step(self, probs: np.ndarray, indices: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        w = []
        for row in probs:
            k = _argmax(row)
            w.append(self.lambda_max if max(row) >= self.threshold(k) else 0.0)
        for row, i in zip(probs, indices, strict=True):
            if max(row) >= self.tau:
                self.sel[int(i)] = _argmax(row)
        counts = {b: 0 for b in range(-1, self.c)}
        for s in self.sel:
            counts[s] += 1
        buckets = range(-1, self.c) if self.warmup else range(self.c)  # -1: unused samples
        denom = max(counts[b] for b in buckets)
        self.beta = [counts[k] / denom if denom > 0 else 0.0 for k in range(self.c)]
        return np.array(w)


def _quantile(values: list[float], level: float) -> float:
    """Linear interpolation between order statistics (numpy's and torch's default)."""
    v = sorted(values)
    pos = level * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


class FreeMatchOracle:
    """FreeMatch: update ``tau_t`` (mean or 0.8-quantile of q, optional clip at 0.95), ``p_t``
    and the histogram ``h_t`` (all from 1/C, momentum m), then weigh
    ``1[q >= tau_t * p_t(c) / max p_t]``."""

    def __init__(self, num_classes, momentum=0.999, use_quantile=False, clip=False):
        self.c, self.m, self.use_quantile, self.clip = num_classes, momentum, use_quantile, clip
        self.time_p = 1.0 / num_classes
        self.p_model = [1.0 / num_classes] * num_classes
        self.label_hist = [1.0 / num_classes] * num_classes

    def update(self, probs: np.ndarray) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        n = probs.shape[0]
        if n == 0:
            return
        qs = [float(max(row)) for row in probs]
        level = _quantile(qs, 0.8) if self.use_quantile else sum(qs) / n
        m = self.m
        self.time_p = m * self.time_p + (1 - m) * level
        if self.clip:
            self.time_p = min(max(self.time_p, 0.0), 0.95)
        for k in range(self.c):
            mean_k = sum(probs[i, k] for i in range(n)) / n
            hist_k = sum(1 for row in probs if _argmax(row) == k) / n
            self.p_model[k] = m * self.p_model[k] + (1 - m) * mean_k
            self.label_hist[k] = m * self.label_hist[k] + (1 - m) * hist_k

    def weights(self, probs: np.ndarray, lambda_max: float = 1.0) -> np.ndarray:
        top = max(self.p_model)
        out = []
        for row in np.asarray(probs, dtype=np.float64):
            k = _argmax(row)
            out.append(lambda_max if max(row) >= self.time_p * self.p_model[k] / top else 0.0)
        return np.array(out)


def freematch_fairness_oracle(logits_strong, mask, p_model, label_hist) -> float:
    """``sum_k a_k log(b_k + 1e-12)``, ``a = SumNorm(p_model / label_hist)``,
    ``b = SumNorm(mean(P_s) / hist(argmax P_s))`` over the masked strong rows (1/0 := 0);
    0 when no row is masked."""
    rows = [
        softmax(np.asarray(z, dtype=np.float64)[None])[0]
        for z, m in zip(logits_strong, mask)
        if m > 0
    ]
    if not rows:
        return 0.0
    c = len(p_model)
    n = len(rows)
    hist = [sum(1 for r in rows if _argmax(r) == k) / n for k in range(c)]
    mean = [sum(r[k] for r in rows) / n for k in range(c)]
    a = [p_model[k] * (1.0 / label_hist[k] if label_hist[k] > 0 else 0.0) for k in range(c)]
    b = [mean[k] * (1.0 / hist[k] if hist[k] > 0 else 0.0) for k in range(c)]
    sa, sb = sum(a), sum(b)
    return sum((a[k] / sa) * math.log(b[k] / sb + 1e-12) for k in range(c))


def adamatch_weights(probs, probs_lb, tau, lambda_max=1.0) -> np.ndarray:
    """``lambda_max * 1[max p >= tau * mean(max p_lb)]``."""
    lb = np.asarray(probs_lb, dtype=np.float64)
    cut = tau * sum(float(max(r)) for r in lb) / len(lb)
    return np.array(
        [lambda_max if max(r) >= cut else 0.0 for r in np.asarray(probs, dtype=np.float64)]
    )


class DistributionAlignmentOracle:
    """AdaMatch DA (USB): ``p_model`` = first unlabeled batch mean then EMA, ``p_target`` =
    1/C then EMA of the labeled batch mean; ``normalize(p (p_target + eps) / (p_model + eps))``."""

    def __init__(self, num_classes, momentum=0.999, target="model", eps=1e-6):
        self.c, self.m, self.target, self.eps = num_classes, momentum, target, eps
        self.p_model = None
        self.p_target = [1.0 / num_classes] * num_classes

    def update(self, probs, probs_lb=None) -> None:
        probs = np.asarray(probs, dtype=np.float64)
        m = self.m
        if probs.shape[0]:
            mean = [sum(r[k] for r in probs) / probs.shape[0] for k in range(self.c)]
            if self.p_model is None:
                self.p_model = mean
            else:
                self.p_model = [m * a + (1 - m) * b for a, b in zip(self.p_model, mean)]
        if self.target == "model" and len(probs_lb):
            lb = np.asarray(probs_lb, dtype=np.float64)
            mean = [sum(r[k] for r in lb) / lb.shape[0] for k in range(self.c)]
            self.p_target = [m * a + (1 - m) * b for a, b in zip(self.p_target, mean)]

    def align(self, probs) -> np.ndarray:
        p_model = self.p_model or [1.0 / self.c] * self.c
        out = []
        for row in np.asarray(probs, dtype=np.float64):
            s = [
                row[k] * (self.p_target[k] + self.eps) / (p_model[k] + self.eps)
                for k in range(self.c)
            ]
            total = sum(s)
            out.append([v / total for v in s])
        return np.array(out).reshape(-1, self.c)


def sharpen_oracle(probs, temperature) -> np.ndarray:
    """``p^(1/T) / sum_k p_k^(1/T)`` per row."""
    out = []
    for row in np.asarray(probs, dtype=np.float64):
        s = [v ** (1.0 / temperature) for v in row]
        total = sum(s)
        out.append([v / total for v in s])
    return np.array(out).reshape(-1, np.asarray(probs).shape[1])


class DashOracle:
    """Dash: ``rho_t = max(C gamma^-floor(t / period) rho_hat, rho_min)`` at the t-th update
    (t = 0, 1, ...); loss of row i = ``-sum_k s_k log p_k`` with ``s = sharpen(p, T)`` while
    ``rho_t > rho_min``, else ``-log max p``; ``w = 1[loss <= rho_t]``."""

    def __init__(self, rho_hat, gamma=1.27, C=1.0001, rho_min=0.05, period=10240, T=0.5):  # noqa: N803
        self.rho_hat, self.gamma, self.C = rho_hat, gamma, C
        self.rho_min, self.period, self.T = rho_min, period, T
        self.t = -1

    def update(self) -> None:
        self.t += 1

    def rho(self) -> float:
        k = max(self.t, 0) // self.period
        return max(self.C * self.gamma ** (-k) * self.rho_hat, self.rho_min)

    def losses(self, probs) -> np.ndarray:
        hard = self.rho() <= self.rho_min
        out = []
        for row, s in zip(np.asarray(probs, dtype=np.float64), sharpen_oracle(probs, self.T)):
            if hard:
                out.append(-math.log(max(row)))
            else:
                out.append(-sum(sk * math.log(pk) for sk, pk in zip(s, row) if sk > 0))
        return np.array(out)

    def weights(self, probs) -> np.ndarray:
        rho = self.rho()
        return np.array([1.0 if v <= rho else 0.0 for v in self.losses(probs)])


# --- the classic consistency baselines (Pi-Model, Mean Teacher, VAT) -----------------------------


def rampup_oracle(k: int, total: int, ratio: float, shape: str) -> float:
    """Laine & Aila (2017) / Tarvainen & Valpola (2017): ``exp(-5 (1 - t)^2)``; USB: ``t``;
    ``t = clip(k / (ratio * total), 0, 1)``; no ramp (1) when ``ratio == 0``."""
    if ratio == 0:
        return 1.0
    t = min(max(k / (ratio * total), 0.0), 1.0)
    return t if shape == "linear" else math.exp(-5.0 * (1.0 - t) ** 2)


def squared_consistency_oracle(student_logits, target_probs) -> float:
    """Pi-Model / Mean Teacher: ``(1/(N C)) sum_i sum_c (softmax(z_i)_c - t_ic)^2``."""
    z = np.asarray(student_logits, dtype=np.float64)
    t = np.asarray(target_probs, dtype=np.float64)
    n, c = z.shape
    total = 0.0
    for i in range(n):
        q = softmax(z[i : i + 1])[0]
        total += sum((q[k] - t[i, k]) ** 2 for k in range(c))
    return total / (n * c) if n else 0.0


def kl_oracle(p_logits, q_logits) -> float:
    """``mean_i KL(softmax(p_i) || softmax(q_i)) = mean_i sum_k p_k (log p_k - log q_k)``."""
    p, q = softmax(np.asarray(p_logits, np.float64)), softmax(np.asarray(q_logits, np.float64))
    rows = [sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(a, b)) for a, b in zip(p, q)]
    return float(np.mean(rows)) if rows else 0.0


def entropy_oracle(logits) -> float:
    """``mean_i -sum_k p_k log p_k``, ``p = softmax(logits_i)``."""
    p = softmax(np.asarray(logits, np.float64))
    rows = [-sum(pk * math.log(pk) for pk in row) for row in p]
    return float(np.mean(rows)) if rows else 0.0


def batchnorm_train_oracle(z, gamma, beta, eps: float) -> np.ndarray:
    """BatchNorm in train mode: ``gamma (z - mean_B) / sqrt(var_B + eps) + beta``, the biased
    batch variance."""
    z = np.asarray(z, dtype=np.float64)
    mean = z.mean(axis=0)
    var = ((z - mean) ** 2).mean(axis=0)
    return np.asarray(gamma) * (z - mean) / np.sqrt(var + eps) + np.asarray(beta)


def vat_linear_oracle(W, b, x, d, xi: float, eps: float) -> float:  # noqa: N803
    """VAT's LDS (Miyato et al. 2018, Eq. 7-13) for the linear model ``z = x W^T + b``, one
    power iteration: ``r = xi d / ||d||``; ``g = grad_r KL(p(x) || p(x + r))``, which for a
    linear model is ``W^T (softmax(z(x + r)) - p) / N`` per row (the KL averaged over rows);
    ``r_adv = eps g / ||g||``; LDS = mean KL(p(x) || p(x + r_adv)), norms per row."""
    W, b, x, d = (np.asarray(a, dtype=np.float64) for a in (W, b, x, d))  # noqa: N806
    n = x.shape[0]
    z = x @ W.T + b
    p = softmax(z)
    r = xi * d / np.linalg.norm(d, axis=1, keepdims=True)
    g = (softmax((x + r) @ W.T + b) - p) @ W / n
    r_adv = eps * g / np.linalg.norm(g, axis=1, keepdims=True)
    return kl_oracle(z, (x + r_adv) @ W.T + b)


# --- MixMatch (Berthelot et al. 2019, Algorithm 1 and Eqs. 2-5) ---------------------------------


def mixmatch_linear_oracle(W, b, x_lb, y_lb, views, lam, perm, T, lambda_u, ramp) -> float:  # noqa: N803
    """MixMatch's loss for the linear model ``z = x W^T + b``, with the MixUp draw given.

    ``q = Sharpen(mean_k softmax(z(u_k)), T)``; ``X = (x_lb, one_hot(y))``, ``U = ((u_k, q))_k``;
    ``W = cat(X, U)[perm]``; ``l' = lam``: ``X' = l' X + (1 - l') W[:B]``, ``U' = l' U + (1 -
    l') W[B:]``; ``L = mean_{X'} H(p, softmax z) + lambda_u ramp (1/(C |U'|)) sum ||q' -
    softmax z||^2``."""
    W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)  # noqa: N806
    c = W.shape[0]
    probs = [softmax(np.asarray(u, dtype=np.float64) @ W.T + b) for u in views]
    q = sharpen_oracle(sum(probs) / len(probs), T)
    onehot = np.eye(c)[np.asarray(y_lb)]
    x = np.concatenate([np.asarray(x_lb, dtype=np.float64), *map(np.asarray, views)])
    t = np.concatenate([onehot, *([q] * len(views))])
    x_mix, t_mix = lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]
    p = softmax(x_mix @ W.T + b)
    n = len(y_lb)
    sup = float(np.mean(-(t_mix[:n] * np.log(p[:n])).sum(axis=1)))
    unsup = float(np.mean((p[n:] - t_mix[n:]) ** 2))
    return sup + lambda_u * ramp * unsup


# --- CoMatch (Li, Xiong, Hoi 2021: memory-smoothed pseudo-labels, graph contrastive loss) -------


def comatch_mlp_oracle(params, x) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803
    """``(logits, features)`` of the model ``h = tanh(x W1^T + b1)``, ``logits = h W2^T + b2``
    (the features are the classifier's input)."""
    w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for a in params)
    h = np.tanh(np.asarray(x, dtype=np.float64) @ w1.T + b1)
    return h @ w2.T + b2, h


def comatch_embed_oracle(params, h) -> np.ndarray:
    """The projection ``z = g(h) / ||g(h)||``, ``g(h) = relu(h P1^T + c1) P2^T + c2``."""
    p1, c1, p2, c2 = (np.asarray(a, dtype=np.float64) for a in params)
    g = np.maximum(h @ p1.T + c1, 0.0) @ p2.T + c2
    return g / np.linalg.norm(g, axis=1, keepdims=True)


class CoMatchOracle:
    """CoMatch's loss step by step, with its own distribution-alignment window (the last
    ``da_len`` batch means) and memory bank (the last ``queue_batch`` steps' rows, zeros before).

    ``p = DA(softmax(weak))``; from iteration ``k > queue_batch`` (and ``k >= start``)
    ``q = alpha p + (1 - alpha) sum_k a_k p_k``, ``a = softmax(z_w . bank^T / T)``, else ``q = p``;
    ``L_cls = mean 1[max q >= tau] H(q, softmax(strong_0))``; ``W^q = q q^T`` with 1 on the
    diagonal, entries below ``contrast_tau`` cut, rows normalised; ``W^z_bj = exp(z0_b . z1_j /
    T)`` rows normalised; ``L_ctr = mean_b -sum_j W^q_bj log W^z_bj``; the bank then takes the
    weak embeddings with ``p`` (unlabeled) and the one-hot labels (labeled).  ``usb``: DA as
    ``p (1/C + 1e-6) / (sum(means) / da_len + 1e-6)`` and ``log(W^z + 1e-7)``.
    """

    def __init__(self, num_classes, *, tau, lambda_u, lambda_c, contrast_tau, T,  # noqa: N803
                 alpha, queue_batch, da_len, start=0, usb=False):  # fmt: skip
        self.c, self.tau, self.lambda_u, self.lambda_c = num_classes, tau, lambda_u, lambda_c
        self.contrast_tau, self.t, self.alpha = contrast_tau, T, alpha
        self.queue_batch, self.da_len, self.start, self.usb = queue_batch, da_len, start, usb
        self.means: list[np.ndarray] = []
        self.bank_z: np.ndarray | None = None
        self.bank_p: np.ndarray | None = None

    def align(self, p: np.ndarray) -> np.ndarray:
        self.means = (self.means + [p.mean(axis=0)])[-self.da_len :]
        if self.usb:
            p_model = np.sum(self.means, axis=0) / self.da_len
            a = p * (1.0 / self.c + 1e-6) / (p_model + 1e-6)
        else:
            a = p / np.mean(self.means, axis=0)
        return a / a.sum(axis=1, keepdims=True)

    def step(self, k, logits_lb, y_lb, logits_w, logits_s0, z_lb, z_w, z0, z1) -> dict:
        y_lb = np.asarray(y_lb)
        sup = float(np.mean(-np.log(softmax(logits_lb)[np.arange(len(y_lb)), y_lb])))
        p = self.align(softmax(logits_w))
        rows = len(z_w) + len(z_lb)
        if self.bank_z is None:
            self.bank_z = np.zeros((self.queue_batch * rows, z_w.shape[1]))
            self.bank_p = np.zeros((self.queue_batch * rows, self.c))
        q = p
        if k > self.queue_batch and k >= self.start:
            a = np.exp(z_w @ self.bank_z.T / self.t)
            a = a / a.sum(axis=1, keepdims=True)
            q = self.alpha * p + (1 - self.alpha) * a @ self.bank_p
        mask = (q.max(axis=1) >= self.tau).astype(np.float64)
        log_s = np.log(softmax(logits_s0))
        l_cls = float(np.mean(mask * -(q * log_s).sum(axis=1)))
        wq = q @ q.T
        for b in range(len(q)):
            wq[b, b] = 1.0
        wq = np.where(wq >= self.contrast_tau, wq, 0.0)
        wq = wq / wq.sum(axis=1, keepdims=True)
        wz = np.exp(z0 @ z1.T / self.t)
        wz = wz / wz.sum(axis=1, keepdims=True)
        log_wz = np.log(wz + 1e-7) if self.usb else np.log(wz)
        l_ctr = float(np.mean(-(wq * log_wz).sum(axis=1)))
        onehot = np.eye(self.c)[y_lb]
        self.bank_z = np.concatenate([self.bank_z, z_w, z_lb])[-len(self.bank_z) :]
        self.bank_p = np.concatenate([self.bank_p, p, onehot])[-len(self.bank_p) :]
        loss = sup + self.lambda_u * l_cls + self.lambda_c * l_ctr
        return dict(loss=loss, sup=sup, unsup=l_cls, contrast=l_ctr, mask=mask, q=q)


# --- ReMixMatch (Berthelot et al. 2020, Algorithm 1, Sections 3.2-3.3) ---------------------------


def remixmatch_rotate_oracle(img, turns: int) -> np.ndarray:
    """``img`` (C, S, S) turned ``turns`` quarter turns counter-clockwise (PIL's rotate)."""
    out = np.asarray(img, dtype=np.float64)
    for _ in range(int(turns)):
        out = np.stack([np.rot90(channel) for channel in out])
    return out


def remixmatch_mlp_oracle(
    params, x_lb, y_lb, u_weak, strong, lam, perm, turns, p_data, p_tilde, T,  # noqa: N803
    lambda_u, lambda_u1, lambda_rot, ramp,
) -> float:  # fmt: skip
    """ReMixMatch's loss for ``h = tanh(flat(x) W1^T + b1)``, ``z = h W2^T + b2`` (classes),
    ``g = h Wr^T + br`` (rotations), with the MixUp draw, the rotations and ``p~(y)`` given.

    ``q = Sharpen(Normalize(p(y|w) (p(y) + 1e-6) / (p~(y) + 1e-6)), T)``; ``X = (x, onehot y)``,
    ``U = (s_1, q), ..., (s_K, q), (w, q)``; ``Z = cat(X, U)``; ``Z' = lam Z + (1 - lam) Z[perm]``;
    ``L = mean_{X'} H + ramp (lambda_u mean_{U'} H + lambda_u1 mean H(q, z(s_1))) + lambda_rot
    mean CE(rho, g(rotate(s_1, rho)))``, ``H(t, z) = -sum t log softmax z``."""
    w1, b1, w2, b2, wr, br = (np.asarray(p, dtype=np.float64) for p in params)

    def feats(x):
        x = np.asarray(x, dtype=np.float64)
        return np.tanh(x.reshape(len(x), -1) @ w1.T + b1)

    def xent(targets, logits):
        return float(np.mean(-(targets * np.log(softmax(logits))).sum(axis=1)))

    c = w2.shape[0]
    p = softmax(feats(u_weak) @ w2.T + b2)
    ratio = (np.asarray(p_data, dtype=np.float64) + 1e-6) / (np.asarray(p_tilde) + 1e-6)
    aligned = p * ratio
    aligned = aligned / aligned.sum(axis=1, keepdims=True)
    q = sharpen_oracle(aligned, T)
    x = np.concatenate([np.asarray(v, dtype=np.float64) for v in (x_lb, *strong, u_weak)])
    t = np.concatenate([np.eye(c)[np.asarray(y_lb)], *([q] * (len(strong) + 1))])
    x_mix, t_mix = lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]
    z = feats(x_mix) @ w2.T + b2
    n = len(y_lb)
    sup, unsup = xent(t_mix[:n], z[:n]), xent(t_mix[n:], z[n:])
    u1 = xent(q, feats(strong[0]) @ w2.T + b2)
    rotated = np.stack([remixmatch_rotate_oracle(img, r) for img, r in zip(strong[0], turns)])
    rot = xent(np.eye(4)[np.asarray(turns)], feats(rotated) @ wr.T + br)
    return sup + ramp * (lambda_u * unsup + lambda_u1 * u1) + lambda_rot * rot


def remixmatch_marginal_oracle(batch_means, window: int, num_classes: int) -> np.ndarray:
    """``p~(y)`` before the next batch (the authors' code): the mean of the last ``window``
    batch means, the window starting as ``window`` uniform rows; normalised."""
    rows = [np.full(num_classes, 1.0 / num_classes)] * window + list(batch_means)
    mean = np.mean(rows[-window:], axis=0)
    return mean / mean.sum()


# --- SimMatch (Zheng et al. 2022, section 3: instance similarity, unfolding, aggregation) -------


class SimMatchOracle:
    """SimMatch's loss and its labeled memory bank, one labeled/unlabeled batch at a time.

    ``bank`` (D, K) of unit columns, ``labels`` (K,), ``seen`` (K,): the entries written so far
    (the others take no part in the similarities).  Per unlabeled row, with ``p`` the weak
    probabilities after the alignment ``p (1/C + eps) / (mean(queue) + eps)`` (normalised,
    USB's eps 1e-6; the queue of the last ``da_len`` batch means, zeros at first):
    ``q^w_j = exp(z^w.b_j/T) / sum_seen exp(z^w.b_k/T)``, ``q^s`` likewise with ``z^s``;
    unfolding ``q_hat_j = q^w_j p_{y_j} / sum_k q^w_k p_{y_k}``; aggregation
    ``q^agg_c = sum_{y_j = c} q^w_j``; ``p_hat = normalize(p q^agg)`` ("product") or
    ``alpha p + (1 - alpha) q^agg`` ("smoothing"); in the warm-up (or with no entry seen)
    ``p_hat = p`` and no instance loss.  ``L = CE(lb) + lambda_u mean_i 1[max p_hat >= tau]
    H(p_hat, softmax s) + lambda_in mean_i H(q_hat, q^s)``.  Then each labeled row (in order,
    a later duplicate overwriting) writes ``normalize(m b_j + (1 - m) z)`` with ``b_j`` the
    entry before the batch and its label.
    """

    def __init__(self, bank, num_classes, *, T, tau, lambda_u, lambda_in, da_len,
                 propagation, alpha, momentum, warmup) -> None:  # fmt: skip
        self.bank = np.array(bank, dtype=np.float64)
        k = self.bank.shape[1]
        self.labels = np.zeros(k, dtype=np.int64)
        self.seen = np.zeros(k, dtype=bool)
        self.queue = np.zeros((da_len, num_classes))
        self.ptr = 0
        self.c, self.T, self.tau = num_classes, T, tau
        self.lambda_u, self.lambda_in = lambda_u, lambda_in
        self.propagation, self.alpha, self.m, self.warmup = propagation, alpha, momentum, warmup

    def step(self, it, logits_lb, y_lb, logits_weak, logits_strong, z_lb, z_weak, z_strong,
             lb_idx) -> dict:  # fmt: skip
        f = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        logits_lb, logits_weak, logits_strong = f(logits_lb), f(logits_weak), f(logits_strong)
        z_lb, z_weak, z_strong = f(z_lb), f(z_weak), f(z_strong)
        sup = float(np.mean([-np.log(softmax(logits_lb)[i, y]) for i, y in enumerate(y_lb)]))
        probs = softmax(logits_weak)
        self.queue[self.ptr] = probs.mean(axis=0)
        self.ptr = (self.ptr + 1) % len(self.queue)
        p_all = probs * (1.0 / self.c + 1e-6) / (self.queue.mean(axis=0) + 1e-6)  # USB's eps
        p_all = p_all / p_all.sum(axis=1, keepdims=True)
        active = self.seen.any() and it >= self.warmup
        cols = np.flatnonzero(self.seen)
        unsup, inst, masks, p_hats = [], [], [], []
        for i in range(len(p_all)):
            p = p_all[i]
            p_hat, h_in = p, 0.0
            if active:
                sw = np.exp(z_weak[i] @ self.bank[:, cols] / self.T)
                qw = sw / sw.sum()
                ss = np.exp(z_strong[i] @ self.bank[:, cols] / self.T)
                qs = ss / ss.sum()
                labels = self.labels[cols]
                q_hat = qw * p[labels] / np.sum(qw * p[labels])
                q_agg = np.array([qw[labels == c].sum() for c in range(self.c)])
                if self.propagation == "product":
                    p_hat = p * q_agg / np.sum(p * q_agg)
                else:
                    p_hat = self.alpha * p + (1 - self.alpha) * q_agg
                h_in = float(-(q_hat * np.log(qs)).sum())
            mask = float(p_hat.max() >= self.tau)
            unsup.append(
                mask * float(-(p_hat * np.log(softmax(logits_strong[i : i + 1])[0])).sum())
            )
            inst.append(h_in)
            masks.append(mask)
            p_hats.append(p_hat)
        before = self.bank.copy()  # every row mixes with the bank before this batch (USB)
        for j, (idx, y) in enumerate(zip(np.asarray(lb_idx), np.asarray(y_lb))):
            new = self.m * before[:, idx] + (1 - self.m) * z_lb[j] if self.m > 0 else z_lb[j]
            self.bank[:, idx] = new / np.linalg.norm(new) if self.m > 0 else new
            self.labels[idx], self.seen[idx] = y, True
        u, l_in = float(np.mean(unsup)), float(np.mean(inst))
        loss = sup + self.lambda_u * u + self.lambda_in * l_in
        return {"loss": loss, "unsup": u, "in": l_in, "mask": np.array(masks),
                "p_hat": np.array(p_hats)}  # fmt: skip


# --- CRMatch (Fan et al., IJCV 2022: thresholded pseudo-labels, FeatDistLoss, rotation) ----------


def crmatch_tanh_oracle(params, x_lb, y_lb, u_weak, u_strong, tau, lambdas, rot_rows) -> float:
    """CRMatch's loss for the model ``h(x) = tanh(flat(x) W1^T + b1)``, ``z = h Wc^T + bc``,
    the projection ``g(h) = h Wd^T + bd`` and the rotation head
    ``rot(h) = relu(h R1^T + r1) R2^T + r2`` (``params`` holds these arrays by name).

    ``m_i = 1[max softmax z(weak u_i) >= tau]``, ``y_i = argmax``;
    ``L = mean_B H(y, z(x)) + l_u (1/N) sum_i m_i H(y_i, z(strong u_i))
    + l_fd (1/N) sum_i m_i max(0, cos(g h(strong u_i), g h(weak u_i)))
    + l_rot mean_{j < rot_rows, r in 0..3} H(r, rot h(rot90^r weak u_j))``, ``rot90`` turning
    the (H, W) plane counter-clockwise; ``lambdas = (l_u, l_fd, l_rot)``."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

    def feats(x):
        x = np.asarray(x, dtype=np.float64)
        return np.tanh(x.reshape(x.shape[0], -1) @ p["W1"].T + p["b1"])

    return _crmatch_oracle(p, feats, feats, x_lb, y_lb, u_weak, u_strong, tau, lambdas, rot_rows)


def crmatch_map_oracle(params, x_lb, y_lb, u_weak, u_strong, tau, lambdas, rot_rows) -> float:
    """``crmatch_tanh_oracle`` with a feature map: ``M(x)[d, i, j] = tanh(w1_d x[0, i, j] +
    b1_d)`` (a 1x1 convolution of one-channel 8 x 8 images), ``h(x) = mean_{i,j} M(x)``, and
    the projection ``g`` reading the flattened map ``M`` in (d, i, j) order (USB's WRN head)."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}

    def feature_map(x):
        x = np.asarray(x, dtype=np.float64)[:, 0]  # (N, H, W)
        w, b = p["W1"][:, 0, 0, 0], p["b1"]
        return np.tanh(w[None, :, None, None] * x[:, None] + b[None, :, None, None])

    def feats(x):
        return feature_map(x).mean(axis=(2, 3))

    def flat_map(x):
        m = feature_map(x)
        return m.reshape(m.shape[0], -1)

    return _crmatch_oracle(p, feats, flat_map, x_lb, y_lb, u_weak, u_strong, tau, lambdas, rot_rows)


def _crmatch_oracle(p, feats, g_input, x_lb, y_lb, u_weak, u_strong, tau, lambdas, rot_rows):
    """The loss of ``crmatch_tanh_oracle`` for features ``feats(x)`` and projection input
    ``g_input(x)``."""

    def logits(h):
        return h @ p["Wc"].T + p["bc"]

    lambda_u, lambda_fd, lambda_rot = lambdas
    sup = float(np.mean(cross_entropy(logits(feats(x_lb)), np.asarray(y_lb))))
    h_w, h_s = feats(u_weak), feats(u_strong)
    probs = softmax(logits(h_w))
    mask = (probs.max(axis=1) >= tau).astype(np.float64)
    pseudo = probs.argmax(axis=1)
    n = len(mask)
    unsup = float(np.sum(mask * cross_entropy(logits(h_s), pseudo)) / n)
    g_w, g_s = g_input(u_weak) @ p["Wd"].T + p["bd"], g_input(u_strong) @ p["Wd"].T + p["bd"]
    fd = 0.0
    for i in range(n):
        cos = float(g_s[i] @ g_w[i] / (np.linalg.norm(g_s[i]) * np.linalg.norm(g_w[i])))
        fd += mask[i] * max(0.0, cos)
    loss = sup + lambda_u * unsup + lambda_fd * fd / n
    if lambda_rot > 0:
        images = np.asarray(u_weak, dtype=np.float64)[:rot_rows]
        terms = []
        for r in range(4):
            h = feats(np.rot90(images, r, axes=(2, 3)))
            z = np.maximum(h @ p["R1"].T + p["r1"], 0.0) @ p["R2"].T + p["r2"]
            terms.extend(cross_entropy(z, np.full(len(images), r)))
        loss += lambda_rot * float(np.mean(terms))
    return loss
