"""Honest selection (semimatch.runs.validation): a validation set chooses best.pt, the test set
never does when one is given; without one the front doors load a checkpoint the test set did not
choose, and say what chose best.pt."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import semimatch
from helpers.text_fixtures import text_corpus
from semimatch.cli import main
from semimatch.config import Config, ConfigError
from semimatch.data import FeatureSource, balanced_split, from_arrays, from_features, load_split
from semimatch.runs.checkpoint import BEST, load
from semimatch.runs.records import summary_line
from semimatch.runs.resolve import load_data, make_split

QUICK = dict(
    dataset="digits",
    num_labels=40,
    iterations=4,
    eval_every=2,
    log_every=2,
    batch_size=8,
    uratio=1,
    seed=0,
    threads=1,
    num_workers=0,
    tensorboard=False,
)


# -- the carving ---------------------------------------------------------------------------------
def test_val_size_carves_a_balanced_seeded_set_out_of_the_labeled_samples():
    data = load_data(Config(dataset="digits"))
    y = data.train.labels
    split = make_split(Config(dataset="digits", num_labels=40, val_size=20), data)
    drawn = balanced_split(y, 10, 40, seed=0)  # the same draw without a validation set
    assert len(split.val) == 20 and len(split.labeled) == 20
    assert np.bincount(y[split.val], minlength=10).tolist() == [2] * 10
    assert sorted([*split.labeled, *split.val]) == sorted(drawn.labeled)
    # Neither the labels nor the samples of the validation set train.
    assert not set(split.val) & set(split.labeled) and not set(split.val) & set(split.unlabeled)
    again = make_split(Config(dataset="digits", num_labels=40, val_size=20), data)
    other = make_split(Config(dataset="digits", num_labels=40, val_size=20, val_seed=1), data)
    assert np.array_equal(again.val, split.val) and not np.array_equal(other.val, split.val)
    uneven = make_split(Config(dataset="digits", num_labels=40, val_size=13), data)
    assert sorted(np.bincount(y[uneven.val], minlength=10).tolist()) == [1] * 7 + [2] * 3


def test_a_val_size_refusal_names_the_class_as_the_data_names_it():
    from semimatch.runs.validation import carve

    labels = np.arange(20) % 4
    images = np.zeros((20, 8, 8, 1), dtype=np.uint8)
    split = balanced_split(labels, 4, 8, seed=0)  # 2 labeled samples per class
    names = from_arrays(images, labels, class_names=["bird", "cat", "dog", "fish"])
    with pytest.raises(ConfigError, match="take 2 of the 2 labeled samples of class 'bird' "):
        carve(Config(val_size=8), names, split)
    with pytest.raises(ConfigError, match="take 2 of the 2 labeled samples of class 0 "):
        carve(Config(val_size=8), from_arrays(images, labels), split)  # its names are indices


def test_a_validation_set_that_leaves_a_class_without_labels_is_refused(capsys):
    data = load_data(Config(dataset="digits"))
    with pytest.raises(ConfigError, match="--val-size: 20 .* none to train on"):
        make_split(Config(dataset="digits", num_labels=20, val_size=20), data)
    argv = ["train", "--num-labels", "20", "--val-size", "20", "--iterations", "1"]
    assert main(argv) == 2
    assert "--val-size" in capsys.readouterr().err
    assert main(["train", "--val-seed", "3", "--iterations", "1"]) == 2


def test_the_split_is_recorded_and_a_resumed_run_continues_it_identically(tmp_path, capsys):
    cfg = Config(**QUICK, val_size=10, keep_checkpoints=2)  # ckpt-2 to resume from
    whole = semimatch.train(cfg, out=tmp_path / "whole")
    cut = tmp_path / "cut"
    semimatch.train(cfg, out=cut)
    (cut / "checkpoints" / "ckpt-0000004.pt").unlink()
    (cut / "summary.json").unlink()
    resumed = semimatch.train(out=cut, resume=True)
    saved = load_split(cut / "split.json")
    assert len(saved.val) == 10 and len(saved.labeled) == 30
    assert np.array_equal(saved.val, load_split(tmp_path / "whole" / "split.json").val)
    keys = ("error", "val_error", "best", "lb_weak_acc", "lb_strong_acc", "pl_flip")
    rows = [[{k: r[k] for k in keys} for r in run.metrics if r["kind"] == "eval"]
            for run in (whole, resumed)]  # fmt: skip
    assert rows[0] == rows[1] and len(rows[0]) == 2
    out = capsys.readouterr().out
    assert "10 labeled held out for validation" in out and "30 labeled train" in out


# -- the selection -------------------------------------------------------------------------------
def _flipped_test_data() -> semimatch.data.SSLDataset:
    """Two classes; the test set is the validation set with every label flipped, so its error
    is 1 - the validation error: the checkpoint with the lowest validation error has the
    *highest* test error, and a selection that read the test error would pick another one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    labels = np.full(400, -1)
    labels[:16] = y[:16]
    data = from_features(x[:300], labels[:300], mean=[0.0] * 8, std=[1.0] * 8)
    xv, yv = x[300:], y[300:]
    return dataclasses.replace(data, val=FeatureSource(xv, yv), test=FeatureSource(xv, 1 - yv))


def test_best_pt_is_chosen_on_the_validation_set_and_never_on_the_test_set(tmp_path):
    cfg = Config(
        iterations=12, eval_every=1, log_every=1, batch_size=8, uratio=1, threads=1,
        lr=0.05, ema_decay=0, tensorboard=False, keep_checkpoints=20, backbone="mlp",
    )  # fmt: skip
    run = semimatch.train(cfg, data=_flipped_test_data(), out=tmp_path / "run")
    records = [r for r in run.metrics if r["kind"] == "eval"]
    val = [r["val_error"] for r in records]
    test = [r["error"] for r in records]
    assert test == pytest.approx([1 - v for v in val])
    assert min(val) < max(val)  # the validation error moved, so the two choices differ
    by_val = max(i for i, v in enumerate(val) if v == min(val))  # ties: the later one
    by_test = max(i for i, e in enumerate(test) if e == min(test))
    assert by_val != by_test
    best = load(tmp_path / "run" / "checkpoints" / BEST)
    assert best["iteration"] == records[by_val]["iteration"]
    assert all(r["selected_on"] == "val" for r in records)
    s = run.summary
    assert s["selected_on"] == "val" and s["best_val_error"] == min(val)
    assert s["selected_test_error"] == test[by_val]  # the chosen checkpoint's honest score
    # best_error is best.pt's test error, not the lowest test error (which chose nothing).
    assert s["best_error"] == test[by_val] and s["lowest_test_error"] == min(test)
    line = summary_line(s)
    assert f"error {100 * test[by_val]:.2f}%" in line
    assert f"lowest test error {100 * min(test):.2f}%" in line
    # The front doors load best.pt by default: a validation set, not the test set, chose it.
    loaded = semimatch.load_run(tmp_path / "run")
    assert loaded.selected_on == "val" and loaded.checkpoint.name == BEST


# -- the front doors without a validation set ------------------------------------------------------
def test_without_a_validation_set_the_front_doors_load_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    run = semimatch.train(Config(**QUICK), out=out)
    assert "chosen on the test set" in capsys.readouterr().out  # the "done:" line says so
    assert json.loads((out / "summary.json").read_text())["selected_on"] == "test"
    default = semimatch.load_run(out)
    assert default.checkpoint.name == "ckpt-0000004.pt" and default.selected_on == "last"
    paper = semimatch.load_run(out, checkpoint="best")
    assert paper.checkpoint.name == BEST and paper.selected_on == "test"
    images = run.data.test.gather(np.arange(20))
    final = [r["index"] for r in semimatch.predict(run, images)]  # the trained Run: final
    assert [r["index"] for r in semimatch.predict(out, images)] == final
    assert semimatch.evaluate(out)["error"] == pytest.approx(run.summary["final_error"])
    assert main(["eval", str(out)]) == 0
    assert "ckpt-0000004.pt, the last checkpoint" in capsys.readouterr().out
    assert main(["eval", str(out), "--checkpoint", "best"]) == 0
    assert "chosen on this test set: an optimistic score" in capsys.readouterr().out


def test_val_dir_is_an_image_folder_that_chooses_best_pt(tiny_image_folder, tmp_path):
    root = tiny_image_folder
    cfg = Config(
        dataset="imagefolder", data_root=str(root / "train"), test_dir=str(root / "test"),
        val_dir=str(root / "test"), iterations=2, eval_every=1, batch_size=3, uratio=1,
        threads=1, num_workers=0, tensorboard=False,
    )  # fmt: skip
    run = semimatch.train(cfg, out=tmp_path / "run")
    records = [r for r in run.metrics if r["kind"] == "eval"]
    assert all(r["selected_on"] == "val" and r["val_error"] is not None for r in records)
    with pytest.raises(ConfigError, match="--val-dir: no directory at"):
        semimatch.train(dataclasses.replace(cfg, val_dir=str(root / "missing")))
    with pytest.raises(ConfigError, match="--val-dir applies to --dataset imagefolder and text"):
        semimatch.train(Config(**{**QUICK, "val_dir": str(root / "test")}))


def test_usb_folders_choose_best_pt_on_their_dev_json(tiny_bert_dir, tmp_path, capsys):
    texts, labels = text_corpus(40)
    rows = lambda n, at=0: {  # noqa: E731 - USB's layout: {"id": {"ori": text, "label": ...}}
        str(i): {"ori": texts[at + i], "label": labels[at + i]} for i in range(n)
    }
    (tmp_path / "train.json").write_text(json.dumps(rows(24)))
    (tmp_path / "dev.json").write_text(json.dumps(rows(8, 24)))
    (tmp_path / "test.json").write_text(json.dumps(rows(8, 32)))
    cfg = Config(
        dataset="text", data_root=str(tmp_path), backbone=f"hf:{tiny_bert_dir}", max_length=32,
        iterations=2, eval_every=1, batch_size=4, uratio=1, threads=1, tensorboard=False,
        progress=False,
    )  # fmt: skip
    records = [r for r in semimatch.train(cfg).metrics if r["kind"] == "eval"]
    assert all(r["selected_on"] == "val" and r["val_error"] is not None for r in records)
    assert "dev.json chooses best.pt" in capsys.readouterr().out
