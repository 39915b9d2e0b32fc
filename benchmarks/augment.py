"""Augmentation throughput: torchvision's per-image PIL RandAugment vs semimatch's pipelines.

Prints images/s (median over repeats, after warm-up) for one batch of the standard FixMatch step
(448 unlabeled CIFAR-sized images) through:

  (a) torchvision per image: RandomCrop(pad 12.5%, reflect) + RandomHorizontalFlip +
      RandAugment(num_ops=2), the usual torchvision pipeline, as baseline (it has no Cutout)
  (b) semimatch.data.augment.StrongAugment per image (PIL, FixMatch variant, with Cutout)
  (c) semimatch.data.batched_augment.BatchedStrongAugment on --device (whole batch)
  (d) weak views: torchvision crop + flip per image, WeakAugment per image, BatchedWeakAugment
  (e) CTAugment (semimatch.data.ctaugment, FixMatch's other strong view): the batched module
      on --device, its per-image PIL path, and the probe of a labeled batch (64 probe views
      plus the rate update, without the model's forward)

and the speed-up over torchvision ((a) for strong views, (d) for weak views). Per-image
pipelines include the numpy <-> PIL conversions a data loader does; batched rows start from a
uint8 NCHW tensor already on the device (CUDA timings synchronise). Repeats are interleaved
across pipelines so a noisy machine affects all alike.

    python benchmarks/augment.py                # 1 CPU thread, batch 448, 32x32 RGB
    python benchmarks/augment.py --device cuda  # batched rows on the GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from semimatch.data.augment import StrongAugment, WeakAugment, crop_padding
from semimatch.data.batched_augment import BatchedStrongAugment, BatchedWeakAugment
from semimatch.data.ctaugment import CTAugment, apply_pil, proximity


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Synthetic CIFAR-like images: smooth random gradients plus noise (no downloads)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    img = (
        rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, :, None, None]
        + rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, None, :, None]
    ) / 2 + rng.normal(0, 20, (n, size, size, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="device of the batched rows (cpu, cuda)")
    parser.add_argument("--batch", type=int, default=448, help="images per batch (mu*B = 448)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=3, choices=(1, 3))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up repeats")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--repeats and --batch must be >= 1 and --warmup >= 0")
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:
        parser.error(f"--device {args.device!r} is not usable here: {err}")
    torch.set_num_threads(args.threads)

    size, n = args.size, args.batch
    images = _images(n, size, args.channels)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    pad = crop_padding((size, size), 0.125)[0]
    tv_weak = T.Compose(
        [T.RandomCrop(size, padding=pad, padding_mode="reflect"), T.RandomHorizontalFlip()]
    )
    tv_strong = T.Compose([tv_weak, T.RandAugment(num_ops=2)])
    weak, strong = WeakAugment((size, size), True), StrongAugment((size, size), True)
    strong_usb = StrongAugment((size, size), True, variant="usb")
    b_weak = BatchedWeakAugment((size, size), True)
    b_strong = BatchedStrongAugment((size, size), True)
    b_strong_usb = BatchedStrongAugment((size, size), True, variant="usb")
    cta = CTAugment((size, size), True).to(device)
    probe_x, probe_y = x[: n // 7], torch.arange(n // 7, device=device) % 10
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)  # CPU generator: no host-device syncs on CUDA
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def per_image_tv(tf: Callable[[Image.Image], Image.Image]) -> Callable[[], object]:
        def run() -> object:
            return [np.asarray(tf(Image.fromarray(img))) for img in images]

        return run

    def per_image_ours(aug: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
        return lambda: [aug(img, rng) for img in images]

    def batched(aug: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            out = aug(x, gen)
            sync()
            return out

        return run

    def cta_per_image() -> object:
        p = cta.sample_params(n, size, size, gen)
        out = []
        for i, img in enumerate(images):  # the crop/flip of the weak view, then the policy
            padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
            top, left = int(p.weak.top[i]), int(p.weak.left[i])
            view = padded[top : top + size, left : left + size]
            view = np.ascontiguousarray(view[:, ::-1] if bool(p.weak.flip[i]) else view)
            out.append(
                apply_pil(view, p.ops[i].tolist(), p.args[i].tolist(), p.centres[i].tolist())
            )
        return out

    def cta_probe() -> object:
        views, params = cta.probe(probe_x, gen)
        probs = torch.full((len(views), 10), 0.1, device=device)  # stands in for the model
        cta.update(params.ops, params.args, proximity(probs, probe_y))
        sync()
        return views

    dev = device.type
    rows: list[tuple[str, str, Callable[[], object]]] = [
        ("strong", "(a) torchvision RandAugment(2) + crop/flip, per-image PIL",
         per_image_tv(tv_strong)),
        ("strong", "(b) semimatch StrongAugment fixmatch, per-image PIL", per_image_ours(strong)),
        ("strong", f"(c) semimatch BatchedStrongAugment fixmatch, {dev}", batched(b_strong)),
        ("strong", "    semimatch StrongAugment usb, per-image PIL", per_image_ours(strong_usb)),
        ("strong", f"    semimatch BatchedStrongAugment usb, {dev}", batched(b_strong_usb)),
        ("strong", "(e) semimatch CTAugment, per-image PIL", cta_per_image),
        ("strong", f"    semimatch CTAugment batched, {dev}", batched(cta)),
        ("strong", f"    CTAugment probe of {n // 7} labeled + rate update, {dev}", cta_probe),
        ("weak", "(d) torchvision crop/flip, per-image PIL", per_image_tv(tv_weak)),
        ("weak", "    semimatch WeakAugment, per-image numpy", per_image_ours(weak)),
        ("weak", f"    semimatch BatchedWeakAugment, {dev}", batched(b_weak)),
    ]  # fmt: skip
    for _ in range(args.warmup):
        for _, _, fn in rows:
            fn()
    times: list[list[float]] = [[] for _ in rows]
    for _ in range(args.repeats):  # interleaved, so load spikes hit every pipeline alike
        for i, (_, _, fn) in enumerate(rows):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)

    print(
        f"# augmentation throughput, {n} images of {size}x{size}x{args.channels}, "
        f"torch {torch.__version__}, {args.threads} thread(s), batched on {device}"
    )
    print(
        f"# {_cpu_name()}, {os.cpu_count()} logical CPUs, median of {args.repeats} repeats "
        f"after {args.warmup} warm-up(s), {time.strftime('%Y-%m-%d')}"
    )
    print(f"| {'pipeline':<62} | {'ms/batch':>9} | {'images/s':>9} | {'vs torchvision':>14} |")
    print(f"|{'-' * 64}|{'-' * 10}:|{'-' * 10}:|{'-' * 15}:|")
    # Strong rows compare with (a), weak rows with (d): the first row of their group.
    base: dict[str, float] = {}
    for (group, label, _), ts in zip(rows, times, strict=True):
        med = statistics.median(ts)
        ratio = base.setdefault(group, med) / med
        if label.lstrip().startswith("CTAugment probe"):  # 64 images: not comparable
            print(f"| {label:<62} | {med * 1e3:9.2f} | {len(probe_x) / med:9.0f} | {'-':>14} |")
            continue
        print(f"| {label:<62} | {med * 1e3:9.2f} | {n / med:9.0f} | {ratio:13.1f}x |")


if __name__ == "__main__":
    main()
