"""The run directory's layout (``RunDir``) and its dataset record."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semimatch.data import from_arrays
from semimatch.errors import TrainingError
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.run import RunDir, load_dataset_info, save_dataset_info


def tiny_data():
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 4)


def test_the_layout_names_every_file_once(tmp_path, run_folder):
    run_dir = run_folder(tmp_path / "run")
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert names == {"config.json", "split.json", "dataset.json", "metrics.jsonl", "checkpoints"}
    assert run_dir.holds_run() and run_dir.latest_checkpoint().name == "ckpt-0000002.pt"
    info = load_dataset_info(run_dir.dataset)
    assert info == tiny_data().info
    run_dir.clear()
    assert not any((tmp_path / "run").iterdir())


def test_dataset_info_round_trips(tmp_path):
    info = tiny_data().info
    save_dataset_info(info, tmp_path / "d.json")
    assert load_dataset_info(tmp_path / "d.json") == info


def test_a_failed_write_says_where_to_continue_from(tmp_path, run_folder):
    run_dir = run_folder(tmp_path / "run", checkpoint=False)
    again = f"--config {run_dir.config} --overwrite --out {run_dir.path}"
    assert run_dir.resume_hint().endswith(f"`semimatch train {again}` starts it again")
    run_dir.checkpoints.mkdir()
    ckpt.save_atomic({"iteration": 4}, run_dir.checkpoints / ckpt.checkpoint_name(4))
    assert run_dir.resume_hint().endswith("continues from ckpt-0000004.pt (iteration 4)")


def test_a_finished_summary_that_cannot_be_written_says_the_checkpoint_is_safe(tmp_path):
    run_dir = RunDir(tmp_path / "missing" / "run")
    with pytest.raises(TrainingError, match="its last checkpoint is saved, but cannot write"):
        run_dir.write_summary({"status": "finished"})
    json.dumps({"device": str(torch.device("cpu"))})  # summaries hold primitives only


def test_load_run_refuses_a_model_that_is_not_a_backbone(tmp_path):
    """``model="raw"`` (eval's --model) belongs to evaluate/predict: a one-line TypeError,
    checked before the folder is read, not an AttributeError deep in the build."""
    from semimatch.runs.run import load_run

    with pytest.raises(TypeError, match="pass model='raw' to run.evaluate / run.predict"):
        load_run(tmp_path, model="raw")


def test_a_feature_run_without_test_set_is_not_sent_to_a_test_folder(tmp_path):
    """Feature vectors have no files to read labels from: the hint names run.evaluate."""
    from semimatch.config import Config
    from semimatch.data import from_features
    from semimatch.runs.engine import fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = from_features(x, y, mean=[0.0] * 4, std=[1.0] * 4)
    cfg = Config(algorithm="supervised", num_labels=10, iterations=2, eval_every=2,
                 batch_size=4, threads=1, tensorboard=False, progress=False)  # fmt: skip
    run = fit(cfg, data=data, out=tmp_path / "run")
    run.data = data
    with pytest.raises(ValueError, match="pass labeled feature vectors to run.evaluate"):
        run.evaluate()
