"""Weak and strong views of single images with PIL (reference.md, "Weak view" / "Strong view").

Images are HWC uint8 numpy arrays with C in {1, 3}; randomness comes from an explicit
``numpy.random.Generator``. The op table, the magnitude mapping and the Cutout geometry defined
here are shared with :mod:`semimatch.data.batched_augment`, so both pipelines draw from the same
distribution and the tests compare them op by op.

Per image the strong view is: weak view -> ``num_ops`` ops drawn with replacement from
:data:`OP_NAMES`, each applied with probability ``apply_prob`` at a magnitude uniform in its range
(:data:`OP_RANGES`) -> Cutout of a gray (:data:`CUTOUT_FILL`) square at a uniform random centre,
clipped at the borders. FixMatch: 2 ops, p = 0.5, side = 0.5 * width. USB: 3 ops, p = 1,
side = U[0, 0.5] * width.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = [
    "CUTOUT_FILL",
    "GEOMETRIC_FILL",
    "GEOMETRIC_OPS",
    "INTEGER_OPS",
    "OP_NAMES",
    "OP_RANGES",
    "VARIANTS",
    "RandAugmentVariant",
    "StrongAugment",
    "WeakAugment",
    "apply_op",
    "check_image_size",
    "check_pad_frac",
    "check_variant",
    "crop_padding",
    "cutout_box",
    "cutout_side",
    "magnitude_from_unit",
    "sample_ops",
]

#: Fill value of pixels that geometric ops move in from outside the image: 128 gray, one value
#: for the PIL and the batched views.
GEOMETRIC_FILL = 128
#: Value of the Cutout square: 127 gray, shared with the batched views like GEOMETRIC_FILL.
CUTOUT_FILL = 127

#: The 14 RandAugment ops (FixMatch paper, Table 12) -> magnitude range (lo, hi), ``None`` for ops
#: without a magnitude. Enhance factors are PIL ``ImageEnhance`` factors, Posterize keeps ``bits``
#: bits, Rotate is in degrees (counter-clockwise), Shear is the affine shear coefficient,
#: Translate is a fraction of the width (X) or height (Y), Solarize inverts pixels >= threshold.
OP_RANGES: dict[str, tuple[float, float] | None] = {
    "AutoContrast": None,
    "Brightness": (0.05, 0.95),
    "Color": (0.05, 0.95),
    "Contrast": (0.05, 0.95),
    "Equalize": None,
    "Identity": None,
    "Posterize": (4.0, 8.0),
    "Rotate": (-30.0, 30.0),
    "Sharpness": (0.05, 0.95),
    "ShearX": (-0.3, 0.3),
    "ShearY": (-0.3, 0.3),
    "Solarize": (0.0, 256.0),
    "TranslateX": (-0.3, 0.3),
    "TranslateY": (-0.3, 0.3),
}
#: Op names in table order; an op's index in this tuple is its id in the batched pipeline.
OP_NAMES: tuple[str, ...] = tuple(OP_RANGES)
#: Ops whose magnitude is an integer drawn uniformly from lo..hi inclusive (Posterize: 4..8 bits).
INTEGER_OPS: frozenset[str] = frozenset({"Posterize"})
#: Ops that move pixels (affine maps with NEAREST resampling and GEOMETRIC_FILL).
GEOMETRIC_OPS: frozenset[str] = frozenset(
    {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
)


@dataclass(frozen=True)
class RandAugmentVariant:
    """How many ops a strong view draws, how often each is applied, and the Cutout size.

    ``cutout_frac`` is the Cutout side as a fraction of the image width; with
    ``random_cutout_size`` the fraction is drawn uniformly from [0, cutout_frac] per image.
    """

    num_ops: int
    apply_prob: float
    cutout_frac: float
    random_cutout_size: bool


#: reference.md "Strong view": FixMatch's variant and USB's.
VARIANTS: dict[str, RandAugmentVariant] = {
    "fixmatch": RandAugmentVariant(
        num_ops=2, apply_prob=0.5, cutout_frac=0.5, random_cutout_size=False
    ),
    "usb": RandAugmentVariant(num_ops=3, apply_prob=1.0, cutout_frac=0.5, random_cutout_size=True),
}


def check_variant(variant: str) -> RandAugmentVariant:
    """The :data:`VARIANTS` entry named ``variant`` (shared by the PIL and batched views)."""
    if variant not in VARIANTS:
        raise ValueError(
            f"variant={variant!r} is not a RandAugment variant; use one of {sorted(VARIANTS)}"
        )
    return VARIANTS[variant]


def check_image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` (an int or (H, W)) as two positive ints (H, W)."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in size):
        raise ValueError(
            f"image_size={image_size!r} must be (height, width), two positive integers"
        )
    return int(size[0]), int(size[1])


def check_pad_frac(pad_frac: float) -> float:
    """``pad_frac`` (the weak crop's padding per side, a fraction of it) checked in [0, 1)."""
    if not (isinstance(pad_frac, (int, float)) and 0.0 <= pad_frac < 1.0):
        raise ValueError(f"pad_frac={pad_frac!r} must be a number in [0, 1), e.g. 0.125")
    return float(pad_frac)


def crop_padding(image_size: tuple[int, int], pad_frac: float) -> tuple[int, int]:
    """Reflect padding (rows, columns) of the weak view's random crop: round(pad_frac * side).

    4 px at 32 px for the reference's 12.5%.
    """
    return round(pad_frac * image_size[0]), round(pad_frac * image_size[1])


def magnitude_from_unit(name: str, u: float) -> float:
    """Map ``u`` ~ U[0, 1) to the op's magnitude, uniform in its range (0.0 for range-less ops).

    Integer ops (Posterize) take each integer of lo..hi with equal probability.
    """
    bounds = OP_RANGES[name]
    if bounds is None:
        return 0.0
    lo, hi = bounds
    if name in INTEGER_OPS:
        return float(min(math.floor(lo + (hi - lo + 1.0) * u), hi))
    return lo + (hi - lo) * u


def sample_ops(rng: np.random.Generator, variant: str = "fixmatch") -> list[tuple[str, float]]:
    """Draw the RandAugment ops one strong view applies, in order, as ``(name, magnitude)``.

    ``num_ops`` ops are drawn uniformly with replacement; each is kept with probability
    ``apply_prob`` (FixMatch 0.5, USB 1), so the list may be shorter than ``num_ops``.
    """
    spec = check_variant(variant)
    ids = rng.integers(len(OP_NAMES), size=spec.num_ops)
    keep = rng.random(spec.num_ops) < spec.apply_prob
    units = rng.random(spec.num_ops)
    return [
        (OP_NAMES[i], magnitude_from_unit(OP_NAMES[i], float(u)))
        for i, k, u in zip(ids, keep, units, strict=True)
        if k
    ]


def cutout_side(width: int, variant: str, u: float) -> int:
    """Cutout side in pixels: int(cutout_frac * width), times ``u`` ~ U[0,1) for USB's variant."""
    spec = check_variant(variant)
    frac = spec.cutout_frac * u if spec.random_cutout_size else spec.cutout_frac
    return int(frac * width)


def cutout_box(height: int, width: int, side: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """Rows [y0, y1) and columns [x0, x1) of a ``side`` square centred at pixel (cy, cx).

    The square covers ``cy - side // 2 ... cy - side // 2 + side - 1`` and is clipped at the
    borders (not shifted inside), so squares near an edge are smaller, as in FixMatch.
    """
    y0, x0 = cy - side // 2, cx - side // 2
    return max(y0, 0), min(y0 + side, height), max(x0, 0), min(x0 + side, width)


def apply_op(img: Image.Image, name: str, magnitude: float) -> Image.Image:
    """Apply one RandAugment op to a PIL image ("L" or "RGB"), via torchvision/PIL.

    Geometric ops use NEAREST resampling and :data:`GEOMETRIC_FILL`; shears are about the
    top-left corner and rotations about the centre, as in FixMatch/USB.
    """
    nearest = InterpolationMode.NEAREST
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return TF.autocontrast(img)
    if name == "Equalize":
        return TF.equalize(img)
    if name == "Brightness":
        return TF.adjust_brightness(img, magnitude)
    if name == "Color":
        return TF.adjust_saturation(img, magnitude)  # = PIL ImageEnhance.Color
    if name == "Contrast":
        return TF.adjust_contrast(img, magnitude)
    if name == "Sharpness":
        return TF.adjust_sharpness(img, magnitude)
    if name == "Posterize":
        return TF.posterize(img, int(magnitude))
    if name == "Solarize":
        return TF.solarize(img, magnitude)
    if name == "Rotate":
        return TF.rotate(img, magnitude, interpolation=nearest, fill=GEOMETRIC_FILL)
    if name in ("ShearX", "ShearY"):
        # torchvision's shear angle s gives the affine coefficient tan(s); we want `magnitude`.
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
        return TF.affine(
            img,
            angle=0.0,
            translate=[0, 0],
            scale=1.0,
            shear=shear,
            interpolation=nearest,
            fill=GEOMETRIC_FILL,
            center=[0, 0],
        )
    if name in ("TranslateX", "TranslateY"):
        width, height = img.size
        shift = [magnitude * width, 0.0] if name == "TranslateX" else [0.0, magnitude * height]
        return TF.affine(
            img,
            angle=0.0,
            translate=shift,
            scale=1.0,
            shear=[0.0, 0.0],
            interpolation=nearest,
            fill=GEOMETRIC_FILL,
        )
    raise ValueError(f"op name={name!r} is not a RandAugment op; use one of {list(OP_NAMES)}")


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ValueError(
            f"img must be a numpy uint8 array of shape (H, W, C), got {type(img).__name__}"
        )
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(
            f"img must be uint8 (H, W, C) with C in {{1, 3}}, got dtype {img.dtype} and shape "
            f"{img.shape}; add a channel axis to grayscale images (img[..., None])"
        )
    return img


class WeakAugment:
    """Weak view (reference "Weak view"): random crop of ``image_size`` from the image
    reflect-padded by round(pad_frac * side) px, then a horizontal flip with p = 0.5 if ``hflip``.
    """

    def __init__(self, image_size: tuple[int, int], hflip: bool, pad_frac: float = 0.125) -> None:
        self.image_size = check_image_size(image_size)
        self.hflip = bool(hflip)
        self.pad_frac = check_pad_frac(pad_frac)
        self.padding = crop_padding(self.image_size, self.pad_frac)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, hflip={self.hflip}, "
            f"pad_frac={self.pad_frac})"
        )

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """HWC uint8 -> HWC uint8 of size ``image_size``."""
        img = _check_image(img)
        (h, w), (ph, pw) = self.image_size, self.padding
        if img.shape[0] + 2 * ph < h or img.shape[1] + 2 * pw < w:
            raise ValueError(
                f"image of size {img.shape[:2]} is too small for a {self.image_size} crop with "
                f"{self.padding} px padding; resize images to image_size first"
            )
        # np.pad 'reflect' is what torchvision's RandomCrop(padding_mode="reflect") uses for PIL.
        padded = np.pad(img, ((ph, ph), (pw, pw), (0, 0)), mode="reflect")
        y = int(rng.integers(padded.shape[0] - h + 1))
        x = int(rng.integers(padded.shape[1] - w + 1))
        out = padded[y : y + h, x : x + w]
        if self.hflip and rng.random() < 0.5:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)


class StrongAugment:
    """Strong view (reference "Strong view"): weak view, RandAugment ``variant`` ("fixmatch" or
    "usb", see :data:`VARIANTS`), then Cutout with :data:`CUTOUT_FILL`.

    Call with ``trace=[]`` to get the applied ``(name, magnitude)`` pairs appended to the list.
    """

    def __init__(
        self,
        image_size: tuple[int, int],
        hflip: bool,
        variant: str = "fixmatch",
        pad_frac: float = 0.125,
    ) -> None:
        self.variant = variant
        self.spec = check_variant(variant)
        self.weak = WeakAugment(image_size, hflip, pad_frac)
        self.image_size = self.weak.image_size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(image_size={self.image_size}, hflip={self.weak.hflip}, "
            f"variant={self.variant!r}, pad_frac={self.weak.pad_frac})"
        )

    def __call__(
        self,
        img: np.ndarray,
        rng: np.random.Generator,
        trace: list[tuple[str, float]] | None = None,
    ) -> np.ndarray:
        """HWC uint8 -> HWC uint8 of size ``image_size`` (same number of channels)."""
        arr = self.weak(img, rng)
        ops = sample_ops(rng, self.variant)
        if trace is not None:
            trace.extend(ops)
        if ops:
            pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
            for name, magnitude in ops:
                pil = apply_op(pil, name, magnitude)
            arr = np.asarray(pil)
            arr = arr[..., None] if arr.ndim == 2 else arr
        h, w = self.image_size
        u = float(rng.random()) if self.spec.random_cutout_size else 0.0
        side = cutout_side(w, self.variant, u)
        y0, y1, x0, x1 = cutout_box(h, w, side, int(rng.integers(h)), int(rng.integers(w)))
        arr = np.array(arr)  # writable copy: np.asarray(PIL image) is read-only
        arr[y0:y1, x0:x1] = CUTOUT_FILL
        return arr
