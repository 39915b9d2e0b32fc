"""How a run starts (``RunStart``), the run directory's layout (``RunDir``), ``load_run``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semimatch import checkpoint as ckpt
from semimatch.config import Config, ConfigError
from semimatch.data import from_arrays, given_split
from semimatch.errors import TrainingError
from semimatch.run import RunDir, RunStart, load_dataset_info, save_dataset_info


def tiny_data():
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 4)


def a_run(path, cfg: Config | None = None, checkpoint: bool = True) -> RunDir:
    """A run directory as a run writes it, without training."""
    run_dir = RunDir(path)
    data = tiny_data()
    run_dir.write_start(cfg or Config(), given_split(data.train.labels), data.info)
    run_dir.metrics.write_text("")
    if checkpoint:
        run_dir.checkpoints.mkdir()
        ckpt.save_atomic({"iteration": 2}, run_dir.checkpoints / ckpt.checkpoint_name(2))
    return run_dir


def test_the_layout_names_every_file_once(tmp_path):
    run_dir = a_run(tmp_path / "run")
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


@pytest.mark.parametrize(
    "out,resume,overwrite,error,match",
    [
        (None, True, False, TrainingError, "resume=True needs out="),
        (None, "auto", False, ConfigError, "--resume auto needs --out RUN_DIR"),
        ("run", "auto", True, ConfigError, "continues the run in --out; drop --overwrite"),
        ("run", "yes", False, ValueError, "resume must be True, False or 'auto'"),
        ("missing", True, False, TrainingError, "no run there"),
    ],
)
def test_arguments_that_cannot_start_a_run_are_refused_before_any_work(
    tmp_path, out, resume, overwrite, error, match
):
    a_run(tmp_path / "run")
    with pytest.raises(error, match=match):
        RunStart.plan(tmp_path / out if out else None, resume, overwrite, None)


def test_resume_takes_the_saved_config_and_refuses_options_given_with_it(tmp_path):
    saved = Config(seed=7, iterations=9)
    a_run(tmp_path / "run", saved)
    start, cfg = RunStart.plan(tmp_path / "run", True, False, None)
    assert start.resuming and cfg == saved
    assert RunStart.plan(tmp_path / "run", True, False, Config())[1] == saved
    with pytest.raises(ConfigError, match=r"saved config; drop \['lr', 'seed'\]"):
        RunStart.plan(tmp_path / "run", True, False, Config(seed=1, lr=0.1))
    with pytest.raises(ConfigError, match="in place; drop --overwrite"):
        RunStart.plan(tmp_path / "run", True, True, None)
    a_run(tmp_path / "fresh", saved, checkpoint=False)
    with pytest.raises(
        TrainingError, match="no checkpoint yet.*--config .*config.json --overwrite"
    ):
        RunStart.plan(tmp_path / "fresh", True, False, None)


def test_open_decides_new_overwrite_and_resume(tmp_path):
    def opened(resume, overwrite, cfg=None):
        cfg = Config() if cfg is None and resume is not True else cfg
        start, saved = RunStart.plan(tmp_path / "run", resume, overwrite, cfg)
        return start.open(saved)

    assert opened(False, False) is None  # no run there: a new one
    assert opened("auto", False) is None
    run_dir = a_run(tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        opened(False, False)
    assert opened("auto", False) == run_dir.latest_checkpoint()  # the same run: continue it
    with pytest.raises(TrainingError, match="holds a different run.*seed: saved 0"):
        opened("auto", False, Config(seed=1))
    # Fields that only change speed or display do not make another run.
    assert opened("auto", False, Config(threads=1, progress=True)) is not None
    assert opened(True, False, None) == run_dir.latest_checkpoint()
    assert opened(False, True) is None and not run_dir.holds_run()  # overwrite clears it


def test_auto_restarts_a_run_that_stopped_before_its_first_checkpoint(tmp_path):
    run_dir = a_run(tmp_path / "run", checkpoint=False)
    start, cfg = RunStart.plan(run_dir.path, "auto", False, Config())
    assert start.open(cfg) is None and not run_dir.holds_run()


def test_a_failed_write_says_where_to_continue_from(tmp_path):
    run_dir = a_run(tmp_path / "run", checkpoint=False)
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


def test_a_resume_takes_runtime_options_and_refuses_the_rest_naming_them(tmp_path):
    saved = Config(seed=7, iterations=9, threads=2)
    a_run(tmp_path / "run", saved)
    runtime = {"threads": 1, "progress": True, "num_workers": 0, "keep_checkpoints": 3}
    for given in (runtime, Config(**runtime)):  # the command line's flags, or a Config
        start, cfg = RunStart.plan(tmp_path / "run", True, False, given)
        assert cfg == saved.replace(**runtime) and start.extended_from is None
    # The run's own values are no change (a script passing its whole config resumes it).
    assert RunStart.plan(tmp_path / "run", True, False, {"seed": 7, "iterations": 9})[1] == saved
    with pytest.raises(ConfigError, match=r"saved config; drop \['lr'\]: they change what it"):
        RunStart.plan(tmp_path / "run", True, False, {"lr": 0.1, "threads": 1})
    with pytest.raises(ConfigError, match="keep_checkpoints must be >= 1; got 0"):
        RunStart.plan(tmp_path / "run", True, False, {"keep_checkpoints": 0})


def test_resume_auto_takes_this_launchs_runtime_options(tmp_path):
    run_dir = a_run(tmp_path / "run", Config(threads=2, progress=False))
    start, cfg = RunStart.plan(run_dir.path, "auto", False, Config(threads=1, progress=True))
    assert start.open(cfg) is not None
    assert start.saved_config(cfg) == Config(threads=1, progress=True)


def test_a_resume_extends_the_budget_and_never_shortens_it(tmp_path):
    a_run(tmp_path / "run", Config(iterations=9))
    start, cfg = RunStart.plan(tmp_path / "run", True, False, {"iterations": 1000})
    # 1000 is the default, and given: the command line says exactly which flags it got.
    assert cfg.iterations == 1000 and start.extended_from == 9
    with pytest.raises(ConfigError, match=r"iterations=5: .* is planned for 9 iterations \(2 "):
        RunStart.plan(tmp_path / "run", True, False, {"iterations": 5})
    with pytest.raises(TrainingError, match=r"--resume .* --iterations 30`"):
        start, cfg = RunStart.plan(tmp_path / "run", "auto", False, Config(iterations=30))
        start.open(cfg)
