"""ReMixMatch (Berthelot et al., ICLR 2020): distribution alignment, augmentation anchoring,
MixUp, the pre-mixup loss on the first strong view and rotation self-supervision.

    q_b = Sharpen(Normalize(p(y | w_b) * p(y) / p~(y)), T)           (anchor: the weak view)
    X = (x_b, onehot y_b),  U = ((s_{b,k}, q_b))_k=1..K  + ((w_b, q_b))
    W = cat(X, U)[perm],  X' = l' X + (1 - l') W[:B],  U' = l' U + (1 - l') W[B:]
    L = mean_{X'} H(p, f(x)) + r(k) (lambda_u mean_{U'} H(q, f(u)) + lambda_u1 mean_b H(q_b,
        f(s_{b,1}))) + lambda_rot mean_b H(rho_b, g(Rotate(s_{b,1}, 90 rho_b)))

(paper Algorithm 1, Sections 3.2-3.3; ``H`` the soft cross-entropy, ``l ~ Beta(alpha, alpha)``,
``l' = max(l, 1 - l)``, ``r(k)`` the linear ramp-up of both unlabeled terms over the first
``unsup_warmup`` of the budget, ``g`` a ``Linear(features, 4)`` rotation head on the backbone's
features (``methods.heads``), ``rho_b`` uniform in {0, 1, 2, 3}).  ``p(y)`` is the labeled
set's class distribution (``labeled_counts``, which training passes), ``p~(y)`` the running
estimate of the model's marginal on unlabeled data.

The method forwards the model itself (``needs.forward = False``), as USB 0.3.2
(``remixmatch.py``) does: the anchor's guess without gradient and with frozen BatchNorm
statistics, the first strong view (frozen), the mixed batch in chunks of the labeled batch size
(only the first chunk updates the running statistics, USB's replacement for the paper's
interleaving) and the rotated first strong view (frozen).  The MixUp draw (``mixmatch.mixup_draw``)
and the rotations come from generators seeded by (run seed, iteration, rank): a resumed run
draws what the uninterrupted one did.

Paper vs USB (defaults: the paper's; USB's variants are options, its values the presets):
``p~(y)`` is the mean of the last 128 batches' mean predictions, starting uniform, used before
the batch joins it (the authors' code, ``dbuf=128``; ``da_estimate="window"``) - USB keeps an
EMA (momentum 0.999) started at the first batch mean and updated before use
(``da_estimate="ema"``); K = 8 strong views (the paper's CIFAR/SVHN runs) - USB draws 2
(``strong_views``).  Both mix the anchor into ``U`` as the authors' code does, and take the
labeled batch's weak view.  The strong views are CTAugment's in the paper and in USB's dataset
code (``--strong-augment ctaugment``, the presets); RandAugment (``fixmatch``/``usb``) works too.
The rotations need square images: feature vectors and texts are refused (with
``lambda_rot = 0``, as MixMatch: texts refused, feature vectors mixed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.distributed import all_reduce_sums
from semimatch.methods.blocks import check_num_classes, check_positive_int, frozen_bn, sharpen
from semimatch.methods.classic import mean_rows, wide
from semimatch.methods.consistency import Needs, UnlabeledResult
from semimatch.methods.heads import heads_of, record_features
from semimatch.methods.mixmatch import MixMatch, mixup_draw, to_unit
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["ReMixMatch", "ReMixMatchAlignment", "remixmatch", "rotate_batch", "rotation_draw"]

_ROTATION_STREAM = 0x524F  # separates the rotation generator from MixUp's and the data's
_EPS = 1e-6  # the authors' code and USB: (p(y) + 1e-6) / (p~(y) + 1e-6)


def rotation_draw(n: int, seed: int, iteration: int, rank: int) -> torch.Tensor:
    """(n,) quarter turns in {0, 1, 2, 3}, uniform, reproducible from (seed, iteration, rank)."""
    rng = np.random.default_rng([seed, iteration, rank, _ROTATION_STREAM])
    return torch.from_numpy(rng.integers(0, 4, n))


def rotate_batch(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Row ``i`` of an ``(N, C, S, S)`` batch turned ``turns[i]`` times 90 degrees
    counter-clockwise (PIL's ``rotate(90 * turns)``, USB's dataset: square images lose no
    pixel)."""
    out = x.clone()
    for k in range(1, 4):
        rows = (turns == k).nonzero().squeeze(1).to(x.device)
        if rows.numel():
            out[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
    return out


class ReMixMatchAlignment(nn.Module):
    """ReMixMatch's distribution alignment ``Normalize(p * (p(y) + eps) / (p~(y) + eps))``.

    ``estimate="window"`` (the authors' code): ``p~`` is the mean of the last ``window``
    global batch means (a ring buffer starting at ``1/C``), read before this batch joins it.
    ``"ema"`` (USB's ``DistAlignEMAHook``): ``p~ <- m p~ + (1 - m) mean``, the first batch mean
    to start, updated before it is read.  ``p_data`` is ``p(y)``, the labeled class
    distribution.  Under torchrun the batch mean is the global batch's (USB gathers it).
    """

    p_data: torch.Tensor
    window: torch.Tensor
    position: torch.Tensor
    p_model: torch.Tensor
    initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        estimate: Literal["window", "ema"] = "window",
        window: int = 128,
        momentum: float = 0.999,
        labeled_counts: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        if estimate not in ("window", "ema"):
            raise ValueError(f"da_estimate must be 'window' or 'ema'; got {estimate!r}")
        self.estimate = estimate
        self.momentum = float(momentum)
        uniform = torch.full((self.num_classes,), 1.0 / self.num_classes)
        self.register_buffer("p_data", _distribution(labeled_counts, self.num_classes))
        if estimate == "window":
            rows = check_positive_int(window, "da_window")
            self.register_buffer("window", uniform.repeat(rows, 1))
            self.register_buffer("position", torch.zeros((), dtype=torch.long))
        else:
            self.register_buffer("p_model", uniform.clone())
            self.register_buffer("initialized", torch.tensor(False))

    def model_marginal(self) -> torch.Tensor:
        """``p~(y)``: the window's normalised mean, or the EMA."""
        if self.estimate == "ema":
            return self.p_model
        mean = self.window.mean(dim=0)
        return mean / mean.sum()

    @torch.no_grad()
    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        """The aligned probabilities of ``probs`` (N, C), the state updated as the variant
        says (in ``probs``'s dtype at least float32: the oracle tests run in float64)."""
        probs = wide(probs)
        total, count = all_reduce_sums(
            probs.sum(dim=0), torch.tensor([float(probs.shape[0])], device=probs.device)
        )
        mean = (total / count.clamp(min=1.0)).to(self.p_data.dtype)
        seen = count > 0  # an empty global batch leaves the state untouched
        if self.estimate == "ema":
            m = self.momentum
            new = torch.where(self.initialized, m * self.p_model + (1 - m) * mean, mean)
            self.p_model.copy_(torch.where(seen, new, self.p_model))
            self.initialized.logical_or_(seen.squeeze(0))
        p_model = self.model_marginal().to(probs.dtype)
        if self.estimate == "window":  # the authors' post-step update: read, then push
            row = self.window[self.position]
            self.window[self.position] = torch.where(seen, mean, row)
            self.position.copy_((self.position + seen.long().squeeze(0)) % self.window.shape[0])
        ratio = (self.p_data.to(probs.dtype) + _EPS) / (p_model + _EPS)
        aligned = probs * ratio
        return aligned / aligned.sum(dim=1, keepdim=True)

    def describe(self) -> dict[str, Any]:
        return {"p_model": self.model_marginal().tolist(), "p_data": self.p_data.tolist()}

    def extra_repr(self) -> str:
        size = f"window={self.window.shape[0]}" if self.estimate == "window" else "momentum=0.999"
        return f"num_classes={self.num_classes}, estimate={self.estimate!r}, {size}"


def _distribution(counts: Sequence[float] | None, num_classes: int) -> torch.Tensor:
    """The labeled class distribution from per-class counts (None: uniform)."""
    if counts is None:
        return torch.full((num_classes,), 1.0 / num_classes)
    c = torch.as_tensor(np.asarray(counts, dtype=np.float64)).float()
    if c.shape != (num_classes,) or not bool((c >= 0).all()) or not float(c.sum()) > 0:
        raise ValueError(
            f"labeled_counts must be {num_classes} non-negative per-class counts, not all zero"
        )
    return c / c.sum()


class ReMixMatch(MixMatch):
    """MixMatch's MixUp with an aligned weak-view anchor for K strong views, the pre-mixup loss
    on the first strong view and the rotation head."""

    def __init__(
        self,
        num_classes: int,
        *,
        lambda_u1: float,
        lambda_rot: float,
        strong_views: int,
        da_estimate: Literal["window", "ema"],
        da_window: int,
        labeled_counts: Sequence[float] | None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.name = "remixmatch"
        if not lambda_u1 >= 0 or not lambda_rot >= 0:
            raise ValueError(
                f"lambda_u1 and lambda_rot must be >= 0; got {lambda_u1}, {lambda_rot}"
            )
        self.lambda_u1, self.lambda_rot = float(lambda_u1), float(lambda_rot)
        self.strong_views = check_positive_int(strong_views, "strong_views")
        self.alignment = ReMixMatchAlignment(
            num_classes, da_estimate, da_window, labeled_counts=labeled_counts
        )
        # The records' loss is sup + lambda_u * unsup + 1 * extra: extra holds the ramped
        # lambda_u1 term and the rotation term, already weighted.
        self.extra_loss_weight = 1.0

    @property
    def needs(self) -> Needs:
        return dataclasses.replace(
            super().needs,
            strong_views=self.strong_views,
            strong_as_weak=False,
            # The rotation head and its quarter turns (none without its loss).
            features=self.lambda_rot > 0,
            spatial=self.lambda_rot > 0,
            # With gradient besides the mixed batch: the unmixed and the rotated first view.
            extra_forwards=1 + (self.lambda_rot > 0),
        )

    def make_heads(self, num_features: int) -> nn.Module:
        """The rotation classifier on the features (USB's ``rot_classifier``)."""
        return nn.ModuleDict({"rotation": nn.Linear(num_features, 4)})

    def own_step(
        self,
        model: nn.Module,
        x_lb: torch.Tensor,
        y_lb: torch.Tensor,
        u_weak: torch.Tensor,
        strong: Sequence[torch.Tensor],
        info: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, UnlabeledResult]:
        """``(labeled logits for the metrics, loss, unlabeled part)`` of one step."""
        n_lb, n_u = x_lb.shape[0], u_weak.shape[0]
        seed, it, rank = (
            0 if info.seed is None else int(info.seed),
            int(info.iteration),
            dist.get_rank(),
        )
        with torch.no_grad(), frozen_bn(model):  # the anchor's guess and the records' accuracy
            probs = torch.softmax(wide(model(u_weak)), dim=1)
            logits_lb = model(x_lb)
        q = sharpen(self.alignment(probs), self.temperature)
        with frozen_bn(model):  # the pre-mixup view, with gradient (USB freezes its statistics)
            logits_u1 = model(strong[0])
        # USB's order: labeled, the strong views, the anchor; every unlabeled view targets q.
        inputs = torch.cat([to_unit(x_lb), *(to_unit(v) for v in strong), to_unit(u_weak)])
        y = F.one_hot(y_lb, q.shape[1]).to(q.dtype)
        targets = torch.cat([y, *([q] * (len(strong) + 1))])
        lam, perm = mixup_draw(self.mixup_alpha, inputs.shape[0], seed, it, rank)
        perm = perm.to(inputs.device)
        mixed_x = lam * inputs + (1.0 - lam) * inputs[perm]
        mixed_y = lam * targets + (1.0 - lam) * targets[perm]
        logits = self.mixed_logits(model, mixed_x, n_lb)
        sup = mean_rows(soft_cross_entropy(logits[:n_lb], mixed_y[:n_lb]))
        unsup = mean_rows(soft_cross_entropy(logits[n_lb:], mixed_y[n_lb:]))
        u1 = mean_rows(soft_cross_entropy(logits_u1, q))
        rot = self.rotation_loss(model, strong[0], rotation_draw(n_u, seed, it, rank))
        ramp = self.ramp(info)
        extra = ramp * self.lambda_u1 * u1 + self.lambda_rot * rot
        loss = sup + self.lambda_u * (ramp * unsup) + extra
        confidence, pseudo = q.max(dim=1)
        weights = torch.ones(n_u, dtype=confidence.dtype, device=confidence.device)
        return (
            logits_lb,
            loss,
            UnlabeledResult(weights, confidence, pseudo, ramp * unsup, extra, sup),
        )

    def rotation_loss(
        self, model: nn.Module, view: torch.Tensor, turns: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of the rotation head on the turned view (frozen BatchNorm statistics,
        as USB); 0 without a weight (no forward)."""
        if self.lambda_rot == 0:
            return torch.zeros((), dtype=torch.float32, device=view.device)
        if view.dim() != 4 or view.shape[-1] != view.shape[-2]:
            raise ValueError(
                f"--algorithm remixmatch turns the images by 90 degrees and needs square images; "
                f"got {tuple(view.shape[1:])} - resize them square or pass --lambda-rot 0"
            )
        with frozen_bn(model), record_features(model) as feats:
            model(rotate_batch(view, turns))
        logits = heads_of(model)["rotation"](torch.cat(feats))
        per_row = F.cross_entropy(wide(logits), turns.to(logits.device), reduction="none")
        return mean_rows(per_row)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        return {**info, "p_model": self.alignment.model_marginal().tolist()}

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda_u1={self.lambda_u1}, lambda_rot={self.lambda_rot}, "
            f"strong_views={self.strong_views}"
        )


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N,) ``-sum_c t_c log softmax(z)_c`` (USB's ``ce_loss``/``consistency_loss('ce')``)."""
    return -(wide(targets) * torch.log_softmax(wide(logits), dim=1)).sum(dim=1)


PRESETS = MethodPresets(
    {"algorithm": "remixmatch", "lambda_u": 1.5, "lambda_u1": 0.5, "lambda_rot": 0.5,
     "unsup_warmup": 1 / 64, "rampup_shape": "linear", "temperature": 0.5, "mixup_alpha": 0.75,
     "strong_views": 2, "da_estimate": "ema", "uratio": 1},
    source="usb",
    note="; USB's 2 strong views, EMA distribution alignment, uratio 1, RandAugment strong views "
    "as every preset (the paper's CTAugment: --strong-augment ctaugment)",
)  # fmt: skip


@register_method(presets=PRESETS)
def remixmatch(
    num_classes: int,
    *,
    lambda_u: float = 1.5,
    lambda_u1: float = 0.5,
    lambda_rot: float = 0.5,
    temperature: float = 0.5,
    mixup_alpha: float = 0.75,
    strong_views: int = 8,
    da_estimate: Literal["window", "ema"] = "window",
    da_window: int = 128,
    unsup_warmup: float = 1 / 64,
    rampup_shape: Literal["sigmoid", "linear"] = "linear",
    labeled_counts: Sequence[float] | None = None,
) -> ReMixMatch:
    """ReMixMatch: aligned, sharpened weak-view anchors for K strong views, MixUp, rotation.

    Args:
        num_classes: number of classes.
        lambda_u: weight of the mixed unlabeled loss (paper and USB 1.5).
        lambda_u1: weight of the pre-mixup loss on the first strong view (paper's
            lambda_U1, USB's kl_loss_ratio; 0.5).
        lambda_rot: weight of the rotation loss (paper and USB 0.5; 0: no rotation head use).
        temperature: sharpening temperature T of the aligned guess (paper and USB 0.5).
        mixup_alpha: Beta(alpha, alpha) of the MixUp coefficient (paper and USB 0.75).
        strong_views: strong views K per unlabeled image (paper 8; USB 2, the presets).
        da_estimate: the model's marginal for distribution alignment: window (the paper's
            authors' code: mean of the last da_window batches) or ema (USB: momentum 0.999).
        da_window: batches in the distribution-alignment window (paper 128).
        unsup_warmup: share of the budget over which both unlabeled losses ramp up from 0 to 1
            (paper 16k of 1M iterations; USB 1/64).
        rampup_shape: shape of both unlabeled ramps, linear (paper and USB) or sigmoid
            exp(-5 (1 - t)^2).
    """
    return ReMixMatch(
        num_classes,
        lambda_u1=lambda_u1,
        lambda_rot=lambda_rot,
        strong_views=strong_views,
        da_estimate=da_estimate,
        da_window=da_window,
        labeled_counts=labeled_counts,
        temperature=temperature,
        mixup_alpha=mixup_alpha,
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
    )
