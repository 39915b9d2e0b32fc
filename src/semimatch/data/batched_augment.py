"""Weak and strong views of whole uint8 NCHW batches, on CPU or an accelerator.

The same distribution as the PIL pipeline of :mod:`semimatch.data.augment` (reference.md "Weak
view" / "Strong view"): same op table, probabilities, magnitude mapping and Cutout geometry, with
random ops and magnitudes per sample. Each op reproduces its PIL counterpart's integer arithmetic
(blend truncation, ITU-R 601 luma with rounding, the SMOOTH kernel's rounding, PIL's equalize and
autocontrast lookup tables, NEAREST sampling at pixel centres), so outputs agree with PIL up to
rare off-by-one coordinates at sampling boundaries.

Speed comes from (1) one gather for crop + reflect padding + flip, (2) per op slot, grouping the
samples by the op they drew, so an op costs in proportion to the samples that use it, with all
geometric ops of a slot fused into one gather, and (3) uint8/float32 elementwise point ops, with
per-sample lookup tables for the histogram-based ones (AutoContrast, Equalize).

Random parameters are drawn with the given ``torch.Generator`` on its own device and grouped on
the host; pass a CPU generator to keep an accelerator free of host-device synchronisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from semimatch.data.augment import (
    CUTOUT_FILL,
    GEOMETRIC_FILL,
    GEOMETRIC_OPS,
    INTEGER_OPS,
    OP_NAMES,
    OP_RANGES,
    check_image_size,
    check_pad_frac,
    check_variant,
    crop_padding,
)

__all__ = [
    "BatchedStrongAugment",
    "BatchedWeakAugment",
    "POINT_OPS",
    "StrongParams",
    "WeakParams",
    "affine_nearest",
    "batched_apply_op",
    "batched_cutout",
    "blend",
]

_OP_ID: dict[str, int] = {name: i for i, name in enumerate(OP_NAMES)}
_LO = torch.tensor([(OP_RANGES[n] or (0.0, 0.0))[0] for n in OP_NAMES], dtype=torch.float64)
_HI = torch.tensor([(OP_RANGES[n] or (0.0, 0.0))[1] for n in OP_NAMES], dtype=torch.float64)
_IS_INT = torch.tensor([n in INTEGER_OPS for n in OP_NAMES])


class WeakParams(NamedTuple):
    """Random parameters of a batch of weak views (one entry per sample)."""

    top: Tensor  # (N,) int64: first row of the crop in the padded image
    left: Tensor  # (N,) int64: first column of the crop in the padded image
    flip: Tensor  # (N,) bool: flip horizontally


class StrongParams(NamedTuple):
    """Random parameters of a batch of strong views (one row per sample)."""

    weak: WeakParams
    ops: Tensor  # (N, num_ops) int64: index into OP_NAMES, -1 = slot not applied
    magnitudes: Tensor  # (N, num_ops) float64, as augment.magnitude_from_unit
    cutout: Tensor  # (N, 4) int64: rows [y0, y1), columns [x0, x1) set to CUTOUT_FILL


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"x must be a torch uint8 (N, C, H, W) tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"x must be a uint8 (N, C, H, W) tensor with C in {{1, 3}}, got dtype {x.dtype} and "
            f"shape {tuple(x.shape)}; convert float images with (x * 255).round().to(torch.uint8)"
        )


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            "create one with torch.Generator().manual_seed(seed)"
        )


def _wide_float(device: torch.device) -> torch.dtype:
    """float64 for PIL-exact coordinates and lookup tables; float32 where the device lacks it."""
    return torch.float32 if device.type == "mps" else torch.float64


def _reflect(i: Tensor, n: int) -> Tensor:
    """Map indices of a reflect-padded axis (no edge repeat, like np.pad 'reflect') into [0, n)."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _gather_pixels(x: Tensor, index: Tensor) -> Tensor:
    """out[n, c, p] = x[n, c, index[n, p]] for index of shape (N, h, w) into the flattened H*W."""
    n, c = x.shape[:2]
    h, w = index.shape[1:]
    flat = index.reshape(n, 1, h * w).expand(n, c, h * w)
    return x.reshape(n, c, x.shape[2] * x.shape[3]).gather(2, flat).view(n, c, h, w)


def _apply_lut(x: Tensor, lut: Tensor) -> Tensor:
    """Per-sample per-channel lookup: out[n, c, ...] = lut[n, c, x[n, c, ...]]."""
    n, c = x.shape[:2]
    return lut.gather(2, x.reshape(n, c, x.shape[2] * x.shape[3]).long()).view_as(x)


def blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL Image.blend(degenerate, x, factor): truncate(deg + factor * (x - deg)) in float32."""
    f = factor.to(device=x.device, dtype=torch.float32).view(-1, 1, 1, 1)
    out = (x.float() - degenerate).mul_(f).add_(degenerate)
    return out.clamp_(0, 255).to(torch.uint8)  # float -> uint8 truncates like PIL's cast


def _luma(x: Tensor) -> Tensor:
    """PIL's RGB -> "L" conversion (ITU-R 601-2, 16-bit fixed point with rounding), (N,1,H,W)."""
    if x.shape[1] == 1:
        return x.int()
    r, g, b = x.int().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _brightness(x: Tensor, m: Tensor) -> Tensor:
    return blend(torch.zeros((), device=x.device), x, m)


def _color(x: Tensor, m: Tensor) -> Tensor:
    if x.shape[1] == 1:  # PIL's Color enhancer is the identity on "L" images
        return x
    return blend(_luma(x).float(), x, m)


def _contrast(x: Tensor, m: Tensor) -> Tensor:
    # PIL: degenerate = int(mean(luma) + 0.5), computed exactly in integers here.
    count = x.shape[2] * x.shape[3]
    luma = _luma(x).reshape(x.shape[0], count).long()
    mean = (2 * luma.sum(1) + count) // (2 * count)
    return blend(mean.float().view(-1, 1, 1, 1), x, m)


def _sharpness(x: Tensor, m: Tensor) -> Tensor:
    n, c, h, w = x.shape
    degenerate = x.float()
    if h >= 3 and w >= 3:
        # PIL's SMOOTH filter: kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 rounded to nearest; the
        # one-pixel border keeps the input. The sum is an exact integer in float32, and
        # (s + 6.5) / 13 is never within float error of an integer, so floor() is exact.
        # Shifted sums instead of conv2d: 3x faster on small single-channel CPU batches.
        rows = degenerate[:, :, :-2] + degenerate[:, :, 1:-1] + degenerate[:, :, 2:]
        s = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
        s.add_(degenerate[:, :, 1:-1, 1:-1], alpha=4.0)
        degenerate = degenerate.clone()
        degenerate[:, :, 1:-1, 1:-1] = s.add_(6.5).div_(13.0).floor_()
    return blend(degenerate, x, m)


def _autocontrast(x: Tensor, m: Tensor) -> Tensor:
    # PIL ImageOps.autocontrast(cutoff=0): per channel, lut[i] = clip(int(i*scale + offset)) with
    # scale = 255 / (hi - lo), offset = -lo * scale, in float64 like Python; identity if hi <= lo.
    wide = _wide_float(x.device)
    lo = x.amin(dim=(2, 3)).to(wide)
    hi = x.amax(dim=(2, 3)).to(wide)
    flat = hi <= lo
    # A tensor numerator: `255.0 / t` is computed as 255 * (1 / t), not correctly rounded like
    # Python's division, which flips int() at exact integers (e.g. level hi -> 254 instead of 255).
    scale = torch.full_like(hi, 255.0) / torch.where(flat, torch.ones_like(hi), hi - lo)
    offset = -lo * scale
    levels = torch.arange(256, device=x.device, dtype=wide)
    lut = (levels * scale[..., None] + offset[..., None]).trunc_().clamp_(0, 255)
    lut = torch.where(flat[..., None], levels, lut)
    return _apply_lut(x, lut.to(torch.uint8))


def _equalize(x: Tensor, m: Tensor) -> Tensor:
    # PIL ImageOps.equalize, per channel: step = (count - h[max value]) // 255,
    # lut[i] = (step // 2 + sum_{j < i} h[j]) // step, identity if <= 1 level or step == 0.
    n, c = x.shape[:2]
    count = x.shape[2] * x.shape[3]
    flat = x.reshape(n * c, count).long()
    offsets = torch.arange(n * c, device=x.device).unsqueeze(1) * 256
    hist = torch.bincount((flat + offsets).view(-1), minlength=n * c * 256).view(n * c, 256)
    last = hist.gather(1, flat.amax(1, keepdim=True)).squeeze(1)
    step = (count - last) // 255
    below = hist.cumsum(1) - hist
    lut = (below + (step // 2).unsqueeze(1)) // step.clamp(min=1).unsqueeze(1)
    identity = ((hist > 0).sum(1) <= 1) | (step == 0)
    levels = torch.arange(256, device=x.device)
    lut = torch.where(identity.unsqueeze(1), levels, lut).clamp_(max=255)
    return _apply_lut(x, lut.to(torch.uint8).view(n, c, 256))


def _posterize(x: Tensor, m: Tensor) -> Tensor:
    bits = m.long()
    mask = (255 ^ ((1 << (8 - bits)) - 1)).to(device=x.device, dtype=torch.uint8)
    return x & mask.view(-1, 1, 1, 1)


def _solarize(x: Tensor, m: Tensor) -> Tensor:
    # PIL keeps i when i < threshold; for integer i that is i < ceil(threshold), exactly.
    threshold = m.ceil().to(device=x.device, dtype=torch.int16).view(-1, 1, 1, 1)
    return torch.where(x.to(torch.int16) < threshold, x, 255 - x)


def _identity(x: Tensor, m: Tensor) -> Tensor:
    return x


POINT_OPS = {
    "AutoContrast": _autocontrast,
    "Brightness": _brightness,
    "Color": _color,
    "Contrast": _contrast,
    "Equalize": _equalize,
    "Identity": _identity,
    "Posterize": _posterize,
    "Sharpness": _sharpness,
    "Solarize": _solarize,
}


def _affine_matrices(op_ids: Tensor, m: Tensor, height: int, width: int) -> Tensor:
    """(N, 6) float64 inverse affine maps (a, b, c, d, e, f), output (x, y) -> input
    (a x + b y + c, d x + e y + f), that PIL's rotate/transform use for each geometric op."""
    m = m.double()
    one, zero = torch.ones_like(m), torch.zeros_like(m)
    a, b, c, d, e, f = one, zero.clone(), zero.clone(), zero.clone(), one.clone(), zero.clone()

    def pick(name: str, value: Tensor, default: Tensor) -> Tensor:
        return torch.where(op_ids == _OP_ID[name], value, default)

    # Image.rotate: counter-clockwise about (W/2, H/2).
    rad = -torch.deg2rad(m)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = width / 2.0, height / 2.0
    a = pick("Rotate", cos, a)
    b = pick("Rotate", sin, b)
    d = pick("Rotate", -sin, d)
    e = pick("Rotate", cos, e)
    c = pick("Rotate", -cos * cx - sin * cy + cx, c)
    f = pick("Rotate", sin * cx - cos * cy + cy, f)
    # Shears about the top-left corner; translations by a fraction of the size (torchvision's
    # affine() inverts the shift, hence the minus sign).
    b = pick("ShearX", m, b)
    d = pick("ShearY", m, d)
    c = pick("TranslateX", -m * width, c)
    f = pick("TranslateY", -m * height, f)
    return torch.stack([a, b, c, d, e, f], dim=1)


def affine_nearest(x: Tensor, matrices: Tensor, fill: int = GEOMETRIC_FILL) -> Tensor:
    """NEAREST affine warp like PIL's Image.transform: the output pixel centre (x+.5, y+.5) maps to
    input pixel floor(A @ centre); pixels mapped outside the image get ``fill``."""
    n, c, h, w = x.shape
    wide = _wide_float(x.device)
    a, b, tx, d, e, ty = matrices.to(device=x.device, dtype=wide).view(n, 6, 1, 1).unbind(1)
    ys = torch.arange(h, device=x.device, dtype=wide).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=x.device, dtype=wide).view(1, 1, w) + 0.5
    u = (a * xs + b * ys + tx).floor_().long()
    v = (d * xs + e * ys + ty).floor_().long()
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    # Outside pixels read an appended fill pixel (index h*w): cheaper than masked_fill_ on CPU.
    index = torch.where(inside, v * w + u, h * w)
    source = torch.cat([x.reshape(n, c, h * w), x.new_full((n, c, 1), fill)], dim=2)
    flat = index.view(n, 1, h * w).expand(n, c, h * w)
    return source.gather(2, flat).view(n, c, h, w)


def batched_apply_op(x: Tensor, name: str, magnitudes: Tensor | float) -> Tensor:
    """Apply RandAugment op ``name`` to every image of a uint8 NCHW batch, with per-sample
    ``magnitudes`` ((N,) tensor or one float), matching ``augment.apply_op`` image by image."""
    _check_batch(x)
    if name not in _OP_ID:
        raise ValueError(f"op name={name!r} is not a RandAugment op; use one of {list(OP_NAMES)}")
    m = torch.as_tensor(magnitudes, dtype=torch.float64).cpu()
    if m.ndim > 1 or (m.ndim == 1 and len(m) != x.shape[0]):
        raise ValueError(
            f"magnitudes must be one number or a ({x.shape[0]},) tensor, one per image of x; "
            f"got shape {tuple(m.shape)}"
        )
    m = m.expand(x.shape[0])
    if name in GEOMETRIC_OPS:
        ids = torch.full((x.shape[0],), _OP_ID[name])
        return affine_nearest(x, _affine_matrices(ids, m, x.shape[2], x.shape[3]))
    return POINT_OPS[name](x, m)


def batched_cutout(x: Tensor, boxes: Tensor) -> Tensor:
    """Set rows [y0, y1) x columns [x0, x1) of each image to CUTOUT_FILL, in place; boxes (N, 4)."""
    h, w = x.shape[2:]
    boxes = boxes.to(x.device)
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= boxes[:, 0:1]) & (rows < boxes[:, 1:2])
    in_cols = (cols >= boxes[:, 2:3]) & (cols < boxes[:, 3:4])
    mask = (in_rows.unsqueeze(2) & in_cols.unsqueeze(1)).unsqueeze(1).to(torch.uint8)
    # x * (1 - mask) + fill * mask in uint8: ~15x faster than a broadcast masked_fill_ on CPU.
    return x.mul_(1 - mask).add_(mask * CUTOUT_FILL)


class BatchedWeakAugment(nn.Module):
    """Weak view of a batch (reference "Weak view"): per sample, a random ``image_size`` crop of
    the image reflect-padded by round(pad_frac * side) px, and a horizontal flip with p = 0.5 if
    ``hflip``; one gather for the whole batch. Same distribution as ``augment.WeakAugment``."""

    def __init__(self, image_size: tuple[int, int], hflip: bool, pad_frac: float = 0.125) -> None:
        super().__init__()
        self.image_size = check_image_size(image_size)
        self.hflip = bool(hflip)
        self.pad_frac = check_pad_frac(pad_frac)
        self.padding = crop_padding(self.image_size, self.pad_frac)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, hflip={self.hflip}, pad_frac={self.pad_frac}"

    def _check_size(self, height: int, width: int) -> None:
        (h, w), (ph, pw) = self.image_size, self.padding
        if height + 2 * ph < h or width + 2 * pw < w:
            raise ValueError(
                f"images of size {(height, width)} are too small for a {self.image_size} crop "
                f"with {self.padding} px padding; resize images to image_size first"
            )

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator
    ) -> WeakParams:
        """Draw crop offsets and flips for ``n`` images of size (height, width)."""
        _check_generator(generator)
        self._check_size(height, width)
        (h, w), (ph, pw) = self.image_size, self.padding
        dev = generator.device
        top = torch.randint(height + 2 * ph - h + 1, (n,), generator=generator, device=dev)
        left = torch.randint(width + 2 * pw - w + 1, (n,), generator=generator, device=dev)
        if self.hflip:
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=dev)
        return WeakParams(top, left, flip)

    def apply(self, x: Tensor, params: WeakParams) -> Tensor:
        """Crop/flip ``x`` with the given parameters (a new tensor; x is not modified)."""
        _check_batch(x)
        self._check_size(x.shape[2], x.shape[3])
        (h, w), (ph, pw) = self.image_size, self.padding
        dev = x.device
        top, left, flip = (t.to(dev) for t in params)
        rows = _reflect(top.unsqueeze(1) + torch.arange(h, device=dev) - ph, x.shape[2])
        col = torch.arange(w, device=dev)
        col = torch.where(flip.unsqueeze(1), w - 1 - col, col)
        cols = _reflect(left.unsqueeze(1) + col - pw, x.shape[3])
        return _gather_pixels(x, rows.unsqueeze(2) * x.shape[3] + cols.unsqueeze(1))

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, *image_size) on x's device."""
        _check_batch(x)
        return self.apply(x, self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator))


class BatchedStrongAugment(nn.Module):
    """Strong view of a batch (reference "Strong view"): weak view, RandAugment ``variant``
    ("fixmatch": 2 ops, each with p = 0.5; "usb": 3 ops always applied) with per-sample ops and
    magnitudes, then Cutout. Same distribution as ``augment.StrongAugment``.

    Each op slot groups the samples by the op they drew: point ops run on their subset only and
    the slot's geometric ops share one gather, so the cost follows the number of samples.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        hflip: bool,
        variant: str = "fixmatch",
        pad_frac: float = 0.125,
    ) -> None:
        super().__init__()
        self.variant = variant
        self.spec = check_variant(variant)
        self.weak = BatchedWeakAugment(image_size, hflip, pad_frac)
        self.image_size = self.weak.image_size

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator
    ) -> StrongParams:
        """Draw all random parameters of ``n`` strong views (on the generator's device)."""
        weak = self.weak.sample_params(n, height, width, generator)
        dev, k = generator.device, self.spec.num_ops
        ids = torch.randint(len(OP_NAMES), (n, k), generator=generator, device=dev)
        keep = torch.rand(n, k, generator=generator, device=dev) < self.spec.apply_prob
        u = torch.rand(n, k, generator=generator, device=dev, dtype=_wide_float(dev))
        lo, hi, is_int = (t.to(dev)[ids] for t in (_LO.to(u.dtype), _HI.to(u.dtype), _IS_INT))
        # Same mapping as augment.magnitude_from_unit.
        mags = torch.where(
            is_int, torch.minimum((lo + (hi - lo + 1.0) * u).floor(), hi), lo + (hi - lo) * u
        )
        h, w = self.image_size
        if self.spec.random_cutout_size:
            cu = torch.rand(n, generator=generator, device=dev, dtype=_wide_float(dev))
            side = (self.spec.cutout_frac * cu * w).long()
        else:
            side = torch.full((n,), int(self.spec.cutout_frac * w), device=dev)
        cy = torch.randint(h, (n,), generator=generator, device=dev)
        cx = torch.randint(w, (n,), generator=generator, device=dev)
        y0, x0 = cy - side // 2, cx - side // 2
        boxes = torch.stack(
            [y0.clamp(min=0), (y0 + side).clamp(max=h), x0.clamp(min=0), (x0 + side).clamp(max=w)],
            dim=1,
        )
        return StrongParams(weak, torch.where(keep, ids, -1), mags, boxes)

    def apply(self, x: Tensor, params: StrongParams) -> Tensor:
        """Strong views of ``x`` with the given parameters (a new tensor; x is not modified)."""
        x = self.weak.apply(x, params.weak)
        # Grouping happens on the host (a sync only if the parameters live on an accelerator).
        ops, mags = params.ops.cpu(), params.magnitudes.cpu()
        for slot in range(ops.shape[1]):
            col = ops[:, slot]
            order = torch.argsort(col, stable=True)
            counts = torch.bincount(col + 1, minlength=len(OP_NAMES) + 1).tolist()
            groups = torch.split(order, counts)[1:]  # drop the -1 "not applied" group
            geometric = [
                g for name, g in zip(OP_NAMES, groups, strict=True) if name in GEOMETRIC_OPS
            ]
            geo = torch.cat(geometric)
            if len(geo):
                mat = _affine_matrices(col[geo], mags[geo, slot], x.shape[2], x.shape[3])
                idx = geo.to(x.device)
                x.index_put_((idx,), affine_nearest(x.index_select(0, idx), mat))
            for name, group in zip(OP_NAMES, groups, strict=True):
                if len(group) == 0 or name in GEOMETRIC_OPS or name == "Identity":
                    continue
                idx = group.to(x.device)
                out = POINT_OPS[name](x.index_select(0, idx), mags[group, slot])
                x.index_put_((idx,), out)
        return batched_cutout(x, params.cutout)

    def forward(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 (N, C, H, W) -> uint8 (N, C, *image_size) on x's device."""
        _check_batch(x)
        params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator)
        return self.apply(x, params)
