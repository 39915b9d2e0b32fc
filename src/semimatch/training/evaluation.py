"""Measuring a model: test accuracy over the whole (sharded) test set, and the live λ(p) curve."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch import distributed as dist
from semimatch.config import Config
from semimatch.data import eval_batches
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.training.recipe import autocast

__all__ = ["evaluate_model", "lambda_curve", "pad_rows"]


def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` rows (unchanged if it has that many).

    Evaluation and prediction run every forward on exactly ``eval_batch_size`` rows: CPU
    kernels (oneDNN/MKL) pick their blocking and reduction order by shape, so a row's logits
    could otherwise change in the last bits with the number of rows that share its batch (a
    one-row call and a 60-row call differed by 1.3e-7 on an Intel Xeon).  With one shape, a
    prediction depends on the row alone.
    """
    if len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    source: Any,
    num_classes: int,
    device: torch.device,
    batch_size: int = 512,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy, per-class accuracy and confusion matrix over the whole test set.

    Each process evaluates its shard; the confusion matrix is all-reduced, so the numbers are
    those of the full test set under DDP too.  Every forward has ``batch_size`` rows (the last
    chunk padded, ``pad_rows``), so an image's prediction does not depend on the shard size.
    """
    labels = getattr(source, "labels", None)
    if labels is not None and len(labels) and int(np.min(labels)) < 0:
        raise ValueError(
            f"{int((np.asarray(labels) < 0).sum())} of the {len(labels)} images to evaluate have "
            "no label (-1); evaluate on labeled images only"
        )
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    amp = autocast(cfg, device) if cfg is not None else contextlib.nullcontext()
    cl = cfg is not None and cfg.channels_last
    for x, y in eval_batches(source, batch_size, device, dist.get_rank(), dist.get_world_size()):
        n = len(x)
        x = pad_rows(x, batch_size)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            pred = model(x)[:n].argmax(dim=1)
        idx = y.to(device) * num_classes + pred
        confusion += (
            torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).double()
        )
    (confusion,) = dist.all_reduce_sums(confusion)
    model.train(was_training)
    total = confusion.sum().item()
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    top1 = confusion.diag().sum().item() / max(total, 1)
    return {
        "top1": top1,
        "error": 1 - top1,
        "per_class_acc": per_class,
        "confusion": confusion.long().tolist(),
        "n": int(total),
    }


def lambda_curve(algorithm: SSLAlgorithm, num_classes: int, device: torch.device) -> dict | None:
    """The live weighting function evaluated on a grid of confidences in [1/C, 1].

    A row with max probability q puts q on one class and spreads 1-q over the others; weights
    that depend on which class holds the max (SoftMatch per class, FlexMatch's and FreeMatch's
    class-wise thresholds) are averaged over that class.  Every class is sampled: a weighting
    need not declare that it is class-wise.
    """
    if algorithm.weighting is None or not algorithm.weights_defined():
        return None  # supervised, or a warm-up that has not yet defined the weights (Dash)
    grid = torch.linspace(1.0 / num_classes, 1.0, 51, device=device)
    rows = torch.arange(num_classes, device=device).repeat_interleave(grid.shape[0])
    q = grid.repeat(num_classes)
    probs = ((1 - q) / (num_classes - 1)).unsqueeze(1).repeat(1, num_classes)
    probs[torch.arange(q.shape[0], device=device), rows] = q
    ws = algorithm.weighting(probs).float().reshape(num_classes, -1)
    # The same curve for every class: keep it as is (no rounding from averaging equal values).
    w = ws[0] if bool((ws == ws[0]).all()) else ws.mean(dim=0)
    return {"p": [round(v, 6) for v in grid.tolist()], "w": w.tolist()}
