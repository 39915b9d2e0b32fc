"""From a config to what a run needs: the device, the dataset, every auto field, the split.

``resolve`` fills the auto (None) fields of a ``Config`` and checks it against the dataset and
the device (``semimatch.runs.hardware``), before anything is trained or written: a mistake must not
cost the run that ``--overwrite`` would replace.  Each derived value is recorded in
``cfg.auto`` with its reason.  ``load_data`` is the one place a config's dataset is loaded;
``make_split`` the one place its labeled/unlabeled split is drawn.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import torch

from semimatch import distributed as dist
from semimatch.config import Config, ConfigError, budget_momentum
from semimatch.data import DatasetInfo, Split, SSLDataset, load_dataset
from semimatch.data.modalities import Modality, check_config, modality
from semimatch.data.modalities.base import Derive
from semimatch.data.splits import balanced_split, fold_split, given_split, long_tailed_split
from semimatch.data.text_datasets import TEXT_FILE_OPTIONS
from semimatch.log import logger, status
from semimatch.methods.registry import methods
from semimatch.runs.hardware import fp32_hint, native_bf16
from semimatch.runs.validation import carve, check_validation, with_validation

__all__ = [
    "check_runtime",
    "dataset_options",
    "given_data_config",
    "load_data",
    "make_split",
    "prepare_data",
    "resolve",
]


def resolve(
    cfg: Config, data: SSLDataset, device: torch.device, *, custom_views: bool = False
) -> Config:
    """Fill the auto (None) fields and check the config against the dataset, before training.

    Each derived value is recorded in ``cfg.auto`` with the reason, so the saved config shows it.
    Options the algorithm does not take are refused here; their values are checked where it
    is built (``recipe.build_parts``).
    ``custom_views``: the caller passed its own per-sample view callables (``fit(weak_view=,
    strong_view=)``), which run in loader workers: ``augment`` must be ``pil`` (or auto).
    """
    cfg = cfg.replace()  # a validated copy
    auto: dict[str, str] = dict(cfg.auto)
    if custom_views and cfg.augment == "batched":
        raise ConfigError(
            "custom weak_view/strong_view are per-image callables; they "
            "need augment='pil' (or 'auto'), not 'batched'"
        )
    if cfg.strong_augment == "ctaugment" and (custom_views or cfg.augment == "pil"):
        raise ConfigError(
            "--strong-augment ctaugment runs as batched tensor ops (its rates change every "
            "step): use --augment batched (or auto) and no custom augmentation callables"
        )
    if custom_views and cfg.augment == "auto":
        cfg.augment = "pil"
        auto["augment"] = "pil: custom augmentation callables"
    _check(cfg, data, device)
    modality(data.info).derive_from_data(cfg, data, auto)  # what prepare_data chose
    _derive(cfg, data.info, device, auto)
    cfg.auto = auto
    return cfg


def check_runtime(cfg: Config) -> None:
    """The options a resume may change (``start.RUNTIME_FIELDS``) that can be wrong on their own:
    checked for a new run here and for a resumed one by ``start.RunStart.plan``."""
    for name in ("log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard=True but the tensorboard package is not installed: "
            "pip install 'semimatch[tensorboard]', or pass tensorboard=False"
        )


def _check(cfg: Config, data: SSLDataset, device: torch.device) -> None:
    """Validation that would otherwise surface as a torch error deep inside training, or as an
    option that silently does nothing."""
    info = data.info
    C = info.num_classes
    for name in (
        "iterations",
        "batch_size",  # None: derived (_derive)
        "eval_every",
        "eval_batch_size",
    ):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1; got {getattr(cfg, name)}")
    if cfg.uratio is not None and cfg.uratio < 1 and cfg.algorithm != "supervised":
        raise ConfigError(f"uratio must be >= 1 for {cfg.algorithm}; got {cfg.uratio}")
    if cfg.exclude_labeled and cfg.algorithm == "supervised":
        raise ConfigError("exclude_labeled shapes the unlabeled set, which supervised never uses")
    if cfg.lr is not None and cfg.lr <= 0:
        raise ConfigError(f"lr must be > 0; got {cfg.lr}")
    _check_ranges(cfg, device)
    check_config(cfg, data)  # the modality's options (and no other modality's)
    _check_optimizer(cfg, modality(info))
    try:  # by the builder's declaration; its value checks run where it is built
        methods()[cfg.algorithm].check(cfg.algorithm, cfg.algorithm_options())
    except ValueError as e:
        raise ConfigError(str(e)) from None
    ws = dist.get_world_size()
    if cfg.sync_bn and ws > 1 and device.type not in ("cuda", "xpu", "hpu"):
        raise ConfigError(
            f"sync_bn: torch's SyncBatchNorm runs only on GPUs, not on "
            f"{device.type}; drop --sync-bn (per-process BatchNorm, as in the "
            "papers) or train on GPUs"
        )
    _check_split_options(cfg, data)
    _check_all_labels(cfg)
    check_runtime(cfg)
    if cfg.num_labels is not None and cfg.lt_gamma is None and cfg.num_labels % C:
        raise ConfigError(
            f"num_labels={cfg.num_labels} cannot be split evenly over the {C} classes of "
            f"{info.name}; use a multiple of {C} (e.g. {max(C, cfg.num_labels // C * C)})"
        )


def _check_optimizer(cfg: Config, mod: Modality) -> None:
    """Each optimiser's own options; one given to the other optimiser would do nothing."""
    default, reason = mod.default_optimizer(cfg)
    optimizer = cfg.optimizer or default
    defaults = Config()
    if optimizer == "sgd" and cfg.layer_decay is not None:
        raise ConfigError(
            "layer_decay is AdamW's layer-wise learning-rate decay; pass --optimizer adamw "
            "or drop it"
        )
    sgd_only = [n for n in ("sgd_momentum", "nesterov") if getattr(cfg, n) != getattr(defaults, n)]
    if optimizer == "adamw" and sgd_only:
        why = "" if cfg.optimizer else f" (the default: {reason})"
        raise ConfigError(
            f"{', '.join(sgd_only)} configure SGD, and the optimizer is adamw{why}; drop them "
            "or pass --optimizer sgd"
        )
    if optimizer == "adamw" and cfg.warmup_iterations >= cfg.iterations:
        raise ConfigError(
            f"warmup_iterations={cfg.warmup_iterations} leaves none of the {cfg.iterations} "
            "iterations after the warm-up; pass fewer"
        )
    if cfg.layer_decay is not None and not 0 < cfg.layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1] (1 = none); got {cfg.layer_decay}")


def _derive_method_budget(cfg: Config, iterations: int, auto: dict[str, str]) -> None:
    """The method's options whose default follows the budget (its ``Method.budget``), its own
    check of them against the budget (``Method.check_budget``), then the iterations it trains
    on top of the budget (``Method.extra_iterations``)."""
    method = methods()[cfg.algorithm]
    for scaled in method.budget:
        if getattr(cfg, scaled.option) is None:
            setattr(cfg, scaled.option, scaled.value(iterations))
            auto[scaled.option] = scaled.why.format(K=iterations)
    values = {name: getattr(cfg, name) for name in method.options}
    if method.check_budget is not None:
        try:
            method.check_budget(values, iterations)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    extra, why = method.extra_iterations(values) if method.extra_iterations else (0, "")
    if extra:  # on top of the budget the defaults above were derived from
        cfg.iterations = iterations + extra
        auto["iterations"] = f"{iterations} + {extra}: {why}"


def _derive(cfg: Config, info: DatasetInfo, device: torch.device, auto: dict[str, str]) -> None:
    """Fill the auto (None) fields of ``cfg`` in place, recording each reason in ``auto``:
    the data's modality decides its own (backbone, batch, recipe, loading); the budget, the
    precision and the views' execution are decided here."""

    def derive(name: str, value: Any, why: str) -> None:
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
            auto[name] = why

    mod = modality(info)
    if cfg.backbone in (None, "auto"):
        cfg.backbone = None
        mod.derive_backbone(info, derive)
    derive("batch_size", *mod.batch_size)
    derive("uratio", *mod.uratio)
    if cfg.batch_size % dist.get_world_size():
        raise ConfigError(
            f"batch_size={cfg.batch_size} is the global batch and must be divisible "
            f"by the number of processes ({dist.get_world_size()})"
        )
    derive("optimizer", *mod.default_optimizer(cfg))
    adamw = cfg.optimizer == "adamw"
    derive("lr", 5e-5 if adamw else 0.03, "USB's AG News value" if adamw else "FixMatch's")
    if adamw:
        derive("layer_decay", 1.0, "no layer-wise decay unless asked (USB's NLP configs: 0.65)")
    mod.derive_recipe(cfg, info, derive)
    _derive_budget(cfg, info, derive)
    _derive_method_budget(cfg, cfg.iterations, auto)
    _derive_precision(cfg, info, device, auto, derive)
    mod.derive_loading(cfg, auto, derive)
    derive(
        "channels_last",
        cfg.precision != "fp32" and device.type != "mps",
        "on with reduced precision (faster convolutions)",
    )
    if cfg.augment == "auto":
        cfg.augment = "batched"
        auto["augment"] = "batched tensor augmentation (measured faster; docs/benchmarks/speed.md)"
    derive(
        "num_workers",
        0 if cfg.augment == "batched" else min(2, os.cpu_count() or 1),
        "batched augmentation runs in the main process"
        if cfg.augment == "batched"
        else "PIL augmentation in worker processes",
    )
    derive("progress", sys.stderr.isatty(), "progress bar when the output is a terminal")


def _derive_budget(cfg: Config, info: DatasetInfo, derive: Derive) -> None:
    """The defaults that scale with the budget of ``cfg.iterations`` (and the papers' weight
    decay): the papers' values are for 2**20 iterations."""
    K = cfg.iterations
    adamw = cfg.optimizer == "adamw"
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
        "USB's NLP configs' value"
        if adamw
        else f"the papers' value for {info.name} (1e-3 for CIFAR-100, 5e-4 otherwise)",
    )


def _derive_precision(
    cfg: Config, info: DatasetInfo, device: torch.device, auto: dict[str, str], derive: Derive
) -> None:
    """fp32 unless asked (exact by default), with one line where bf16 would pay off; ``auto``
    picks bf16 where the device computes it natively."""
    if cfg.precision == "auto":
        native = native_bf16(device)
        cfg.precision = "bf16" if native else "fp32"
        why = "with native bf16" if native else "without native bf16"
        auto["precision"] = f"{cfg.precision}: {device} {why}"
    elif cfg.precision is None:  # fp32, the exact default; one line where bf16 would pay off
        derive("precision", "fp32", "the papers' arithmetic (exact by default)")
        native = device.type == "cpu" and native_bf16(device)
        hint = fp32_hint(info.kind, cfg.backbone) if native else None
        if hint:
            status(hint)
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
    check_validation(cfg, data)
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


def _check_all_labels(cfg: Config) -> None:
    """A method that trains on every label (``Method.all_labels``: fullysupervised) refuses
    what would choose a subset or shape the unlabeled pool it never reads: a wrong answer
    (the ceiling measured on 40 labels) must not pass silently."""
    spec = methods().get(cfg.algorithm)
    if spec is None or not spec.all_labels:
        return
    chosen = [
        f"--{name.replace('_', '-')} {getattr(cfg, name)}"
        for name in ("num_labels", "lt_gamma", "fold", "split_seed")
        if getattr(cfg, name) is not None
    ]
    if cfg.exclude_labeled:
        chosen.append("--exclude-labeled")
    if chosen:
        raise ConfigError(
            f"{cfg.algorithm} trains on every labeled training sample; drop {', '.join(chosen)} "
            "(--num-labels none clears a preset's), or use --algorithm supervised for a labeled "
            "subset"
        )


def make_split(cfg: Config, data: SSLDataset) -> Split:
    """The split ``cfg`` asks for (checked by ``resolve``); ``val_size`` carved (``carve``)."""
    return carve(cfg, data, _draw_split(cfg, data))


def _draw_split(cfg: Config, data: SSLDataset) -> Split:
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


def dataset_options(cfg: Config) -> dict[str, Any]:
    opts: dict[str, Any] = {} if cfg.hflip is None else {"hflip": cfg.hflip}
    if cfg.dataset == "imagefolder":
        opts.update(
            unlabeled_dir=cfg.unlabeled_dir, test_dir=cfg.test_dir, skip_corrupt=cfg.skip_corrupt
        )
        if cfg.image_size:
            opts["image_size"] = cfg.image_size
    elif cfg.image_size or (
        cfg.dataset != "text" and (cfg.unlabeled_dir or cfg.test_dir or cfg.skip_corrupt)
    ):
        raise ConfigError(
            "unlabeled_dir, test_dir, image_size and skip_corrupt apply only to "
            f"dataset='imagefolder' (and all but image_size to 'text'), not {cfg.dataset!r}"
        )
    if cfg.dataset == "text":
        opts.update(
            unlabeled_dir=cfg.unlabeled_dir, test_dir=cfg.test_dir, skip_corrupt=cfg.skip_corrupt
        )
        opts.update({n: getattr(cfg, n) for n in TEXT_FILE_OPTIONS})
    else:
        defaults = Config()
        stray = [n for n in TEXT_FILE_OPTIONS if getattr(cfg, n) != getattr(defaults, n)]
        if stray:
            raise ConfigError(
                f"{', '.join(stray)} apply only to dataset='text' (text files), not {cfg.dataset!r}"
            )
    if cfg.dataset == "svhn":
        opts["extra"] = cfg.svhn_extra
    elif cfg.svhn_extra:
        raise ConfigError(f"svhn_extra applies only to dataset='svhn', not {cfg.dataset!r}")
    return opts


def given_data_config(cfg: Config, data: SSLDataset) -> Config:
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
        "hflip",  # the data's own ImageSpec.hflip decides (from_arrays(hflip=...))
        *TEXT_FILE_OPTIONS,
    )
    ignored = [n for n in (*loading, "skip_corrupt") if getattr(cfg, n) != getattr(defaults, n)]
    if ignored:
        raise ConfigError(
            f"{', '.join(ignored)} tell semimatch how to load a dataset; with data= passed they "
            "would do nothing - drop them, or drop data= and let semimatch load the dataset"
        )
    return cfg.replace(dataset=data.info.name)


def load_data(cfg: Config) -> SSLDataset:
    """The dataset ``cfg`` names, loaded as training loads it (every caller goes through here).

    Under torchrun rank 0 downloads (``cfg.download``) while the other ranks wait at a barrier,
    then they read the files it wrote.
    """
    is_main = dist.get_rank() == 0
    if cfg.download and not is_main:
        dist.barrier()  # rank 0 downloads the files before the other ranks read them
    data = with_validation(cfg, load_dataset(
        cfg.dataset, root=cfg.data_root, download=cfg.download and is_main, **dataset_options(cfg)
    ))  # fmt: skip
    if cfg.download and is_main:
        dist.barrier()
    return prepare_data(cfg, data)


def prepare_data(cfg: Config, data: SSLDataset) -> SSLDataset:
    """``data`` as training takes it for ``cfg``: its modality's ``prepare`` (texts tokenized
    once for the config's encoder; other data as it is)."""
    return modality(data.info).prepare(cfg, data)
