"""CTAugment (Control Theory Augment; ReMixMatch, Berthelot et al. 2020; FixMatch's second
strong augmentation), batched on uint8 NCHW tensors, as google-research/fixmatch
``libml/ctaugment.py`` computes it.

* 19 ops, each with 0-2 arguments in [0, 1); each argument has a number of bins (17; posterize
  8; rescale's resampling method 6; identity none) and a *rate* per bin, starting at 1.
* Policy (``probe=False``), per image and for each of ``depth = 2`` slots: an op uniformly; per
  argument a bin drawn with probabilities ``p = (rate + 1 - decay) / max``, zeroed below
  ``th = 0.85`` and renormalised, and the argument ``(bin + U[0, 1)) / bins``.
* Probe policy (``probe=True``): an op uniformly and uniform arguments.
* Update from a probe image's prediction ``p`` with label ``y``: ``proximity = 1 - 0.5 *
  sum|p - onehot(y)|``, and for every argument of the probe policy, its bin
  ``int(arg * bins * 0.999)`` moves ``rate <- decay * rate + (1 - decay) * proximity``.
* FixMatch's strong view: weak view (flip + crop), the policy's two ops, then ``cutout`` at
  level 1 (a square of ~half the side filled with grey 127).

The op table follows the reference's PIL arithmetic (``Image.blend``, the BLUR/SMOOTH kernels,
``ImageOps``, NEAREST affine warps with black fill, the fixed-point resampling filters of
``Image.resize``), so :func:`apply_pil` (the per-image PIL path) and the batched module agree
like the RandAugment pair does. The rates are buffers of :class:`CTAugment` (checkpointed);
``update`` gathers every rank's probe results so all ranks hold the same rates.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from torch import Tensor, nn

from semimatch.data.batched_augment import (
    POINT_OPS,
    BatchedWeakAugment,
    WeakParams,
    affine_nearest,
    blend,
)
from semimatch.data.order import view_generator

if TYPE_CHECKING:
    from semimatch.data.loaders import SSLBatch

__all__ = [
    "CTA_OPS",
    "VIEW_PROBE",
    "CTAParams",
    "CTAugment",
    "apply_pil",
    "probe_rates",
    "proximity",
]

#: The view id of the probe's generator (``order.view_generator``), past any strong view's.
VIEW_PROBE = 1000

#: (name, bins per argument), in the reference's registration order.
CTA_OPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("autocontrast", (17,)),
    ("blur", (17,)),
    ("brightness", (17,)),
    ("color", (17,)),
    ("contrast", (17,)),
    ("cutout", (17,)),
    ("equalize", (17,)),
    ("invert", (17,)),
    ("identity", ()),
    ("posterize", (8,)),
    ("rescale", (17, 6)),
    ("rotate", (17,)),
    ("sharpness", (17,)),
    ("shear_x", (17,)),
    ("shear_y", (17,)),
    ("smooth", (17,)),
    ("solarize", (17,)),
    ("translate_x", (17,)),
    ("translate_y", (17,)),
)
_NAMES = [name for name, _ in CTA_OPS]
_ID = {name: i for i, name in enumerate(_NAMES)}
_MAX_BINS = 17
#: (ops, 2) bins of each argument, 0 where the op has fewer arguments.
_NBINS = torch.tensor([[*bins, 0, 0][:2] for _, bins in CTA_OPS], dtype=torch.int64)
_GREY = 127  # the reference's cutout fill
_RESAMPLE = ("lanczos", "bicubic", "bilinear", "box", "hamming", "nearest")  # ANTIALIAS = LANCZOS


class CTAParams(NamedTuple):
    """Random parameters of a batch of CTAugment views (one row per image)."""

    weak: WeakParams | None  # None: no weak view first (the probe of an already weak image)
    ops: Tensor  # (N, depth) int64 into CTA_OPS
    args: Tensor  # (N, depth, 2) float64 arguments in [0, 1) (unused ones 0)
    centres: Tensor  # (N, depth + 1, 2) int64 (row, column) of each slot's cutout, then the final


def proximity(probs: Tensor, labels: Tensor) -> Tensor:
    """``1 - 0.5 * sum_c |p_c - onehot(y)_c|`` per row (the reference's training loop)."""
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).to(probs.dtype)
    return 1 - 0.5 * (probs - onehot).abs().sum(1)


# ----------------------------------------------------------------------------------------------
# The ops (batched), each ``(x uint8 NCHW, a1, a2) -> uint8``, args (n,) float64 in [0, 1)
# ----------------------------------------------------------------------------------------------
def _filter(x: Tensor, kernel: list[list[int]], divisor: int) -> Tensor:
    """PIL's 3x3/5x5 integer kernel filter: round(sum / divisor) inside, border pixels kept."""
    k = len(kernel)
    r = k // 2
    n, c, h, w = x.shape
    if h < k or w < k:
        return x.clone()
    f = x.float()
    acc = torch.zeros(n, c, h - 2 * r, w - 2 * r, device=x.device)
    for i in range(k):
        for j in range(k):
            if kernel[i][j]:
                acc += kernel[i][j] * f[:, :, i : i + h - 2 * r, j : j + w - 2 * r]
    out = x.clone()
    out[:, :, r : h - r, r : w - r] = (acc / divisor + 0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out


_BLUR = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]
_SMOOTH = [[1, 1, 1], [1, 5, 1], [1, 1, 1]]


def _mix(x: Tensor, y: Tensor, level: Tensor) -> Tensor:
    """``Image.blend(x, y, level)``."""
    return blend(x.float(), y, level)


def _enhance(op):  # noqa: ANN001, ANN202 - the reference's factor 0.1 + 1.9 * level
    return lambda x, a, b: op(x, 0.1 + 1.9 * a)


def _cutout_boxes(level: Tensor, centres: Tensor, h: int, w: int) -> Tensor:
    """(n, 4) rows [y0, y1), columns [x0, x1): side ``1 + int(level * min(H, W) * 0.499)``,
    half-side ``side // 2`` either way of the centre (so an even extent), clipped."""
    half = ((1 + (level * min(h, w) * 0.499).floor().long()) // 2).to(centres.device)
    cy, cx = centres[:, 0], centres[:, 1]
    return torch.stack(
        [(cy - half).clamp(min=0), (cy + half).clamp(max=h), (cx - half).clamp(min=0),
         (cx + half).clamp(max=w)],
        dim=1,
    )  # fmt: skip


def _fill_boxes(x: Tensor, boxes: Tensor) -> Tensor:
    h, w = x.shape[2:]
    rows, cols = torch.arange(h), torch.arange(w)
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 1:2])
    in_cols = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1).to(x.device)
    return x.masked_fill(mask, _GREY)


def _warp(x: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor, e: Tensor, f: Tensor) -> Tensor:
    one = torch.ones_like(a)
    return affine_nearest(
        x, torch.stack([a * one, b * one, c * one, d * one, e * one, f * one], 1), 0
    )


def _rotate(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    # Image.rotate(int(round((2a - 1) * 45))): NEAREST about the centre, black fill; PIL rounds
    # the matrix to 15 decimals.
    h, w = x.shape[2:]
    angle = torch.round((2 * a - 1) * 45)
    rad = -torch.deg2rad(angle)
    cos = torch.round(torch.cos(rad) * 1e15) / 1e15
    sin = torch.round(torch.sin(rad) * 1e15) / 1e15
    cx, cy = w / 2.0, h / 2.0
    c = -cos * cx - sin * cy + cx
    f = sin * cx - cos * cy + cy
    return _warp(x, cos, sin, c, -sin, cos, f)


def _shear_x(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    z = torch.zeros_like(a)
    return _warp(x, z + 1, (2 * a - 1) * 0.3, z, z, z + 1, z)


def _shear_y(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    z = torch.zeros_like(a)
    return _warp(x, z + 1, z, z, (2 * a - 1) * 0.3, z + 1, z)


def _translate_x(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    # The reference's offset is (2a - 1) * 0.3 *pixels* (Image.transform data are in pixels).
    z = torch.zeros_like(a)
    return _warp(x, z + 1, z, (2 * a - 1) * 0.3, z, z + 1, z)


def _translate_y(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    z = torch.zeros_like(a)
    return _warp(x, z + 1, z, z, z, z + 1, (2 * a - 1) * 0.3)


def _kernel(name: str, t: float) -> float:
    """Pillow's resampling filters (Resample.c)."""
    if name == "box":
        return 1.0 if -0.5 < t <= 0.5 else 0.0
    t = abs(t)
    if name == "bilinear":
        return 1.0 - t if t < 1.0 else 0.0
    if name == "hamming":
        if t == 0.0:
            return 1.0
        if t >= 1.0:
            return 0.0
        t *= math.pi
        return math.sin(t) / t * (0.54 + 0.46 * math.cos(t))
    if name == "bicubic":
        a = -0.5
        if t < 1.0:
            return ((a + 2.0) * t - (a + 3.0)) * t * t + 1
        return (((t - 5) * t + 8) * t - 4) * a if t < 2.0 else 0.0

    def sinc(v: float) -> float:
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    return sinc(t) * sinc(t / 3) if t < 3.0 else 0.0  # lanczos


_SUPPORT = {"box": 0.5, "bilinear": 1.0, "hamming": 1.0, "bicubic": 2.0, "lanczos": 3.0}


def _coefficients(name: str, in_size: int, out_size: int) -> Tensor:
    """(out, in) fixed-point (22-bit) weights of Pillow's ``precompute_coeffs`` +
    ``normalize_coeffs_8bpc``, as float64 (exact integers)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT[name] * filterscale
    out = np.zeros((out_size, in_size))
    for xx in range(out_size):
        centre = (xx + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        ws = [_kernel(name, (x + lo - centre + 0.5) / filterscale) for x in range(hi - lo)]
        total = sum(ws)
        for x, wt in enumerate(ws):
            k = wt / total if total != 0.0 else wt
            out[xx, lo + x] = math.trunc(k * (1 << 22) + (-0.5 if k < 0 else 0.5))
    return torch.from_numpy(out)


@functools.lru_cache(maxsize=4096)
def _crop_resize_matrix(name: str, lo: int, hi: int, size: int) -> Tensor:
    """(size, size) weights of cropping ``[lo, hi)`` of an axis and resizing it back to ``size``
    (``_coefficients`` placed at the crop's columns); the identity when nothing changes, as
    Pillow skips that pass (its weights are then exactly 2**22 on the diagonal)."""
    out = torch.zeros(size, size, dtype=torch.float64)
    out[:, lo:hi] = _coefficients(name, hi - lo, size)
    return out


def _rescale(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    # Crop (scale * size, (1 - scale) * size) with scale = a / 4, rounded like Image.crop
    # (half to even), then resize back with one of six filters: Pillow's separable passes (a
    # horizontal then a vertical one, each rounded to uint8) as two batched matrix products.
    n, _, h, w = x.shape
    scale = a * 0.25
    x0, x1 = torch.round(scale * w).long(), torch.round(w * (1 - scale)).long()
    y0, y1 = torch.round(scale * h).long(), torch.round(h * (1 - scale)).long()
    method = (b * 5.99).long().tolist()
    out = torch.empty_like(x)
    near = torch.tensor([_RESAMPLE[m] == "nearest" for m in method], dtype=torch.bool)
    if near.any():  # Pillow: an affine NEAREST map, in_size / out_size per output pixel
        i = near.nonzero().squeeze(1)
        z = torch.zeros(len(i), dtype=torch.float64)
        sx, sy = (x1[i] - x0[i]) / w, (y1[i] - y0[i]) / h
        out[i.to(x.device)] = _warp(x[i.to(x.device)], sx, z, x0[i] + z, z, sy, y0[i] + z)
    if not near.all():
        i = (~near).nonzero().squeeze(1)
        names = [_RESAMPLE[method[j]] for j in i.tolist()]
        cols = zip(names, x0[i].tolist(), x1[i].tolist(), strict=True)
        cw = torch.stack([_crop_resize_matrix(m, lo, hi, w) for m, lo, hi in cols]).to(x.device)
        rows = zip(names, y0[i].tolist(), y1[i].tolist(), strict=True)
        ch = torch.stack([_crop_resize_matrix(m, lo, hi, h) for m, lo, hi in rows]).to(x.device)
        y = x[i.to(x.device)].double()
        y = torch.floor((y @ cw.transpose(1, 2).unsqueeze(1) + (1 << 21)) / (1 << 22))
        y = torch.floor((ch.unsqueeze(1) @ y.clamp_(0, 255) + (1 << 21)) / (1 << 22))
        out[i.to(x.device)] = y.clamp_(0, 255).to(torch.uint8)
    return out


_OPS = {
    "autocontrast": lambda x, a, b: _mix(x, POINT_OPS["AutoContrast"](x, a), a),
    "blur": lambda x, a, b: _mix(x, _filter(x, _BLUR, 16), a),
    "brightness": _enhance(POINT_OPS["Brightness"]),
    "color": _enhance(POINT_OPS["Color"]),
    "contrast": _enhance(POINT_OPS["Contrast"]),
    "equalize": lambda x, a, b: _mix(x, POINT_OPS["Equalize"](x, a), a),
    "invert": lambda x, a, b: _mix(x, 255 - x, a),
    "posterize": lambda x, a, b: POINT_OPS["Posterize"](x, 1 + (a * 7.999).floor()),
    "rescale": _rescale,
    "rotate": _rotate,
    "sharpness": _enhance(POINT_OPS["Sharpness"]),
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "smooth": lambda x, a, b: _mix(x, _filter(x, _SMOOTH, 13), a),
    "solarize": lambda x, a, b: POINT_OPS["Solarize"](x, (a * 255.999).floor()),
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


# ----------------------------------------------------------------------------------------------
# The augmenter: rates (state), policies, batched application, the rate update
# ----------------------------------------------------------------------------------------------
class CTAugment(nn.Module):
    """FixMatch's CTAugment strong view (module docstring) with its rates as a buffer.

    ``forward(x, generator)``: weak view, a ``probe=False`` policy per image, then cutout.
    ``probe(x, generator)``: a probe policy per (already weak) image, no cutout; its
    parameters go to ``update`` with the model's probabilities on the probe images.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        hflip: bool,
        pad_frac: float = 0.125,
        depth: int = 2,
        th: float = 0.85,
        decay: float = 0.99,
    ) -> None:
        super().__init__()
        self.weak = BatchedWeakAugment(image_size, hflip, pad_frac)
        self.image_size = self.weak.image_size
        self.depth, self.th, self.decay = int(depth), float(th), float(decay)
        #: (ops, 2, 17) float32 rates of each argument's bins (the reference's float32 arrays;
        #: entries past an argument's bins are unused).
        self.register_buffer("rates", torch.ones(len(CTA_OPS), 2, _MAX_BINS))

    def extra_repr(self) -> str:
        return f"depth={self.depth}, th={self.th}, decay={self.decay}"

    def bin_probs(self) -> Tensor:
        """(ops, 2, 17) float64 ``rate_to_p``: ``(rate + 1 - decay) / max``, 0 below ``th``, 0
        past the argument's bins; rows sum to anything > 0 (normalised when drawn)."""
        valid = torch.arange(_MAX_BINS) < _NBINS.unsqueeze(2)
        p = self.rates.detach().cpu().double() + (1 - self.decay)
        p = torch.where(valid, p, 0.0)
        p = p / p.amax(dim=2, keepdim=True).clamp(min=1e-300)
        return torch.where(p < self.th, 0.0, p)

    def sample_policy(
        self, n: int, generator: torch.Generator, probe: bool
    ) -> tuple[Tensor, Tensor]:
        """(ops (n, depth) int64, args (n, depth, 2) float64) of ``n`` policies."""
        ops = torch.randint(len(CTA_OPS), (n, self.depth), generator=generator)
        r = torch.rand(n, self.depth, 2, generator=generator, dtype=torch.float64)
        nbins = _NBINS[ops]  # (n, depth, 2)
        if not probe:
            u = torch.rand(n, self.depth, 2, generator=generator, dtype=torch.float64)
            p = self.bin_probs()[ops]  # (n, depth, 2, 17)
            cdf = p.cumsum(-1)
            cdf = cdf / cdf[..., -1:].clamp(min=1e-300)
            value = torch.searchsorted(cdf, u.unsqueeze(-1), right=True).squeeze(-1)
            value = torch.minimum(value, (nbins - 1).clamp(min=0))
            r = (value + r) / nbins.clamp(min=1)
        return ops, torch.where(nbins > 0, r, 0.0)

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator, probe: bool = False
    ) -> CTAParams:
        """All random parameters of ``n`` views (probe: no weak view, a probe policy)."""
        weak = None if probe else self.weak.sample_params(n, height, width, generator)
        ops, args = self.sample_policy(n, generator, probe)
        h, w = (height, width) if probe else self.image_size
        cy = torch.randint(h, (n, self.depth + 1), generator=generator)
        cx = torch.randint(w, (n, self.depth + 1), generator=generator)
        return CTAParams(weak, ops, args, torch.stack([cy, cx], 2))

    def apply(self, x: Tensor, params: CTAParams, cutout: bool = True) -> Tensor:
        """The views of ``x`` with the given parameters (a new tensor)."""
        x = self.weak.apply(x, params.weak) if params.weak is not None else x.clone()
        h, w = x.shape[2:]
        for slot in range(params.ops.shape[1]):
            col = params.ops[:, slot]
            for op in torch.unique(col).tolist():
                name = _NAMES[op]
                if name == "identity":
                    continue
                rows = (col == op).nonzero().squeeze(1)
                idx = rows.to(x.device)
                a, b = params.args[rows, slot, 0], params.args[rows, slot, 1]
                if name == "cutout":
                    out = _fill_boxes(x[idx], _cutout_boxes(a, params.centres[rows, slot], h, w))
                else:
                    out = _OPS[name](x[idx], a, b)
                x.index_put_((idx,), out)
        if cutout:  # FixMatch: cutout at level 1 after the policy
            ones = torch.ones(len(x), dtype=torch.float64)
            x = _fill_boxes(x, _cutout_boxes(ones, params.centres[:, -1], h, w))
        return x

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, C, H, W) -> strong views uint8 (N, C, *image_size)."""
        params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator)
        return self.apply(x, params)

    def probe(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, CTAParams]:
        """Probe views of weak views ``x`` (a probe policy each, no cutout) and their params."""
        params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator, probe=True)
        return self.apply(x, params, cutout=False), params

    @torch.no_grad()
    def update(self, ops: Tensor, args: Tensor, prox: Tensor) -> None:
        """``update_rates`` for each image in order (every rank's, gathered: all ranks end with
        the same rates): each argument's bin ``int(arg * bins * 0.999)`` moves to
        ``decay * rate + (1 - decay) * proximity``, computed in float64."""
        from semimatch import distributed as dist

        n, depth = ops.shape
        if dist.is_distributed():  # one gather, on the training device (NCCL needs CUDA)
            packed = torch.cat(
                [ops.double(), args.reshape(n, -1).double(), prox.double().reshape(n, 1).cpu()],
                1,
            )
            packed = dist.all_gather_cat(packed.to(prox.device)).cpu()
            ops = packed[:, :depth].long()
            args = packed[:, depth : 3 * depth].reshape(-1, depth, 2)
            prox = packed[:, -1]
        ops, args, prox = ops.cpu(), args.cpu().double(), prox.detach().cpu().double()
        nbins = _NBINS[ops]  # (n, depth, 2)
        bins = (args * nbins * 0.999).long()
        rates = self.rates.detach().cpu().double().numpy().copy()
        d = self.decay
        for i in range(len(ops)):
            q = float(prox[i])
            for s in range(ops.shape[1]):
                op = int(ops[i, s])
                for j in range(2):
                    if int(nbins[i, s, j]):
                        k = int(bins[i, s, j])
                        rates[op, j, k] = rates[op, j, k] * d + q * (1 - d)
        self.rates.copy_(torch.from_numpy(rates).to(self.rates))


@torch.no_grad()
def probe_rates(
    augmenter: CTAugment,
    ema: nn.Module | None,
    net: nn.Module,
    batch: SSLBatch,
    seed: int,
    k: int,
    rank: int,
) -> None:
    """FixMatch's probe at iteration ``k``: the labeled weak views under a probe policy each go
    through the model FixMatch classifies with (the EMA model if there is one, else the model;
    eval-mode BatchNorm, no gradient, before the step's update), and every rank's proximities
    update the rates (``CTAugment.update``). Its draws come from their own generator."""
    model = ema.module if ema is not None else net
    x, params = augmenter.probe(batch.x_lb, view_generator(seed, k, rank, VIEW_PROBE))
    was_training = model.training
    model.eval()  # no batch statistics, no dropout: the probe only reads the model
    try:
        probs = model(x).float().softmax(1)
    finally:
        model.train(was_training)
    augmenter.update(params.ops, params.args, proximity(probs, batch.y_lb))


# ----------------------------------------------------------------------------------------------
# The per-image PIL path (the reference's ops on PIL images)
# ----------------------------------------------------------------------------------------------
def _pil_cutout(img: Image.Image, level: float, centre: tuple[int, int]) -> Image.Image:
    w, h = img.size
    half = (1 + int(level * min(w, h) * 0.499)) // 2
    arr = np.array(img)
    cy, cx = centre
    arr[max(0, cy - half) : min(h, cy + half), max(0, cx - half) : min(w, cx + half)] = _GREY
    return Image.fromarray(arr)


def _pil_op(img: Image.Image, name: str, a: float, b: float) -> Image.Image:
    mix = Image.blend
    if name == "autocontrast":
        return mix(img, ImageOps.autocontrast(img), a)
    if name == "blur":
        return mix(img, img.filter(ImageFilter.BLUR), a)
    if name == "smooth":
        return mix(img, img.filter(ImageFilter.SMOOTH), a)
    if name == "equalize":
        return mix(img, ImageOps.equalize(img), a)
    if name == "invert":
        return mix(img, ImageOps.invert(img), a)
    enhancers = {
        "brightness": ImageEnhance.Brightness,
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
    }
    if name in enhancers:
        return enhancers[name](img).enhance(0.1 + 1.9 * a)
    if name == "identity":
        return img
    if name == "posterize":
        return ImageOps.posterize(img, 1 + int(a * 7.999))
    if name == "solarize":
        return ImageOps.solarize(img, int(a * 255.999))
    if name == "rotate":
        return img.rotate(int(np.round((2 * a - 1) * 45)))
    affine = {
        "shear_x": (1, (2 * a - 1) * 0.3, 0, 0, 1, 0),
        "shear_y": (1, 0, 0, (2 * a - 1) * 0.3, 1, 0),
        "translate_x": (1, 0, (2 * a - 1) * 0.3, 0, 1, 0),
        "translate_y": (1, 0, 0, 0, 1, (2 * a - 1) * 0.3),
    }
    if name in affine:
        return img.transform(img.size, Image.Transform.AFFINE, affine[name])
    assert name == "rescale", name
    w, h = img.size
    s = a * 0.25
    filters = [getattr(Image.Resampling, m.upper()) for m in _RESAMPLE]
    crop = (s * w, s * h, w * (1 - s), h * (1 - s))
    return img.crop(crop).resize(img.size, filters[int(b * 5.99)])


def apply_pil(img: np.ndarray, ops: list[int], args: list[list[float]],
              centres: list[list[int]], cutout: bool = True) -> np.ndarray:  # fmt: skip
    """One image's view on the PIL path: uint8 (H, W, C) after the policy ``ops``/``args`` (rows
    of ``CTAParams``; ``centres`` the cutout centres) and, with ``cutout``, FixMatch's cutout."""
    pil = Image.fromarray(img[..., 0] if img.shape[2] == 1 else img)
    for slot, op in enumerate(ops):
        a, b = args[slot]
        if _NAMES[op] == "cutout":
            pil = _pil_cutout(pil, a, tuple(centres[slot]))
        else:
            pil = _pil_op(pil, _NAMES[op], a, b)
    if cutout:
        pil = _pil_cutout(pil, 1.0, tuple(centres[-1]))
    out = np.array(pil)
    return out[..., None] if out.ndim == 2 else out
