"""SimMatch (Zheng et al., CVPR 2022): semantic and instance similarity, labeled memory bank.

A projection head ``g`` (USB's MLP ``D -> D -> proj_size``, L2-normalised) embeds every row;
a bank holds one embedding ``b_j`` and label ``y_j`` per labeled sample (K = the labeled set's
size, USB's ``K = lb_dest_len``).  With ``z^w``/``z^s`` the weak/strong embeddings of an
unlabeled row and ``p`` its weak-view class probabilities (after distribution alignment):

    q^w_j = softmax_j(z^w . b_j / T),   q^s_j = softmax_j(z^s . b_j / T)       (instance similarity)
    q_hat_j = q^w_j p_{y_j} / sum_k q^w_k p_{y_k}                              (unfolding)
    q^agg_c = sum_{j: y_j = c} q^w_j                                           (aggregation)
    p_hat = alpha p + (1 - alpha) q^agg    (the authors' code, USB: ``propagation="smoothing"``)
    p_hat = normalize(p * q^agg)           (``propagation="product"``, see below)
    L = mean_B H(y, f(x))
        + lambda_u (1/(mu B)) sum_i 1[max p_hat_i >= tau] H(p_hat_i, softmax f(s_i))
        + lambda_in (1/(mu B)) sum_i H(q_hat_i, q^s_i)

After the loss, the labeled rows' embeddings enter the bank at their positions in the labeled
set (``Needs.labeled_indices``), gathered from every process as USB gathers them: from the
weight EMA with ``bank_teacher="ema"`` (its own forward of the labeled batch, train mode, no
gradient, BatchNorm statistics untouched) or from the student's joint forward
(``"student"``), written as ``normalize(m b_j + (1 - m) z_j)`` with ``bank_momentum`` m.
Distribution alignment as USB's ``DistAlignQueueHook`` (CoMatch's ``QueueAlignment`` with
``usb=True``): ``p (1/C + eps) / (mean(queue) + eps)`` normalised (eps 1e-6), the queue
holding the last ``da_len`` global batch means (zeros at first).

Paper vs USB 0.3.2 (defaults: the paper and the authors' code; USB's values are the presets):
the label propagation is the smoothing with ``alpha`` 0.9 in the authors' released code
(mingkai-zheng/SimMatch, ``c_smooth``) and in USB, the default; the normalised product is
offered as ``propagation="product"``, a reading of the paper's equation for ``p_hat`` that was
not checked against the paper's text here; the first epoch without the instance loss and without
propagation (official code and USB: ``in_warmup``, one epoch = 1/1024 of the classic-CV budget,
1/100 of the NLP one; the paper states none, default 0); the bank (USB: the student's
embeddings with momentum 0.7 on CIFAR/SVHN/STL/AG News/IMDb/DBpedia, the EMA teacher's
overwritten elsewhere - ``bank_teacher``/``bank_momentum``); EPASS (USB's classic-CV configs
average 3 projection MLPs: ``proj_heads`` 3).  USB's teacher forward runs with the EMA weights
swapped into the live model, so it also moves the live BatchNorm statistics; here the
teacher's statistics stay untouched.  Bank entries never written yet (USB: random unit vectors
of label 0) are left out of the similarities here; once every labeled sample has been seen
(USB's presets: within the warm-up) it makes no difference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semimatch import distributed as dist
from semimatch.methods.blocks import (
    check_momentum,
    check_num_classes,
    check_tau,
    frozen_bn,
    train_mode,
)
from semimatch.methods.classic import mean_rows, wide
from semimatch.methods.comatch import QueueAlignment
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import FixedThreshold, fixed_lambda
from semimatch.methods.heads import heads_of, record_features, unwrap
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["ProjectionHead", "SimMatch", "last_occurrence", "simmatch"]

_BANK_SEED = 0x53494D  # every process draws the same initial bank


class ProjectionHead(nn.Module):
    """USB's ``mlp_proj``: ``Linear(D, D) -> ReLU -> Linear(D, proj_size)``, the mean of
    ``heads`` such MLPs (EPASS: 3), L2-normalised."""

    def __init__(self, num_features: int, proj_size: int, heads: int = 1) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(num_features, num_features),
                nn.ReLU(),
                nn.Linear(num_features, proj_size),
            )
            for _ in range(heads)
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        out = sum(mlp(feats) for mlp in self.mlps) / len(self.mlps)
        return F.normalize(out, dim=1)  # type: ignore[arg-type]


def last_occurrence(index: torch.Tensor, size: int) -> torch.Tensor:
    """(N,) bool: row i is the last row with its index (a bank written row by row keeps the
    last; explicit, so it holds on any device and any order of the scatter)."""
    order = torch.arange(index.shape[0], device=index.device)
    last = torch.full((size,), -1, dtype=torch.long, device=index.device)
    last = last.scatter_reduce(0, index, order, reduce="amax")
    return last[index] == order


class SimMatch(SSLAlgorithm):
    """SimMatch's loss and its labeled memory bank (buffers: ``bank`` (proj_size, K),
    ``bank_labels`` (K,), ``bank_seen`` (K,); the alignment queue)."""

    bank: torch.Tensor
    bank_labels: torch.Tensor
    bank_seen: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        num_labeled: int,
        *,
        tau: float,
        lambda_u: float,
        lambda_in: float,
        sim_temperature: float,
        proj_size: int,
        proj_heads: int,
        da_len: int,
        propagation: Literal["product", "smoothing"],
        smoothing_alpha: float,
        bank_teacher: Literal["student", "ema"],
        bank_momentum: float,
        in_warmup: float,
        num_iterations: int | None = None,
    ) -> None:
        super().__init__(
            FixedThreshold(tau), QueueAlignment(num_classes, da_len, usb=True), lambda_u=lambda_u,
            name="simmatch",
        )  # fmt: skip
        _check(lambda_in, sim_temperature, proj_size, proj_heads, propagation, smoothing_alpha)
        if bank_teacher not in ("student", "ema"):
            raise ValueError(f"bank_teacher must be 'student' or 'ema'; got {bank_teacher!r}")
        if not 0.0 <= in_warmup <= 1.0:
            raise ValueError(f"in_warmup must be in [0, 1]; got {in_warmup}")
        self.num_classes = check_num_classes(num_classes)
        self.tau, self.lambda_in = check_tau(tau), float(lambda_in)
        self.extra_loss_weight = self.lambda_in  # the records' loss: sup + ... + lambda_in L_in
        self.sim_temperature, self.proj_size = float(sim_temperature), int(proj_size)
        self.proj_heads, self.propagation = int(proj_heads), propagation
        self.smoothing_alpha, self.bank_teacher = float(smoothing_alpha), bank_teacher
        self.bank_momentum = check_momentum(bank_momentum, "bank_momentum")
        self.in_warmup = float(in_warmup)
        self.warmup_iterations = int(self.in_warmup * num_iterations) if num_iterations else 0
        g = torch.Generator().manual_seed(_BANK_SEED)
        k = int(num_labeled)
        self.register_buffer("bank", F.normalize(torch.randn(proj_size, k, generator=g), dim=0))
        self.register_buffer("bank_labels", torch.zeros(k, dtype=torch.long))
        self.register_buffer("bank_seen", torch.zeros(k, dtype=torch.bool))

    @property
    def needs(self) -> Needs:
        return dataclasses.replace(
            super().needs,
            features=True,
            labeled_indices=True,
            teacher_model=self.bank_teacher == "ema",
            iteration=self.warmup_iterations > 0,
        )

    @property
    def has_extra_loss(self) -> bool:
        return True  # the instance-similarity loss L_in, recorded as the extra term

    @property
    def num_labeled(self) -> int:
        return int(self.bank.shape[1])

    def make_heads(self, num_features: int) -> nn.Module:
        return nn.ModuleDict(
            {"proj": ProjectionHead(num_features, self.proj_size, self.proj_heads)}
        )

    def propagate(
        self, probs: torch.Tensor, z_weak: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor,
        seen: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(p_hat, q_hat, active)``: the propagated class and instance pseudo-labels; bank
        entries not written yet are left out (``active``: some entry was written)."""
        logits = z_weak @ bank / self.sim_temperature
        q_w = torch.softmax(logits.masked_fill(~seen, torch.finfo(logits.dtype).min), dim=1)
        q_w = q_w * seen  # no entry written: all zeros (the step runs without propagation)
        n = probs.shape[0]
        unfold = probs.gather(1, labels.expand(n, -1))
        q_hat = q_w * unfold
        q_hat = q_hat / q_hat.sum(dim=1, keepdim=True).clamp(min=torch.finfo(q_hat.dtype).tiny)
        q_agg = torch.zeros_like(probs).scatter_add(1, labels.expand(n, -1), q_w)
        if self.propagation == "product":
            p_hat = probs * q_agg
            p_hat = p_hat / p_hat.sum(dim=1, keepdim=True).clamp(min=torch.finfo(p_hat.dtype).tiny)
        else:
            p_hat = self.smoothing_alpha * probs + (1 - self.smoothing_alpha) * q_agg
        active = seen.any()
        return torch.where(active, p_hat, probs), q_hat, active

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        assert out.heads is not None and out.feats_weak is not None and out.feats_student
        if self.num_labeled == 0:
            raise ValueError(
                "simmatch's labeled memory bank is empty: build it with the labeled set's size "
                "(build_algorithm('simmatch', C, num_labeled=len(labeled)); training passes it)"
            )
        proj = out.heads["proj"]
        with torch.no_grad():
            z_weak = proj(out.feats_weak)
        z_strong = proj(out.feats_student[0])  # the heads run as the model does (autocast)
        # The similarities and the propagation in float32 at least, outside autocast (a bf16
        # matmul over the bank would round the similarities before the temperature's 1/0.1).
        with torch.autocast(z_strong.device.type, enabled=False):
            probs = torch.softmax(wide(out.logits_weak), dim=1)
            assert self.alignment is not None
            self.alignment.update(probs)
            probs = self.alignment(probs)
            bank = self.bank.clone().to(probs.dtype)
            with torch.no_grad():
                p_hat, q_hat, active = self.propagate(
                    probs, z_weak.to(probs.dtype), bank, self.bank_labels, self.bank_seen
                )
            logits_s = z_strong.to(bank.dtype) @ bank / self.sim_temperature
            # Entries not written yet take no part (a finite floor: q_hat is 0 there).
            logits_s = logits_s.masked_fill(~self.bank_seen, torch.finfo(logits_s.dtype).min)
            log_q_s = torch.log_softmax(logits_s, dim=1)
            in_loss = mean_rows(-(q_hat * log_q_s).sum(dim=1)) * active
        warm = out.iteration is not None and out.iteration < self.warmup_iterations
        if warm:  # the official code's and USB's first epoch
            in_loss, p_hat = in_loss * 0.0, probs
        confidence, pseudo = p_hat.max(dim=1)
        mask = self.weighting(p_hat.float()).to(p_hat.dtype)  # type: ignore[misc]
        log_p_s = torch.log_softmax(wide(out.logits_student[0]), dim=1)
        unsup = mean_rows(mask * -(p_hat * log_p_s).sum(dim=1))
        loss = out.sup_loss + self.lambda_u * unsup + self.lambda_in * in_loss
        self.update_bank(out)
        return loss, UnlabeledResult(mask, confidence, pseudo, unsup, in_loss)

    @torch.no_grad()
    def embed_labeled(self, out: StepOutputs) -> torch.Tensor:
        """The labeled rows' bank embeddings: the teacher's own forward (``"ema"``) or the
        student's joint forward (``"student"``)."""
        if self.bank_teacher == "student":
            assert out.feats_lb is not None and out.heads is not None
            return out.heads["proj"](out.feats_lb.detach())
        teacher, x_lb = out.teacher_model, out.x_lb
        if teacher is None or x_lb is None:
            raise ValueError(
                "simmatch's ema bank embeds the labeled batch with the teacher: the step hands "
                "StepOutputs.teacher_model and x_lb (needs.teacher_model)"
            )
        teacher = unwrap(teacher)
        with train_mode(teacher), frozen_bn(teacher), record_features(teacher) as feats:
            teacher(x_lb)
        return heads_of(teacher)["proj"](torch.cat(feats))

    @torch.no_grad()
    def update_bank(self, out: StepOutputs) -> None:
        """Write the labeled rows (every process's, in the one-process order) into the bank."""
        assert out.lb_idx is not None  # needs.labeled_indices
        z = self.embed_labeled(out).to(self.bank.dtype)
        rank, world = dist.get_rank(), dist.get_world_size()
        # The stream deals a global batch's rows to the ranks in turn: row j of rank r is row
        # r + j * world of the one-process batch; sorting by it restores that order.
        order = rank + world * torch.arange(z.shape[0], device=z.device)
        z, labels, index, order = (
            dist.all_gather_cat(t) for t in (z, out.y_lb, out.lb_idx.to(z.device), order)
        )
        sort = order.argsort()
        z, labels, index = z[sort], labels[sort], index[sort].long()
        if index.numel() and int(index.max()) >= self.num_labeled:
            raise ValueError(
                f"a labeled row's position {int(index.max())} is outside simmatch's bank of "
                f"{self.num_labeled} labeled samples: build it with num_labeled=len(labeled)"
            )
        keep = last_occurrence(index, self.num_labeled)
        z, labels, index = z[keep], labels[keep], index[keep]
        m = self.bank_momentum
        if m > 0:
            old = self.bank[:, index].t()
            z = F.normalize(m * old + (1 - m) * z, dim=1)
        self.bank[:, index] = z.t()
        self.bank_labels[index] = labels
        self.bank_seen[index] = True

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # A reloaded run is built before its labeled set is known (an empty bank): the saved
        # bank's size wins.  A bank of a known size must match (else the load is refused).
        for name in ("bank", "bank_labels", "bank_seen"):
            saved, mine = state_dict.get(prefix + name), getattr(self, name)
            if saved is not None and mine.numel() == 0 and saved.shape != mine.shape:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def describe(self) -> dict[str, Any]:
        info = self.weighting.describe()  # type: ignore[union-attr]
        return {"weighting": info, "p_model": self.alignment.p_model.tolist()}  # type: ignore[union-attr]

    def extra_repr(self) -> str:
        return (
            f"name='simmatch', tau={self.tau}, lambda_u={self.lambda_u}, "
            f"lambda_in={self.lambda_in}, T={self.sim_temperature}, bank={self.num_labeled}, "
            f"propagation={self.propagation!r}, bank_teacher={self.bank_teacher!r}, "
            f"bank_momentum={self.bank_momentum}, in_warmup={self.in_warmup}"
        )


def _check(
    lambda_in: float, temperature: float, proj_size: int, heads: int, propagation: str,
    alpha: float,
) -> None:  # fmt: skip
    if lambda_in < 0 or not temperature > 0:
        raise ValueError(
            f"lambda_in must be >= 0 and sim_temperature > 0; got {lambda_in}, {temperature}"
        )
    if proj_size < 1 or heads < 1:
        raise ValueError(f"proj_size and proj_heads must be >= 1; got {proj_size}, {heads}")
    if propagation not in ("product", "smoothing"):
        raise ValueError(f"propagation must be 'product' or 'smoothing'; got {propagation!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing_alpha must be in [0, 1]; got {alpha}")


_USB = {"propagation": "smoothing", "smoothing_alpha": 0.9, "lambda_in": 1.0, "da_len": 32}
#: USB's ``use_ema_teacher``: False (the student's embeddings, bank momentum 0.7) on its list of
#: small datasets (CIFAR, SVHN, STL-10, AG News, IMDb, DBpedia...), True elsewhere (overwritten).
_EMA_TEACHER = {"bank_teacher": "ema", "bank_momentum": 0.0}
PRESETS = MethodPresets(
    {"algorithm": "simmatch", "tau": 0.95, "lambda_u": 1.0, "sim_temperature": 0.1,
     "proj_size": 128, "proj_heads": 3, "bank_teacher": "student", "bank_momentum": 0.7,
     "in_warmup": 1 / 1024, **_USB},
    source="usb",
    note="; USB's smoothing propagation (alpha 0.9), the first of 1024 epochs without the "
    "instance loss, the student's bank with momentum 0.7, EPASS's 3 projection heads",
    nlp=True,
    nlp_values={"proj_heads": 1, "in_warmup": 1 / 100},
    settings={"yelp_review": _EMA_TEACHER, "amazon_review": _EMA_TEACHER,
              "yahoo_answers": _EMA_TEACHER},
)  # fmt: skip


@register_method(formulas={"fixed": (("tau",), fixed_lambda)}, presets=PRESETS)
def simmatch(
    num_classes: int,
    *,
    num_labeled: int | None = None,
    num_iterations: int | None = None,
    tau: float = 0.95,
    lambda_u: float = 1.0,
    lambda_in: float = 1.0,
    sim_temperature: float = 0.1,
    proj_size: int = 128,
    proj_heads: int = 1,
    da_len: int = 32,
    propagation: Literal["product", "smoothing"] = "smoothing",
    smoothing_alpha: float = 0.9,
    bank_teacher: Literal["student", "ema"] = "ema",
    bank_momentum: float = 0.0,
    in_warmup: float = 0.0,
) -> SimMatch:
    """SimMatch: instance similarities to a labeled memory bank propagate the pseudo-labels.

    Args:
        num_classes: number of classes.
        tau: confidence threshold on the propagated pseudo-label (USB p_cutoff 0.95).
        lambda_u: unlabeled (class) loss weight.
        lambda_in: instance-similarity loss weight (USB in_loss_ratio 1; paper ImageNet 5).
        sim_temperature: temperature T of the similarities to the bank (paper and USB 0.1).
        proj_size: size of the projected embedding (paper and USB 128).
        proj_heads: projection MLPs averaged (1; EPASS in USB's configs for images: 3).
        da_len: distribution alignment queue of past batch means (USB 32; ImageNet 256).
        propagation: the propagated pseudo-label, smoothing alpha p + (1 - alpha) q_agg (the
            authors' code and USB) or product normalize(p * q_agg) (a reading of the paper's
            equation, unverified).
        smoothing_alpha: alpha of propagation smoothing (USB 0.9).
        bank_teacher: the bank's embeddings, ema (the weight EMA's own forward of the labeled
            batch: the paper's code, USB on large datasets) or student (the joint forward's:
            USB on CIFAR, SVHN, STL-10, AG News, IMDb).
        bank_momentum: momentum m of the bank entries, normalize(m old + (1 - m) new) (0:
            overwrite, the paper's code; USB's student bank 0.7).
        in_warmup: share of the budget without the instance loss and propagation (the official
            code's and USB's first epoch: 1/1024 classic-CV, 1/100 NLP; paper 0).
    """
    if num_labeled is None:
        num_labeled = 0  # a reloaded run: the checkpoint's bank decides its size
    return SimMatch(
        num_classes, num_labeled, tau=tau, lambda_u=lambda_u, lambda_in=lambda_in,
        sim_temperature=sim_temperature, proj_size=proj_size, proj_heads=proj_heads,
        da_len=da_len, propagation=propagation, smoothing_alpha=smoothing_alpha,
        bank_teacher=bank_teacher, bank_momentum=bank_momentum, in_warmup=in_warmup,
        num_iterations=num_iterations,
    )  # fmt: skip
