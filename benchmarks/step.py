"""The standard FixMatch/SoftMatch iteration: reference-style vs semimatch, side by side.

The standard step: CIFAR-sized images, WRN-28-2, B = 64 labeled + mu*B = 448
unlabeled, weak and strong views, backward, optimiser step, EMA update, SoftMatch weighting --
the complete iteration *including data loading*.

  reference  the way USB/TorchSSL/FixMatch-pytorch do it: fp32, contiguous NCHW, per-image PIL
             augmentation in DataLoader workers, optimiser and EMA as Python loops over tensors,
             one forward over cat(x_lb, u_weak, u_strong).
  semimatch  `semimatch.runs.engine.fit` itself with the resolved defaults (printed), timed per
             iteration through its own metrics log (log_every=1).

Each variant runs in its own subprocesses, on the same images, with the same batch sizes: one
timed run, and one short run for peak memory (PSS of the whole process tree, sampled every
50 ms; sampling costs CPU, so it never runs beside the timing).  Beside every
variant the script measures this CPU's matmul throughput in the precision the step computes in
(it drifts with load and turbo), and reports model FLOP utilisation = FLOPs executed per
iteration (counted with torch.utils.flop_counter on the exact forward+backward) / median step
time / that matmul peak.

    python benchmarks/step.py                        # CIFAR-10 JPEG if found, else synthetic
    python benchmarks/step.py --data /path/cifar10-jpeg --iters 7 --warmup 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

B, MU, SIZE = 64, 7, 32
# semimatch variants: the defaults, and each forward mode forced (on top of --overrides).
SEMIMATCH_VARIANTS = {
    "semimatch": {},
    "semimatch-joint": {"forward_mode": "joint"},
    "semimatch-two-pass": {"forward_mode": "two-pass"},
    "semimatch-split": {"forward_mode": "split"},
    "semimatch-bf16": {"precision": "bf16"},
}


# ----------------------------------------------------------------------------------------------
def load_images(data: str | None, n_per_class: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Up to n_per_class training images per class of the CIFAR-10 JPEG copy, else synthetic."""
    if data and Path(data, "train").is_dir():
        from PIL import Image

        images, labels = [], []
        for c, cls in enumerate(sorted(os.listdir(Path(data, "train")))):
            files = sorted(os.listdir(Path(data, "train", cls)))[:n_per_class]
            for f in files:
                with Image.open(Path(data, "train", cls, f)) as im:
                    images.append(np.asarray(im.convert("RGB")))
                labels.append(c)
        return np.stack(images), np.array(labels), f"CIFAR-10 JPEG ({data})"
    rng = np.random.default_rng(0)
    n = 10 * n_per_class
    return (
        rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8),
        np.arange(n) % 10,
        "synthetic uint8 noise",
    )


def matmul_gflops(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """Peak matrix-multiply throughput of this machine right now in ``dtype`` (median GFLOP/s).

    MFU is measured against the peak of the precision the step computes in: bf16 for a bf16
    autocast step, fp32 for an fp32 one (on a CPU without native bf16, bf16 is emulated and its
    "peak" would be meaningless).
    """
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


class PssSampler:
    """Peak proportional set size (shared pages counted once) of this process and children."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _pss(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a worker that just exited
                total += p.memory_full_info().pss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._pss())
            time.sleep(self.interval)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def count_flops(net, algorithm, batch, cfg_precision: str, forward_mode: str, fmt) -> float:
    """FLOPs of one forward+backward of train_step as it runs (joint or split)."""
    from torch.utils.flop_counter import FlopCounterMode

    from semimatch.training.step import train_step

    ctx = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if cfg_precision == "bf16"
        else torch.autocast("cpu", enabled=False)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        with ctx:
            loss, _ = train_step(
                net,
                algorithm,
                batch.x_lb.contiguous(memory_format=fmt),
                batch.y_lb,
                batch.u_weak.contiguous(memory_format=fmt),
                batch.u_strong.contiguous(memory_format=fmt),
                batch.u_true,
                forward_mode=forward_mode,
            )
        loss.backward()
    net.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
def run_reference(args: argparse.Namespace, data, split) -> dict:
    """fp32, NCHW, PIL augmentation in DataLoader workers, Python-loop optimiser and EMA."""
    import copy

    from semimatch.data import TrainStream
    from semimatch.methods.registry import build_algorithm
    from semimatch.models import InputNormalizer, build_model
    from semimatch.training.step import train_step

    torch.manual_seed(0)
    net = InputNormalizer(build_model("wrn_28_2", 10), data.info.spec.mean, data.info.spec.std)
    ema = copy.deepcopy(net)
    algorithm = build_algorithm("softmatch", 10)
    decay, no_decay = (
        [p for p in net.parameters() if p.dim() > 1],
        [p for p in net.parameters() if p.dim() <= 1],
    )
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.03,
        momentum=0.9,
        nesterov=True,
        foreach=False,
    )
    stream = TrainStream(
        data, split, batch_size=B, uratio=MU, seed=0, augment="pil", num_workers=args.workers
    )
    total = args.warmup + args.iters
    batches = stream.batches(0, total)
    times = []
    flops = None
    t = time.perf_counter()
    for _ in range(total):
        batch = next(batches)
        if flops is None:
            flops = count_flops(net, algorithm, batch, "fp32", "joint", torch.contiguous_format)
            t = time.perf_counter()
        loss, _ = train_step(
            net, algorithm, batch.x_lb, batch.y_lb, batch.u_weak, batch.u_strong, batch.u_true
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # the EMA as the reference ports write it
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.mul_(0.999).add_(p.detach(), alpha=0.001)
            for be, b in zip(ema.buffers(), net.buffers()):
                be.copy_(b)
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return {
        "times": times[args.warmup :],
        "flops": flops,
        "config": {
            "precision": "fp32",
            "memory_format": "NCHW",
            "augment": f"pil, {args.workers} workers",
            "optimizer": "SGD foreach=False",
            "ema": "python loop",
            "forward_mode": "joint",
        },
    }


def run_semimatch(args: argparse.Namespace, data, split) -> dict:
    """`semimatch.runs.engine.fit` with its defaults; per-iteration time from its metrics log."""
    from semimatch.config import Config
    from semimatch.runs.engine import fit
    from semimatch.training.metrics import read_jsonl

    total = args.warmup + args.iters
    overrides = json.loads(args.overrides) if args.overrides else {}
    overrides.update(SEMIMATCH_VARIANTS[args.variant])
    cfg = Config(
        algorithm="softmatch",
        backbone="wrn_28_2",
        batch_size=B,
        uratio=MU,
        iterations=total,
        eval_every=10**9,
        log_every=1,
        tensorboard=False,
        progress=False,
        seed=0,
        **overrides,
    )
    with tempfile.TemporaryDirectory() as tmp:
        # No test set: evaluation is not part of the timed iteration.
        data_no_test = type(data)(data.info, data.train, None, data.extra_unlabeled)
        run = fit(cfg, out=Path(tmp) / "run", data=data_no_test)
        records = [
            r for r in read_jsonl(Path(tmp) / "run" / "metrics.jsonl") if r["kind"] == "train"
        ]
    times = [r["sec_per_iter"] for r in records][args.warmup :]
    rc = run.config
    from semimatch.data import TrainStream

    stream = TrainStream(data, split, batch_size=B, uratio=MU, seed=0, augment=rc.augment)
    batch = stream.batch(0)
    fmt = torch.channels_last if rc.channels_last else torch.contiguous_format
    flops = count_flops(run.model.train(), run.algorithm, batch, rc.precision, rc.forward_mode, fmt)
    resolved = {
        k: getattr(rc, k)
        for k in (
            "precision",
            "channels_last",
            "augment",
            "num_workers",
            "forward_mode",
            "ema_decay",
        )
    }
    return {"times": times, "flops": flops, "config": resolved}


def step_precision(args: argparse.Namespace) -> str:
    """The precision a variant's step computes in (reference: fp32; semimatch: its config's)."""
    if args.variant == "reference":
        return "fp32"
    from semimatch.runs.hardware import native_bf16

    overrides = json.loads(args.overrides) if args.overrides else {}
    # None (or absent): the library's default, fp32
    precision = {**overrides, **SEMIMATCH_VARIANTS[args.variant]}.get("precision") or "fp32"
    if precision == "auto":
        return "bf16" if native_bf16(torch.device("cpu")) else "fp32"
    return precision


def child(args: argparse.Namespace) -> None:
    from semimatch.data import from_arrays
    from semimatch.data.splits import balanced_split

    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, source = load_images(args.data, args.per_class)
    data = from_arrays(images, labels, name="cifar10-subset")
    split = balanced_split(labels, 10, 40, seed=0)
    run = run_reference if args.variant == "reference" else run_semimatch
    if args.measure == "memory":
        # Its own run: each PSS sample makes the kernel walk the page tables (~27 ms for 2 GiB
        # here), which steals CPU and the mm lock from the step -- timing it as well measured
        # the sampler (+0.6 s/iter on the semimatch step).  Peak memory is reached within the
        # first iterations (benchmarks/memory.py records the flat curve over 1,000).
        args.iters = min(args.iters, 3)
        with PssSampler() as mem:
            result = run(args, data, split)
        result = {"pss_peak_gib": mem.peak / 2**30}
    else:
        dtype = torch.float32 if step_precision(args) == "fp32" else torch.bfloat16
        peak_before = matmul_gflops(dtype)
        result = run(args, data, split)
        peak_after = matmul_gflops(dtype)
        result.update(
            variant=args.variant,
            source=source,
            matmul_gflops=[peak_before, peak_after],
            matmul_dtype=str(dtype).removeprefix("torch."),
        )
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        default=os.environ.get("SEMIMATCH_CIFAR10_JPEG"),
        help="folder with train/<class>/*.jpg (the CIFAR-10 JPEG copy)",
    )
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--iters", type=int, default=7, help="timed iterations (after warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    p.add_argument("--workers", type=int, default=2, help="reference: DataLoader workers")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--variants",
        default="reference,semimatch",
        help=f"comma-separated, from: reference, {', '.join(SEMIMATCH_VARIANTS)}",
    )
    p.add_argument(
        "--overrides",
        default="",
        help='semimatch config overrides as JSON, e.g. \'{"forward_mode": "joint"}\'',
    )
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--measure", choices=("time", "memory"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        child(args)
        return

    results = []
    for variant in args.variants.split(","):
        if variant != "reference" and variant not in SEMIMATCH_VARIANTS:
            sys.exit(f"unknown variant {variant!r}; choose from reference, {SEMIMATCH_VARIANTS}")
        cmd = [
            sys.executable,
            __file__,
            "--variant",
            variant,
            "--iters",
            str(args.iters),
            "--warmup",
            str(args.warmup),
            "--workers",
            str(args.workers),
            "--per-class",
            str(args.per_class),
            "--threads",
            str(args.threads),
        ]
        if args.data:
            cmd += ["--data", args.data]
        if args.overrides:
            cmd += ["--overrides", args.overrides]
        result: dict = {}
        for measure in ("time", "memory"):  # separate processes: sampling perturbs timing
            out = subprocess.run(
                [*cmd, "--measure", measure], capture_output=True, text=True, check=False
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
            if out.returncode or not lines:
                sys.exit(f"{variant} ({measure}) failed:\n{out.stderr[-3000:]}")
            result.update(json.loads(lines[-1][len("RESULT ") :]))
        results.append(result)

    print(
        f"# standard step: WRN-28-2, {B} labeled + {B * MU} unlabeled (weak + strong) "
        f"{SIZE}x{SIZE} RGB, SoftMatch; {results[0]['source']}"
    )
    print(
        f"# {platform.node()} | {_cpu()} | {os.cpu_count()} cores | torch {torch.__version__} "
        f"| {time.strftime('%Y-%m-%d')}"
    )
    print(
        "| variant | median s/iter | images/s | GFLOP/iter | matmul GFLOP/s (dtype) | MFU | "
        "peak PSS GiB | settings |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|---|")
    for r in results:
        med = statistics.median(r["times"])
        peak = statistics.mean(r["matmul_gflops"])
        mfu = r["flops"] / med / (peak * 1e9)
        settings = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        r.update(median_s=med, mfu=mfu)
        print(
            f"| {r['variant']} | {med:.2f} | {(B + 2 * B * MU) / med:.0f} | "
            f"{r['flops'] / 1e9:.0f} | {peak:.0f} ({r['matmul_dtype']}) | {100 * mfu:.0f}% | "
            f"{r['pss_peak_gib']:.2f} | {settings} |"
        )
    ref = [r for r in results if r["variant"] == "reference"]
    for r in results:
        if ref and r is not ref[0]:
            print(
                f"speed-up of {r['variant']} (reference / {r['variant']} median s/iter): "
                f"{ref[0]['median_s'] / r['median_s']:.2f}x"
            )
    for r in results:
        print(f"{r['variant']} per-iteration s: " + " ".join(f"{t:.2f}" for t in r["times"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
