"""CRMatch (Fan et al., IJCV 2022, "Revisiting Consistency Regularization for Deep
Semi-Supervised Learning"): FixMatch's thresholded pseudo-labels, the feature distance loss
(FeatDistLoss) between the weak and strong views' projected features, and rotation prediction.

    L = mean_B H(y, f(x)) + lambda_u L_u + lambda_fd L_fd + lambda_rot L_rot
    m_i = 1[max_c p(c | weak(u_i)) >= tau],   y_hat_i = argmax_c p(c | weak(u_i))
    L_u = (1 / mu B) sum_i m_i H(y_hat_i, f(strong(u_i)))
    L_fd = (1 / mu B) sum_i m_i max(0, cos(g(h(strong(u_i))), g(h(weak(u_i)))))
    L_rot = (1 / 4 B) sum_{j <= B, r in 0..3} H(r, rot(h(R_r weak(u_j))))

``h`` the backbone's feature vector (the classifier's input), ``g`` a linear projection
(``ds``, width of the features), ``rot`` an MLP ``Linear(D, D), ReLU, Linear(D, 4)`` and
``R_r`` the rotation by ``r * 90`` degrees.  ``L_fd`` is USB's
``cosine_embedding_loss(g_s, g_w, target=-1)``: it *increases* the distance of the two views'
features (the paper's equivariance on the feature level) down to orthogonal, on the confident
rows only, while ``L_u`` keeps their predictions consistent.

The method forwards the model itself (``needs.forward = False``): one joint forward of the
labeled rows, the weak and the strong unlabeled views and the 4 B rotated images, as USB's
``use_cat`` forward (BatchNorm sees them all), its features recorded by ``methods.heads``; the
heads (``ds``, ``rot``) hang on the model, so the optimiser, the EMA and checkpoints cover them.
CRMatch has no state beyond the weights: nothing to gather under torchrun (each process's loss
is a mean over its rows, DDP averages the gradients, as USB).

USB 0.3.2 (``crmatch.py``; USB's authors include the paper's first author) and here:

- The rotated images: USB draws B more unlabeled images with the weak (labeled) augmentation
  from a loader of their own; here the first B weak unlabeled rows of the batch (B the labeled
  batch size), rotated four ways: the same distribution, no second data stream.
- ``g``'s input: USB projects the *flattened feature map* before pooling of its WRNs
  (``Linear(8 * 8 * C, C)`` at 32 px; 6 x 6 at STL-10's 96 px) and the pooled feature of
  BERT/ViT.  Here ``fd_input="features"`` (default) projects the pooled feature vector of any
  backbone (the heads protocol's tap; texts and feature vectors as USB); ``fd_input="map"``
  (the classic-CV presets) projects the last (N, C, H, W) map before pooling
  (``record_feature_map``), averaged to 8 x 8 and flattened: USB's head exactly at 32 px (the
  map is 8 x 8 there), another map size averaged to 8 x 8 where USB sizes the Linear to it.
- The gradient of ``L_fd``: USB's joint forward (classic CV) lets it reach both views' features
  (``fd_grad="both"``, default); its NLP configs forward the weak view apart without gradient
  (``use_cat: False``): ``fd_grad="strong"``, the NLP presets.
- USB adds ``L_u``, ``L_fd`` and ``L_rot`` with weight 1 whatever ``ulb_loss_ratio`` and
  ``rot_loss_ratio`` say (``rot_loss_ratio`` only switches the rotation on); every USB config
  sets 1, so the weights here (1 by default) give USB's loss.
- Rotation needs square images (``needs.spatial``): USB sets ``rot_loss_ratio: 0`` for texts
  and audio, and here feature vectors and texts need ``lambda_rot=0`` (refused before training
  otherwise, naming the flag).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from semimatch.methods.classic import wide
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import FixedThreshold, fixed_lambda
from semimatch.methods.heads import heads_of, record_features, unwrap
from semimatch.methods.registry import MethodPresets, register_method

__all__ = ["CRMatch", "crmatch", "feature_distance", "record_feature_map", "rotations"]

FDGrad = Literal["both", "strong"]
FDInput = Literal["features", "map"]
MAP_GRID = 8  # USB's WRN feature map at 32 px: ds_classifier = Linear(8 * 8 * C, C)


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cat(R_0 x, R_90 x, R_180 x, R_270 x), labels 0..3)`` of an image batch (N, C, H, W):
    USB's ``rotate_img`` (counter-clockwise ``rot90`` in the H, W plane) and its label order."""
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(
            "--algorithm crmatch predicts the rotation of square images (N, C, H, W), but the "
            f"inputs have shape {tuple(x.shape)}; pass --lambda-rot 0 (USB's setting for texts "
            "and audio)"
        )
    views = torch.cat([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])
    return views, labels


def feature_distance(
    proj_strong: torch.Tensor, proj_weak: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``L_fd = (1 / N) sum_i m_i max(0, cos(proj_strong_i, proj_weak_i))`` over all N rows
    (USB: ``cosine_embedding_loss(.., target=-1)``, margin 0, times the mask, mean)."""
    strong, weak = wide(proj_strong), wide(proj_weak)
    target = strong.new_full((strong.shape[0],), -1.0)
    per_row = F.cosine_embedding_loss(strong, weak, target, reduction="none")
    return (per_row * mask.detach()).sum() / max(proj_strong.shape[0], 1)


@contextmanager
def record_feature_map(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, the (N, C, H, W) outputs (H * W > 1) of the model's modules (its heads
    aside), in call order: the last one of a forward is the feature map before global pooling
    (WRN's last activation, SmallCNN's ``features``, a torchvision ResNet's ``layer4``)."""
    root = unwrap(model)
    heads = set(heads_of(root).modules())
    maps: list[torch.Tensor] = []

    def keep(module: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1:
            maps.append(out)

    hooks = [m.register_forward_hook(keep) for m in root.modules() if m not in heads]
    try:
        yield maps
    finally:
        for hook in hooks:
            hook.remove()


@contextmanager
def _nothing() -> Iterator[list[torch.Tensor]]:
    yield []


class CRMatch(SSLAlgorithm):
    """FixMatch's thresholded loss plus the feature distance and the rotation losses."""

    def __init__(
        self,
        *,
        tau: float,
        lambda_u: float,
        lambda_fd: float,
        lambda_rot: float,
        fd_grad: FDGrad,
        fd_input: FDInput = "features",
    ) -> None:
        super().__init__(FixedThreshold(tau), lambda_u=lambda_u, name="crmatch")
        if lambda_fd < 0 or lambda_rot < 0:
            raise ValueError(
                f"lambda_fd and lambda_rot must be >= 0; got {lambda_fd}, {lambda_rot}"
            )
        if fd_grad not in ("both", "strong"):
            raise ValueError(f"fd_grad must be 'both' or 'strong'; got {fd_grad!r}")
        if fd_input not in ("features", "map"):
            raise ValueError(f"fd_input must be 'features' or 'map'; got {fd_input!r}")
        self.lambda_fd, self.lambda_rot = float(lambda_fd), float(lambda_rot)
        self.fd_grad, self.fd_input = fd_grad, fd_input

    @property
    def needs(self) -> Needs:
        rotates = self.lambda_rot > 0  # square images only; B weak rows four ways (memory)
        return dataclasses.replace(
            super().needs, forward=False, features=True, spatial=rotates, extra_rows=4 * rotates
        )

    @property
    def has_extra_loss(self) -> bool:
        return True  # lambda_fd L_fd + lambda_rot L_rot, logged as the extra loss

    def make_heads(self, num_features: int) -> nn.Module:
        """``ds``: the projection ``g`` (D -> D, USB's ``ds_classifier``); ``rot``: the rotation
        classifier (only with ``lambda_rot > 0``, as USB builds it only then)."""
        if self.fd_input == "map":  # USB's WRN head: the flattened 8 x 8 map before pooling
            grid = MAP_GRID * MAP_GRID
            ds: nn.Module = nn.Sequential(
                nn.AdaptiveAvgPool2d(MAP_GRID),
                nn.Flatten(),
                nn.Linear(grid * num_features, num_features),
            )
        else:
            ds = nn.Linear(num_features, num_features)
        heads = {"ds": ds}
        if self.lambda_rot > 0:
            heads["rot"] = nn.Sequential(
                nn.Linear(num_features, num_features), nn.ReLU(), nn.Linear(num_features, 4)
            )
        return nn.ModuleDict(heads)

    def own_step(
        self,
        model: nn.Module,
        x_lb: torch.Tensor,
        y_lb: torch.Tensor,
        u_weak: torch.Tensor,
        strong: Sequence[torch.Tensor],
        info: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, UnlabeledResult]:
        """``(labeled logits, loss, unlabeled part)`` of one step: one joint forward."""
        (u_strong,) = strong
        n_lb, n_u = x_lb.shape[0], u_weak.shape[0]
        rows = [x_lb, u_weak, u_strong]
        if self.lambda_rot > 0:
            x_rot, y_rot = rotations(u_weak[: min(n_lb, n_u)])
            rows.append(x_rot)
        with record_features(model) as records, self._maps(model) as maps:
            logits = model(torch.cat(rows))
        feats = torch.cat(records)
        projected = feats if self.fd_input == "features" else self._feature_map(maps, feats)
        logits_lb = logits[:n_lb]
        weak, student = logits[n_lb : n_lb + n_u], logits[n_lb + n_u : n_lb + 2 * n_u]
        sup_loss = F.cross_entropy(wide(logits_lb), y_lb)
        out = StepOutputs(
            logits_lb, y_lb, sup_loss, weak.detach(), (student,), info.u_idx, info.iteration
        )
        loss, unlabeled = SSLAlgorithm.loss(self, out)  # L_x + lambda_u L_u, FixMatch's
        heads = heads_of(model)
        feats_weak = projected[n_lb : n_lb + n_u]
        if self.fd_grad == "strong":
            feats_weak = feats_weak.detach()
        proj = heads["ds"]
        fd = feature_distance(
            proj(projected[n_lb + n_u : n_lb + 2 * n_u]), proj(feats_weak), unlabeled.weights
        )
        extra = self.lambda_fd * fd
        if self.lambda_rot > 0:
            logits_rot = heads["rot"](feats[n_lb + 2 * n_u :])
            # A sum over max(rows, 1), not a mean: an empty shard (one rank) gives 0, not NaN,
            # and still reaches the head (DDP expects every parameter's gradient).
            per_row = F.cross_entropy(wide(logits_rot), y_rot, reduction="none")
            extra = extra + self.lambda_rot * per_row.sum() / max(y_rot.shape[0], 1)
        unlabeled = unlabeled._replace(extra=extra, sup_loss=sup_loss)
        return logits_lb, loss + extra, unlabeled

    def _maps(self, model: nn.Module) -> Any:
        """``record_feature_map`` for ``fd_input="map"``, else a block that records nothing."""
        if self.fd_input == "map":
            return record_feature_map(model)
        return _nothing()

    @staticmethod
    def _feature_map(maps: list[torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
        """The forward's last feature map before pooling, checked against the features."""
        found = maps[-1] if maps else None
        if found is None or found.shape[0] != feats.shape[0] or found.shape[1] != feats.shape[1]:
            raise ValueError(
                "--fd-input map projects the feature map before global pooling (USB's WRN "
                "head), but this backbone has no (N, C, H, W) map of its features' width "
                "before its classifier; pass --fd-input features"
            )
        return found

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        raise RuntimeError("crmatch forwards the model itself: train_step calls own_step")

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, lambda_fd={self.lambda_fd}, lambda_rot={self.lambda_rot}, "
            f"fd_grad={self.fd_grad!r}, fd_input={self.fd_input!r}"
        )


PRESETS = MethodPresets(
    # USB's classic-CV configs and code: every weight 1, the joint forward, the WRN map head.
    {"algorithm": "crmatch", "tau": 0.95, "lambda_u": 1.0, "lambda_fd": 1.0, "lambda_rot": 1.0,
     "fd_grad": "both", "fd_input": "map"},
    source="usb",
    nlp=True,
    # USB's NLP configs: rot_loss_ratio 0, use_cat False (the weak view without gradient), and
    # BERT's head reads the pooled feature.
    nlp_values={"lambda_rot": 0.0, "fd_grad": "strong", "fd_input": "features"},
)  # fmt: skip


@register_method(formulas={"fixed": (("tau",), fixed_lambda)}, presets=PRESETS)
def crmatch(
    num_classes: int,
    *,
    tau: float = 0.95,
    lambda_u: float = 1.0,
    lambda_fd: float = 1.0,
    lambda_rot: float = 1.0,
    fd_grad: FDGrad = "both",
    fd_input: FDInput = "features",
) -> CRMatch:
    """FixMatch's threshold, plus feature distance (weak vs strong) and rotation losses.

    Args:
        num_classes: number of classes.
        tau: confidence threshold of the pseudo-labels and of the feature distance loss.
        lambda_u: unlabeled loss weight.
        lambda_fd: weight of the feature distance loss max(0, cos) between the projected
            features of the weak and the strong view (paper and USB 1).
        lambda_rot: weight of the rotation prediction loss on the weak unlabeled images rotated
            by 0/90/180/270 degrees (USB 1 for images; 0 for feature vectors and texts).
        fd_grad: which views' features the feature distance loss trains: both (USB's joint
            forward, classic CV) or strong (USB's NLP configs: the weak view without gradient).
        fd_input: what the projection reads: the pooled feature vector (every backbone; USB's
            for texts) or map, the feature map before pooling, averaged to 8 x 8 and flattened
            (USB's WRN head, exact at 32 px; convolutional backbones only).
    """
    return CRMatch(
        tau=tau, lambda_u=lambda_u, lambda_fd=lambda_fd, lambda_rot=lambda_rot, fd_grad=fd_grad,
        fd_input=fd_input,
    )  # fmt: skip
