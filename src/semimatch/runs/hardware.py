"""What the hardware offers a run: its device, and whether it computes bf16 natively.

``select_device`` turns ``--device`` into a ``torch.device``; ``native_bf16`` says whether bf16
autocast pays off there (``--precision auto`` asks it); ``fp32_hint`` is the one line a run on
a CPU with native bf16 prints when it uses fp32 only because fp32 is the default, with the
factor measured on such a CPU (docs/benchmarks/text.md, "Text defaults on a CPU").
"""

from __future__ import annotations

import torch

from semimatch.config import ConfigError

__all__ = ["BF16_SPEEDUP", "fp32_hint", "native_bf16", "select_device"]

#: Per kind of data: the step, its seconds per iteration in fp32 and with ``--precision bf16``
#: (measured in the same run on a 2-core AMD EPYC with AVX512-BF16) and what is known of
#: bf16's accuracy: the standard image step (WRN-28-2, SoftMatch, 64 + 448 CIFAR-10 images) and
#: the MiniLM-L6 text step (SoftMatch, 8 + 8 AG News texts: docs/benchmarks/text.md, "The text
#: step", the quietest run; the command line's 1.5x under load agrees: "Text defaults on a CPU").
BF16_SPEEDUP: dict[str, tuple[str, float, float, str]] = {
    "image": (
        "the standard image step (WRN-28-2, 64 + 448 images)", 11.45, 3.71,
        "accuracy within the seed spread: docs/benchmarks/accuracy.md",
    ),
    "text": (
        "the MiniLM-L6 text step (8 + 8 texts)", 1.51, 1.00,
        "the AG News results of docs/benchmarks/text.md were trained in bf16",
    ),
}  # fmt: skip


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but CUDA is not available here; use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device='mps' but MPS is not available here; use --device cpu")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (autocast then pays off; else it is emulated).

    CPUs: AMX tiles or AVX512-BF16 (torch's oneDNN bf16 kernels); without them a bf16 matrix
    product ran 130x slower than fp32 on a 2-core AVX2 EPYC.  CUDA: compute capability 8+.
    """
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return False


#: Backbones whose steps take milliseconds on a CPU (digits' and Fashion-MNIST's defaults): the
#: measured factors are of large models, and a line per run would be noise there.
SMALL_BACKBONES = ("cnn", "mlp")


def fp32_hint(kind: str, backbone: str | None = None) -> str | None:
    """The line for a run of ``kind`` data in fp32 by default on a CPU with native bf16: what
    ``--precision bf16`` measured there (None for data without a measurement, features, and for
    the small CPU backbones)."""
    if kind not in BF16_SPEEDUP or backbone in SMALL_BACKBONES:
        return None
    step, fp32, bf16, accuracy = BF16_SPEEDUP[kind]
    return (
        "training in fp32, the exact default; this CPU has native bf16, where --precision bf16 "
        f"(in Python: precision='bf16') ran {step} {fp32 / bf16:.1f}x faster (fp32 {fp32:.2f} s, "
        f"bf16 {bf16:.2f} s per iteration; {accuracy})"
    )
