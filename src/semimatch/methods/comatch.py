"""CoMatch (Li, Xiong, Hoi, ICCV 2021): memory-smoothed pseudo-labels and a graph-contrastive loss.

    p_b = DA(softmax f(weak(u_b)))                  (aligned over the last da_len batches)
    q_b = alpha p_b + (1 - alpha) sum_k a_bk p_k,   a_bk = softmax_k(z_b . z_k / T)
    L_cls = (1/muB) sum_b 1[max q_b >= tau] H(q_b, softmax f(strong_0(u_b)))
    W^q_bj = 1 if b = j, q_b . q_j if >= tau_c, else 0;      Q = W^q row-normalised
    L_ctr = (1/muB) sum_b -sum_j Q_bj log softmax_j(z0_b . z1_j / T)
    L = L_x + lambda_u L_cls + lambda_c L_ctr

``z = normalize(g(h))`` is the projection head ``g`` (a 2-layer MLP to ``proj_size``, USB's
``CoMatch_Net.mlp_proj``) on the backbone's features ``h`` (``methods.heads``); ``z0, z1`` are
the embeddings of two strong views (the embedding graph), ``z_b`` of the weak view.  The memory
bank holds the weak-view embeddings and probabilities of the last ``queue_batch`` steps'
labeled (one-hot labels) and unlabeled (aligned, unsmoothed) rows; smoothing starts once the
bank is full (iteration > ``queue_batch``, the authors' code).  The bank and the DA queue are
buffers (``state_dict``, checkpoints, exact resume), global under torchrun: the rows of every
process are gathered as USB gathers them, in the order of one process's batch, so W processes
hold what one does.

Paper (and the authors' code, salesforce/CoMatch) vs USB 0.3.2, defaults first:

- the contrastive graph spans the global batch (W processes compute one process's loss and
  gradient); ``contrast_scope="process"``: USB's per-process graph under torchrun.
- ``log softmax`` and DA as ``p / mean(last da_len batch means)``; ``comatch_eps="usb"``:
  USB's ``log(softmax + 1e-7)`` (also the authors' code) and its DA hook's
  ``p (1/C + 1e-6) / (mean over a zero-filled queue + 1e-6)``.
- smoothing from iteration ``queue_batch + 1`` (the authors' ``epoch > 0 or it > queue_batch``);
  USB's ``epoch > 0 and it > queue_batch`` starts at its second epoch, iteration 1024 of its
  configs: ``smoothing_start`` (the presets).
- the bank's size is ``queue_batch`` global batches (the authors' single-GPU size); USB sizes it
  with its per-process batch, so under torchrun its bank holds ``queue_batch / W`` steps.

The paper's text writes the embedding graph's off-diagonal entries as ``z_b . z_j`` (as
recalled, its text not re-read here); both codes compare the two strong views, ``z0_b . z1_j``,
as this module does.  The head's activation is USB's ReLU (the authors' CIFAR code: LeakyReLU
0.1).  On texts the two strong views are drawn independently (USB's NLP dataset hands CoMatch
its two back-translations in a random order: distinct when a text has two).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.methods.blocks import check_num_classes, check_positive_int, check_tau
from semimatch.methods.classic import wide
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["CoMatch", "MemoryBank", "QueueAlignment", "comatch", "gather_rows"]

#: USB's ``epoch > 0``: every classic-CV and NLP config of CoMatch has 1024 iterations an epoch.
USB_EPOCH = 1024


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 with gradient: every process's loss reaches every row's owner
    (backward: the gradients of the gathered rows summed over processes, this rank's slice)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, offset: int) -> torch.Tensor:
        ctx.offset, ctx.n = offset, rows.shape[0]
        return dist.all_gather_cat(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = dist.all_reduce_sum(grad.contiguous())
        return total[ctx.offset : ctx.offset + ctx.n], None


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(every process's rows in rank order, this rank's first row in them)``; with gradient
    (``_GatherRows``) when ``rows`` requires it.  One process: ``(rows, 0)``."""
    if not dist.is_distributed():
        return rows, 0
    ranks = torch.full((rows.shape[0],), dist.get_rank(), device=rows.device)
    offset = int((dist.all_gather_cat(ranks) < dist.get_rank()).sum().item())
    if rows.requires_grad:
        return _GatherRows.apply(rows, offset), offset
    return dist.all_gather_cat(rows), offset


class QueueAlignment(nn.Module):
    """Distribution alignment towards uniform with ``p_model`` the mean of the last ``length``
    global batch means of the weak-view probabilities (the authors' ``prob_list``; USB's
    ``DistAlignQueueHook``).

    ``usb=False``: ``p / p_model``, renormalised, ``p_model`` the mean of the filled entries;
    ``usb=True``: ``p (1/C + 1e-6) / (mean of all ``length`` entries, zeros included, + 1e-6)``.
    """

    means: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, num_classes: int, length: int = 32, usb: bool = False) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.length = check_positive_int(length, "da_len")
        self.usb = bool(usb)
        self.register_buffer("means", torch.zeros(self.length, self.num_classes))
        self.register_buffer("ptr", torch.tensor(0))
        self.register_buffer("filled", torch.tensor(0))

    @torch.no_grad()
    def update(self, probs: torch.Tensor) -> None:
        """Write the global batch mean at ``ptr`` (an empty global batch writes nothing)."""
        total, count = dist.all_reduce_sums(
            probs.to(self.means.dtype).sum(dim=0),
            torch.tensor([float(probs.shape[0])], dtype=self.means.dtype, device=probs.device),
        )
        seen = count > 0
        row = torch.where(seen, total / count.clamp(min=1.0), self.means[self.ptr])
        self.means.index_copy_(0, self.ptr.view(1), row.view(1, -1))
        step = seen.long().squeeze(0)
        self.ptr.copy_((self.ptr + step) % self.length)
        self.filled.copy_((self.filled + step).clamp(max=self.length))

    @property
    def p_model(self) -> torch.Tensor:
        """The model's class distribution the alignment divides by."""
        if self.usb:
            return self.means.mean(dim=0)
        return self.means.sum(dim=0) / self.filled.clamp(min=1)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        work = wide(probs)
        if self.usb:
            uniform = 1.0 / self.num_classes
            aligned = work * (uniform + 1e-6) / (self.p_model.to(work.dtype) + 1e-6)
        else:  # tiny: a class whose mean underflowed to 0 (the paper's division is undefined)
            aligned = work / self.p_model.to(work.dtype).clamp(min=torch.finfo(work.dtype).tiny)
        return aligned / aligned.sum(dim=1, keepdim=True)

    def describe(self) -> dict:
        return {"type": "queue", "length": self.length, "p_model": self.p_model.tolist()}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, length={self.length}, usb={self.usb}"


class MemoryBank(nn.Module):
    """A ring buffer of (embedding, class probabilities) rows, ``queue_batch`` steps long.

    Its size is ``queue_batch`` times the global rows of the first step that fills it
    (``queue_batch * (mu + 1) * B``, the authors' ``queue_size``): known at the first step, so
    the buffers start empty and a checkpoint's bank is loaded at its saved size.
    """

    feats: torch.Tensor
    probs: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, dim: int, num_classes: int, queue_batch: int) -> None:
        super().__init__()
        self.queue_batch = check_positive_int(queue_batch, "queue_batch")
        self.register_buffer("feats", torch.zeros(0, dim))
        self.register_buffer("probs", torch.zeros(0, num_classes))
        self.register_buffer("ptr", torch.tensor(0))
        self.register_buffer("filled", torch.tensor(0))  # rows written, up to the size

    @torch.no_grad()
    def push(self, feats: torch.Tensor, probs: torch.Tensor) -> None:
        """Write the rows at ``ptr`` (wrapping around); the first push sizes the bank."""
        n = feats.shape[0]
        if self.feats.shape[0] == 0:
            if n == 0:
                return
            size = self.queue_batch * n
            self.feats = self.feats.new_zeros(size, self.feats.shape[1])
            self.probs = self.probs.new_zeros(size, self.probs.shape[1])
        size = self.feats.shape[0]
        feats, probs = feats[-size:], probs[-size:]  # a step larger than the bank: its last rows
        idx = (self.ptr + torch.arange(feats.shape[0], device=feats.device)) % size
        self.feats.index_copy_(0, idx, feats.to(self.feats.dtype))
        self.probs.index_copy_(0, idx, probs.to(self.probs.dtype))
        self.ptr.copy_((self.ptr + feats.shape[0]) % size)
        self.filled.copy_((self.filled + feats.shape[0]).clamp(max=size))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # The saved bank has the size the saving run gave it (empty before its first step).
        for name in ("feats", "probs"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, getattr(self, name).new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args)

    @property
    def allocated(self) -> bool:
        return self.feats.shape[0] > 0

    def smooth(
        self, p: torch.Tensor, z: torch.Tensor, alpha: float, temperature: float
    ) -> torch.Tensor:
        """``alpha p + (1 - alpha) sum_k softmax_k(z . z_k / T) p_k`` for each row, once the
        bank is full (before, ``p``: a run started past ``queue_batch`` with an empty bank;
        a tensor condition, so no host synchronisation)."""
        a = torch.softmax(z @ self.feats.to(z.dtype).t() / temperature, dim=1)
        smoothed = alpha * p + (1 - alpha) * (a @ self.probs.to(z.dtype))
        return torch.where(self.filled >= self.feats.shape[0], smoothed, p)


class CoMatch(SSLAlgorithm):
    """CoMatch's loss from the step's joint forward (``needs.features``, two strong views)."""

    def __init__(
        self,
        num_classes: int,
        *,
        tau: float,
        lambda_u: float,
        lambda_c: float,
        contrast_tau: float,
        temperature: float,
        smoothing_alpha: float,
        queue_batch: int,
        proj_size: int,
        da_len: int,
        smoothing_start: int,
        contrast_scope: Literal["global", "process"],
        comatch_eps: Literal["paper", "usb"],
    ) -> None:
        if comatch_eps not in ("paper", "usb"):
            raise ValueError(f"comatch_eps must be 'paper' or 'usb'; got {comatch_eps!r}")
        alignment = QueueAlignment(num_classes, da_len, usb=comatch_eps == "usb")
        super().__init__(FixedThreshold(tau), alignment, lambda_u=lambda_u, name="comatch")
        _check_options(lambda_c, contrast_tau, temperature, smoothing_alpha, smoothing_start)
        if contrast_scope not in ("global", "process"):
            raise ValueError(
                f"contrast_scope must be 'global' or 'process'; got {contrast_scope!r}"
            )
        self.num_classes = num_classes
        self.lambda_c, self.contrast_tau = float(lambda_c), float(contrast_tau)
        self.temperature, self.smoothing_alpha = float(temperature), float(smoothing_alpha)
        self.proj_size = check_positive_int(proj_size, "proj_size")
        self.smoothing_start = int(smoothing_start)
        self.contrast_scope, self.comatch_eps = contrast_scope, comatch_eps
        self.bank = MemoryBank(self.proj_size, num_classes, queue_batch)

    @property
    def needs(self) -> Needs:
        return dataclasses.replace(super().needs, strong_views=2, iteration=True, features=True)

    @property
    def has_extra_loss(self) -> bool:
        """The records' ``extra_loss`` is the contrastive loss L_ctr."""
        return True

    def make_heads(self, num_features: int) -> nn.Module:
        """USB's projection head: Linear(D, D), ReLU, Linear(D, proj_size)."""
        proj = nn.Sequential(
            nn.Linear(num_features, num_features),
            nn.ReLU(),
            nn.Linear(num_features, self.proj_size),
        )
        return nn.ModuleDict({"proj": proj})

    def smooths_at(self, iteration: int) -> bool:
        """Whether the pseudo-labels of ``iteration`` (0-based) are memory-smoothed: once the
        bank is full (after ``queue_batch`` steps) and from ``smoothing_start`` on."""
        return iteration > self.bank.queue_batch and iteration >= self.smoothing_start

    def embed(self, out: StepOutputs) -> tuple[torch.Tensor, ...]:
        """``(z_lb, z_weak, z0, z1)``: the L2-normalised projections (one pass of the head; the
        labeled and weak rows without gradient)."""
        assert out.heads is not None and out.feats_lb is not None and out.feats_student
        assert out.feats_weak is not None
        if len(out.feats_student) != 2:
            raise ValueError("comatch needs two strong views (u_strong=(view_0, view_1))")
        n_lb, n_u = out.feats_lb.shape[0], out.feats_weak.shape[0]
        rows = torch.cat([out.feats_lb.detach(), out.feats_weak, *out.feats_student])
        z = F.normalize(wide(out.heads["proj"](rows)), dim=1)
        z_lb, z_w, z0, z1 = z.split([n_lb, n_u, n_u, n_u])
        return z_lb.detach(), z_w.detach(), z0, z1

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        if out.iteration is None:
            raise ValueError(
                "comatch needs the iteration (train_step(..., info=StepInfo(iteration=k)))"
            )
        z_lb, z_w, z0, z1 = self.embed(out)
        with torch.autocast(z0.device.type, enabled=False):  # the graphs in float32 at least
            q, weights = self.pseudo_labels(out, z_lb, z_w)
            log_q = torch.log_softmax(wide(out.logits_student[0]), dim=1)
            n = q.shape[0]
            unsup = (weights * -(q * log_q).sum(dim=1)).sum() / max(n, 1)
            contrast = self.contrastive(q, z0, z1)
        loss = out.sup_loss + self.lambda_u * unsup + self.lambda_c * contrast
        confidence, pseudo = q.max(dim=1)
        return loss, UnlabeledResult(weights, confidence, pseudo, unsup, contrast)

    @torch.no_grad()
    def pseudo_labels(
        self, out: StepOutputs, z_lb: torch.Tensor, z_w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q, 1[max q >= tau])``: aligned, memory-smoothed targets; then the bank takes the
        step's weak embeddings with the aligned (unlabeled) and one-hot (labeled) rows."""
        probs = torch.softmax(wide(out.logits_weak), dim=1)
        assert self.alignment is not None
        self.alignment.update(probs)
        p = self.alignment(probs)
        q = p
        if self.smooths_at(int(out.iteration)) and self.bank.allocated:  # type: ignore[arg-type]
            q = self.bank.smooth(p, z_w, self.smoothing_alpha, self.temperature)
        weights = self.weighting(q)  # type: ignore[misc]
        onehot = F.one_hot(out.y_lb, self.num_classes).to(p.dtype)
        # One process's row order (every unlabeled row, then every labeled row); embeddings and
        # probabilities travel together (one gather each for the unlabeled and labeled rows).
        d = z_w.shape[1]
        unlabeled = dist.all_gather_cat(torch.cat([z_w, p.to(z_w.dtype)], dim=1))
        labeled = dist.all_gather_cat(torch.cat([z_lb, onehot.to(z_lb.dtype)], dim=1))
        rows = torch.cat([unlabeled, labeled])
        self.bank.push(rows[:, :d], rows[:, d:])
        return q, weights

    def contrastive(self, q: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
        """``L_ctr``: the pseudo-label graph (self-loops, edges >= ``contrast_tau``) as the
        target of the embedding graph's rows; its columns are the global batch's second strong
        views (``contrast_scope="global"``) or this process's (``"process"``, USB)."""
        if self.contrast_scope == "global":
            q_all, offset = gather_rows(q)
            z1_all = _GatherRows.apply(z1, offset) if dist.is_distributed() else z1
        else:
            q_all, z1_all, offset = q, z1, 0
        n = q.shape[0]
        graph = q @ q_all.t()
        rows = torch.arange(n, device=q.device)
        graph[rows, rows + offset] = 1.0
        graph = graph * (graph >= self.contrast_tau).to(graph.dtype)
        graph = graph / graph.sum(dim=1, keepdim=True)
        logits = z0 @ z1_all.t() / self.temperature
        if self.comatch_eps == "usb":
            log_p = torch.log(torch.softmax(logits, dim=1) + 1e-7)
        else:
            log_p = torch.log_softmax(logits, dim=1)
        return -(graph.detach() * log_p).sum() / max(n, 1)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["weighting"]["on"] = "memory-smoothed q"
        return info

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda_c={self.lambda_c}, contrast_tau={self.contrast_tau}, "
            f"temperature={self.temperature}, smoothing_alpha={self.smoothing_alpha}, "
            f"proj_size={self.proj_size}, smoothing_start={self.smoothing_start}, "
            f"contrast_scope={self.contrast_scope!r}, comatch_eps={self.comatch_eps!r}"
        )


def _check_options(
    lambda_c: float, contrast_tau: float, temperature: float, alpha: float, start: int
) -> None:
    if not lambda_c >= 0:
        raise ValueError(f"lambda_c must be >= 0; got {lambda_c}")
    if not 0.0 <= contrast_tau <= 1.0:
        raise ValueError(f"contrast_tau must be in [0, 1]; got {contrast_tau}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing_alpha must be in [0, 1]; got {alpha}")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"smoothing_start must be an integer >= 0; got {start!r}")


PRESETS = MethodPresets(
    {"algorithm": "comatch", "tau": 0.95, "contrast_tau": 0.8, "lambda_c": 1.0,
     "temperature": 0.2, "smoothing_alpha": 0.9, "queue_batch": 5, "proj_size": 64,
     "da_len": 32, "smoothing_start": USB_EPOCH},
    source="usb",
    note="; USB's smoothing from its second epoch (iteration 1024)",
    settings={
        "cifar100-400": {"backbone": "wrn_28_2"},  # USB's CoMatch configs: WRN-28-2
        "cifar100-2500": {"backbone": "wrn_28_2"},
        "stl10-40": {"lambda_c": 5.0},
        "stl10-1000": {"lambda_c": 5.0},
    },
    nlp=True,
    nlp_values={"queue_batch": 128},
)  # fmt: skip


@register_method(presets=PRESETS)
def comatch(
    num_classes: int,
    *,
    tau: float = 0.95,
    lambda_u: float = 1.0,
    lambda_c: float = 1.0,
    contrast_tau: float = 0.8,
    temperature: float = 0.2,
    smoothing_alpha: float = 0.9,
    queue_batch: int = 5,
    proj_size: int = 64,
    da_len: int = 32,
    smoothing_start: int = 0,
    contrast_scope: Literal["global", "process"] = "global",
    comatch_eps: Literal["paper", "usb"] = "paper",
) -> CoMatch:
    """CoMatch: memory-smoothed pseudo-labels and a pseudo-label-graph contrastive loss.

    Args:
        num_classes: number of classes.
        tau: confidence threshold on the memory-smoothed pseudo-label (USB's p_cutoff, 0.95).
        lambda_u: weight of the unlabeled cross-entropy (paper and USB 1).
        lambda_c: weight of the contrastive loss (USB's contrast_loss_ratio: 1, STL-10 5).
        contrast_tau: edges of the pseudo-label graph below it are cut (USB's
            contrast_p_cutoff, 0.8).
        temperature: T of the memory smoothing and of the embedding graph (paper and USB's
            configs 0.2).
        smoothing_alpha: weight alpha of the model's own prediction in the memory-smoothed
            pseudo-label (paper and USB 0.9).
        queue_batch: the memory bank holds the weak-view embeddings of the last queue_batch
            steps' labeled and unlabeled rows (paper and USB 5; USB NLP 128).
        proj_size: size of the L2-normalised embedding of the projection head (64).
        da_len: distribution alignment over the last da_len batch means (paper and USB 32).
        smoothing_start: first iteration of memory smoothing, which also waits for a full bank
            (paper 0; USB's presets 1024, its second epoch).
        contrast_scope: the contrastive graph over the global batch (default: W processes
            equal one) or each process's own rows (process, USB under torchrun).
        comatch_eps: paper (exact log-softmax and DA) or usb (log(p + 1e-7) and the DA
            hook's 1e-6 guards over a zero-filled queue).
    """
    return CoMatch(
        num_classes,
        tau=check_tau(tau),
        lambda_u=lambda_u,
        lambda_c=lambda_c,
        contrast_tau=contrast_tau,
        temperature=temperature,
        smoothing_alpha=smoothing_alpha,
        queue_batch=queue_batch,
        proj_size=proj_size,
        da_len=da_len,
        smoothing_start=smoothing_start,
        contrast_scope=contrast_scope,
        comatch_eps=comatch_eps,
    )
