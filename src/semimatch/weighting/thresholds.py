"""The threshold members of the weighting family: lambda(p) = lambda_max * 1[confidence passes].

FixMatch (fixed tau), FlexMatch (class-wise curriculum thresholds), FreeMatch (self-adaptive
thresholds, plus its fairness loss), AdaMatch (threshold relative to the labeled batch) and Dash
(threshold on the per-sample loss, decayed over training).  Reference:
``shared/docs/reference.md``, "The threshold family, as the USB code (semilearn 0.3.2) computes
it"; each docstring says where the authors' code and the paper text differ.

All follow the step's order *update, then weigh*: ``update(probs, ...)`` first, then
``module(probs)``.  Every running statistic is that of the **global** batch under torchrun.
Notation: ``q = max_c p``, ``c = argmax_c p``.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.distributed import all_gather_cat, all_reduce_sums
from semimatch.weighting.base import (
    check_lambda_max,
    check_momentum,
    check_num_classes,
    check_probs,
    check_tau,
    sharpen,
)

__all__ = [
    "FixedThreshold",
    "FlexMatchThreshold",
    "FreeMatchThreshold",
    "freematch_fairness_loss",
    "AdaMatchThreshold",
    "DashThreshold",
]


def _positive_int(value: int, name: str) -> int:
    try:
        out = operator.index(value)
    except TypeError:
        out = 0
    if out < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return out


class FixedThreshold(nn.Module):
    """FixMatch's step: ``w = lambda_max * 1[max_c p >= tau]`` (reference, FixMatch weight)."""

    def __init__(self, tau: float = 0.95, lambda_max: float = 1.0) -> None:
        super().__init__()
        self.tau = check_tau(tau)
        self.lambda_max = check_lambda_max(lambda_max)

    def update(self, probs: torch.Tensor) -> None:
        """A fixed threshold has no running statistics."""
        check_probs(probs)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        return (probs.max(dim=1).values >= self.tau).to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {"type": "fixed", "tau": self.tau, "lambda_max": self.lambda_max}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lambda_max={self.lambda_max}"


class FlexMatchThreshold(nn.Module):
    """FlexMatch's curriculum pseudo-labelling (Zhang et al., NeurIPS 2021).

    ``w = lambda_max * 1[q >= T(c)]`` with the class-wise threshold ``T(c) = M(beta(c)) * tau``,
    ``M(x) = x / (2 - x)`` (the paper's convex mapping) and the learning effect
    ``beta(c) = sigma(c) / max(max_k sigma(k), N - sum_k sigma(k))`` (threshold
    warm-up: the unused count is in the normaliser; ``warmup=False``: ``max_k sigma(k)`` only,
    the normalised learning effect).  ``sigma(c)`` counts the unlabeled samples whose memory
    ``selected_label`` holds c.

    Memory (buffer ``selected_label``, one entry per unlabeled sample, -1 = never selected):
    each update writes ``selected_label[i] = c_i`` for the batch rows with ``q_i >= tau``.
    **The stream must pass the dataset indices of the unlabeled batch**:
    ``update(probs, indices)`` with ``indices[i]`` in ``[0, num_unlabeled)`` the index of row i.

    Order (USB's): ``update`` first sets ``beta`` from the memory as it stands (i.e. after the
    previous batch), then writes this batch into the memory; ``module(probs)`` uses that
    ``beta``.  So the first batch sees ``beta = 0`` (threshold 0, every sample kept), as in USB.

    Paper vs code: the paper defines ``sigma_t(c)`` over the model's *current* predictions on
    all unlabeled data; the code (and this module) approximates it with the last confident
    prediction of each sample, which is never reset.  Comparisons are USB's ``>=``.  USB skips
    the beta update while one bucket holds all N samples (only all -1 in practice); here beta
    is computed every time (identical but for the case where all N samples are selected as one
    class).  Under torchrun USB keeps one memory per process; here the (index, class) pairs of
    the global batch are all-gathered and every rank holds the same memory.  When an index
    occurs twice in the global batch, the later row (in rank order, then row order) wins,
    deterministically.
    """

    selected_label: torch.Tensor
    beta: torch.Tensor
    #: The step must pass each unlabeled row's pool index (``SSLAlgorithm.sample_indices``).
    sample_indices = True

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int,
        tau: float = 0.95,
        warmup: bool = True,
        lambda_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.num_unlabeled = _positive_int(num_unlabeled, "num_unlabeled")
        self.tau = check_tau(tau)
        self.warmup = bool(warmup)
        self.lambda_max = check_lambda_max(lambda_max)
        self.register_buffer("selected_label", torch.full((num_unlabeled,), -1, dtype=torch.long))
        self.register_buffer("beta", torch.zeros(self.num_classes))

    def learning_effect(self) -> torch.Tensor:
        """``beta(c)`` from the memory as it stands (with or without the warm-up)."""
        bucket = self.selected_label + 1  # 0: never selected, 1 + c: class c
        counts = torch.zeros(self.num_classes + 1, dtype=torch.float64, device=bucket.device)
        counts.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
        sigma = counts[1:]
        denom = counts.max() if self.warmup else sigma.max()
        return (sigma / denom.clamp(min=1.0)).to(self.beta.dtype)

    def thresholds(self) -> torch.Tensor:
        """Class-wise thresholds ``T(c) = tau * beta(c) / (2 - beta(c))`` the weights use."""
        return self.tau * (self.beta / (2.0 - self.beta))  # USB's order of operations

    @torch.no_grad()
    def update(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Refresh ``beta`` from the memory, then record this batch's confident predictions."""
        check_probs(probs, self.num_classes)
        if indices is None:
            raise ValueError(
                "FlexMatchThreshold.update needs indices: the dataset index of each unlabeled "
                "row (the unlabeled stream must carry them)"
            )
        if indices.dim() != 1 or indices.shape[0] != probs.shape[0]:
            raise ValueError(
                f"indices must have shape ({probs.shape[0]},) (one per row); "
                f"got {tuple(indices.shape)}"
            )
        if indices.is_floating_point() or indices.dtype == torch.bool:
            raise ValueError(f"indices must be an integer tensor; got {indices.dtype}")
        if indices.device != probs.device:
            raise ValueError(
                f"indices are on {indices.device} but probs on {probs.device}; move them together"
            )
        if indices.device.type == "cpu" and indices.numel():
            lo, hi = int(indices.min()), int(indices.max())
            if lo < 0 or hi >= self.num_unlabeled:
                raise ValueError(
                    f"indices must lie in [0, {self.num_unlabeled}) (num_unlabeled); "
                    f"got [{lo}, {hi}]"
                )
        self.beta.copy_(self.learning_effect())
        q, cls = probs.max(dim=1)
        label = torch.where(q >= self.tau, cls, torch.full_like(cls, -1))
        pairs = all_gather_cat(torch.stack([indices.long(), label.long()], dim=1))
        index, label = pairs[:, 0], pairs[:, 1]
        # The last selected row of each index wins; unselected rows write to a dummy slot N.
        n = self.num_unlabeled
        slot = torch.where(label >= 0, index, torch.full_like(index, n))
        order = torch.arange(slot.shape[0], device=slot.device)
        winner = torch.full((n + 1,), -1, dtype=torch.long, device=slot.device)
        winner.scatter_reduce_(0, slot, order, reduce="amax")
        winner = winner[:n]
        new = label[winner.clamp(min=0)] if label.numel() else winner
        self.selected_label.copy_(torch.where(winner >= 0, new, self.selected_label))

    def forward(self, probs: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        """``lambda_max * 1[q >= T(argmax p)]``; ``indices`` is accepted and not needed."""
        check_probs(probs, self.num_classes)
        q, cls = probs.float().max(dim=1)
        return ((q >= self.thresholds()[cls]).to(probs.dtype)) * self.lambda_max

    def describe(self) -> dict:
        unused = int((self.selected_label < 0).sum())
        return {
            "type": "flexmatch",
            "tau": self.tau,
            "thresholds": self.thresholds().tolist(),
            "unused": unused,
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, num_unlabeled={self.num_unlabeled}, "
            f"tau={self.tau}, warmup={self.warmup}"
        )


class FreeMatchThreshold(nn.Module):
    """FreeMatch's self-adaptive thresholds (Wang et al., ICLR 2023): SAT.

    Per update, from the global batch: ``tau_t = m tau_{t-1} + (1-m) mean(q)`` (the
    0.8-quantile of q with ``use_quantile``, a USB option, default off; ``clip`` clips tau_t to
    at most 0.95, another USB option), ``p_t = m p_{t-1} + (1-m) mean_rows(p)`` and the
    histogram ``h_t = m h_{t-1} + (1-m) hist(c) / n`` used by the fairness loss; all start at
    ``1/C``.  Weight: ``lambda_max * 1[q >= tau_t * MaxNorm(p_t)(c)]``, after the update.

    The code (USB, TorchSSL) and the paper agree on these equations; the mask uses ``>=``.
    ``fairness_loss`` gives the paper's self-adaptive fairness term with this module's state.
    """

    time_p: torch.Tensor
    p_model: torch.Tensor
    label_hist: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        momentum: float = 0.999,
        use_quantile: bool = False,
        clip: bool = False,
        lambda_max: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.momentum = check_momentum(momentum)
        self.use_quantile = bool(use_quantile)
        self.clip = bool(clip)
        self.lambda_max = check_lambda_max(lambda_max)
        uniform = 1.0 / self.num_classes
        self.register_buffer("time_p", torch.tensor(uniform))
        self.register_buffer("p_model", torch.full((self.num_classes,), uniform))
        self.register_buffer("label_hist", torch.full((self.num_classes,), uniform))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        check_probs(probs, self.num_classes)
        p = probs.float()
        q, cls = p.max(dim=1)
        # float32 like ``p``, whatever torch's default dtype: index_add_ needs one dtype.
        count = torch.tensor([float(p.shape[0])], dtype=p.dtype, device=p.device)
        hist = torch.zeros(self.num_classes, dtype=p.dtype, device=p.device)
        hist.index_add_(0, cls, torch.ones_like(q))
        total, hist, q_sum, count = all_reduce_sums(p.sum(dim=0), hist, q.sum().reshape(1), count)
        n = count.clamp(min=1.0)
        if self.use_quantile:
            q_all = all_gather_cat(q)
            level = torch.quantile(q_all, 0.8) if q_all.numel() else self.time_p
        else:
            level = (q_sum / n).squeeze(0)
        m = self.momentum
        seen = (count > 0).squeeze(0)
        time_p = m * self.time_p + (1 - m) * level
        if self.clip:
            time_p = time_p.clamp(0.0, 0.95)
        self.time_p.copy_(torch.where(seen, time_p, self.time_p))
        self.p_model.copy_(torch.where(seen, m * self.p_model + (1 - m) * total / n, self.p_model))
        self.label_hist.copy_(
            torch.where(seen, m * self.label_hist + (1 - m) * hist / n, self.label_hist)
        )

    def thresholds(self) -> torch.Tensor:
        """Class-wise thresholds ``tau_t * p_t(c) / max_k p_t(k)``."""
        return self.time_p * (self.p_model / self.p_model.max())  # USB's order of operations

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs, self.num_classes)
        q, cls = probs.float().max(dim=1)
        return (q >= self.thresholds()[cls]).to(probs.dtype) * self.lambda_max

    def fairness_loss(self, logits_strong: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``freematch_fairness_loss`` with this module's (already updated) ``p_t`` and ``h_t``."""
        return freematch_fairness_loss(logits_strong, mask, self.p_model, self.label_hist)

    def describe(self) -> dict:
        return {
            "type": "freematch",
            "tau": float(self.time_p),
            "thresholds": self.thresholds().tolist(),
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, momentum={self.momentum}, "
            f"use_quantile={self.use_quantile}, clip={self.clip}"
        )


def _inverse_or_zero(x: torch.Tensor) -> torch.Tensor:
    """``1/x`` with ``1/0 := 0`` (USB's replace-inf-by-zero)."""
    return torch.where(x > 0, 1.0 / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))


def freematch_fairness_loss(
    logits_strong: torch.Tensor,
    mask: torch.Tensor,
    p_model: torch.Tensor,
    label_hist: torch.Tensor,
) -> torch.Tensor:
    """FreeMatch's self-adaptive fairness term ``L_f`` (SAF), in USB's form.

    Over the rows kept by ``mask`` (``mask > 0``) of the *strong* view, ``P = softmax(logits)``:
    ``h_s = hist(argmax P) / n`` and ``pbar = mean(P)``; with SumNorm(v) = v / sum(v) and
    ``1/0 := 0``:

        a = SumNorm(p_model / label_hist),   b = SumNorm(pbar / h_s),
        L_f = sum_k a_k * log(b_k + 1e-12)

    (``= -H(a, b)``, the paper's sign; the step adds ``lambda_f * L_f``, USB's
    ``ent_loss_ratio``, 0.001 on CIFAR-10-40).  The gradient flows through ``pbar`` only
    (``h_s``, ``a`` and the scalers are constants).  Returns 0 when no row is kept.  Under
    torchrun it is computed from the rank's own rows, as in USB (DDP averages the gradients).
    The paper writes ``pbar`` and ``h_s`` with a 1/(mu B) normaliser; SumNorm cancels it.
    """
    if logits_strong.dim() != 2 or mask.shape != logits_strong.shape[:1]:
        raise ValueError(
            f"logits_strong must be (N, C) and mask (N,); got {tuple(logits_strong.shape)} and "
            f"{tuple(mask.shape)}"
        )
    num_classes = logits_strong.shape[1]
    dtype = torch.float64 if logits_strong.dtype == torch.float64 else torch.float32
    keep = (mask.detach() > 0).to(dtype)
    prob = torch.softmax(logits_strong.to(dtype), dim=1)
    n = keep.sum()
    safe_n = n.clamp(min=1.0)
    onehot = F.one_hot(prob.detach().argmax(dim=1), num_classes).to(dtype)
    hist_s = (onehot * keep[:, None]).sum(dim=0) / safe_n
    mean_prob = (prob * keep[:, None]).sum(dim=0) / safe_n
    a = p_model.to(dtype) * _inverse_or_zero(label_hist.to(dtype))
    a = a / a.sum().clamp(min=1e-30)
    b = mean_prob * _inverse_or_zero(hist_s)
    b = b / b.sum().clamp(min=1e-30)
    loss = (a * torch.log(b + 1e-12)).sum()
    return torch.where(n > 0, loss, torch.zeros_like(loss))


class AdaMatchThreshold(nn.Module):
    """AdaMatch's relative confidence threshold (Berthelot et al., ICLR 2022).

    ``w = lambda_max * 1[q >= tau * mean_i max_c p_lb(i)]``: tau times the mean confidence of
    the weak **labeled** batch.  **The step must pass the labeled probabilities**:
    ``update(probs, probs_lb=softmax(logits_lb))``; the threshold is kept in the buffer
    ``threshold`` (starts at tau; an empty global labeled batch keeps it).

    Paper vs code (the paper as recalled, its text not re-read here): the paper takes the
    labeled confidences from its random logit interpolation and uses tau = 0.9; USB uses the
    labeled logits of the joint forward and tau = 0.95 (and the per-process labeled batch
    under DDP; here the global one).  AdaMatch weighs and
    pseudo-labels the **aligned** unlabeled probabilities (``semimatch.alignment.
    DistributionAlignment``), unlike SoftMatch.
    """

    threshold: torch.Tensor

    def __init__(self, tau: float = 0.95, lambda_max: float = 1.0) -> None:
        super().__init__()
        self.tau = check_tau(tau)
        self.lambda_max = check_lambda_max(lambda_max)
        self.register_buffer("threshold", torch.tensor(self.tau))

    @torch.no_grad()
    def update(self, probs: torch.Tensor, probs_lb: torch.Tensor | None = None) -> None:
        check_probs(probs)
        if probs_lb is None:
            raise ValueError(
                "AdaMatchThreshold.update needs probs_lb: softmax of the weak labeled logits"
            )
        check_probs(probs_lb, probs.shape[1], name="probs_lb")
        conf = probs_lb.float().max(dim=1).values
        count = torch.tensor([float(conf.shape[0])], dtype=conf.dtype, device=conf.device)
        total, count = all_reduce_sums(conf.sum().reshape(1), count)
        new = total / count.clamp(min=1.0) * self.tau
        self.threshold.copy_(torch.where(count > 0, new, self.threshold).squeeze(0))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        q = probs.float().max(dim=1).values
        return (q >= self.threshold).to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {
            "type": "adamatch",
            "tau": self.tau,
            "threshold": float(self.threshold),
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return f"tau={self.tau}, lambda_max={self.lambda_max}"


class DashThreshold(nn.Module):
    """Dash's dynamic threshold on the per-sample loss (Xu et al., ICML 2021).

    ``w = lambda_max * 1[loss(p) <= rho_t]`` with ``rho_t = max(C * gamma^(-k) * rho_hat,
    rho_min)`` and ``k = floor(t / period)`` the number of decays so far (t = 0, 1, ... counts
    the updates after the warm-up; USB: ``period`` = 10 epochs = 10 * 1024 iterations; the
    paper writes ``rho_t = C gamma^(-(t-1)) rho_hat`` with t = 1, 2, ... the stage).  The loss
    of row i is that of its weak-view target on the weak view itself, a function of p:

    - while ``rho_t > rho_min``: soft target ``s = sharpen(p, T)`` and
      ``loss = -sum_k s_k log p_k`` (= CE(softmax(z/T), z) for p = softmax(z));
    - once ``rho_t`` reaches ``rho_min``: hard target, ``loss = -log max_c p``.

    ``target(probs)`` returns the matching target distribution for the unlabeled loss.
    ``rho_hat`` must be set once after a supervised warm-up (``set_rho_init``, or the
    constructor).  USB uses the loss on its evaluation set after ``num_wu_iter`` = 2048
    supervised iterations; the paper (as recalled) the loss on the labeled training data,
    which is what a run without test-set leakage should pass.
    ``rho_min`` and the soft-to-hard switch at ``rho_min`` follow USB's code.
    """

    rho_init: torch.Tensor
    num_updates: torch.Tensor

    def __init__(
        self,
        rho_init: float | None = None,
        gamma: float = 1.27,
        C: float = 1.0001,  # noqa: N803 (the paper's name)
        rho_min: float = 0.05,
        period: int = 10 * 1024,
        temperature: float = 0.5,
        lambda_max: float = 1.0,
    ) -> None:
        super().__init__()
        if not gamma > 1:
            raise ValueError(f"gamma must be > 1; got {gamma}")
        if not C > 0:
            raise ValueError(f"C must be > 0; got {C}")
        if not rho_min >= 0:
            raise ValueError(f"rho_min must be >= 0; got {rho_min}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.gamma, self.C, self.rho_min = float(gamma), float(C), float(rho_min)
        self.period = _positive_int(period, "period")
        self.temperature = float(temperature)
        self.lambda_max = check_lambda_max(lambda_max)
        self.register_buffer("rho_init", torch.tensor(float("nan"), dtype=torch.float64))
        self.register_buffer("num_updates", torch.tensor(0, dtype=torch.long))
        if rho_init is not None:
            self.set_rho_init(rho_init)

    @torch.no_grad()
    def set_rho_init(self, rho_init: float | torch.Tensor) -> None:
        """Set ``rho_hat`` (after the supervised warm-up); must be finite and > 0.

        A tensor on an accelerator is copied without reading it (no host synchronisation), so
        unchecked; a number or a CPU tensor is checked.
        """
        if isinstance(rho_init, torch.Tensor) and rho_init.device.type != "cpu":
            if rho_init.numel() != 1:
                raise ValueError(f"rho_init must be a scalar; got shape {tuple(rho_init.shape)}")
            self.rho_init.copy_(rho_init.detach().reshape(()).to(self.rho_init.dtype))
            return
        value = float(rho_init)
        if not (value > 0 and value < float("inf")):
            raise ValueError(f"rho_init must be a finite loss > 0; got {rho_init}")
        self.rho_init.fill_(value)

    def rho(self) -> torch.Tensor:
        """The current ``rho_t`` (float64 scalar tensor)."""
        k = (self.num_updates - 1).clamp(min=0) // self.period
        decay = torch.pow(torch.tensor(self.gamma, dtype=torch.float64), -k.double())
        return (self.C * decay * self.rho_init.double()).clamp(min=self.rho_min)

    def hard(self) -> torch.Tensor:
        """True once ``rho_t`` has reached ``rho_min`` (hard pseudo-labels from then on)."""
        return self.rho() <= self.rho_min

    def sample_loss(self, probs: torch.Tensor) -> torch.Tensor:
        """Per-row loss of the weak-view target on the weak view (see the class docstring)."""
        p = probs.double()
        soft = -torch.special.xlogy(sharpen(p, self.temperature), p).sum(dim=1)
        hard = -torch.log(p.max(dim=1).values)
        return torch.where(self.hard(), hard, soft)

    def target(self, probs: torch.Tensor) -> torch.Tensor:
        """(N, C) targets of the unlabeled loss: ``sharpen(p, T)``, one-hot once hard."""
        check_probs(probs)
        onehot = F.one_hot(probs.argmax(dim=1), probs.shape[1]).to(probs.dtype)
        return torch.where(self.hard(), onehot, sharpen(probs, self.temperature))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Count the step (the schedule is a function of the number of updates)."""
        check_probs(probs)
        self.num_updates.add_(1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        check_probs(probs)
        if self.rho_init.device.type == "cpu" and torch.isnan(self.rho_init):
            raise RuntimeError(
                "DashThreshold has no rho_init yet: call set_rho_init(loss) after the "
                "supervised warm-up"
            )
        keep = self.sample_loss(probs) <= self.rho()
        return keep.to(probs.dtype) * self.lambda_max

    def describe(self) -> dict:
        return {
            "type": "dash",
            "rho": float(self.rho()),
            "hard": bool(self.hard()),
            "temperature": self.temperature,
            "lambda_max": self.lambda_max,
        }

    def extra_repr(self) -> str:
        return (
            f"gamma={self.gamma}, C={self.C}, rho_min={self.rho_min}, period={self.period}, "
            f"temperature={self.temperature}"
        )
