"""Typed configuration: the one place where options are defined (presets: ``semimatch.presets``).

``Config`` is a flat dataclass: every field is a command-line flag (``--field-name``), a key of
``config.json`` and a keyword of ``semimatch.train``, all derived from the same field list, so an
option cannot exist in one door and silently do nothing in another.  Unknown keys and wrong types
are errors with a suggestion.  The algorithms' options (``tau``, ``stat_momentum``, ...) are not
written here: they are generated from the builders' signatures in ``semimatch.methods``.

Fields whose default is ``None`` are *auto*: ``resolve`` derives them from the dataset, the device
and the iteration budget (see "Short budgets" in the reference) and records the chosen value, so
the saved ``config.json`` always shows what actually ran.  Paper presets pin the paper values.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from semimatch.methods.registry import Option, algorithm_options, methods
from semimatch.presets import PRESETS

__all__ = [
    "OPTIONS",
    "AlgorithmName",
    "Config",
    "ConfigError",
    "algorithm_option_fields",
    "budget_momentum",
    "load_preset",
]


#: How the step runs the model over (labeled, weak, strong); see
#: ``semimatch.training.step.train_step``.
ForwardMode = Literal["two-pass", "joint", "split"]


class ConfigError(ValueError):
    """A configuration problem, with a message naming the option and the fix."""


def _f(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - 'help' reads best here
    """A config field. ``none=`` says what a None default means in ``--help`` (default
    "auto": derived when the run starts; algorithm options name the algorithm's default)."""
    return field(default=default, metadata={"help": help, **kw})


def _shown(value: Any) -> str:
    """A builder default as ``--help`` and the command line spell it."""
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def _per_algorithm(values: Mapping[str, str]) -> str:
    """``{"pseudolabel": "0.95", "fixmatch": "0.95"}`` -> ``"pseudolabel/fixmatch: 0.95"``."""
    groups: dict[str, list[str]] = {}
    for algorithm, text in values.items():
        groups.setdefault(text, []).append(algorithm)
    return "; ".join(f"{'/'.join(algos)}: {text}" for text, algos in groups.items())


def algorithm_option_fields(
    options: Mapping[str, Option], *, after: str, none: Mapping[str, str] | None = None
) -> Callable[[type], type]:
    """Give a class (before ``@dataclass``) one field per algorithm option, after field ``after``.

    The algorithm builders' keyword parameters (``semimatch.methods``) are the one
    declaration of the options; a class decorator that writes them into ``__annotations__``
    keeps ``Config`` a plain dataclass, so ``fields(Config)``, ``asdict``, the command line
    (one flag per field) and ``config.json`` (the same keys as before) see them like any other
    field.  Each field is ``<builder type> | None`` with default None, "the algorithm's own
    default"; its help is the builder docstring's ``Args:`` text and its ``none=`` text each
    algorithm's default (``pseudolabel/fixmatch: 0.95``), unless ``none`` names a field whose
    None the run derives (e.g. stat_momentum from the iteration budget).  The price: a static
    type checker does not see these fields.
    """

    def add(cls: type) -> type:
        own: dict[str, Any] = cls.__dict__.get("__annotations__", {})
        clash = sorted(set(own) & set(options))
        if clash:
            raise TypeError(f"{cls.__name__} declares algorithm option(s) {clash} itself")
        if after not in own:
            raise TypeError(f"{cls.__name__} has no field {after!r} to put the options after")
        annotations: dict[str, Any] = {}
        for name, kind in own.items():
            annotations[name] = kind
            if name != after:
                continue
            for option in options.values():
                annotations[option.name] = option.type | None
                shown = {a: _shown(d) for a, d in option.defaults.items()}
                help_text = {a: h.rstrip(".") for a, h in option.helps.items()}
                setattr(
                    cls,
                    option.name,
                    _f(
                        None,
                        _per_algorithm(help_text),
                        none=(none or {}).get(option.name, _per_algorithm(shown)),
                    ),
                )
        cls.__annotations__ = annotations
        return cls

    return add


#: The algorithm names, as a type (``Config.algorithm``); the registry is read here, once, so
#: its entry points load before ``Config`` gets its fields.
AlgorithmName = Literal[tuple(methods())]  # type: ignore[valid-type]

#: The options of all algorithms (``Config`` has one field per entry).
OPTIONS: dict[str, Option] = algorithm_options(methods())


def _derived_options() -> dict[str, str]:
    """What None means for the options a method derives from the budget (``Method.budget``)."""
    helps: dict[str, dict[str, str]] = {}
    for name, method in methods().items():
        for scaled in method.budget:
            helps.setdefault(scaled.option, {})[name] = scaled.help
    return {option: _per_algorithm(texts) for option, texts in helps.items()}


@dataclass
@algorithm_option_fields(OPTIONS, after="ema_warmup", none=_derived_options())
class Config:
    """Every option of a run (see the module docstring); ``None`` = derived or the default."""

    # --- what to train -------------------------------------------------------------------------
    algorithm: AlgorithmName = _f("fixmatch", "semi-supervised method")
    dataset: str = _f("digits", "dataset name (see `semimatch datasets`) or 'imagefolder'")
    data_root: str | None = _f(
        None,
        "where the dataset lives (or is downloaded to); "
        "for imagefolder the folder root/<class>/<image>",
        none="$SEMIMATCH_DATA or ~/.cache/semimatch/datasets; for (fashion_)mnist also "
        "Debian's /usr/share/datasets copies",
    )
    download: bool = _f(False, "download a torchvision dataset if it is missing")
    unlabeled_dir: str | None = _f(
        None, "imagefolder: extra folder of unlabeled images", none="none"
    )
    test_dir: str | None = _f(None, "imagefolder: test folder root/<class>/<image>", none="none")
    image_size: int | None = _f(
        None, "imagefolder: resize images to this square size", none="no resize"
    )
    skip_corrupt: bool = _f(
        False,
        "imagefolder: skip unreadable images; text: skip bad rows (empty texts, undecodable "
        "bytes); with a count, instead of stopping",
    )
    hflip: bool | None = _f(
        None,
        "random horizontal flip in the weak (and strong) view; turn it off for images whose "
        "mirror is another class (digits, text)",
        none="the dataset's policy: on for CIFAR, STL-10, Fashion-MNIST and image folders; off "
        "for SVHN, MNIST and digits",
    )
    svhn_extra: bool = _f(False, "svhn: add the 531k 'extra' images to the unlabeled set")
    num_labels: int | None = _f(
        None,
        "labeled images in a balanced split (num_labels / C per "
        "class); None = use the labels the dataset gives "
        "(arrays with y == -1 for unlabeled)",
        none="None",
    )
    exclude_labeled: bool = _f(
        False, "leave the labeled images out of the unlabeled set (papers include them)"
    )
    lt_gamma: float | None = _f(
        None, "long-tailed split: imbalance ratio gamma (e.g. 100)", none="off"
    )
    lt_n1: int = _f(1500, "long-tailed split: labeled images of the head class (N_1)")
    lt_m1: int = _f(3000, "long-tailed split: unlabeled images of the head class (M_1)")
    lt_reverse: bool = _f(False, "long-tailed split: reverse the unlabeled class distribution")
    split_seed: int | None = _f(None, "seed of the labeled split (None = seed)", none="None")
    val_size: int | None = _f(
        None,
        "carve a class-balanced validation set of this many samples out of the labeled ones "
        "(seeded by val_seed; the labeled set that trains shrinks by as many); best.pt is then "
        "chosen on it, never on the test set",
        none="none (a text folder's dev.json or val_dir if given)",
    )
    val_seed: int = _f(0, "seed of the validation set carved by val_size")
    val_dir: str | None = _f(
        None,
        "imagefolder/text: labeled validation folder root/<class>/<image> (a text file or "
        "folder for text) that chooses best.pt instead of the test set",
        none="none",
    )
    fold: int | None = _f(
        None,
        "stl10: label predefined fold k (0-9: 1,000 images from fold_indices.txt, the "
        "FixMatch protocol) instead of drawing num_labels",
        none="off",
    )

    # --- text (dataset='text' or texts passed in) ------------------------------------------------
    text_column: str = _f("text", "text: the column (CSV/TSV header, JSONL key) holding the text")
    label_column: str = _f(
        "label", "text: the column holding the label (empty or -1 = unlabeled; names or indices)"
    )
    header: bool = _f(
        True,
        "text: CSV/TSV files start with a header row naming the columns; with --no-header "
        "they do not, and --text-column/--label-column are 0-based positions (default: "
        "label 0, text 1)",
    )
    label_kind: Literal["index", "name"] | None = _f(
        None,
        "text: how labels are read - index: class indices 0..C-1; name: class names (1..4: "
        "4 classes named '1'..'4')",
        none="auto: indices when the integer labels are exactly 0..C-1, else names (recorded "
        "in config.json)",
    )
    test_size: int | None = _f(
        None,
        "text: carve a class-balanced test set of this many texts out of data_root "
        "(seeded by test_seed, the same for every seed of the run) instead of test_dir",
        none="none",
    )
    test_seed: int = _f(0, "text: seed of the test set carved by test_size")
    max_length: int | None = _f(
        None,
        "text: tokens per text, special tokens included (longer texts are truncated; batches "
        "are padded to their longest text); USB uses 512",
        none="128 (AG News: 99% of texts are shorter)",
    )
    text_strong: str | None = _f(
        None,
        "text: the strong view - precomputed (the data's aug_0/aug_1, USB's back-translations), "
        "tfidf (UDA's TF-IDF word replacement), deletion, swap, cutoff",
        none="precomputed when the data has augmentations, else tfidf",
    )

    # --- model -------------------------------------------------------------------------------
    backbone: str | None = _f(
        None,
        "wrn_28_2 | wrn_28_8 | wrn_37_2 | cnn | mlp | "
        "torchvision:<name> | timm:<name>; None = cnn for images "
        "<= 28 px, wrn_28_2 otherwise",
    )
    pretrained: bool | str | None = _f(
        None,
        "timm:/torchvision: true = the library's weights (downloaded on a machine with "
        "internet) or the path of a .pth/.safetensors state dict; hf: false = the encoder's "
        "architecture with random weights",
        none="hf: the folder's (or Hub model's) weights; other backbones: random init",
    )
    bn_momentum: float | None = _f(
        None,
        "BatchNorm momentum (PyTorch convention; paper 0.001); "
        "None = derived from the iteration budget",
    )
    sync_bn: bool = _f(False, "synchronise BatchNorm statistics across processes (torchrun)")

    # --- optimisation ------------------------------------------------------------------------
    optimizer: Literal["sgd", "adamw"] | None = _f(
        None,
        "sgd: SGD + Nesterov, decay on conv/linear weights (the classic-CV papers); adamw: "
        "AdamW with USB's decay groups and layer_decay (USB's fine-tuning recipe)",
        none="adamw for hf: backbones, sgd otherwise",
    )
    layer_decay: float | None = _f(
        None,
        "adamw: layer-wise learning-rate decay, lr * layer_decay**(depth from the top) "
        "(USB's NLP configs: 0.65-0.75)",
        none="1.0 (none) with adamw",
    )
    iterations: int = _f(1000, "total training iterations (the paper: 2**20)")
    batch_size: int | None = _f(
        None,
        "GLOBAL labeled batch per iteration (split across processes)",
        none="64 for images and feature vectors (FixMatch's), 8 for texts (USB's NLP batch)",
    )
    uratio: int | None = _f(
        None,
        "unlabeled-to-labeled batch ratio mu",
        none="7 for images and feature vectors (FixMatch's), 1 for texts (USB's NLP batch)",
    )
    lr: float | None = _f(
        None, "initial learning rate", none="0.03 with sgd (FixMatch), 5e-5 with adamw (USB NLP)"
    )
    sgd_momentum: float = _f(0.9, "SGD momentum (Nesterov)")
    nesterov: bool = _f(True, "Nesterov momentum")
    weight_decay: float | None = _f(
        None,
        "weight decay on conv/linear weights only (not BN, not bias)",
        none="auto: 1e-3 for cifar100, 5e-4 otherwise (the papers')",
    )
    schedule: Literal["cosine", "constant"] = _f(
        "cosine",
        "cosine: lr0 * cos(7 pi k / (16 K)) per iteration (sgd, FixMatch); with adamw USB's "
        "get_cosine_schedule_with_warmup, cos(7 pi (k - W) / (16 (K - W))) after the warm-up",
    )
    warmup_iterations: int = _f(
        0,
        "linear learning-rate warm-up iterations W (sgd: lr0 * min(1, (k+1)/W); adamw: "
        "lr0 * k/W, USB's; its NLP configs: 5120 of 102,400)",
    )
    clip_grad_norm: float | None = _f(None, "clip the gradient norm to this value", none="off")
    ema_decay: float | None = _f(
        None, "EMA of weights (paper 0.999); 0 disables; None = derived from the iteration budget"
    )
    ema_warmup: bool | None = _f(
        None, "EMA warm-up decay_t = min(decay, (1+t)/(10+t)); None = on unless a paper preset"
    )
    # --- the algorithm's options ----------------------------------------------------------------
    # Generated here by @algorithm_option_fields from the builders' signatures in
    # semimatch.methods: tau, lambda_u, stat_momentum, n_sigma, per_class, ...

    # --- augmentation -------------------------------------------------------------------------
    strong_augment: Literal["fixmatch", "usb", "ctaugment"] = _f(
        "fixmatch",
        "strong view: RandAugment fixmatch (2 ops, p=0.5, 16px cutout) or usb, or ctaugment "
        "(FixMatch's CTAugment: learned op rates, images with batched augmentation)",
    )
    augment: Literal["auto", "pil", "batched"] = _f(
        "auto", "pil: per-image PIL in loader workers; batched: tensor ops on augment_device"
    )
    augment_device: str | None = _f(
        None, "device of the batched augmentation (None = training device)"
    )
    num_workers: int | None = _f(None, "data-loader worker processes (None = auto)")

    # --- evaluation, logging, checkpoints ----------------------------------------------------
    eval_every: int = _f(100, "evaluate (and checkpoint) every N iterations")
    log_every: int = _f(20, "log training metrics every N iterations")
    eval_batch_size: int = _f(
        512,
        "rows per evaluation/prediction forward; the last chunk is zero-padded to this size so "
        "a prediction never depends on which rows share its batch (lower it to make "
        "one-image predictions cheaper)",
    )
    eval_model: Literal["ema", "raw"] = _f("ema", "model evaluated during training")
    keep_checkpoints: int = _f(
        1,
        "keep the last K full checkpoints (a resume reads the last; each holds the optimiser "
        "state too: 3x the model with AdamW) plus best.pt, which costs nothing while it is one "
        "of them (a hard link)",
    )
    best_model_only: bool = _f(
        True,
        "once best.pt is no longer one of the kept checkpoints, keep only the weights that "
        "eval and predict read (model, EMA) - a third of the checkpoint with AdamW; off: the "
        "full checkpoint stays",
    )
    tensorboard: bool | None = _f(
        None,
        "write TensorBoard logs to RUN_DIR/tb (needs the [tensorboard] extra; True when it is "
        "missing is an error)",
        none="when tensorboard is installed",
    )
    progress: bool | None = _f(None, "progress bar (None = when the output is a terminal)")

    # --- runtime ------------------------------------------------------------------------------
    device: str = _f("auto", "auto | cpu | cuda | cuda:N | mps")
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = _f(
        None,
        "fp32: the papers' arithmetic; bf16/fp16: autocast, opt-in - several times "
        "faster on hardware with native bf16 (CPUs with AMX or AVX512-BF16, recent GPUs), "
        "accuracy within the seed spread (docs/benchmarks/accuracy.md), but emulated and 20-130x "
        "slower on CPUs without it; auto: bf16 where the hardware has native bf16, else fp32",
        none="fp32, with a one-line hint on a CPU with native bf16",
    )
    channels_last: bool | None = _f(None, "channels-last memory format (None = with bf16/fp16)")
    forward_mode: ForwardMode = _f(
        "joint",
        "joint: one forward/backward over cat(labeled, weak, strong), the papers' exact "
        "gradient; two-pass (opt-in memory saver, ~37% less peak memory, no faster): the "
        "joint forward's values from a no-grad pass, backward over labeled+strong only, "
        "estimating the weak rows' BatchNorm-statistics path from the weak labeled rows - "
        "measured gradient error vs joint 12% (relative L2) when labeled and unlabeled rows "
        "are alike, 23% with 4 labeled rows per process, 60% when labeled inputs are shifted "
        "(docs/benchmarks/memory.md; refused with lt_reverse, a warning for data it cannot check); "
        "split: the weak view in its own no-grad forward (BatchNorm statistics differ; it lost "
        "accuracy)",
    )
    compile: bool = _f(False, "torch.compile the model (measured slower on CPU here)")
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "deterministic algorithms (bit-exact reruns and resume)")
    threads: int | None = _f(
        None,
        "CPU threads for torch (None = torch's default; waiting threads sleep, see "
        "docs/benchmarks/speed.md, so a shared CPU does not collapse)",
    )
    memory_check: bool = _f(
        True,
        "before anything is written, estimate the first step's peak memory (activations at "
        "the batch, gradients, optimiser, EMA) and refuse a batch that does not fit in the "
        "memory available (warn within 1.5x of it); off: train anyway",
    )

    # --- bookkeeping (not options of the method) ----------------------------------------------
    preset: str | None = _f(None, "the preset this config started from", cli=False)
    auto: dict[str, str] = _f(
        None,
        "which fields were derived automatically, and how (iterations: how resumes extended it)",
        cli=False,
    )

    def __post_init__(self) -> None:
        if self.auto is None:
            self.auto = {}
        # Every value is checked however the config is made (``Config(...)``, a dict, a file,
        # the CLI): a typo such as precision="bf61" is an error here, not a silent fallback.
        for f in fields(self):
            setattr(self, f.name, coerce(f.name, getattr(self, f.name), source="Config"))

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Config:
        """Build from a mapping, rejecting unknown keys (with a suggestion) and wrong types."""
        if not isinstance(data, Mapping):
            kind = "null" if data is None else type(data).__name__
            raise ConfigError(
                f"{source} holds a {kind}, not a mapping of option names to values "
                '(e.g. {"lr": 0.03, "num_labels": 40})'
            )
        names = {f.name for f in fields(cls)}
        unknown = [k for k in data if k not in names]
        if unknown:
            raise ConfigError(_unknown_message(unknown[0], names, source))
        cfg = cls()
        for key, value in data.items():
            setattr(cfg, key, coerce(key, value, source=source))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated like ``from_dict``)."""
        data = self.to_dict()
        bad = [k for k in changes if k not in data]
        if bad:
            raise ConfigError(_unknown_message(bad[0], set(data), "override"))
        data.update({k: coerce(k, v, source="override") for k, v in changes.items()})
        return Config.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Config:
        path = Path(path).expanduser()
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; pass a config file (JSON)")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = json.loads(path.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"{path} is not valid JSON ({e}); a config file is a JSON object of options, "
                'e.g. {"lr": 0.03, "num_labels": 40}'
            ) from None
        return cls.from_dict(data, source=str(path))

    def algorithm_options(self) -> dict[str, Any]:
        """The method's options that were set (None = the algorithm's own default), keyed by
        the builder's keyword, which is the field's name."""
        return {k: getattr(self, k) for k in OPTIONS if getattr(self, k) is not None}


def _unknown_message(key: str, names: set[str], source: str) -> str:
    hint = difflib.get_close_matches(key, sorted(names), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown option {key!r} in {source}{suggestion} (see `semimatch train --help`)"


@functools.cache
def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in fields(Config)}


def _parse_scalar(kind: Any, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise TypeError
    if kind is int:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            v = float(value) if any(c in value for c in ".eE") else int(value)
            if float(v).is_integer():
                return int(v)
        raise TypeError
    if kind is float:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
        if not math.isfinite(out):
            raise TypeError
        return out
    if kind is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    if kind is dict or typing.get_origin(kind) is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    raise TypeError


#: Data paths: stored absolute (``coerce``), relative ones resolved against the current folder.
PATH_FIELDS = ("data_root", "unlabeled_dir", "test_dir", "val_dir")


def coerce(key: str, value: Any, *, source: str = "config") -> Any:
    """Check ``value`` against the type of field ``key`` (converting strings from the CLI)."""
    kind = field_types()[key]
    options = [kind]
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = list(typing.get_args(kind))
    # "none"/"null" (and "auto" where neither a string nor a choice named auto is an option)
    # spell None on the command line; for a path option a folder of that name is "./none".
    named = {a for o in options if typing.get_origin(o) is Literal for a in typing.get_args(o)}
    nones = ("none", "null") if str in options or "auto" in named else ("none", "null", "auto")
    if value is None or (
        isinstance(value, str) and value.lower() in nones and type(None) in options
    ):
        if type(None) in options:
            return None
        raise ConfigError(f"{key} cannot be None in {source}")
    if key in PATH_FIELDS and isinstance(value, str | os.PathLike):
        # Absolute, so a saved run's config.json means the same files from any folder
        # (`semimatch eval RUN` elsewhere) and a command's config equals the saved one.
        return os.path.abspath(os.path.expanduser(os.fspath(value)))
    for opt in options:
        if opt is type(None):
            continue
        if typing.get_origin(opt) is Literal:
            allowed = typing.get_args(opt)
            if value in allowed:
                return value
            continue
        try:
            return _parse_scalar(opt, value)
        except (TypeError, ValueError):
            continue
    expected = " or ".join(_type_name(o) for o in options)
    literals = [o for o in options if typing.get_origin(o) is Literal]
    choices = [str(a) for o in literals for a in typing.get_args(o)]
    hint = difflib.get_close_matches(str(value), choices, n=1) if isinstance(value, str) else []
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ConfigError(f"{key}={value!r} in {source} is not valid: expected {expected}{suggestion}")


def _type_name(kind: Any) -> str:
    if kind is type(None):
        return "None"
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def budget_momentum(paper: float, iterations: int, floor: float = 0.9) -> float:
    """A decay suited to a budget of ``iterations`` steps (reference, "Short budgets").

    An EMA with decay d averages over ~1/(1-d) steps.  The paper's 0.999 (1,000 steps) is 0.1% of
    its 2**20 iterations; with a few hundred iterations it leaves the state ~74% at its initial
    value.  We choose a window of 5% of the run, ``d = 1 - 20/K``, never above the paper value
    and never below ``floor``.
    """
    return float(min(paper, max(floor, 1.0 - 20.0 / max(iterations, 1))))


def load_preset(name: str) -> Config:
    if name not in PRESETS:
        hint = difflib.get_close_matches(name, list(PRESETS), n=1)
        raise ConfigError(
            f"unknown preset {name!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + " (list them with `semimatch presets`)"
        )
    return Config.from_dict(PRESETS[name].values, source=f"preset {name}")
