"""The two-pass forward: the joint batch's BatchNorm statistics without the weak view's backward.

The papers run one forward over ``cat(x_lb, u_weak, u_strong)`` (reference, "Shared recipe"), so
BatchNorm normalizes every image with the statistics of the joint batch of (2 mu + 1) B images.
The weak view's logits are detached, yet autograd keeps its activations and runs the backward
over all 960 images.  Running the weak view in a separate no-grad forward ("split") avoids that
but changes what BatchNorm sees, and it lost accuracy (BENCHMARKS.md).  The two-pass forward
keeps the joint statistics:

1. **Pass 1**, no grad, train mode: the whole joint batch.  Gives the weak view's logits exactly
   as the joint forward does, updates the BN running statistics once (as the joint forward
   does), and records every BN layer's batch mean ``mu`` and ``invstd = 1/sqrt(var + eps)`` over
   the N joint samples.
2. **Pass 2**, with grad: only the n_g rows that need a gradient (labeled + strong).  Every BN
   layer normalizes with the *recorded joint* statistics, so its outputs equal the joint
   forward's outputs.  Its backward is BatchNorm's, with a per-row coefficient k_r:

       dx_r = gamma * invstd * (dy_r - k_r * (sum_g dy + xhat_r * sum_g dy * xhat)).

What the backward leaves out: in the joint forward a loss term also moves the weights through
the *weak* rows' activations, via their share of every batch statistic (the joint gradient
sums to zero over all N rows; the grad rows alone do not).  That path is not small: dropping
it (k_r = 1/N for every row) cost 8 points of error on Fashion-MNIST, like the split forward.
The weak labeled rows ``x_lb`` are draws from the same distribution as the weak unlabeled rows
(same images' distribution, same weak augmentation), so their path *stands in* for the missing
one: the stand-in rows get k_r = (n_s + n_w) / (n_s N), the others k_r = 1/N.  The k_r sum to
one over the grad rows, as 1/N does over all rows in the joint backward, and the estimate of the
weak rows' path is unbiased when the rows are exchangeable.
On a model without batch-statistics layers the result is exactly the joint gradient.

Cost per step: a no-grad forward of the joint batch plus a forward and backward of the
(mu + 1) B grad rows, instead of a forward and backward of all (2 mu + 1) B; activations are
kept for the grad rows only.  Accuracy against the joint forward: BENCHMARKS.md, section 3.

Only ``torch.nn`` BatchNorm layers (``_BatchNorm`` subclasses using batch statistics) are
handled; other layers that mix rows would see different batches in the two passes.
``SyncBatchNorm`` is refused (use the joint forward).  With dropout the two passes draw
different masks, so the statistics come from a differently-dropped copy of the grad rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from semimatch import distributed as dist
from semimatch.config import Config, ConfigError
from semimatch.log import logger

__all__ = ["two_pass_forward", "batch_stat_layers", "check_forward_mode"]


def batch_stat_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers of ``model`` that normalize with batch statistics right now."""
    layers = []
    for m in model.modules():
        if isinstance(m, _BatchNorm) and (m.training or not m.track_running_stats):
            if isinstance(m, nn.SyncBatchNorm):
                raise ValueError(
                    "the two-pass forward keeps BatchNorm statistics per process and cannot run "
                    "SyncBatchNorm; use forward_mode='joint' with sync_bn"
                )
            layers.append(m)
    return layers


class _JointStatsBatchNorm(torch.autograd.Function):
    """BatchNorm of the grad rows with recorded joint statistics (equations in module doc)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x, weight, bias, mean, invstd, n_total: int, eps: float, stand_in: slice | None
    ):
        # Normalizing with given statistics is BatchNorm's inference kernel (running_* = stats).
        var = invstd.pow(-2) - eps
        out = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n_total, ctx.stand_in = n_total, stand_in
        return out

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, mean, invstd = ctx.saved_tensors
        # torch's training-mode backward with the given mean/invstd is the BN gradient with
        # coefficient 1/n_g on the two sums.  Each row r needs k_r instead (module doc), so add
        # (1/n_g - k_r) * gamma * invstd * (sum dy + xhat * sum(dy * xhat)) = x * c2 + c1 per
        # channel: one fused pass per group of rows.
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, 0.0, [True, True, True]
        )
        per_row = x.numel() // (x.shape[0] * x.shape[1])  # spatial positions per row
        n_grad, n_weak = x.shape[0] * per_row, ctx.n_total - x.shape[0] * per_row
        gamma = weight if weight is not None else torch.ones_like(invstd)
        shape = [1, -1] + [1] * (x.dim() - 2)

        def correct(rows: slice, k: float) -> None:
            a = gamma * invstd * (1.0 / n_grad - k)
            c2 = (a * invstd * dw).view(shape).to(dx.dtype)
            c1 = (a * (db - mean * invstd * dw)).view(shape).to(dx.dtype)
            dx[rows].addcmul_(x[rows], c2).add_(c1)

        rows = ctx.stand_in
        if rows is None or rows.stop <= rows.start:
            correct(slice(None), 1.0 / ctx.n_total)
        else:
            n_stand = (rows.stop - rows.start) * per_row
            correct(slice(None, rows.start), 1.0 / ctx.n_total)
            correct(rows, (n_stand + n_weak) / (n_stand * ctx.n_total))
            correct(slice(rows.stop, None), 1.0 / ctx.n_total)
        if weight is None:
            dw = db = None
        return dx, dw, db, None, None, None, None, None


@contextlib.contextmanager
def _patched(layers: list[_BatchNorm], forward_for) -> Iterator[None]:
    """Give each layer an instance-level ``forward`` for the duration of the block."""
    for layer in layers:
        layer.forward = forward_for(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _momentum(bn: _BatchNorm) -> float:
    """The running-average factor ``nn.BatchNorm`` would use now (counts the batch, as it does)."""
    if not (bn.training and bn.track_running_stats):
        return 0.0
    bn.num_batches_tracked.add_(1)
    if bn.momentum is None:  # cumulative moving average
        return 1.0 / float(bn.num_batches_tracked)
    return bn.momentum


def two_pass_forward(
    model: nn.Module, x: torch.Tensor, no_grad: slice, stand_in: slice | None = None
) -> torch.Tensor:
    """Logits of ``model`` on the joint batch ``x``; rows in ``no_grad`` carry no gradient.

    Equal in value to ``model(x)`` in train mode (BatchNorm sees all of ``x``), with the backward
    of the module docstring.  ``no_grad`` is a contiguous slice of rows (the weak unlabeled
    view); ``stand_in`` an optional contiguous slice of other rows drawn from the same
    distribution (the weak labeled view), whose gradient path through the BN statistics stands
    in for the no-grad rows' (None: that path is dropped).  For a model without
    batch-statistics layers the first pass runs on the ``no_grad`` rows only, and the result
    equals the joint forward's in value and gradient.
    """
    n = x.shape[0]
    start, stop, step = no_grad.indices(n)
    if step != 1 or not 0 <= start <= stop:
        raise ValueError(f"no_grad must be a contiguous forward slice of rows, got {no_grad}")
    grad_rows = None  # stand_in in the row numbering of the grad pass (no_grad rows removed)
    if stand_in is not None:
        a, b, step = stand_in.indices(n)
        if step != 1 or a > b or (a < stop and b > start and start < stop):
            raise ValueError(
                f"stand_in must be a contiguous slice of rows outside no_grad={no_grad}, "
                f"got {stand_in}"
            )
        shift = stop - start if a >= stop else 0
        grad_rows = slice(a - shift, b - shift)
    layers = batch_stat_layers(model)
    x_grad = torch.cat([x[:start], x[stop:]])
    if not layers:
        with torch.no_grad():
            logits_ng = model(x[start:stop])
        logits_g = model(x_grad)
    else:
        # One entry per call, so a layer applied twice in one forward replays both in order.
        stats: dict[_BatchNorm, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
        replayed: dict[_BatchNorm, int] = {}

        def recording(bn: _BatchNorm):
            def forward(inp: torch.Tensor) -> torch.Tensor:
                out, mean, invstd = torch.native_batch_norm(
                    inp, bn.weight, bn.bias, bn.running_mean, bn.running_var, True,
                    _momentum(bn), bn.eps,
                )  # fmt: skip
                stats.setdefault(bn, []).append((mean, invstd, inp.numel() // inp.shape[1]))
                return out

            return forward

        def replaying(bn: _BatchNorm):
            def forward(inp: torch.Tensor) -> torch.Tensor:
                k = replayed.get(bn, 0)
                if k >= len(stats.get(bn, ())):
                    raise RuntimeError(
                        "two-pass forward: a BatchNorm layer ran more often in the second pass "
                        "than in the first; the model's forward must not depend on the batch "
                        "size (use forward_mode='joint')"
                    )
                replayed[bn] = k + 1
                mean, invstd, n_total = stats[bn][k]
                return _JointStatsBatchNorm.apply(
                    inp, bn.weight, bn.bias, mean, invstd, n_total, bn.eps, grad_rows
                )

            return forward

        with torch.no_grad(), _patched(layers, recording):
            logits_ng = model(x)[start:stop]
        with _patched(layers, replaying):
            logits_g = model(x_grad)
    return torch.cat([logits_g[:start], logits_ng, logits_g[start:]])


def check_forward_mode(cfg: Config, uses_strong: bool, given_data: bool) -> None:
    """Refuse or warn where the two-pass forward does not fit the run (``engine`` calls it once
    the algorithm is built, since only the algorithm knows whether it uses a strong view).

    Only a strong-view student has a weak no-grad half to split off (``step.train_step``), so
    ``forward_mode='two-pass'`` matters only then.
    """
    if not (cfg.forward_mode == "two-pass" and uses_strong):
        return
    ws = dist.get_world_size()
    if cfg.sync_bn and ws > 1:
        raise ConfigError(
            "sync_bn with forward_mode='two-pass': the two-pass forward keeps BatchNorm "
            "statistics per process; pass --forward-mode joint with --sync-bn"
        )
    if cfg.compile:
        raise ConfigError(
            "compile with forward_mode='two-pass': the two-pass forward swaps BatchNorm "
            "behaviour between its passes, which a compiled graph would not see; pass "
            "--forward-mode joint with --compile"
        )
    _check_two_pass_assumption(cfg, given_data, ws)


def _check_two_pass_assumption(cfg: Config, given_data: bool, ws: int) -> None:
    """Refuse or warn (once, here) where the two-pass forward's gradient estimate is poor.

    Its backward estimates the weak unlabeled rows' path through the BatchNorm statistics from
    the weak labeled rows (semimatch.training.two_pass), which assumes the two are alike.  Measured
    against the joint gradient (benchmarks/two_pass_gradient.py, BENCHMARKS.md 1b): ~12%
    relative L2 error when they are, 23% with 4 labeled rows per process, 60% when the labeled
    inputs are shifted - worse than dropping the path.  A split that makes them differ by
    construction is refused; data whose relation semimatch cannot check gets a warning.
    """
    if cfg.lt_gamma is not None and cfg.lt_reverse:
        raise ConfigError(
            "forward_mode='two-pass' with lt_reverse: the labeled and unlabeled class "
            "distributions are reversed by construction, so the weak labeled rows are a poor "
            "stand-in for the unlabeled rows' BatchNorm gradient (measured 40-60% error when "
            "they differ); use forward_mode='joint' (the default, exact)"
        )
    reasons = []
    if cfg.unlabeled_dir:
        reasons.append("the unlabeled images come from their own folder (unlabeled_dir)")
    if cfg.svhn_extra:
        reasons.append("the unlabeled set includes SVHN's easier 'extra' images")
    if given_data:
        reasons.append(
            "the data was passed in, so semimatch cannot check that its labeled and "
            "unlabeled rows come from one distribution"
        )
    per_process = cfg.batch_size // ws
    if per_process < 16:
        reasons.append(
            f"only {per_process} labeled rows per process stand in for the weak rows "
            f"(measured 23% gradient error with 4)"
        )
    if reasons:
        logger.warning(
            "forward_mode='two-pass' estimates the weak unlabeled rows' BatchNorm gradient from "
            "the weak labeled rows, assuming the two are alike; here "
            + "; ".join(reasons)
            + ". Its gradient error grows when they differ (60% measured for a one-sigma input "
            "shift): prefer forward_mode='joint' (the default, exact)"
        )
