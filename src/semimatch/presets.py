"""The paper presets as data: ``PRESETS[name] -> Preset(values, description, runtime)``.

One preset per setting (dataset, labels, backbone) and algorithm; ``semimatch.config.
load_preset`` turns one into a validated ``Config``.  The settings live here; each method's
part (its values, paper or USB source, notes) lives in its module (``MethodPresets``).
FixMatch, SoftMatch, Pseudo-Label and supervised follow the papers (FixMatch's recipe);
FlexMatch, FreeMatch, AdaMatch, Dash and UDA follow USB's classic-CV configuration files
(``config/classic_cv/<algo>/<algo>_<setting>_0.yaml``).

The USB NLP presets (``ag_news-40-softmatch``, ...) mirror USB's text configs
(``config/usb_nlp/<algo>/<algo>_<dataset>_<labels>_0.yaml``): BERT-base fine-tuned with AdamW,
layer-wise lr decay and a linear warm-up, no EMA, on USB's JSON data (``--data-root`` at USB's
``data/<dataset>/`` folder: ``train.json`` gives the labeled draw and the unlabeled pool with
its back-translations, ``test.json`` the test set).  USB's Pseudo-Label NLP configs (its
unlabeled-loss ramp ``unsup_warm_up``) use a mechanism semimatch does not implement, so they
have no preset rather than an inexact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from semimatch.methods.registry import MethodPresets, methods

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    values: dict[str, Any]
    runtime: str  # what a user should expect on typical hardware


_PAPER_COMMON: dict[str, Any] = {
    "iterations": 2**20,
    "batch_size": 64,
    "uratio": 7,
    "lr": 0.03,
    "sgd_momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "ema_decay": 0.999,
    "ema_warmup": False,
    "bn_momentum": 0.001,
    # FixMatch evaluates every 1,024 iterations (its "epoch"); "median of the last 20
    # evaluations" then spans the papers' last ~20k iterations.
    "eval_every": 1024,
    # The papers trained in fp32; bf16 autocast is a flag (--precision bf16), see README.
    "precision": "fp32",
    "strong_augment": "fixmatch",
    "forward_mode": "joint",  # the papers' single forward (also the default)
}
_RUNTIME_28_2 = (
    "2**20 iterations: ~1 week on one V100; on a 2-core CPU ~20 s/iteration in fp32 (AVX2), "
    "~2 s (~24 days) with --precision bf16 on AMX"
)
_RUNTIME_28_8 = "2**20 iterations: ~3 weeks on one V100; not practical on a CPU"
_SETTINGS: dict[str, tuple[dict[str, Any], str, str]] = {
    "cifar10-40": (
        {"dataset": "cifar10", "num_labels": 40, "backbone": "wrn_28_2"},
        "CIFAR-10, 4 labels per class, WRN-28-2",
        _RUNTIME_28_2,
    ),
    "cifar10-250": (
        {"dataset": "cifar10", "num_labels": 250, "backbone": "wrn_28_2"},
        "CIFAR-10, 25 labels per class, WRN-28-2",
        _RUNTIME_28_2,
    ),
    "cifar10-4000": (
        {"dataset": "cifar10", "num_labels": 4000, "backbone": "wrn_28_2"},
        "CIFAR-10, 400 labels per class, WRN-28-2",
        _RUNTIME_28_2,
    ),
    "cifar100-400": (
        {"dataset": "cifar100", "num_labels": 400, "backbone": "wrn_28_8", "weight_decay": 1e-3},
        "CIFAR-100, 4 labels per class, WRN-28-8, wd 1e-3",
        _RUNTIME_28_8,
    ),
    "cifar100-2500": (
        {"dataset": "cifar100", "num_labels": 2500, "backbone": "wrn_28_8", "weight_decay": 1e-3},
        "CIFAR-100, 25 labels per class, WRN-28-8",
        _RUNTIME_28_8,
    ),
    "svhn-40": (
        {"dataset": "svhn", "num_labels": 40, "backbone": "wrn_28_2"},
        "SVHN, 4 labels per class, WRN-28-2, no flip",
        _RUNTIME_28_2,
    ),
    "svhn-250": (
        {"dataset": "svhn", "num_labels": 250, "backbone": "wrn_28_2"},
        "SVHN, 25 labels per class, WRN-28-2, no flip",
        _RUNTIME_28_2,
    ),
    "stl10-40": (
        {"dataset": "stl10", "num_labels": 40, "backbone": "wrn_37_2"},
        "STL-10 (96 px) with its 100k unlabeled images, WRN-37-2",
        "2**20 iterations: ~2 weeks on one V100",
    ),
    "stl10-1000": (
        {"dataset": "stl10", "num_labels": 1000, "backbone": "wrn_37_2"},
        "STL-10, 1000 labels drawn balanced (FixMatch's folds: --num-labels none --fold k), "
        "WRN-37-2",
        "2**20 iterations: ~2 weeks on one V100",
    ),
    "cifar10lt-100": (
        {
            "dataset": "cifar10",
            "backbone": "wrn_28_2",
            "lt_gamma": 100.0,
            "lt_n1": 1500,
            "lt_m1": 3000,
            "iterations": 2**18,
        },
        "CIFAR-10-LT, gamma 100, N_1 1500, M_1 3000 (SoftMatch section 4.3)",
        "2**18 iterations: ~2 days on one V100",
    ),
    "cifar10lt-150": (
        {
            "dataset": "cifar10",
            "backbone": "wrn_28_2",
            "lt_gamma": 150.0,
            "lt_n1": 1500,
            "lt_m1": 3000,
            "iterations": 2**18,
        },
        "CIFAR-10-LT, gamma 150, N_1 1500, M_1 3000",
        "2**18 iterations: ~2 days on one V100",
    ),
}


#: USB's NLP configs, common to every dataset and algorithm (``config/usb_nlp``, checked
#: against microsoft/Semi-supervised-learning at 1ef4cbe): num_train_iter, num_warmup_iter,
#: num_eval_iter, num_log_iter, batch_size, eval_batch_size, uratio, optim, weight_decay,
#: ema_m, amp, clip, net, max_length; the strong view is the data's back-translations.
_USB_NLP_COMMON: dict[str, Any] = {
    "dataset": "text",
    "backbone": "hf:bert-base-uncased",
    "iterations": 102_400,
    "warmup_iterations": 5120,
    "eval_every": 2048,
    "log_every": 256,
    "batch_size": 8,
    "eval_batch_size": 8,
    "uratio": 1,
    "optimizer": "adamw",
    "schedule": "cosine",  # with adamw: USB's get_cosine_schedule_with_warmup
    "weight_decay": 5e-4,
    "ema_decay": 0.0,  # ema_m: 0.0
    "precision": "fp32",  # amp: False
    "max_length": 512,
    "text_strong": "precomputed",  # USB's aug_0/aug_1 back-translations
    "forward_mode": "joint",
}
#: Per dataset (USB's names; IMDb is its ``aclImdb``): classes, the two label counts, lr and
#: layer_decay of its configs (the same for every algorithm), and the batches' length.
_USB_NLP_DATASETS: dict[str, tuple[str, str, int, tuple[int, int], float, float, bool]] = {
    "ag_news": ("ag_news", "AG News", 4, (40, 200), 5e-5, 0.65, False),
    "yelp_review": ("yelp_review", "Yelp Review (5 stars)", 5, (250, 1000), 5e-5, 0.75, True),
    "amazon_review": ("amazon_review", "Amazon Review (5 stars)", 5, (250, 1000), 1e-5, 0.75, True),
    "yahoo_answers": ("yahoo_answers", "Yahoo! Answers", 10, (500, 2000), 1e-4, 0.65, True),
    "imdb": ("aclImdb", "IMDb", 2, (20, 100), 5e-5, 0.75, True),
}


def _usb_nlp_runtime(long_texts: bool, algorithm: str) -> str:
    """An estimate, not a measurement: a step costs ~6 x 110M parameters x its tokens (the
    labeled, weak and strong batches of 8 texts, each padded to its longest text), run in fp32
    at an assumed ~8 TFLOP/s sustained on a V100 and ~13 on an A100 (no TF32), plus 50
    evaluations of the test set at eval_batch_size 8."""
    texts = 8 if algorithm in ("supervised", "fullysupervised") else 24
    if long_texts:  # batches reach max_length 512: ~6.3 TFLOP + attention per 24 texts
        gpu = "~1 day on one V100, ~15 h on one A100" if texts == 24 else "~8 h on one V100"
    else:  # AG News: ~45 tokens per text, ~90 per padded batch: ~1 TFLOP per 24 texts
        gpu = "~5-8 h on one V100, ~3-5 h on one A100" if texts == 24 else "~2-3 h on one V100"
    return (
        f"102,400 iterations of BERT-base, {texts} texts per step, max_length 512: {gpu} "
        "(estimated from 6 x 110M params x tokens per step at ~8/13 TFLOP/s fp32 sustained, "
        "plus 50 test-set evaluations; not measured); not practical on a CPU (~100 GFLOP/s: "
        "weeks to months)"
    )


def _usb_nlp_presets() -> dict[str, Preset]:
    presets = {}
    for key, (folder, title, classes, counts, lr, decay, long_texts) in _USB_NLP_DATASETS.items():
        for labels in counts:
            for algo, part in _method_presets(nlp=True):
                name = f"{key}-{labels}-{algo}"
                values = {
                    **_USB_NLP_COMMON,
                    "num_labels": labels,
                    "lr": lr,
                    "layer_decay": decay,
                    **part.values,
                    **part.nlp_values,
                    **part.settings.get(key, {}),  # per NLP dataset (SimMatch's EMA teacher)
                    "preset": name,
                }
                text = (
                    f"{title}, {labels // classes} labels per class, BERT-base (USB NLP: "
                    f"config/usb_nlp/{algo}/{algo}_{folder}_{labels}_0.yaml); needs --data-root "
                    f"at USB's data/{folder}/ (train.json, test.json); {algo}"
                    f"{part.note}"
                )
                presets[name] = Preset(name, text, values, _usb_nlp_runtime(long_texts, algo))
    return presets


def _method_presets(nlp: bool = False) -> list[tuple[str, MethodPresets]]:
    """The registered methods' parts of the presets (those with USB NLP presets: ``nlp``)."""
    parts = [(name, m.presets) for name, m in methods().items() if m.presets is not None]
    return [(name, part) for name, part in parts if part.nlp or not nlp]


def _build_presets() -> dict[str, Preset]:
    presets = {}
    for setting, (values, description, runtime) in _SETTINGS.items():
        for algo, part in _method_presets():
            usb = part.source == "usb"
            if (usb and setting.startswith("cifar10lt")) or setting in part.skip:
                continue
            name = f"{setting}-{algo}"
            extra = part.settings.get(setting, {})
            merged = {**_PAPER_COMMON, **values, **part.values, **extra, "preset": name}
            source = "USB classic-CV settings" if usb else "paper settings"
            text = f"{description}; {algo} ({source}){part.note}"
            presets[name] = Preset(name, text, merged, runtime)
    return {**presets, **_usb_nlp_presets()}


PRESETS: dict[str, Preset] = _build_presets()
