"""MixMatch (Berthelot et al., NeurIPS 2019): sharpened guesses, MixUp of labeled + unlabeled.

    q_i = Sharpen((1/K) sum_k softmax f(u_i,k), T),  Sharpen(p, T)_c = p_c^(1/T) / sum p^(1/T)
    W = Shuffle(cat(X, U)),  X' = MixUp(X, W[:B]),  U' = MixUp(U, W[B:])
    MixUp((x1, p1), (x2, p2)) = (l' x1 + (1 - l') x2, l' p1 + (1 - l') p2),
        l ~ Beta(alpha, alpha),  l' = max(l, 1 - l)
    L = mean_{X'} H(p, f(x)) + lambda_u r(k) (1/(C |U'|)) sum_{U'} ||q - softmax f(u)||^2

(paper Algorithm 1 and Eqs. 2-5).  ``U`` holds the K = 2 views of each unlabeled image, both
with the weak augmentation (USB's MixMatch dataset gives ``x_ulb_s`` as a second weak view:
``needs.strong_as_weak``), each paired with the shared guess ``q``.  The method forwards the
model itself (``needs.forward = False``), as USB 0.3.2 (``mixmatch.py``) does: the guesses
from two no-grad forwards with frozen BatchNorm statistics, then the mixed batch in chunks of
the labeled batch size with gradient, only the first chunk updating the running statistics
(USB's replacement for the paper's interleaving, whose code is commented out in USB).  Images
are mixed in [0, 1] (the same as mixing normalised images: normalisation is affine).

One draw of ``(l, permutation)`` per step and process from a generator seeded by (run seed,
iteration, rank): a resumed run mixes as the uninterrupted one did; under torchrun each rank
mixes its own shard with its own draw, as USB's per-process ``np.random``/``randperm``.

Paper vs USB: lambda_u 75 (CIFAR-10) and a linear ramp-up over 16k of 1M iterations (the
defaults here: ``unsup_warmup`` 1/64, USB's code default); USB's classic-CV configs use
``ulb_loss_ratio`` 100 and ``unsup_warm_up`` 0.4 (the presets).  The paper's EMA of the weights
for evaluation is ``--ema-decay``.  Texts are refused: token ids cannot be mixed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch import distributed as dist
from semimatch.methods.blocks import frozen_bn, sharpen
from semimatch.methods.classic import ClassicConsistency, mean_rows, mse_consistency, wide
from semimatch.methods.consistency import Needs, UnlabeledResult
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["MixMatch", "mixmatch", "mixup_draw", "to_unit"]

_MIXUP_STREAM = 0x4D49  # separates the MixUp generator from the data stream's seeds


def mixup_draw(
    alpha: float, n: int, seed: int, iteration: int, rank: int
) -> tuple[float, torch.Tensor]:
    """``(l', permutation of n)``: ``l' = max(l, 1 - l)``, ``l ~ Beta(alpha, alpha)`` (``l = 1``
    for ``alpha = 0``), reproducible from (seed, iteration, rank) alone."""
    rng = np.random.default_rng([seed, iteration, rank, _MIXUP_STREAM])
    lam = float(rng.beta(alpha, alpha)) if alpha > 0 else 1.0
    return max(lam, 1.0 - lam), torch.from_numpy(rng.permutation(n))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Inputs as floats to mix: uint8 images scaled to [0, 1] (the models take both), floats
    as they are."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(
            "--algorithm mixmatch mixes the inputs and cannot run on token ids; pick another "
            "--algorithm for texts"
        )
    return x


class MixMatch(ClassicConsistency):
    """Soft cross-entropy on the mixed labeled rows plus ramped L2 on the mixed unlabeled rows."""

    uses_model = True

    def __init__(self, *, temperature: float, mixup_alpha: float, **kw) -> None:
        super().__init__("mixmatch", student_view="strong", **kw)
        if not temperature > 0 or not mixup_alpha >= 0:
            raise ValueError(
                f"temperature must be > 0 and mixup_alpha >= 0; got {temperature}, {mixup_alpha}"
            )
        self.temperature, self.mixup_alpha = float(temperature), float(mixup_alpha)

    @property
    def needs(self) -> Needs:
        return dataclasses.replace(
            super().needs, iteration=True, strong_as_weak=True, forward=False
        )

    def guess(self, model: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Sharpened mean of the views' probabilities (no gradient, frozen BN statistics)."""
        with torch.no_grad(), frozen_bn(model):
            probs = [torch.softmax(wide(model(v)), dim=1) for v in views]
        return sharpen(sum(probs) / len(probs), self.temperature)

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
        views = (u_weak, *strong)
        n_lb, n_u = x_lb.shape[0], u_weak.shape[0]
        inputs = torch.cat([to_unit(x_lb), *(to_unit(v) for v in views)])
        q = self.guess(model, views)
        with torch.no_grad(), frozen_bn(model):  # the labeled accuracy of the records
            logits_lb = model(x_lb)
        y = torch.nn.functional.one_hot(y_lb, q.shape[1]).to(q.dtype)
        targets = torch.cat([y, *([q] * len(views))])
        seed = 0 if info.seed is None else int(info.seed)
        lam, perm = mixup_draw(
            self.mixup_alpha, inputs.shape[0], seed, int(info.iteration), dist.get_rank()
        )
        perm = perm.to(inputs.device)
        mixed_x = lam * inputs + (1.0 - lam) * inputs[perm]
        mixed_y = lam * targets + (1.0 - lam) * targets[perm]
        logits = self.mixed_logits(model, mixed_x, n_lb)
        log_p = torch.log_softmax(wide(logits[:n_lb]), dim=1)
        sup = mean_rows(-(mixed_y[:n_lb] * log_p).sum(dim=1))
        unsup = mean_rows(mse_consistency(logits[n_lb:], mixed_y[n_lb:]))
        ramped = self.ramp(info) * unsup
        loss = sup + self.lambda_u * ramped
        confidence, pseudo = q.max(dim=1)
        weights = torch.ones(n_u, dtype=confidence.dtype, device=confidence.device)
        return logits_lb, loss, UnlabeledResult(weights, confidence, pseudo, ramped, None, sup)

    @staticmethod
    def mixed_logits(model: nn.Module, mixed_x: torch.Tensor, n_lb: int) -> torch.Tensor:
        """Forwards in chunks of the labeled batch size, with gradient; only the first updates
        the BatchNorm running statistics (USB)."""
        chunks = mixed_x.split(max(n_lb, 1))
        logits = [model(chunks[0])]
        with frozen_bn(model):
            logits += [model(c) for c in chunks[1:]]
        return torch.cat(logits)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, temperature={self.temperature}, "
            f"mixup_alpha={self.mixup_alpha}"
        )


PRESETS = MethodPresets(
    {"algorithm": "mixmatch", "lambda_u": 100.0, "unsup_warmup": 0.4, "rampup_shape": "linear",
     "temperature": 0.5, "mixup_alpha": 0.5, "uratio": 1},
    source="usb",
    note="; USB's lambda_u 100, linear ramp-up over 40% of the budget, uratio 1",
)  # fmt: skip


@register_method(presets=PRESETS)
def mixmatch(
    num_classes: int,
    *,
    lambda_u: float = 75.0,
    temperature: float = 0.5,
    mixup_alpha: float = 0.5,
    unsup_warmup: float = 1 / 64,
    rampup_shape: Literal["sigmoid", "linear"] = "linear",
) -> MixMatch:
    """MixMatch: sharpened guesses of two weak views, MixUp of labeled and unlabeled rows.

    Args:
        num_classes: number of classes.
        lambda_u: unlabeled (L2) loss weight (paper 75 on CIFAR-10; USB 100).
        temperature: sharpening temperature T of the averaged guesses (paper and USB 0.5).
        mixup_alpha: Beta(alpha, alpha) of the MixUp coefficient (paper and USB 0.5).
        unsup_warmup: share of the iteration budget over which the unlabeled loss ramps up from
            0 to 1 (paper 16k of 1M iterations, USB's default 1/64; USB's configs 0.4).
        rampup_shape: shape of the ramp-up, linear (paper and USB) or sigmoid exp(-5 (1 - t)^2).
    """
    return MixMatch(
        temperature=temperature,
        mixup_alpha=mixup_alpha,
        lambda_u=lambda_u,
        unsup_warmup=unsup_warmup,
        rampup_shape=rampup_shape,
    )
