"""FreeMatch (Wang et al., ICLR 2023): self-adaptive class-wise thresholds and the self-adaptive
fairness loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.distributed import all_gather_cat, all_reduce_sums
from semimatch.methods.blocks import (
    check_lambda_max,
    check_momentum,
    check_num_classes,
    check_probs,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.flexmatch import per_class_lambda
from semimatch.methods.registry import BudgetDefault, MethodPresets, register_method

__all__ = ["FreeMatchThreshold", "freematch", "freematch_fairness_loss"]


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


def _stat_momentum(iterations: int) -> float:
    from semimatch.config import budget_momentum  # config reads this registry when imported

    return budget_momentum(0.999, iterations)


#: The EMA statistics' momentum for a budget of K iterations (shared with SoftMatch, AdaMatch).
STAT_MOMENTUM = BudgetDefault(
    "stat_momentum",
    _stat_momentum,
    "budget of {K} iterations: min(0.999, max(0.9, 1 - 20/K)); paper 0.999",
    "derived from the iteration budget K, min(0.999, max(0.9, 1 - 20/K))",
)
#: USB's classic-CV config (the same in its CIFAR-10-250/4000, CIFAR-100 and STL-10 files; SVHN
#: clips the threshold); its NLP configs keep ent_loss_ratio 0.001.
PRESETS = MethodPresets(
    {
        "algorithm": "freematch",
        "stat_momentum": 0.999,  # ema_p
        "lambda_e": 0.001,  # ent_loss_ratio
        "use_quantile": False,
        "clip_thresh": False,
        "lambda_u": 1.0,
    },
    source="usb",
    settings={"svhn-40": {"clip_thresh": True}, "svhn-250": {"clip_thresh": True}},
    nlp=True,
    nlp_values={"lambda_e": 0.001},
)


@register_method(
    formulas={"freematch": (("thresholds",), per_class_lambda)},
    budget=(STAT_MOMENTUM,),
    presets=PRESETS,
)
def freematch(
    num_classes: int,
    *,
    stat_momentum: float = 0.999,
    lambda_e: float = 0.001,
    use_quantile: bool = False,
    clip_thresh: bool = False,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Self-adaptive class-wise thresholds + the self-adaptive fairness loss (USB-code defaults).

    Args:
        num_classes: number of classes.
        stat_momentum: EMA momentum of the global threshold, p_model and the label histogram
            (USB ema_p 0.999).
        lambda_e: weight of the self-adaptive fairness loss (USB ent_loss_ratio; CIFAR-10-40
            0.001).
        use_quantile: the 0.8-quantile of the batch confidence instead of its mean (USB option).
        clip_thresh: clip the global threshold to at most 0.95 (USB option).
        lambda_u: unlabeled loss weight.
    """
    check_momentum(stat_momentum, "stat_momentum")
    if not lambda_e >= 0:
        raise ValueError(f"lambda_e must be >= 0; got {lambda_e}")
    weighting = FreeMatchThreshold(
        num_classes, momentum=stat_momentum, use_quantile=use_quantile, clip=clip_thresh
    )
    return SSLAlgorithm(
        weighting,
        lambda_u=lambda_u,
        name="freematch",
        extra_loss=weighting.fairness_loss,
        extra_loss_weight=lambda_e,
    )
