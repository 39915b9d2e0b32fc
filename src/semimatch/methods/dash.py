"""Dash (Xu et al., ICML 2021): a threshold on the per-sample loss, decayed over training, after
a supervised warm-up whose last labeled loss sets the threshold's start."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semimatch.methods.blocks import (
    check_lambda_max,
    check_positive_int,
    check_probs,
    recorded_lambda_max,
    sharpen,
)
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import BudgetDefault, MethodPresets, register_method

__all__ = ["DashThreshold", "dash", "dash_warmup"]


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
    constructor).  USB uses the loss on its evaluation set (the test set for the classic image
    sets) of its EMA's parameters, which its warm-up never updates, after ``num_wu_iter`` = 2048
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
        self.period = check_positive_int(period, "period")
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


def _lambda(state: Mapping[str, Any], q: np.ndarray, num_classes: int) -> np.ndarray:
    """``1[loss(p) <= rho]``: soft loss ``-sum_k sharpen(p, T)_k log p_k``, ``-log q`` once hard."""
    rest = (1 - q) / (num_classes - 1)
    if state["hard"]:
        loss = -np.log(q)
    else:
        inv_t = 1.0 / float(state["temperature"])
        with np.errstate(divide="ignore", invalid="ignore"):
            log_q, log_r = np.log(q), np.log(rest)
            # sharpen = softmax(log p / T), over one q and C-1 equal rest values
            top = np.maximum(log_q, log_r) * inv_t
            e_q = np.exp(log_q * inv_t - top)
            e_r = np.where(rest > 0, np.exp(log_r * inv_t - top), 0.0)
            z = e_q + (num_classes - 1) * e_r
            s_q, s_r = e_q / z, e_r / z
            loss = -(s_q * log_q + (num_classes - 1) * np.where(s_r > 0, s_r * log_r, 0.0))
    return recorded_lambda_max(state) * (loss <= float(state["rho"])).astype(np.float64)[None, :]


def dash_warmup(iterations: int) -> int:
    """Dash's supervised warm-up for a budget of ``iterations``: USB's 2048, at most 5% of it."""
    return int(min(2048, iterations // 20))


#: USB's 2048 and 10240 iterations are for K = 2**20.
BUDGET = (
    BudgetDefault(
        "dash_warmup",
        dash_warmup,
        "budget of {K} iterations: min(2048, K // 20), 5% of the run; USB 2048",
        "derived from the iteration budget K, min(2048, K // 20)",
    ),
    BudgetDefault(
        "rho_period",
        lambda K: max(1, round(K * 10 / 1024)),
        "budget of {K} iterations: max(1, round(K * 10/1024)), USB's 10 epochs of 1024 "
        "iterations as a share of 2**20; USB 10240",
        "derived from the iteration budget K, max(1, round(K * 10/1024))",
    ),
)


def check_budget(options: Mapping[str, Any], iterations: int) -> None:
    """The warm-up must leave semi-supervised iterations (inside the budget)."""
    if not options["dash_warmup_extra"] and options["dash_warmup"] >= iterations:
        raise ValueError(
            f"dash_warmup={options['dash_warmup']} leaves no semi-supervised iteration of the "
            f"{iterations}; pass --dash-warmup below --iterations"
        )


def extra_iterations(options: Mapping[str, Any]) -> tuple[int, str]:
    """USB's placement: the warm-up runs before the budget (``dash_warmup_extra``)."""
    if not options["dash_warmup_extra"]:
        return 0, ""
    return options["dash_warmup"], "dash's supervised warm-up before the budget (USB)"


PRESETS = MethodPresets(
    {
        "algorithm": "dash",
        "temperature": 0.5,
        "dash_gamma": 1.27,
        "dash_c": 1.0001,
        "rho_min": 0.05,
        "rho_period": 10 * 1024,  # 10 epochs of 1024 iterations
        "dash_warmup": 2048,  # num_wu_iter
        "lambda_u": 1.0,
    },
    source="usb",
    note="; the 2048 supervised warm-up iterations count in the budget (USB runs them "
    "before it: --dash-warmup-extra) and rho_init is the labeled loss after them (USB: its "
    "evaluation-set loss)",
    nlp=True,
)


@register_method(
    formulas={"dash": (("rho", "hard", "temperature"), _lambda)},
    budget=BUDGET,
    check_budget=check_budget,
    presets=PRESETS,
    extra_iterations=extra_iterations,
)
def dash(
    num_classes: int,
    *,
    temperature: float = 0.5,
    dash_gamma: float = 1.27,
    dash_c: float = 1.0001,
    rho_min: float = 0.05,
    rho_period: int = 10 * 1024,
    dash_warmup: int = 2048,
    dash_warmup_extra: bool = False,
    lambda_u: float = 1.0,
) -> SSLAlgorithm:
    """Threshold on the per-sample loss, decayed over training, after a supervised warm-up.

    Args:
        num_classes: number of classes.
        temperature: sharpening temperature T of the soft targets softmax(weak logits / T)
            (uda: USB 0.4; dash: USB 0.5).
        dash_gamma: decay factor gamma of the loss threshold rho (USB 1.27).
        dash_c: scale C of the loss threshold rho = C gamma^-k rho_init (USB 1.0001).
        rho_min: floor of the loss threshold; hard pseudo-labels once reached (USB 0.05).
        rho_period: iterations between two decays of rho (USB 10 epochs = 10240).
        dash_warmup: supervised iterations before rho_init is set from the labeled loss (USB
            num_wu_iter 2048).
        dash_warmup_extra: run the warm-up on top of --iterations (USB runs its num_wu_iter
            before its num_train_iter; the run then trains iterations + dash_warmup) instead
            of as the first dash_warmup iterations of the budget.
        lambda_u: unlabeled loss weight.
    """
    if isinstance(dash_warmup, bool) or not isinstance(dash_warmup, int) or dash_warmup < 0:
        raise ValueError(f"dash_warmup must be an integer >= 0; got {dash_warmup!r}")
    weighting = DashThreshold(
        gamma=dash_gamma, C=dash_c, rho_min=rho_min, period=rho_period, temperature=temperature
    )
    return SSLAlgorithm(
        weighting,
        lambda_u=lambda_u,
        name="dash",
        soft_targets=True,
        warmup=dash_warmup,
        end_warmup=weighting.set_rho_init,
    )
