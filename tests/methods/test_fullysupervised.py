"""fullysupervised: every training label, no labeled draw (semimatch.methods.fullysupervised)."""

from __future__ import annotations

import json

import pytest
import torch

from semimatch.cli import main
from semimatch.config import Config, ConfigError, load_preset
from semimatch.demo import run_demo
from semimatch.methods.registry import build_algorithm, methods
from semimatch.presets import PRESETS
from semimatch.runs.resolve import load_data, make_split, resolve

CPU = torch.device("cpu")


def test_it_is_the_labeled_loss_on_every_label():
    spec = methods()["fullysupervised"]
    assert spec.all_labels and not methods()["supervised"].all_labels
    algorithm = build_algorithm("fullysupervised", 10)
    assert not algorithm.uses_unlabeled and algorithm.needs.strong_views == 0
    assert algorithm.supervised_at(0) and algorithm.supervised_at(None)


def test_the_split_is_every_labeled_training_sample():
    cfg = Config(dataset="digits", algorithm="fullysupervised", iterations=4)
    data = load_data(cfg)
    split = make_split(resolve(cfg, data, CPU), data)
    assert len(split.labeled) == int((data.train.labels >= 0).sum()) == len(data.train)


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--num-labels", "20"], "--num-labels 20"),
        (["--lt-gamma", "10"], "--lt-gamma 10"),
        (["--exclude-labeled"], "--exclude-labeled"),
    ],
)
def test_a_labeled_subset_is_refused_naming_the_flag(flags, named, tmp_path, capsys):
    """A ceiling measured on 40 labels would be a silently wrong answer."""
    argv = ["train", "--algorithm", "fullysupervised", "--dataset", "digits", *flags]
    assert main([*argv, "--iterations", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "--algorithm supervised" in err[0]
    assert not (tmp_path / "run").exists()


def test_the_python_api_refuses_it_too():
    cfg = Config(dataset="digits", algorithm="fullysupervised", num_labels=20)
    with pytest.raises(ConfigError, match="every labeled training sample"):
        resolve(cfg, load_data(cfg), CPU)


def test_presets_where_usb_publishes_the_row():
    names = sorted(n for n in PRESETS if n.endswith("-fullysupervised"))
    image = [n for n in names if PRESETS[n].values["dataset"] != "text"]
    assert image == sorted(
        f"{s}-fullysupervised"
        for s in (
            "cifar10-40",
            "cifar10-250",
            "cifar10-4000",
            "cifar100-400",
            "cifar100-2500",
            "svhn-40",
            "svhn-250",
        )  # fmt: skip
    )
    assert len(names) - len(image) == 10  # USB's NLP table has the row for every setting
    cfg = load_preset("cifar10-40-fullysupervised")
    assert cfg.algorithm == "fullysupervised" and cfg.num_labels is None
    assert cfg.dataset == "cifar10" and cfg.iterations == 2**20
    assert load_preset("ag_news-40-fullysupervised").num_labels is None


def test_the_demo_trains_it_on_every_label(tmp_path, capsys):
    rows = run_demo(tmp_path, iterations=1, methods="fullysupervised", threads=1, report=False)
    assert [r["algorithm"] for r in rows] == ["fullysupervised"]
    assert "--- fullysupervised: every label, 1 iterations ---" in capsys.readouterr().out
    saved = json.loads((tmp_path / "fullysupervised" / "config.json").read_text())
    assert saved["num_labels"] is None
