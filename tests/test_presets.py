"""The USB NLP presets: every one resolves, their values are USB's, and one trains end to end
from a USB-format JSON folder with the tiny BERT (the paper image presets: test_config.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import semimatch
from helpers.text_fixtures import text_corpus
from semimatch.cli import main
from semimatch.config import ConfigError, load_preset
from semimatch.data.text_datasets import from_texts
from semimatch.presets import PRESETS
from semimatch.runs.resolve import load_data, resolve

#: The NLP presets (the names of USB's datasets, with aclImdb as imdb).
NLP = sorted(n for n, p in PRESETS.items() if p.values.get("dataset") == "text")
CLASSES = {"ag_news": 4, "yelp_review": 5, "amazon_review": 5, "yahoo_answers": 10, "imdb": 2}


def test_the_usb_nlp_settings_and_algorithms_have_presets():
    settings = {n.rsplit("-", 1)[0] for n in NLP}
    assert settings == {
        *("ag_news-40", "ag_news-200", "yelp_review-250", "yelp_review-1000"),
        *("amazon_review-250", "amazon_review-1000", "yahoo_answers-500", "yahoo_answers-2000"),
        *("imdb-20", "imdb-100"),
    }
    algorithms = {n.rsplit("-", 1)[1] for n in NLP}
    assert algorithms == {
        *("supervised", "fullysupervised", "fixmatch", "softmatch"),
        *("flexmatch", "freematch", "adamatch", "dash", "uda", "pimodel", "comatch"),
        "simmatch",
        "crmatch",
    }
    assert len(NLP) == 10 * 13


def _texts(num_classes: int) -> semimatch.data.SSLDataset:
    """Untokenized texts of ``num_classes`` classes with precomputed strong views."""
    texts = [f"text {i} of class {i % num_classes}" for i in range(20 * num_classes)]
    labels = [i % num_classes for i in range(len(texts))]
    return from_texts(texts, labels, augmentations=[[t + " again"] for t in texts])


@pytest.mark.parametrize("name", NLP)
def test_every_nlp_preset_resolves_to_usb_s_recipe(name):
    cfg = load_preset(name)
    assert cfg.preset == name and cfg.backbone == "hf:bert-base-uncased"
    resolved = resolve(cfg, _texts(CLASSES[name.split("-")[0]]), torch.device("cpu"))
    # The recipe is pinned, nothing of it derived from the budget or the device.
    pinned = ("optimizer", "lr", "layer_decay", "weight_decay", "ema_decay", "max_length")
    assert not set(pinned) & set(resolved.auto), resolved.auto
    assert (resolved.iterations, resolved.warmup_iterations, resolved.eval_every) == (
        102_400,
        5120,
        2048,
    )
    assert (resolved.batch_size, resolved.uratio, resolved.max_length) == (8, 1, 512)
    ema_m = 0.999 if name.endswith("-pimodel") else 0  # USB's NLP Pi-Model configs keep it
    assert (resolved.optimizer, resolved.weight_decay, resolved.ema_decay) == ("adamw", 5e-4, ema_m)
    assert (resolved.precision, resolved.forward_mode, resolved.text_strong) == (
        "fp32",
        "joint",
        "precomputed",
    )
    assert "not practical on a CPU" in PRESETS[name].runtime


#: Values read from USB's config/usb_nlp/<algo>/<algo>_<dataset>_<labels>_0.yaml (commit
#: 1ef4cbe of microsoft/Semi-supervised-learning): lr, layer_decay and the algorithm's own.
USB_VALUES = {
    "ag_news-40-softmatch": dict(
        lr=5e-5, layer_decay=0.65, stat_momentum=0.999, n_sigma=2.0, uniform_alignment=True
    ),
    "amazon_review-250-fixmatch": dict(lr=1e-5, layer_decay=0.75, tau=0.95, num_labels=250),
    "yahoo_answers-2000-freematch": dict(
        lr=1e-4, layer_decay=0.65, lambda_e=0.001, stat_momentum=0.999, use_quantile=False
    ),
    "imdb-20-dash": dict(
        lr=5e-5,
        layer_decay=0.75,
        temperature=0.5,
        dash_gamma=1.27,
        dash_c=1.0001,
        rho_min=0.05,
        dash_warmup=2048,
        rho_period=10_240,
    ),
    "yelp_review-1000-adamatch": dict(lr=5e-5, layer_decay=0.75, tau=0.95, stat_momentum=0.999),
    "ag_news-200-supervised": dict(lr=5e-5, layer_decay=0.65, num_labels=200),
    "imdb-20-pimodel": dict(
        lr=5e-5, layer_decay=0.75, lambda_u=10.0, unsup_warmup=0.4, ema_decay=0.999, uratio=1
    ),
}


@pytest.mark.parametrize("name", sorted(USB_VALUES))
def test_preset_values_equal_usb_s_config_files(name):
    cfg = load_preset(name)
    assert {k: getattr(cfg, k) for k in USB_VALUES[name]} == USB_VALUES[name]


def write_usb_folder(folder: Path, n_train: int = 96, n_test: int = 32) -> Path:
    """USB's data/<dataset>/ layout: train/dev/test.json of ``{"<id>": {"ori", "aug_0",
    "aug_1", "label"}}`` with the 4 classes of the tiny corpus as indices (dev/test: no augs,
    as USB's files)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ["world", "sport", "business", "science"]
    for part, n, seed in (("train", n_train, 0), ("dev", n_test, 1), ("test", n_test, 2)):
        texts, labels = text_corpus(n, seed)
        rows = {}
        for i, (t, y) in enumerate(zip(texts, labels)):
            row = {"ori": t, "label": str(names.index(y))}
            if part == "train":
                row.update(aug_0=f"the {t}", aug_1=f"{t} and the news")
            rows[str(i)] = row
        (folder / f"{part}.json").write_text(json.dumps(rows), encoding="utf-8")
    return folder


def test_a_usb_nlp_preset_trains_from_a_usb_json_folder(tmp_path, tiny_bert_dir):
    root = write_usb_folder(tmp_path / "data" / "ag_news")
    tiny = dict(
        backbone=f"hf:{tiny_bert_dir}",
        max_length=32,  # the tiny BERT has 64 positions
        iterations=6,
        warmup_iterations=2,
        eval_every=3,
        log_every=3,
        threads=1,
        tensorboard=False,
    )
    cfg = semimatch.make_config(preset="ag_news-40-softmatch", data_root=str(root), **tiny)
    data = load_data(cfg)
    assert (len(data.train.labels), len(data.test.labels)) == (96, 32)  # test.json, not dev
    assert data.info.num_classes == 4
    run = semimatch.train(
        preset="ag_news-40-softmatch", data_root=str(root), out=tmp_path / "r", **tiny
    )
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["preset"] == "ag_news-40-softmatch" and saved["num_labels"] == 40
    assert (saved["lr"], saved["layer_decay"], saved["ema_decay"]) == (5e-5, 0.65, 0.0)
    assert saved["text_strong"] == "precomputed" and saved["uratio"] == 1
    scored = run.evaluate()
    assert (scored["n"], scored["model"]) == (32, "raw")  # test.json; ema_m 0: no EMA


def test_a_usb_nlp_preset_without_its_data_says_where_to_point(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "ag_news-40-fixmatch", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data-root" in err and "data/<dataset>/ with train.json and test.json" in err
    assert not out.exists()
    half = tmp_path / "half"
    half.mkdir()
    (half / "train.json").write_text("{}")
    args = ["train", "--preset", "ag_news-40-fixmatch", "--data-root", str(half)]
    assert main([*args, "--out", str(out)]) == 2
    assert "needs its test.json too" in capsys.readouterr().err


def test_the_command_line_lists_the_nlp_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("ag_news-40-softmatch", "imdb-100-fixmatch", "yahoo_answers-500-dash"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "BERT-base" in line and "not practical on a CPU" in line


def test_a_usb_nlp_preset_with_an_image_dataset_is_refused():
    with pytest.raises(ConfigError, match="text encoder"):
        resolve(
            load_preset("ag_news-40-fixmatch").replace(
                dataset="digits", max_length=None, text_strong=None
            ),
            semimatch.data.load_dataset("digits"),
            torch.device("cpu"),
        )
