"""The paper presets as data: ``PRESETS[name] -> Preset(values, description, runtime)``.

One preset per setting (dataset, labels, backbone) and algorithm; ``semimatch.config.
load_preset`` turns one into a validated ``Config``.  FixMatch, SoftMatch, Pseudo-Label and
supervised follow the papers (FixMatch's recipe); FlexMatch, FreeMatch, AdaMatch, Dash and UDA
follow USB's classic-CV configuration files (``config/classic_cv/<algo>/<algo>_<setting>_0.yaml``).

The USB NLP presets (``ag_news-40-softmatch``, ...) mirror USB's text configs
(``config/usb_nlp/<algo>/<algo>_<dataset>_<labels>_0.yaml``): BERT-base fine-tuned with AdamW,
layer-wise lr decay and a linear warm-up, no EMA, on USB's JSON data (``--data-root`` at USB's
``data/<dataset>/`` folder: ``train.json`` gives the labeled draw and the unlabeled pool with
its back-translations, ``test.json`` the test set).  USB's Pseudo-Label (its unlabeled-loss
ramp ``unsup_warm_up``) and UDA (``tsa_schedule: exp``) NLP configs use mechanisms semimatch does
not implement, so they have no preset rather than an inexact one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
_ALGO_VALUES: dict[str, dict[str, Any]] = {
    "fixmatch": {"algorithm": "fixmatch", "tau": 0.95},
    "softmatch": {
        "algorithm": "softmatch",
        "stat_momentum": 0.999,
        "n_sigma": 2.0,
        "uniform_alignment": True,
        "stats_on": "aligned",
    },
    "supervised": {"algorithm": "supervised"},
    "pseudolabel": {"algorithm": "pseudolabel", "tau": 0.95},
    # The rest of the family, with USB's classic-CV values (config/classic_cv/<algo>/
    # <algo>_cifar10_40_0.yaml; the same in its CIFAR-10-250/4000, CIFAR-100, SVHN and STL-10
    # files but for FreeMatch's clip_thresh on SVHN, see _SETTING_ALGO_VALUES).
    # FlexMatch: p_cutoff 0.95, thresh_warmup True, hard_label True, ulb_loss_ratio 1.0 (its T
    # 0.5 is unused with hard labels).
    "flexmatch": {"algorithm": "flexmatch", "tau": 0.95, "threshold_warmup": True, "lambda_u": 1.0},
    "freematch": {
        "algorithm": "freematch",
        "stat_momentum": 0.999,  # ema_p
        "lambda_e": 0.001,  # ent_loss_ratio
        "use_quantile": False,
        "clip_thresh": False,
        "lambda_u": 1.0,
    },
    "adamatch": {"algorithm": "adamatch", "tau": 0.95, "stat_momentum": 0.999, "lambda_u": 1.0},
    "dash": {
        "algorithm": "dash",
        "temperature": 0.5,
        "dash_gamma": 1.27,
        "dash_c": 1.0001,
        "rho_min": 0.05,
        "rho_period": 10 * 1024,  # 10 epochs of 1024 iterations
        "dash_warmup": 2048,  # num_wu_iter
        "lambda_u": 1.0,
    },
    "uda": {"algorithm": "uda", "tau": 0.8, "temperature": 0.4, "lambda_u": 1.0},
}
#: Where USB's config for one setting differs from its CIFAR-10-40 file.
_SETTING_ALGO_VALUES: dict[tuple[str, str], dict[str, Any]] = {
    ("svhn-40", "freematch"): {"clip_thresh": True},
    ("svhn-250", "freematch"): {"clip_thresh": True},
}
#: Presets of the algorithms added for issue 19 exist for the classic-CV settings only: USB's
#: long-tailed configs (classic_cv_imb) are other recipes, not checked here.
_FAMILY = ("flexmatch", "freematch", "adamatch", "dash", "uda")
_NOTES = {
    "dash": "; the 2048 supervised warm-up iterations count in the budget (USB runs them "
    "before it) and rho_init is the labeled loss after them (USB: its evaluation-set loss)",
}
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
_USB_NLP_ALGOS = ("supervised", "fixmatch", "softmatch", *(a for a in _FAMILY if a != "uda"))
#: USB's NLP values where they differ from its classic-CV ones (FreeMatch's ent_loss_ratio).
_USB_NLP_ALGO_VALUES: dict[str, dict[str, Any]] = {"freematch": {"lambda_e": 0.001}}


def _usb_nlp_runtime(long_texts: bool, algorithm: str) -> str:
    """An estimate, not a measurement: a step costs ~6 x 110M parameters x its tokens (the
    labeled, weak and strong batches of 8 texts, each padded to its longest text), run in fp32
    at an assumed ~8 TFLOP/s sustained on a V100 and ~13 on an A100 (no TF32), plus 50
    evaluations of the test set at eval_batch_size 8."""
    texts = 8 if algorithm == "supervised" else 24
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
            for algo in _USB_NLP_ALGOS:
                name = f"{key}-{labels}-{algo}"
                values = {
                    **_USB_NLP_COMMON,
                    "num_labels": labels,
                    "lr": lr,
                    "layer_decay": decay,
                    **_ALGO_VALUES[algo],
                    **_USB_NLP_ALGO_VALUES.get(algo, {}),
                    "preset": name,
                }
                text = (
                    f"{title}, {labels // classes} labels per class, BERT-base (USB NLP: "
                    f"config/usb_nlp/{algo}/{algo}_{folder}_{labels}_0.yaml); needs --data-root "
                    f"at USB's data/{folder}/ (train.json, test.json); {algo}"
                    f"{_NOTES.get(algo, '')}"
                )
                presets[name] = Preset(name, text, values, _usb_nlp_runtime(long_texts, algo))
    return presets


def _build_presets() -> dict[str, Preset]:
    presets = {}
    for setting, (values, description, runtime) in _SETTINGS.items():
        for algo, algo_values in _ALGO_VALUES.items():
            if algo in _FAMILY and setting.startswith("cifar10lt"):
                continue
            name = f"{setting}-{algo}"
            extra = _SETTING_ALGO_VALUES.get((setting, algo), {})
            merged = {**_PAPER_COMMON, **values, **algo_values, **extra, "preset": name}
            source = "USB classic-CV settings" if algo in _FAMILY else "paper settings"
            text = f"{description}; {algo} ({source}){_NOTES.get(algo, '')}"
            presets[name] = Preset(name, text, merged, runtime)
    return {**presets, **_usb_nlp_presets()}


PRESETS: dict[str, Preset] = _build_presets()
