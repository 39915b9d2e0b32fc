"""The recipe: what trains (model, algorithm, EMA) and how (optimiser, schedule, precision).

``build_parts`` is the one place a run's model, algorithm and weight EMA are made, for training
(``engine.fit``) and for reloading a run directory (``run.load_run``) alike.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch import distributed as dist
from semimatch.config import Config, ConfigError
from semimatch.data import DatasetInfo, wrap_model
from semimatch.data.modalities import modality
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.heads import attach_heads, feature_layer, num_features
from semimatch.methods.registry import build_algorithm
from semimatch.models import InputNormalizer, ResizeInput, set_bn_momentum
from semimatch.models.pretrained import InputSpec
from semimatch.training.ema import ModelEMA
from semimatch.training.optim import make_adamw, warmup_schedule

__all__ = [
    "Parts",
    "autocast",
    "build_parts",
    "check_needs",
    "lr_factor",
    "make_optimizer",
    "process_state_restored",
    "seed_everything",
]


@dataclass
class Parts:
    """What a run trains: the model (inputs normalised inside), its weight EMA, the algorithm."""

    net: nn.Module
    ema: ModelEMA | None
    algorithm: SSLAlgorithm | None  # None: a reloaded run that trained a custom weighting
    algorithm_name: str  # what checkpoints and summary.json record (custom:<class> for yours)


def build_parts(
    cfg: Config,
    info: DatasetInfo,
    device: torch.device,
    *,
    model: nn.Module | None = None,
    algorithm: SSLAlgorithm | None = None,
    training: bool = True,
    with_algorithm: bool = True,
    num_unlabeled: int | None = None,
    labeled_counts: Any = None,
    num_labeled: int | None = None,
) -> Parts:
    """The model, its EMA and the algorithm that ``cfg`` describes, on ``device``.

    ``model``/``algorithm`` replace what the config would build (Python API).  ``training``
    adds what only training uses: the channels-last layout of the weights and, under torchrun
    with ``sync_bn``, synchronised BatchNorm.  A reloaded run (``training=False``) whose
    checkpoint was trained by a custom weighting passes ``with_algorithm=False`` and gets
    ``algorithm=None``: prediction does not need it.  ``num_unlabeled`` is the unlabeled pool
    size, for an algorithm with per-sample state (FlexMatch); ``labeled_counts`` the labeled
    set's per-class counts (ReMixMatch's p(y)); ``num_labeled`` its size (SimMatch's labeled
    memory bank).  The global torch generator draws
    the initial weights (``fit`` seeds it first).
    """
    if model is None and str(cfg.backbone).startswith("custom:"):
        raise ValueError(
            f"this run was trained with your own backbone ({cfg.backbone}); pass model= a "
            "fresh instance of it"
        )
    spec = modality(info).input_spec(cfg)  # pretrained weights: their size and normalisation
    if model is None:
        model = _build_backbone(cfg, info, spec, training)
    set_bn_momentum(model, cfg.bn_momentum)
    if spec is None:
        net = wrap_model(model, info).to(device)  # images: normalised inside; features: as is
    else:  # the pretrained weights' resolution and normalisation, not the dataset's
        mean, std = _channel_stats(spec, info.spec.channels)
        net = InputNormalizer(ResizeInput(model, spec.size, spec.interpolation), mean, std)
        net = net.to(device)
    if training and cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if algorithm is None and with_algorithm:
        try:
            algorithm = build_algorithm(
                cfg.algorithm,
                info.num_classes,
                num_unlabeled=num_unlabeled,
                num_labeled=num_labeled,
                num_iterations=cfg.iterations,
                labeled_counts=labeled_counts,
                **cfg.algorithm_options(),
            )
        except ValueError as e:  # an option the algorithm rejects: the user's config is wrong
            raise ConfigError(str(e)) from None
    if isinstance(algorithm, nn.Module):
        algorithm = algorithm.to(device)
    # What trains: a passed-in algorithm may differ from cfg.algorithm (the default "fixmatch"
    # of a custom weighting); checkpoints and summary.json record this name.
    name = str(getattr(algorithm, "name", f"custom:{type(algorithm).__name__}"))
    if algorithm is None:
        name = "custom"
    if training and cfg.sync_bn and dist.is_distributed():
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if getattr(getattr(algorithm, "needs", None), "features", False):
        # The method's heads on the features: before the EMA copies the model and the
        # optimiser and DDP see its parameters.
        layer = feature_layer(net, info.num_classes)
        attach_heads(net, algorithm.make_heads(num_features(layer)).to(device), info.num_classes)
    ema = ModelEMA(net, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None
    check_needs(algorithm, name, ema, modality(info).continuous, cfg, info)
    return Parts(net, ema, algorithm, name)


def check_needs(
    algorithm: Any,
    name: str,
    ema: ModelEMA | None,
    continuous: bool,
    cfg: Config | None = None,
    info: DatasetInfo | None = None,
) -> None:
    """Refuse a method whose ``needs`` this run cannot give: a teacher without the weight EMA,
    input perturbations on token ids, features without the joint forward, quarter turns of
    the inputs (``info``: the run's data) on other data than square images."""
    needs = getattr(algorithm, "needs", None)
    # Token ids first: a method that mixes or perturbs the inputs cannot run on texts even
    # without its rotations (ReMixMatch), so the rotation's hint must not be the first answer.
    if getattr(needs, "model", False) and not continuous:
        raise ConfigError(
            f"--algorithm {name} perturbs or mixes the inputs and cannot run on token ids "
            "(texts); pick another --algorithm"
        )
    if getattr(needs, "spatial", False) and info is not None:
        shape, data = info.input_shape, modality(info)
        if not data.spatial:
            raise ConfigError(
                f"--algorithm {name} rotates images and cannot run on {data.noun}; pass "
                "--lambda-rot 0 (no rotation loss) or pick another --algorithm"
            )
        if shape[-1] != shape[-2]:
            raise ConfigError(
                f"--algorithm {name} turns the images by 90 degrees and needs square images, "
                f"not {shape[-2]}x{shape[-1]}: resize them square (or --lambda-rot 0)"
            )
    if cfg is not None and cfg.forward_mode != "joint":
        if not getattr(needs, "forward", True):  # its own forward: the mode would do nothing
            raise ConfigError(
                f"--algorithm {name} forwards the model itself, so --forward-mode "
                f"{cfg.forward_mode} would not apply; pass --forward-mode joint"
            )
        if getattr(needs, "features", False):
            raise ConfigError(
                f"--algorithm {name} reads the backbone's features of the joint forward; pass "
                f"--forward-mode joint (not {cfg.forward_mode})"
            )
    if getattr(needs, "teacher", False) and ema is None:
        raise ConfigError(
            f"--algorithm {name} takes its teacher from the weight EMA: pass --ema-decay > 0 "
            "(USB 0.999)"
        )


def _channel_stats(spec: InputSpec, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The weights' mean/std for ``channels`` input channels: as they are for 3; their average
    for another count (the adapted stem of ``factory._replace_first_conv``; approximate unless
    the weights' channels share one mean and std)."""
    if channels == len(spec.mean):
        return spec.mean, spec.std
    mean, std = sum(spec.mean) / len(spec.mean), sum(spec.std) / len(spec.std)
    return (mean,) * channels, (std,) * channels


def _build_backbone(
    cfg: Config, info: DatasetInfo, spec: InputSpec | None, training: bool
) -> nn.Module:
    """The config's backbone for the dataset's inputs, as its modality builds it (images,
    (N, D) feature vectors, texts); a pretrained image backbone is built for its weights'
    resolution ``spec.size``."""
    name = str(cfg.backbone)
    if cfg.pretrained is not None and not name.startswith(("timm:", "torchvision:", "hf:")):
        raise ConfigError(
            f"pretrained loads the weights of timm:, torchvision: and hf: backbones; "
            f"{name!r} has none - drop pretrained"
        )
    return modality(info).build_backbone(cfg, info, spec, training)


def make_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """``cfg.optimizer``: ``sgd``, SGD + Nesterov with weight decay on conv/linear weights only
    (not BN parameters, not biases); ``adamw``, USB's fine-tuning AdamW (``optim.make_adamw``:
    its decay groups and layer-wise learning-rate decay ``layer_decay``)."""
    if cfg.optimizer == "adamw":
        try:
            return make_adamw(model, cfg.lr, cfg.weight_decay, cfg.layer_decay or 1.0)
        except ValueError as e:  # e.g. layer_decay on a model without a layer structure
            raise ConfigError(str(e)) from None
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
    """``lr_k = lr0 * cos(7 pi k / (16 K))`` (FixMatch), after an optional linear warm-up; with
    AdamW USB's ``get_cosine_schedule_with_warmup`` (``optim.warmup_schedule``)."""
    if cfg.optimizer == "adamw":  # resolve checked warmup_iterations < iterations
        return warmup_schedule(cfg.iterations, cfg.warmup_iterations, cfg.schedule)

    def factor(k: int) -> float:
        warm = min(1.0, (k + 1) / cfg.warmup_iterations) if cfg.warmup_iterations else 1.0
        if cfg.schedule == "constant":
            return warm
        return warm * math.cos(7 * math.pi * k / (16 * cfg.iterations))

    return factor


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """The config's mixed precision; fp32 (or None, the unresolved default fp32): none."""
    if cfg.precision in ("fp32", None):
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
