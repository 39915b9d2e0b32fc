"""Exponential moving average of model weights (FixMatch: decay 0.999, evaluated model).

``ema <- decay_t * ema + (1 - decay_t) * live`` for parameters, with
``decay_t = min(decay, (1 + t) / (10 + t))`` when warm-up is on, so a short run's EMA is not
stuck near the random initialisation (reference, "Short budgets").  BatchNorm buffers are copied
from the live model, as in the FixMatch code.  The update is one fused ``torch._foreach_lerp_``
over all parameters instead of a Python loop of small kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA(nn.Module):
    """Holds the averaged copy of a model; ``update(model, step)`` after each optimiser step."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables the EMA); got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if self.warmup:
            return min(self.decay, (1.0 + step) / (10.0 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_params = [p for p in self.module.parameters()]
        live_params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(live_params):
            raise ValueError("the EMA copy and the live model have different parameters")
        # lerp_(ema, live, w) computes ema + w * (live - ema) = d * ema + (1 - d) * live.
        torch._foreach_lerp_(ema_params, live_params, 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
