"""The training loop: ``fit(config) -> Run``.  Read it top to bottom.

Three front doors (CLI, ``semimatch.train``, the scikit-learn estimator) call ``fit``.  One
iteration is: take batch k of the seeded stream -> ``train_step`` -> backward -> optimiser ->
EMA.  Every ``eval_every`` iterations: evaluate, log, checkpoint.  Everything needed to continue
is in the checkpoint; everything needed to audit the run (resolved config, split indices,
metrics) is in the run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch import checkpoint as ckpt
from semimatch import distributed as dist
from semimatch.algorithms import SSLAlgorithm, build_algorithm
from semimatch.config import OPTION_FIELDS, Config, ConfigError, budget_momentum
from semimatch.data import (
    DATASETS,
    DatasetInfo,
    Split,
    SSLDataset,
    TrainStream,
    eval_batches,
    load_dataset,
    to_model_input,
    wrap_model,
)
from semimatch.data.splits import (
    balanced_split,
    fold_split,
    given_split,
    load_split,
    long_tailed_split,
    save_split,
)
from semimatch.ema import ModelEMA
from semimatch.log import logger
from semimatch.metrics import JsonlWriter, WindowSums, median_of_last, read_jsonl, summarize
from semimatch.models import build_model, set_bn_momentum
from semimatch.step import CONF_BINS, train_step
from semimatch.weighting import NonFiniteError

__all__ = [
    "fit",
    "Run",
    "TrainingError",
    "TrainingInterrupted",
    "resolve",
    "select_device",
    "evaluate_model",
]


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (message says which and what to do)."""


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint.

    The message says where it stopped and how to resume; ``signum`` is the signal, so a
    command can exit with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM) as shells expect.
    Being a ``KeyboardInterrupt``, it still stops a script that does not catch it.
    """

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


# ----------------------------------------------------------------------------------------------
# Resolution of "auto" settings
# ----------------------------------------------------------------------------------------------
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


def resolve(
    cfg: Config, data: SSLDataset, device: torch.device, *, given_data: bool = False
) -> Config:
    """Fill the auto (None) fields and check the config against the dataset, before training.

    Each derived value is recorded in ``cfg.auto`` with the reason, so the saved config shows it.
    ``given_data``: the data came from the caller (``fit(data=...)``, the estimator), not from
    a named loader, so nothing is known about how its labeled and unlabeled parts relate.
    """
    cfg = cfg.replace()  # a validated copy
    auto: dict[str, str] = dict(cfg.auto)
    info = data.info
    C = info.num_classes

    def derive(name: str, value: Any, why: str) -> None:
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
            auto[name] = why

    # Validation that would otherwise surface as a torch error deep inside training.
    for name in (
        "iterations",
        "batch_size",
        "eval_every",
        "log_every",
        "eval_batch_size",
        "keep_checkpoints",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if cfg.uratio < 1 and cfg.algorithm != "supervised":
        raise ConfigError(f"uratio must be >= 1 for {cfg.algorithm}; got {cfg.uratio}")
    if cfg.exclude_labeled and cfg.algorithm == "supervised":
        raise ConfigError("exclude_labeled shapes the unlabeled set, which supervised never uses")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0; got {cfg.lr}")
    _check_ranges(cfg, device)
    ws = dist.get_world_size()
    if cfg.batch_size % ws:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must be divisible "
            f"by the number of processes ({ws})"
        )
    if cfg.sync_bn and ws > 1 and device.type not in ("cuda", "xpu", "hpu"):
        raise ConfigError(
            f"sync_bn: torch's SyncBatchNorm runs only on GPUs, not on "
            f"{device.type}; drop --sync-bn (per-process BatchNorm, as in the "
            "papers) or train on GPUs"
        )
    _check_split_options(cfg, data)
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=True but the tensorboard package is not installed: "
            "pip install 'semimatch[tensorboard]', or pass tensorboard=False"
        )
    if cfg.num_labels is not None and cfg.lt_gamma is None and cfg.num_labels % C:
        raise ConfigError(
            f"num_labels={cfg.num_labels} cannot be split evenly over the {C} classes of "
            f"{info.name}; use a multiple of {C} (e.g. {max(C, cfg.num_labels // C * C)})"
        )

    if cfg.backbone in (None, "auto"):
        cfg.backbone = None
        small = max(info.image_size) <= 28
        derive("backbone", "cnn" if small else "wrn_28_2", f"{'<=' if small else '>'} 28 px images")
    K = cfg.iterations
    derive(
        "bn_momentum",
        max(0.001, min(0.1, 20.0 / K)),
        f"budget of {K} iterations: max(0.001, min(0.1, 20/K)); paper 0.001",
    )
    derive(
        "ema_decay",
        budget_momentum(0.999, K),
        f"budget of {K} iterations: min(0.999, max(0.9, 1 - 20/K)); paper 0.999",
    )
    derive("ema_warmup", cfg.preset is None, "warm-up on unless a paper preset")
    derive(
        "weight_decay",
        1e-3 if info.name == "cifar100" else 5e-4,
        f"the papers' value for {info.name} (1e-3 for CIFAR-100, 5e-4 otherwise)",
    )
    if cfg.algorithm == "softmatch":
        derive(
            "stat_momentum",
            budget_momentum(0.999, K),
            f"budget of {K} iterations: min(0.999, max(0.9, 1 - 20/K)); paper 0.999",
        )
    if cfg.precision == "auto":
        native = native_bf16(device)
        cfg.precision = "bf16" if native else "fp32"
        why = "with native bf16" if native else "without native bf16"
        auto["precision"] = f"{cfg.precision}: {device} {why}"
    elif cfg.precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        logger.warning(
            "precision='bf16' on a CPU without native bf16 (no AMX or AVX512-BF16): torch "
            "emulates it, measured 20x slower convolutions and 130x slower matrix products than "
            "fp32 on such a CPU; use precision='fp32' (the default)"
        )
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision=fp16 needs CUDA (a grad scaler); use bf16 or fp32 on {device.type}"
        )
    derive(
        "channels_last",
        cfg.precision != "fp32" and device.type != "mps",
        "on with reduced precision (faster convolutions)",
    )
    if cfg.augment == "auto":
        cfg.augment = "batched"
        auto["augment"] = "batched tensor augmentation (measured faster; BENCHMARKS.md)"
    derive(
        "num_workers",
        0 if cfg.augment == "batched" else min(2, os.cpu_count() or 1),
        "batched augmentation runs in the main process"
        if cfg.augment == "batched"
        else "PIL augmentation in worker processes",
    )
    derive("progress", sys.stderr.isatty(), "progress bar when the output is a terminal")
    # Building the algorithm here surfaces option errors (e.g. n_sigma for fixmatch) up front.
    try:
        algorithm = build_algorithm(cfg.algorithm, C, **cfg.algorithm_options())
    except ValueError as e:
        # Name the config field the user set, not the algorithm's keyword for it.
        msg = str(e)
        for name, option in OPTION_FIELDS.items():
            msg = msg.replace(repr(option), repr(name))
        raise ConfigError(msg) from None
    # Only a strong-view student has a weak no-grad half to split off (step.py).
    two_pass = cfg.forward_mode == "two-pass" and algorithm.uses_strong
    if cfg.sync_bn and ws > 1 and two_pass:
        raise ConfigError(
            "sync_bn with forward_mode='two-pass': the two-pass forward keeps BatchNorm "
            "statistics per process; pass --forward-mode joint with --sync-bn"
        )
    if cfg.compile and two_pass:
        raise ConfigError(
            "compile with forward_mode='two-pass': the two-pass forward swaps BatchNorm "
            "behaviour between its passes, which a compiled graph would not see; pass "
            "--forward-mode joint with --compile"
        )
    if two_pass:
        _check_two_pass_assumption(cfg, given_data, ws)
    cfg.auto = auto
    return cfg


def _check_two_pass_assumption(cfg: Config, given_data: bool, ws: int) -> None:
    """Refuse or warn (once, here) where the two-pass forward's gradient estimate is poor.

    Its backward estimates the weak unlabeled rows' path through the BatchNorm statistics from
    the weak labeled rows (semimatch.two_pass), which assumes the two are alike.  Measured
    against the joint gradient (benchmarks/two_pass_gradient.py, BENCHMARKS.md 1b): ~12%
    relative L2 error when they are, 23% with 4 labeled rows per process, 60% when the labeled
    inputs are shifted - worse than dropping the path.  A split that makes them differ by
    construction is refused; data whose relation semimatch cannot check gets a warning.
    """
    if cfg.lt_gamma is not None and cfg.lt_reverse:
        raise ConfigError(
            "forward_mode='two-pass' with lt_reverse: the labeled and unlabeled class "
            "distributions are reversed by construction, so the weak labeled rows are a poor "
            "stand-in for the unlabeled rows' BatchNorm gradient (measured 40-60% error when "
            "they differ); use forward_mode='joint' (the default, exact)"
        )
    reasons = []
    if cfg.unlabeled_dir:
        reasons.append("the unlabeled images come from their own folder (unlabeled_dir)")
    if cfg.svhn_extra:
        reasons.append("the unlabeled set includes SVHN's easier 'extra' images")
    if given_data:
        reasons.append(
            "the data was passed in, so semimatch cannot check that its labeled and "
            "unlabeled rows come from one distribution"
        )
    per_process = cfg.batch_size // ws
    if per_process < 16:
        reasons.append(
            f"only {per_process} labeled rows per process stand in for the weak rows "
            f"(measured 23% gradient error with 4)"
        )
    if reasons:
        logger.warning(
            "forward_mode='two-pass' estimates the weak unlabeled rows' BatchNorm gradient from "
            "the weak labeled rows, assuming the two are alike; here "
            + "; ".join(reasons)
            + ". Its gradient error grows when they differ (60% measured for a one-sigma input "
            "shift): prefer forward_mode='joint' (the default, exact)"
        )


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


def _check_ranges(cfg: Config, device: torch.device) -> None:
    """Numbers that torch would take and silently misuse (a negative clip flips the gradient, a
    negative warm-up makes the learning rate negative) or reject with a deep traceback."""
    bad = [
        ("warmup_iterations", cfg.warmup_iterations < 0, ">= 0 (0 = no warm-up)"),
        ("weight_decay", cfg.weight_decay is not None and cfg.weight_decay < 0, ">= 0"),
        ("sgd_momentum", not 0 <= cfg.sgd_momentum < 1, "in [0, 1)"),
        ("clip_grad_norm", cfg.clip_grad_norm is not None and cfg.clip_grad_norm <= 0,
         "> 0 (None = no clipping)"),
        ("image_size", cfg.image_size is not None and cfg.image_size < 1, ">= 1 (None = as is)"),
        ("ema_decay", cfg.ema_decay is not None and not 0 <= cfg.ema_decay < 1,
         "in [0, 1) (0 disables the EMA)"),
        ("bn_momentum", cfg.bn_momentum is not None and not 0 < cfg.bn_momentum <= 1,
         "in (0, 1] (PyTorch convention)"),
    ]  # fmt: skip
    for name, wrong, rule in bad:
        if wrong:
            raise ConfigError(f"{name} must be {rule}; got {getattr(cfg, name)}")
    if cfg.nesterov and cfg.sgd_momentum == 0:
        raise ConfigError("nesterov needs momentum; with --sgd-momentum 0 pass --no-nesterov")
    if cfg.augment_device is not None:
        try:
            aug = torch.device(cfg.augment_device)
        except RuntimeError:
            raise ConfigError(
                f"augment_device={cfg.augment_device!r} is not a device; use cpu, cuda, cuda:N, "
                "mps or None (the training device)"
            ) from None
        if cfg.augment == "pil":
            raise ConfigError(
                "augment_device places the batched augmentation; --augment pil runs in loader "
                "workers on the CPU - drop --augment-device or use --augment batched"
            )
        if aug.type not in ("cpu", device.type):
            raise ConfigError(
                f"augment_device={cfg.augment_device!r} on a {device.type} run; use cpu or the "
                "training device"
            )


def _check_split_options(cfg: Config, data: SSLDataset) -> None:
    """One way to choose the labeled images per run; an option the chosen way ignores is an
    error, not a silent no-op."""
    ways = [
        f"{name}={getattr(cfg, name)}"
        for name in ("num_labels", "lt_gamma", "fold")
        if getattr(cfg, name) is not None
    ]
    if len(ways) > 1:
        raise ConfigError(
            f"{' and '.join(ways)} each choose the labeled images; pass only one "
            "(num_labels: balanced draw, lt_gamma: long-tailed draw, fold: predefined fold); "
            "--num-labels none clears a preset's num_labels"
        )
    defaults = Config()
    if cfg.lt_gamma is None:
        stray = [
            n for n in ("lt_n1", "lt_m1", "lt_reverse") if getattr(cfg, n) != getattr(defaults, n)
        ]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} shape the long-tailed split and apply only with lt_gamma; "
                "pass --lt-gamma (e.g. 100) or drop them"
            )
    if cfg.split_seed is not None and cfg.num_labels is None and cfg.lt_gamma is None:
        raise ConfigError(
            "split_seed seeds a drawn split (num_labels or lt_gamma); "
            f"{'a predefined fold' if cfg.fold is not None else 'the given labels'} involve no "
            "draw - drop split_seed"
        )
    if cfg.fold is not None:
        folds = data.labeled_folds
        if not folds:
            hint = (
                "fold_indices.txt is missing from stl10_binary; re-download with --download"
                if cfg.dataset == "stl10"
                else "use num_labels for a balanced draw"
            )
            raise ConfigError(f"fold: dataset {cfg.dataset!r} has no predefined folds; {hint}")
        if not 0 <= cfg.fold < len(folds):
            raise ConfigError(f"fold must be in 0..{len(folds) - 1}; got {cfg.fold}")


def make_split(cfg: Config, data: SSLDataset) -> Split:
    """The labeled/unlabeled split ``cfg`` asks for (its options checked by ``resolve``)."""
    labels = data.train.labels
    seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    C = data.info.num_classes
    include = not cfg.exclude_labeled
    if cfg.lt_gamma is not None:  # labeled and unlabeled draws are disjoint by construction
        return long_tailed_split(
            labels, C, cfg.lt_n1, cfg.lt_m1, cfg.lt_gamma, seed, reverse_unlabeled=cfg.lt_reverse
        )
    if cfg.fold is not None:
        folds = data.labeled_folds or ()
        return fold_split(folds, cfg.fold, len(labels), include_labeled_in_unlabeled=include)
    if cfg.num_labels is None:
        return given_split(labels, include_labeled_in_unlabeled=include)
    return balanced_split(labels, C, cfg.num_labels, seed, include_labeled_in_unlabeled=include)


# ----------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# ----------------------------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """SGD + Nesterov; weight decay on conv/linear weights only (not BN parameters, not biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.sgd_momentum,
        nesterov=cfg.nesterov and cfg.sgd_momentum > 0,
        foreach=True,
    )


def lr_factor(cfg: Config) -> Callable[[int], float]:
    """``lr_k = lr0 * cos(7 pi k / (16 K))`` (FixMatch), after an optional linear warm-up."""

    def factor(k: int) -> float:
        warm = min(1.0, (k + 1) / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        if cfg.schedule == "constant":
            return warm
        return warm * math.cos(7 * math.pi * k / (16 * cfg.iterations))

    return factor


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    if cfg.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Restore the process-wide state that training sets, once training returns or fails.

    ``fit`` seeds Python's, NumPy's and torch's global generators, may set torch's thread count
    and deterministic mode: a caller's own random stream and settings must not change because it
    trained a model (scikit-learn convention: ``fit`` touches only the estimator).
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_benchmark = torch.backends.cudnn.benchmark
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            torch.backends.cudnn.benchmark = cudnn_benchmark


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------
def pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """``x`` with zero rows appended up to ``rows`` rows (unchanged if it has that many).

    Evaluation and prediction run every forward on exactly ``eval_batch_size`` rows: CPU
    kernels (oneDNN/MKL) pick their blocking and reduction order by shape, so a row's logits
    could otherwise change in the last bits with the number of rows that share its batch (a
    one-row call and a 60-row call differed by 1.3e-7 on an Intel Xeon).  With one shape, a
    prediction depends on the row alone.
    """
    if len(x) >= rows:
        return x
    return torch.cat([x, x.new_zeros((rows - len(x), *x.shape[1:]))])


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    source: Any,
    num_classes: int,
    device: torch.device,
    batch_size: int = 512,
    cfg: Config | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy, per-class accuracy and confusion matrix over the whole test set.

    Each process evaluates its shard; the confusion matrix is all-reduced, so the numbers are
    those of the full test set under DDP too.  Every forward has ``batch_size`` rows (the last
    chunk padded, ``pad_rows``), so an image's prediction does not depend on the shard size.
    """
    labels = getattr(source, "labels", None)
    if labels is not None and len(labels) and int(np.min(labels)) < 0:
        raise ValueError(
            f"{int((np.asarray(labels) < 0).sum())} of the {len(labels)} images to evaluate have "
            "no label (-1); evaluate on labeled images only"
        )
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    amp = autocast(cfg, device) if cfg is not None else contextlib.nullcontext()
    cl = cfg is not None and cfg.channels_last
    for x, y in eval_batches(source, batch_size, device, dist.get_rank(), dist.get_world_size()):
        n = len(x)
        x = pad_rows(x, batch_size)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            pred = model(x)[:n].argmax(dim=1)
        idx = y.to(device) * num_classes + pred
        confusion += (
            torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes).double()
        )
    (confusion,) = dist.all_reduce_sums(confusion)
    model.train(was_training)
    total = confusion.sum().item()
    per_class = (confusion.diag() / confusion.sum(dim=1).clamp(min=1)).tolist()
    top1 = confusion.diag().sum().item() / max(total, 1)
    return {
        "top1": top1,
        "error": 1 - top1,
        "per_class_acc": per_class,
        "confusion": confusion.long().tolist(),
        "n": int(total),
    }


def lambda_curve(algorithm: SSLAlgorithm, num_classes: int, device: torch.device) -> dict | None:
    """The live weighting function evaluated on a grid of confidences in [1/C, 1].

    A row with max probability q puts q on one class and spreads 1-q over the others; per-class
    weightings are averaged over which class holds the max.
    """
    if algorithm.weighting is None:
        return None
    grid = torch.linspace(1.0 / num_classes, 1.0, 51, device=device)
    ws = []
    for c in range(num_classes):
        probs = ((1 - grid) / (num_classes - 1)).unsqueeze(1).repeat(1, num_classes)
        probs[:, c] = grid
        ws.append(algorithm.weighting(probs).float())
        if not getattr(algorithm.weighting, "per_class", False):
            break
    w = torch.stack(ws).mean(dim=0)
    return {"p": [round(v, 6) for v in grid.tolist()], "w": w.tolist()}


# ----------------------------------------------------------------------------------------------
# The run directory
# ----------------------------------------------------------------------------------------------
def prepare_run_dir(
    out: Path, cfg: Config, resume: bool | Literal["auto"], overwrite: bool
) -> Path | None:
    """Refuse to mix two runs in one directory; return the checkpoint to resume from (if any).

    ``resume="auto"`` makes a command restartable (``torchrun --max-restarts``, preemptible
    jobs): start the run if ``out`` holds none; if it holds this run (same config), continue it
    from its latest checkpoint, or start it again if it stopped before its first checkpoint.
    Under torchrun ``fit`` calls this on rank 0 only and sends the answer to the other ranks.
    """
    has_run = (out / "config.json").exists() or (out / "metrics.jsonl").exists()
    if resume == "auto":
        if not has_run:
            return None
        _check_same_run(out, cfg)
        latest = ckpt.latest(out / "checkpoints")
        if latest is not None:
            _remove_stale_temporaries(out)  # the run is ours to continue from here on
            return latest
        resume, overwrite = False, True  # stopped before its first checkpoint: start again
    if resume:
        if not has_run:
            raise TrainingError(
                f"--resume {out}: no run there (no config.json); start it without --resume"
            )
        latest = ckpt.latest(out / "checkpoints")
        if latest is None:
            raise _no_checkpoint(out)
        _remove_stale_temporaries(out)  # the run is ours to continue from here on
        return latest
    if has_run:
        if not overwrite:
            raise TrainingError(
                f"{out} already holds a run; pass --resume to continue it or "
                "--overwrite to replace it (or choose another --out)"
            )
        _remove_stale_temporaries(out)  # counted and reported before the folder goes
        for name in ("checkpoints", "tb", "report"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("metrics.jsonl", "summary.json", "config.json", "split.json", "dataset.json"):
            (out / name).unlink(missing_ok=True)
    return None


def _remove_stale_temporaries(out: Path) -> None:
    """Delete the half-written files a killed run left (checkpoint copies, the metrics log's
    rewrite): they are never read, but can be large."""
    removed = ckpt.remove_stale_temporaries(out / "checkpoints")
    stale_log = out / "metrics.tmp"  # JsonlWriter.truncate_after's temporary file
    if stale_log.is_file():
        with contextlib.suppress(OSError):
            stale_log.unlink()
            removed += 1
    if removed:
        logger.info(f"removed {removed} temporary file(s) left in {out} by an interrupted run")


def _no_checkpoint(out: Path) -> TrainingError:
    return TrainingError(
        f"--resume {out}: the run has no checkpoint yet (checkpoints are written every "
        "eval_every iterations); restart it with --overwrite"
    )


# Fields that may differ between two launches of the same run (speed and display only).
_RUNTIME_FIELDS = ("auto", "progress", "num_workers", "threads")


def _check_same_run(out: Path, cfg: Config) -> None:
    """``resume="auto"`` continues a run only if this command would start the same run."""
    try:
        saved = Config.load(out / "config.json").to_dict()
    except (OSError, ConfigError) as e:
        raise TrainingError(
            f"--resume auto: {out} holds a run whose config.json cannot be read "
            f"({e}); choose another --out or pass --overwrite"
        ) from None
    now = cfg.to_dict()
    diff = [k for k in now if k not in _RUNTIME_FIELDS and saved.get(k) != now[k]]
    if diff:
        k = diff[0]
        raise TrainingError(
            f"--resume auto: {out} holds a different run ({len(diff)} option(s) differ, e.g. "
            f"{k}: saved {saved.get(k)!r}, this command {now[k]!r}); choose another --out, pass "
            f"--overwrite to replace it, or `--resume {out}` to continue it with its saved config"
        )


# ----------------------------------------------------------------------------------------------
# The result
# ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained (or loaded) run: models, config, metrics; ``evaluate``/``predict`` on it."""

    config: Config
    model: nn.Module
    ema_model: nn.Module | None
    algorithm: SSLAlgorithm | None  # None: reloaded, trained with a custom weighting
    data: SSLDataset | None
    run_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # What prediction needs (classes, size, channels, normalisation) without the images; a
    # reloaded run has it from dataset.json and loads the dataset only to evaluate.
    info: DatasetInfo | None = None

    def __post_init__(self) -> None:
        if self.info is None and self.data is not None:
            self.info = self.data.info

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.history

    @property
    def class_names(self) -> tuple[str, ...]:
        assert self.info is not None
        return self.info.class_names

    def eval_model(self, which: str = "ema") -> nn.Module:
        if which not in ("ema", "raw"):
            raise ValueError(f"model must be 'ema' or 'raw'; got {which!r}")
        return self.ema_model if which == "ema" and self.ema_model is not None else self.model

    def evaluate(self, source: Any = None, model: str = "ema") -> dict[str, Any]:
        """Top-1/error on ``source`` (default: the dataset's test set); ``result["model"]``
        says which model answered ("raw" when the run has no EMA)."""
        if source is None and self.data is None:  # a reloaded run: load its dataset now
            if self.config.dataset not in DATASETS:
                raise ValueError(
                    f"this run trained on data passed to fit (dataset {self.config.dataset!r}), "
                    "which semimatch cannot load by name; pass the test images: "
                    "run.evaluate(source), or load_run(run_dir, data=...)"
                )
            self.data = load_dataset(
                self.config.dataset, root=self.config.data_root, **_dataset_options(self.config)
            )
        source = source if source is not None else (self.data.test if self.data else None)
        if source is None:
            raise ValueError(
                "this run's dataset has no test set; score labeled images DIR/<class>/<image> "
                "with `semimatch eval RUN --test-dir DIR` or semimatch.evaluate(run, "
                "test_dir=DIR), or pass images to run.evaluate(source)"
            )
        net = self.eval_model(model)
        # The precision and layout the training log's evaluations used (fp16 needs CUDA).
        same = not (self.config.precision == "fp16" and self.device.type != "cuda")
        result = evaluate_model(
            net,
            source,
            self.algorithm_classes,
            self.device,
            self.config.eval_batch_size,
            cfg=self.config if same else None,
        )
        result["model"] = "ema" if net is self.ema_model else "raw"
        return result

    @property
    def algorithm_classes(self) -> int:
        assert self.info is not None
        return self.info.num_classes

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, model: str = "ema") -> np.ndarray:
        """Class probabilities for raw inputs: uint8 images (N, H, W[, C]) of the training size,
        or (N, D) feature vectors for a run on features (``semimatch.data.to_model_input``)."""
        net = self.eval_model(model).eval()
        assert self.info is not None
        x = to_model_input(images, self.info)
        out = []
        rows = self.config.eval_batch_size
        for i in range(0, len(x), rows):  # fixed-size forwards: see pad_rows
            xb = x[i : i + rows]
            logits = net(pad_rows(xb, rows).to(self.device))[: len(xb)]
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.algorithm_classes))

    def predict(self, images: np.ndarray, model: str = "ema") -> np.ndarray:
        return self.predict_proba(images, model).argmax(axis=1)


# ----------------------------------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------------------------------
@process_state_restored()  # a ContextDecorator: fresh state saved on every call
def fit(
    cfg: Config,
    *,
    out: str | os.PathLike | None = None,
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    data: SSLDataset | None = None,
    model: nn.Module | None = None,
    algorithm: SSLAlgorithm | None = None,
    weak_augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    strong_augment: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
) -> Run:
    """Train according to ``cfg``; write the run directory ``out`` (if given); return a ``Run``.

    ``resume=True`` continues the run in ``out`` with its saved config; ``resume="auto"`` starts
    it or, if ``out`` already holds this run, continues it (a restartable command).  Under
    torchrun every process calls ``fit``; only rank 0 writes ``out``.

    ``data``, ``model`` and ``algorithm`` replace what the config would build (Python API);
    ``weak_augment``/``strong_augment`` are per-image callables ``(img_hwc_uint8, rng) -> img``
    replacing the PIL pipelines (they run in loader workers, so ``augment`` must be ``pil`` or
    ``auto``).  The config still drives the recipe.

    The process's global random generators, thread count and deterministic mode are as they
    were once ``fit`` returns (or fails).
    """
    custom_aug = weak_augment is not None or strong_augment is not None
    if custom_aug and cfg.augment == "batched":
        raise ConfigError(
            "custom weak_augment/strong_augment are per-image callables; they "
            "need augment='pil' (or 'auto'), not 'batched'"
        )
    if custom_aug and cfg.augment == "auto":
        cfg = cfg.replace(
            augment="pil", auto={**cfg.auto, "augment": "pil: custom augmentation callables"}
        )
    out_dir = Path(out) if out is not None else None
    if resume not in (True, False, "auto"):
        raise ValueError(f"resume must be True, False or 'auto'; got {resume!r}")
    if resume and out_dir is None:
        raise TrainingError("resume needs the run directory (out)")
    if resume == "auto" and overwrite:
        raise TrainingError("resume='auto' continues the run in out; it cannot also overwrite it")
    if resume is True:  # the run's own config is the truth; CLI overrides are not applied
        if not (out_dir / "config.json").exists():
            raise TrainingError(
                f"--resume {out_dir}: no run there (no config.json); start it without --resume"
            )
        if ckpt.latest(out_dir / "checkpoints") is None:  # say so before any work
            raise _no_checkpoint(out_dir)
        cfg = Config.load(out_dir / "config.json")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 (None = torch's default); got {cfg.threads}")
    env, device = dist.setup(str(select_device(cfg.device)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)

    # -- data, split, config --------------------------------------------------------------------
    data_given = data is not None
    if data is None:
        if cfg.download and not env.is_main:
            dist.barrier()  # rank 0 downloads the files before the other ranks read them
        data = load_dataset(
            cfg.dataset,
            root=cfg.data_root,
            download=cfg.download and env.is_main,
            **_dataset_options(cfg),
        )
        if cfg.download and env.is_main:
            dist.barrier()
    elif resume is not True:  # data passed in: record what trained, refuse loader options
        cfg = _given_data(cfg, data)
    cfg = resolve(cfg, data, device, given_data=data_given) if resume is not True else cfg
    info = data.info
    C = info.num_classes
    if data.test is None and info.name == "imagefolder" and env.is_main:
        logger.warning(
            "no test images (set test_dir; --test-dir on the command line): the run measures "
            "no test error and best.pt is simply the latest evaluated checkpoint"
        )
    # Everything that can refuse the config (split, model, optimiser) runs before the run
    # directory is touched: a mistake must not cost the run that --overwrite would replace.
    new_split = make_split(cfg, data) if resume is not True else None

    # -- model, algorithm, optimiser -----------------------------------------------------------
    if model is None:
        model = build_model(cfg.backbone, C, in_channels=info.channels, image_size=info.image_size)
    set_bn_momentum(model, cfg.bn_momentum)
    net = wrap_model(model, info).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if algorithm is None:
        algorithm = build_algorithm(cfg.algorithm, C, **cfg.algorithm_options())
    algorithm = algorithm.to(device) if isinstance(algorithm, nn.Module) else algorithm
    # What actually trains: a passed-in algorithm may differ from cfg.algorithm (the default
    # "fixmatch" of a custom weighting); checkpoints and summary.json record this name.
    algorithm_name = str(getattr(algorithm, "name", f"custom:{type(algorithm).__name__}"))
    for part in ("weighting", "alignment"):
        obj = getattr(algorithm, part, None)
        # Attributes on a plain object may be statistics that a resume would silently lose.
        stateful = not isinstance(obj, nn.Module) and bool(getattr(obj, "__dict__", None))
        if out_dir and env.is_main and stateful:
            logger.warning(
                f"the {part} {type(obj).__name__} is not an nn.Module: checkpoints cannot "
                "save its attributes, so a resumed run starts them afresh; keep its state in "
                "buffers of an nn.Module to resume exactly"
            )
    if cfg.sync_bn and dist.is_distributed():
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ema = ModelEMA(net, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None
    train_net: nn.Module = net
    # Floating-point buffers (BatchNorm running statistics) are averaged over the ranks after
    # every step, so all ranks hold the same model for the EMA, evaluation and checkpoints.
    # DDP's own buffer sync (rank 0's values, broadcast at the start of each forward) would
    # leave them different after the step, so it is turned off.
    buffers_to_average: list[torch.Tensor] = []
    if dist.is_distributed():
        ddp_ids = [device.index] if device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=ddp_ids, **_no_forward_buffer_sync()
        )
        buffers_to_average = [b for b in net.buffers() if b.is_floating_point()]
    if cfg.compile:
        train_net = torch.compile(train_net)
    optimizer = make_optimizer(net, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # Rank 0 alone inspects (and with overwrite clears) the run directory and tells every rank
    # which checkpoint to load, so all ranks agree (or stop with the same error).  Rank 0 writes
    # no checkpoint before the first collective of training, so the others read it undisturbed.
    resume_from = (
        dist.on_main(prepare_run_dir, out_dir, cfg, resume, overwrite) if out_dir else None
    )
    if resume == "auto":
        resume = resume_from is not None
        if resume:  # the saved config, which prepare_run_dir found equal to this one
            cfg = Config.load(out_dir / "config.json")
    if resume and out_dir is not None and (out_dir / "split.json").exists():
        split = load_split(out_dir / "split.json")
    else:
        split = new_split if new_split is not None else make_split(cfg, data)
    if env.is_main and out_dir is not None and not resume:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(out_dir / "config.json")
        save_split(split, out_dir / "split.json")
        save_dataset_info(info, out_dir / "dataset.json")

    # -- state that a checkpoint restores -----------------------------------------------------
    state = _TrainState(net, ema, algorithm, algorithm_name, optimizer, scheduler, scaler)
    start = state.restore(resume_from, cfg, device, env.rank) if resume_from is not None else 0
    history, log_window, eval_window = state.history, state.log_window, state.eval_window

    writer = JsonlWriter(out_dir / "metrics.jsonl") if (out_dir and env.is_main) else None
    if writer is not None and resume_from is not None:
        writer.truncate_after(start)
    records: list[dict[str, Any]] = []  # Run.metrics of a run without a directory

    def log(record: dict[str, Any]) -> None:
        if writer:
            try:
                writer.write(record)
            except OSError as e:
                raise _WriteFailed(
                    f"{ckpt.describe_write_failure(writer.path, e)}. "
                    f"Training stopped at iteration {record['iteration']}; "
                    f"{_resume_hint(out_dir)}"
                ) from e
        elif env.is_main:
            records.append(record)

    tb = _tensorboard(out_dir, cfg) if env.is_main else None

    def save_checkpoint(k: int, best: bool = False) -> None:
        if out_dir is None or not env.is_main:
            return
        folder = out_dir / "checkpoints"
        try:
            path = ckpt.save_atomic(
                state.state_dict(k, cfg, device), folder / ckpt.checkpoint_name(k)
            )
            ckpt.prune(folder, cfg.keep_checkpoints)
            if best:
                ckpt.copy_atomic(path, folder / "best.pt")
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(
                f"{e}. Training stopped at iteration {k}; {_resume_hint(out_dir)}"
            ) from e

    # -- the stream of batches -----------------------------------------------------------------
    stream = TrainStream(
        data,
        split,
        batch_size=cfg.batch_size,
        uratio=cfg.uratio,
        seed=cfg.seed,
        use_unlabeled=algorithm.uses_unlabeled,
        use_strong=algorithm.uses_strong,
        strong_variant=cfg.strong_augment,
        augment=cfg.augment,
        device=device,
        augment_device=cfg.augment_device,
        rank=env.rank,
        world_size=env.world_size,
        num_workers=cfg.num_workers,
        weak_augment=weak_augment,
        strong_augment=strong_augment,
    )
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    check_every_step = device.type == "cpu"  # reading the loss is free on CPU, a sync on GPUs
    bar = _progress(cfg, start, env.is_main)
    status, message, k, completed = "finished", "", start, start
    failure: Exception | None = None  # a failed write that ended the run
    t_window = t_eval = time.perf_counter()
    t_start = time.perf_counter() - history["wall_time"]
    interrupted = _InterruptFlag()
    clean_stop = False  # the loop stopped between two iterations: the state is consistent
    train_net.train()
    try:
        with interrupted:
            batches: Iterator = stream.batches(start, cfg.iterations)
            for k in range(start, cfg.iterations):
                batch = next(batches)
                try:
                    with autocast(cfg, device):
                        loss, sums = train_step(
                            train_net,
                            algorithm,
                            batch.x_lb.contiguous(memory_format=fmt),
                            batch.y_lb,
                            batch.u_weak.contiguous(memory_format=fmt),
                            None
                            if batch.u_strong is None
                            else batch.u_strong.contiguous(memory_format=fmt),
                            batch.u_true,
                            forward_mode=cfg.forward_mode,
                        )
                except NonFiniteError:  # the weak-view probabilities are already NaN
                    raise _NonFinite(k) from None
                # any_rank: a NaN on one rank stops every rank at this iteration.
                if check_every_step and dist.any_rank(not math.isfinite(loss.item()), device):
                    raise _NonFinite(k)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad_norm:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(net.parameters(), cfg.clip_grad_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                dist.average_(buffers_to_average)
                if ema is not None:
                    ema.update(net, k)
                log_window.add(sums)
                eval_window.add(sums)
                done = k + 1
                if bar is not None:
                    bar.update(1)

                if done % cfg.log_every == 0 or done == cfg.iterations:
                    now = time.perf_counter()
                    record = _train_record(
                        log_window, done, optimizer, algorithm, (now - t_window) / log_window.steps
                    )
                    if not math.isfinite(record["loss"]):
                        raise _NonFinite(k)
                    t_window = now
                    log_window.reset()
                    log(record)
                    _tb_scalars(tb, "train", record, done)
                    if bar is not None:
                        bar.set_postfix(
                            {
                                k2: f"{record[k2]:.3f}"
                                for k2 in ("sup_loss", "unsup_loss", "quantity", "quality")
                                if record.get(k2) is not None
                            },
                            refresh=False,
                        )

                if done % cfg.eval_every == 0 or done == cfg.iterations:
                    now = time.perf_counter()
                    history["wall_time"] = now - t_start
                    record = _evaluate_and_log(
                        cfg,
                        net,
                        ema,
                        algorithm,
                        data,
                        device,
                        history,
                        eval_window,
                        done,
                        optimizer,
                        C,
                    )
                    record["window"]["sec_per_iter"] = (now - t_eval) / max(eval_window.steps, 1)
                    history["last_window"] = {
                        k2: record["window"].get(k2) for k2 in ("quantity", "quality", "pl_acc")
                    }
                    eval_window.reset()
                    log(record)
                    _tb_scalars(tb, "eval", record, done)
                    _say(env.is_main, _eval_line(record, cfg))
                    save_checkpoint(done, best=record["error"] == history["best_error"])
                    # Evaluation and checkpointing are not training time.
                    t_eval = time.perf_counter()
                    t_window += t_eval - now
                completed = done
                stop = interrupted.requested
                if env.world_size > 1:
                    # Every rank must stop after the same iteration, or the others wait in the
                    # next collective.  The ranks agree where the loop syncs anyway: every step
                    # on CPU, every log_every steps on accelerators.
                    stop = (check_every_step or done % cfg.log_every == 0) and dist.any_rank(
                        stop, device
                    )
                if stop:
                    clean_stop = True
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        status = "interrupted"
        history["wall_time"] = time.perf_counter() - t_start
        stopped_by = f"interrupted ({signal.Signals(interrupted.signum).name})"
        message = (
            f"{stopped_by} after iteration {completed}; resume with "
            f"`semimatch train --resume {out_dir}`"
            if out_dir
            else f"{stopped_by} after iteration {completed}"
        )
        if clean_stop and completed > start:
            # Stopped between iterations: every piece of state is consistent, save it.
            try:
                save_checkpoint(completed)
            except ckpt.CheckpointError as e:
                status, failure = "failed", e
                message = f"{stopped_by} after iteration {completed}, then {e}"
    except (ckpt.CheckpointError, _WriteFailed) as e:
        # Iteration k trained and was logged; only its record or checkpoint failed to write.
        status, failure, message, completed = "failed", e, str(e), k + 1
    except _NonFinite as e:
        status = "failed"
        if out_dir is None:
            last = "the run has no folder (out), so no checkpoint was saved"
        elif (path := ckpt.latest(out_dir / "checkpoints")) is None:
            last = "no checkpoint was saved yet"
        else:
            last = f"the last good checkpoint is {path}"
        message = (
            f"the loss became NaN/inf at iteration {e.iteration + 1}; {last}. Lower --lr, set "
            "--clip-grad-norm, or use --precision fp32"
        )
    finally:
        if bar is not None:
            bar.close()

    wall = time.perf_counter() - t_start
    summary = _summary(
        cfg, algorithm_name, history, status, wall, info.class_names, completed, len(split.labeled)
    )
    end = {
        "kind": "end",
        "iteration": completed,
        "time": time.time(),
        "status": status,
        "message": message,
    }
    if status == "failed":  # the folder may be full or read-only: the message matters more
        with contextlib.suppress(_WriteFailed):
            log(end)
    else:
        log(end)
    if writer and status == "finished":
        try:
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            raise TrainingError(
                f"training finished and its last checkpoint is saved, but "
                f"{ckpt.describe_write_failure(out_dir / 'summary.json', e)}"
            ) from e
    if tb is not None:
        tb.close()
    if isinstance(failure, ckpt.CheckpointError):
        raise ckpt.CheckpointError(message) from failure
    if status == "failed":
        raise TrainingError(message) from failure
    if status == "interrupted":
        # Not logged here: the message travels in the exception, whose owner shows it once
        # (the CLI prints it; a Python caller sees it in the traceback or catches it).
        raise TrainingInterrupted(message if env.is_main else "", interrupted.signum)
    _say(env.is_main, _summary_line(summary))
    if writer:  # the whole log, including what ran before a resume
        records = read_jsonl(out_dir / "metrics.jsonl")
    return Run(
        cfg,
        net,
        ema.module if ema is not None else None,
        algorithm,
        data,
        out_dir,
        records,
        summary,
        device,
    )


# ----------------------------------------------------------------------------------------------
# Helpers of fit (kept out of the loop so the loop reads top to bottom)
# ----------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a checkpoint saves (``_TrainState.restore`` sets them back)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass
class _TrainState:
    """Everything a checkpoint saves and a resume restores, in one place for both directions."""

    net: nn.Module
    ema: ModelEMA | None
    algorithm: SSLAlgorithm
    algorithm_name: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: dict[str, Any] = field(
        default_factory=lambda: {"errors": [], "best_error": None, "wall_time": 0.0}
    )
    log_window: WindowSums = field(default_factory=WindowSums)
    eval_window: WindowSums = field(default_factory=WindowSums)

    def state_dict(self, iteration: int, cfg: Config, device: torch.device) -> dict[str, Any]:
        """The checkpoint after ``iteration`` iterations (tensors and primitives only)."""
        algorithm = self.algorithm
        return {
            "iteration": iteration,
            "config": json.dumps(cfg.to_dict()),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "algorithm": algorithm.state_dict() if isinstance(algorithm, nn.Module) else {},
            "algorithm_name": self.algorithm_name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "log_window": dict(self.log_window.state()),
            "eval_window": dict(self.eval_window.state()),
            "rng": _rng_state(device),
        }

    def restore(self, path: str | os.PathLike, cfg: Config, device: torch.device, rank: int) -> int:
        """Load the checkpoint ``path`` into this state; return the iteration to start from."""
        if rank != 0 and not Path(path).is_file():
            raise ckpt.CheckpointError(
                f"rank {rank} cannot see {path}, the checkpoint rank 0 resumes from; "
                "with several nodes, --out must be on a file system that all nodes share"
            )
        saved = ckpt.load(path, map_location=device)
        saved_name = saved.get("algorithm_name", cfg.algorithm)
        if saved_name != self.algorithm_name:
            weighting = saved_name.removeprefix("custom:")
            how = (
                f"pass the same one again (semimatch.train(..., weighting=<{weighting}>, "
                "resume=True))"
                if weighting != saved_name
                else f"resume it with algorithm {saved_name!r}"
            )
            raise TrainingError(
                f"{path} was trained with algorithm {saved_name!r}; this resume would "
                f"continue it with {self.algorithm_name!r}: {how}"
            )
        try:
            self.net.load_state_dict(saved["model"])
            if self.ema is not None:
                self.ema.load_state_dict(saved["ema"])
            if isinstance(self.algorithm, nn.Module):
                self.algorithm.load_state_dict(saved["algorithm"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"checkpoint {path} does not match this run's model/config "
                f"({str(e).splitlines()[0]}); it was written by a different configuration"
            ) from None
        self.history = saved["history"]
        self.log_window.load_state(saved["log_window"])
        self.eval_window.load_state(saved["eval_window"])
        torch.set_rng_state(saved["rng"]["torch"].cpu())
        if device.type == "cuda" and "cuda" in saved["rng"]:
            torch.cuda.set_rng_state(saved["rng"]["cuda"].cpu(), device)
        return int(saved["iteration"])


def _resume_hint(out: Path) -> str:
    """Where a run that stopped on a failed write can continue from, once the cause is fixed."""
    found = ckpt.list_checkpoints(out / "checkpoints")
    if not found:
        return "no checkpoint was saved yet: fix the cause, then restart with --overwrite"
    iteration, path = found[-1]
    return (
        f"fix the cause, then `semimatch train --resume {out}` continues from {path.name} "
        f"(iteration {iteration})"
    )


class _WriteFailed(TrainingError):
    """The metrics log could not be written (the message says where, why and what next)."""


class _NonFinite(Exception):
    def __init__(self, iteration: int) -> None:
        super().__init__(iteration)
        self.iteration = iteration


class _InterruptFlag:
    """Turn the first SIGINT/SIGTERM into a flag checked after the current iteration, so Ctrl-C
    (or a scheduler's SIGTERM) checkpoints at a clean point; a second Ctrl-C interrupts at once.
    ``signum`` is the last signal received (SIGINT for a KeyboardInterrupt from elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptFlag:
        with contextlib.suppress(ValueError):  # not in the main thread: leave handlers alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _no_forward_buffer_sync() -> dict[str, bool]:
    """The DDP keyword that turns off its per-forward buffer broadcast (renamed in torch 2.13)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def save_dataset_info(info: DatasetInfo, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")


def load_dataset_info(path: Path) -> DatasetInfo:
    d = json.loads(path.read_text())
    return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _given_data(cfg: Config, data: SSLDataset) -> Config:
    """``fit(data=...)``: the options that say how to load a dataset would do nothing, so they
    are refused; ``dataset`` records the name of the data that trained (config.json)."""
    defaults = Config()
    loading = (
        "data_root",
        "download",
        "svhn_extra",
        "unlabeled_dir",
        "test_dir",
        "image_size",
        "hflip",  # the data's own DatasetInfo.hflip decides (from_arrays(hflip=...))
    )
    ignored = [n for n in (*loading, "skip_corrupt") if getattr(cfg, n) != getattr(defaults, n)]
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} tell semimatch how to load a dataset; with data= passed they "
            "would do nothing - drop them, or drop data= and let semimatch load the dataset"
        )
    return cfg.replace(dataset=data.info.name)


def _dataset_options(cfg: Config) -> dict[str, Any]:
    opts: dict[str, Any] = {} if cfg.hflip is None else {"hflip": cfg.hflip}
    if cfg.dataset == "imagefolder":
        opts.update(
            unlabeled_dir=cfg.unlabeled_dir, test_dir=cfg.test_dir, skip_corrupt=cfg.skip_corrupt
        )
        if cfg.image_size:
            opts["image_size"] = cfg.image_size
    elif cfg.unlabeled_dir or cfg.test_dir or cfg.image_size or cfg.skip_corrupt:
        raise ConfigError(
            "unlabeled_dir, test_dir, image_size and skip_corrupt apply only to "
            f"dataset='imagefolder', not {cfg.dataset!r}"
        )
    if cfg.dataset == "svhn":
        opts["extra"] = cfg.svhn_extra
    elif cfg.svhn_extra:
        raise ConfigError(f"svhn_extra applies only to dataset='svhn', not {cfg.dataset!r}")
    return opts


def _train_record(
    window: WindowSums,
    done: int,
    optimizer: torch.optim.Optimizer,
    algorithm: SSLAlgorithm,
    sec_per_iter: float,
) -> dict[str, Any]:
    """The "train" record of metrics.jsonl: the log window's averages (one sync)."""
    s = summarize(window.reduce())
    loss = (s["sup_loss"] or 0.0) + algorithm.lambda_u * (s["unsup_loss"] or 0.0)
    return {
        "kind": "train",
        "iteration": done,
        "time": time.time(),
        "lr": optimizer.param_groups[0]["lr"],
        "loss": loss,
        **{
            key: s[key]
            for key in (
                "sup_loss",
                "unsup_loss",
                "quantity",
                "quality",
                "pl_acc",
                "full_weight_frac",
            )
        },
        "sec_per_iter": sec_per_iter,
    }


def _evaluate_and_log(
    cfg: Config,
    net: nn.Module,
    ema: ModelEMA | None,
    algorithm: SSLAlgorithm,
    data: SSLDataset,
    device: torch.device,
    history: dict[str, Any],
    window: WindowSums,
    done: int,
    optimizer: torch.optim.Optimizer,
    C: int,
) -> dict[str, Any]:
    model = ema.module if (cfg.eval_model == "ema" and ema is not None) else net
    record: dict[str, Any] = {
        "kind": "eval",
        "iteration": done,
        "time": time.time(),
        "lr": optimizer.param_groups[0]["lr"],
        "model": "ema" if model is not net else "raw",
    }
    if data.test is not None:
        result = evaluate_model(model, data.test, C, device, cfg.eval_batch_size, cfg)
        history["errors"].append(result["error"])
        best = history["best_error"]
        history["best_error"] = result["error"] if best is None else min(best, result["error"])
        record.update(
            top1=result["top1"],
            error=result["error"],
            best_error=history["best_error"],
            median20_error=median_of_last(history["errors"], 20),
            per_class_acc=result["per_class_acc"],
        )
        if C <= 20 or done == cfg.iterations:
            record["confusion"] = result["confusion"]
    else:
        record.update(top1=None, error=None, best_error=None, median20_error=None)
    s = summarize(window.reduce()) if window.steps else {}
    s["sec_per_iter"] = None
    record["window"] = s
    record.update(
        algorithm.describe()
        if hasattr(algorithm, "describe")
        else {"weighting": {"type": "custom"}, "p_model": None}
    )
    record["lambda_curve"] = lambda_curve(algorithm, C, device)
    return record


def _summary(
    cfg: Config,
    algorithm_name: str,
    history: dict[str, Any],
    status: str,
    wall: float,
    class_names: tuple[str, ...],
    done: int,
    num_labels: int,
) -> dict[str, Any]:
    errors = history["errors"]
    window = history.get("last_window") or {}
    return {
        "algorithm": algorithm_name,
        "dataset": cfg.dataset,
        "num_labels": num_labels,  # of the split that trained (also for LT, fold, given splits)
        "num_classes": len(class_names),
        "iterations": cfg.iterations,
        "iterations_done": done,
        "best_error": history["best_error"],
        "median20_error": median_of_last(errors, 20),
        "final_error": errors[-1] if errors else None,
        "final_quantity": window.get("quantity"),
        "final_quality": window.get("quality"),
        "sec_per_iter": wall / max(done, 1),
        "wall_time_s": wall,
        "status": status,
        "seed": cfg.seed,
        "backbone": cfg.backbone,
        "class_names": list(class_names),
    }


def _progress(cfg: Config, start: int, is_main: bool):
    if not (cfg.progress and is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.iterations, initial=start, desc=f"{cfg.algorithm}", unit="it", dynamic_ncols=True
    )


def _say(is_main: bool, text: str) -> None:
    if is_main:
        logger.info(text)


def _eval_line(record: dict[str, Any], cfg: Config) -> str:
    w = record.get("window") or {}
    parts = [f"[{record['iteration']:>{len(str(cfg.iterations))}}/{cfg.iterations}]"]
    if record.get("top1") is not None:
        parts.append(
            f"top1 {100 * record['top1']:.2f}% (best err {100 * record['best_error']:.2f}%)"
        )
    for key in ("quantity", "quality"):
        if w.get(key) is not None:
            parts.append(f"{key} {w[key]:.3f}")
    return "  ".join(parts)


def _summary_line(s: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    return (
        f"done: {s['algorithm']} on {s['dataset']} | {s['iterations_done']} it | "
        f"error {pct(s['final_error'])} (best {pct(s['best_error'])}, median last 20 "
        f"{pct(s['median20_error'])}) | quantity "
        f"{'n/a' if s['final_quantity'] is None else format(s['final_quantity'], '.3f')} | "
        f"{s['sec_per_iter']:.3f} s/it"
    )


def _tensorboard(out_dir: Path | None, cfg: Config):
    """A SummaryWriter on RUN_DIR/tb, or None (no folder, turned off, or auto and missing)."""
    if out_dir is None or cfg.tensorboard is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None  # auto on a light install (resolve refused an explicit True)
    return SummaryWriter(str(out_dir / "tb"))


def _tb_scalars(tb: Any, prefix: str, record: dict[str, Any], step: int) -> None:
    if tb is None:
        return
    flat = dict(record)
    flat.update({f"window/{k}": v for k, v in (record.get("window") or {}).items()})
    for key, value in flat.items():
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in ("iteration", "time")
        ):
            tb.add_scalar(f"{prefix}/{key}", value, step)
    if prefix == "eval" and record.get("window", {}).get("conf_hist"):
        hist = record["window"]["conf_hist"]
        edges = np.linspace(0, 1, CONF_BINS + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        values = np.repeat(centers, hist)
        if len(values):
            tb.add_histogram("eval/confidence", values, step)
