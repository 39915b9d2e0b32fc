"""How a run starts: ``RunStart.plan`` checks the arguments, ``RunStart.open`` decides the run
(config, split, checkpoint) before anything is built, ``Opened.claim`` makes the folder its."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semimatch.config import Config, ConfigError
from semimatch.data import from_arrays
from semimatch.errors import TrainingError
from semimatch.runs.resolve import given_data_config, resolve
from semimatch.runs.start import RunStart

CPU = torch.device("cpu")


def tiny_data():
    """The data of ``run_folder``'s runs."""
    rng = np.random.default_rng(0)
    return from_arrays(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 4)


def resolved(**options) -> Config:
    """The config a new run on ``tiny_data`` saves."""
    data = tiny_data()
    return resolve(given_data_config(Config(**options), data), data, CPU)


def opened(out, resume, overwrite, cfg=None):
    """What ``fit(cfg, data=tiny_data(), out=, resume=, overwrite=)`` decides."""
    if cfg is None and resume is not True:
        cfg = Config()
    start, cfg = RunStart.plan(out, resume, overwrite, cfg)
    return start.open(cfg, tiny_data(), CPU, given_data=True)


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
    tmp_path, run_folder, out, resume, overwrite, error, match
):
    run_folder(tmp_path / "run")
    with pytest.raises(error, match=match):
        RunStart.plan(tmp_path / out if out else None, resume, overwrite, None)


def test_resume_takes_the_saved_config_and_refuses_options_given_with_it(tmp_path, run_folder):
    saved = Config(seed=7, iterations=9)
    run_folder(tmp_path / "run", saved)
    start, cfg = RunStart.plan(tmp_path / "run", True, False, None)
    assert start.resume is True and cfg == saved
    assert RunStart.plan(tmp_path / "run", True, False, Config())[1] == saved
    with pytest.raises(ConfigError, match=r"saved config; drop \['lr', 'seed'\]"):
        RunStart.plan(tmp_path / "run", True, False, Config(seed=1, lr=0.1))
    with pytest.raises(ConfigError, match="in place; drop --overwrite"):
        RunStart.plan(tmp_path / "run", True, True, None)
    run_folder(tmp_path / "fresh", saved, checkpoint=False)
    with pytest.raises(
        TrainingError, match="no checkpoint yet.*--config .*config.json --overwrite"
    ):
        RunStart.plan(tmp_path / "fresh", True, False, None)


def test_open_decides_new_overwrite_and_resume(tmp_path, run_folder):
    out = tmp_path / "run"
    new = opened(out, False, False)  # no run there: a new one, resolved, with its split
    assert not new.resumed and new.cfg == resolved() and not new.replaces
    assert len(new.split.labeled) == 20 and not out.exists()  # open writes nothing
    assert not opened(out, "auto", False).resumed
    run_dir = run_folder(out, resolved())
    latest = run_dir.latest_checkpoint()
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        opened(out, False, False)
    auto = opened(out, "auto", False)  # the same run: continue it
    assert auto.checkpoint == latest and auto.cfg == resolved()
    with pytest.raises(TrainingError, match="holds a different run.*seed: saved 0"):
        opened(out, "auto", False, Config(seed=1))
    # Fields that only change speed or display do not make another run; they are taken.
    auto = opened(out, "auto", False, Config(threads=1, progress=True))
    assert auto.checkpoint == latest and auto.cfg == resolved().replace(threads=1, progress=True)
    resumed = opened(out, True, False)
    assert resumed.checkpoint == latest and resumed.cfg == resolved()
    replacing = opened(out, False, True)
    assert not replacing.resumed and replacing.replaces and run_dir.holds_run()
    replacing.claim(tiny_data().info, nn.Identity())  # overwrite clears it, then starts anew
    assert run_dir.latest_checkpoint() is None and run_dir.config.exists()


def test_a_resumed_run_keeps_its_saved_split(tmp_path, run_folder):
    """The saved split.json (every sample labeled here), not the one the config would draw."""
    run_dir = run_folder(tmp_path / "run", resolved(num_labels=8))
    assert len(opened(run_dir.path, False, True, resolved(num_labels=8)).split.labeled) == 8
    for resume, cfg in ((True, None), ("auto", Config(num_labels=8))):
        run = opened(run_dir.path, resume, False, cfg)
        assert run.resumed and len(run.split.labeled) == 20


def test_only_claim_touches_the_folder(tmp_path, run_folder):
    """A resume's decision leaves a killed run's temporaries; claiming the run removes them."""
    run_dir = run_folder(tmp_path / "run", resolved())
    stale = run_dir.checkpoints / ".ckpt-0000004.pt.tmp-123"
    stale.write_bytes(b"half")
    run = opened(run_dir.path, True, False)
    assert stale.exists()
    run.claim(tiny_data().info, nn.Identity())
    assert not stale.exists() and run_dir.latest_checkpoint() == run.checkpoint


def test_auto_restarts_a_run_that_stopped_before_its_first_checkpoint(tmp_path, run_folder):
    run_dir = run_folder(tmp_path / "run", resolved(), checkpoint=False)
    run = opened(run_dir.path, "auto", False)
    assert not run.resumed and run.replaces
    run.claim(tiny_data().info, nn.Identity())
    assert run_dir.config.exists() and not run_dir.metrics.exists()  # its files, anew


def test_a_resume_takes_runtime_options_and_refuses_the_rest_naming_them(tmp_path, run_folder):
    saved = Config(seed=7, iterations=9, threads=2)
    run_folder(tmp_path / "run", saved)
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


def test_a_resume_extends_the_budget_and_never_shortens_it(tmp_path, run_folder):
    run_folder(tmp_path / "run", resolved(iterations=9))
    start, cfg = RunStart.plan(tmp_path / "run", True, False, {"iterations": 1000})
    # 1000 is the default, and given: the command line says exactly which flags it got.
    assert cfg.iterations == 1000 and start.extended_from == 9
    assert opened(tmp_path / "run", True, False, {"iterations": 1000}).extended_from == 9
    with pytest.raises(ConfigError, match=r"iterations=5: .* is planned for 9 iterations \(2 "):
        RunStart.plan(tmp_path / "run", True, False, {"iterations": 5})
    with pytest.raises(TrainingError, match=r"--resume .* --iterations 30`"):
        opened(tmp_path / "run", "auto", False, Config(iterations=30))
