"""The training loop: metrics, exact resume after SIGKILL, Ctrl-C, NaN, refusals, checkpoints."""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers.runs import (
    CLI,
    TINY,
    assert_same_run,
    kill_after_first_checkpoint,
    stable,
)
from semimatch.config import Config
from semimatch.errors import TrainingError, TrainingInterrupted
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.engine import fit
from semimatch.training.metrics import read_jsonl


def tiny(**kw) -> Config:
    return Config(**{**TINY, **kw})


def test_metrics_jsonl_schema(tmp_path):
    run = fit(
        tiny(algorithm="softmatch", iterations=12, eval_every=6, log_every=3), out=tmp_path / "run"
    )
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 4 and kinds.count("eval") == 2 and kinds[-1] == "end"
    ev = [r for r in records if r["kind"] == "eval"][-1]
    for key in (
        "top1",
        "error",
        "best_error",
        "median20_error",
        "per_class_acc",
        "confusion",
        "window",
        "weighting",
        "lambda_curve",
        "p_model",
    ):
        assert key in ev, key
    assert ev["weighting"]["type"] == "softmatch" and len(ev["p_model"]) == 10
    assert len(ev["window"]["conf_hist"]) == 50
    # the histogram counts every unlabeled sample of the window (6 steps x 16)
    assert sum(ev["window"]["conf_hist"]) == 6 * 16
    assert 0.0 <= ev["window"]["quantity"] <= 1.0
    assert abs(ev["top1"] + ev["error"] - 1) < 1e-9
    assert run.summary["iterations_done"] == 12 and run.summary["status"] == "finished"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_error"] == ev["error"]
    # the resolved config and the split are saved for audit and reuse
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["stat_momentum"] is not None and "stat_momentum" in saved["auto"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["labeled"]) == 20


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path):
    fit(tiny(iterations=2, eval_every=2), out=tmp_path / "run")
    with pytest.raises(TrainingError, match="already holds a run"):
        fit(tiny(iterations=2, eval_every=2), out=tmp_path / "run")
    fit(tiny(iterations=2, eval_every=2, seed=4), out=tmp_path / "run", overwrite=True)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["seed"] == 4


def test_resume_without_checkpoint_is_an_error_not_a_restart(tmp_path):
    with pytest.raises(TrainingError, match="no run there"):
        fit(Config(), out=tmp_path / "nothing", resume=True)
    (tmp_path / "run").mkdir()
    tiny(iterations=2).save(tmp_path / "run" / "config.json")
    with pytest.raises(TrainingError, match="no checkpoint yet"):
        fit(Config(), out=tmp_path / "run", resume=True)


def test_corrupt_checkpoint_names_the_file(tmp_path):
    fit(tiny(iterations=4, eval_every=2), out=tmp_path / "run")
    latest = ckpt.latest(tmp_path / "run" / "checkpoints")
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.raises(ckpt.CheckpointError, match=latest.name):
        fit(Config(), out=tmp_path / "run", resume=True)


def test_checkpoint_cannot_execute_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": ckpt.FORMAT_VERSION, "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_atomic_write_never_leaves_a_torn_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt-0000001.pt"
    ckpt.save_atomic({"iteration": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(ckpt.CheckpointError, match="disk full"):
        ckpt.save_atomic({"iteration": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["iteration"] == 1  # the old checkpoint is intact


def test_keeps_last_k_and_best(tmp_path):
    fit(tiny(iterations=8, eval_every=2, keep_checkpoints=2), out=tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "ckpt-0000006.pt", "ckpt-0000008.pt"]


class _NaNAfter(nn.Module):
    """A model whose output becomes NaN from the n-th training forward on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.calls = 0
        self.n = n

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.n:
                out = out * float("nan")
        return out


def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"NaN/inf at iteration 6.*ckpt-0000004"):
        fit(
            tiny(iterations=20, eval_every=2, forward_mode="joint"),
            out=tmp_path / "run",
            model=_NaNAfter(5),
        )
    assert ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))["iteration"] == 4
    end = read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]
    assert end["kind"] == "end" and end["status"] == "failed"


def test_nan_before_the_first_checkpoint_says_none_was_saved(tmp_path):
    cfg = tiny(iterations=20, eval_every=10, forward_mode="joint")
    with pytest.raises(TrainingError) as info:
        fit(cfg, out=tmp_path / "run", model=_NaNAfter(1))
    assert "NaN/inf at iteration 2; no checkpoint was saved yet. Lower --lr" in str(info.value)
    assert "None" not in str(info.value)
    assert read_jsonl(tmp_path / "run" / "metrics.jsonl")[-1]["status"] == "failed"
    with pytest.raises(TrainingError, match=r"the run has no folder \(out\), so no checkpoint"):
        fit(cfg, model=_NaNAfter(1))


def test_stale_temporaries_go_when_the_run_is_resumed_or_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    fit(tiny(iterations=2, eval_every=2), out=run)
    stale = [run / "checkpoints" / n for n in (".ckpt-0000004.pt.tmp-4242", ".best.tmp")]
    stale.append(run / "metrics.tmp")
    for p in stale:
        p.write_bytes(b"half-written")
    capsys.readouterr()
    with pytest.raises(TrainingError, match="already holds a run"):
        fit(tiny(iterations=2, eval_every=2), out=run)
    assert all(p.exists() for p in stale)  # not our folder to clean without resume/overwrite
    fit(Config(), out=run, resume=True)
    assert (
        f"removed 3 temporary file(s) left in {run} by an interrupted run"
        in capsys.readouterr().out
    )
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "ckpt-0000002.pt"]
    stale[0].write_bytes(b"half-written")
    fit(tiny(iterations=2, eval_every=2), out=run, overwrite=True)
    assert "removed 1 temporary file(s)" in capsys.readouterr().out


def _fail_checkpoint_at(monkeypatch, iteration: int, error: Exception) -> None:
    """The checkpoint of ``iteration`` fails part-way through writing its file."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if obj.get("iteration") == iteration and isinstance(f, io.BufferedWriter):
            f.write(b"PK\x03\x04partial")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_failed_checkpoint_write_stops_the_run_and_resume_finishes_it_exactly(
    tmp_path, monkeypatch, capsys
):
    from semimatch.cli import main

    args = [*CLI[3:], "--iterations", "8", "--eval-every", "2"]  # the same run, shorter
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main([*args, "--out", str(ref)]) == 0
    # What torch raises when the disk fills under its zip writer.
    full = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    _fail_checkpoint_at(monkeypatch, 4, full)
    capsys.readouterr()
    assert main([*args, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    folder = run / "checkpoints"
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        f"semimatch train: error: cannot write ckpt-0000004.pt in {folder}: the write stopped "
        "part-way (torch: unexpected pos 768 vs 662); free space there: "
    )
    assert "the checkpoint needs " in err
    assert err.rstrip().endswith(
        f"Training stopped at iteration 4; fix the cause, then `semimatch train --resume {run}` "
        "continues from ckpt-0000002.pt (iteration 2)"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "ckpt-0000002.pt"]
    end = read_jsonl(run / "metrics.jsonl")[-1]
    assert end["kind"] == "end" and end["status"] == "failed" and end["iteration"] == 4
    monkeypatch.undo()
    assert ckpt.load(folder / "ckpt-0000002.pt")["iteration"] == 2
    assert main(["train", "--resume", str(run)]) == 0
    assert_same_run(ref, run, iterations=8)


def test_the_python_api_raises_the_checkpoint_error(tmp_path, monkeypatch):
    _fail_checkpoint_at(monkeypatch, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ckpt.CheckpointError) as info:
        fit(tiny(iterations=4, eval_every=2), out=tmp_path)
    message = str(info.value)
    assert "No space left on device (ENOSPC); free space there:" in message
    again = f"--config {tmp_path / 'config.json'} --overwrite --out {tmp_path}"
    fix = f"no checkpoint was saved yet: fix the cause, then `semimatch train {again}`"
    assert message.endswith(f"{fix} starts it again")
    assert not [p for p in (tmp_path / "checkpoints").iterdir()]


def test_an_interrupt_whose_checkpoint_fails_says_both(tmp_path, monkeypatch):
    from semimatch.runs import engine

    class _Requested(engine._InterruptFlag):
        def __enter__(self):  # as if Ctrl-C came during the first iteration
            self.requested = True
            return self

    monkeypatch.setattr(engine, "_InterruptFlag", _Requested)
    _fail_checkpoint_at(monkeypatch, 1, OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(ckpt.CheckpointError) as info:
        fit(tiny(iterations=4, eval_every=2), out=tmp_path)
    assert str(info.value).startswith(
        "interrupted (SIGINT) after iteration 1, then cannot write ckpt-0000001.pt in "
        f"{tmp_path / 'checkpoints'}: Permission denied (EACCES)"
    )
    end = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert end["status"] == "failed" and end["iteration"] == 1
    assert not list((tmp_path / "checkpoints").iterdir())


def test_a_failed_metrics_write_stops_the_run_with_the_reason(tmp_path, monkeypatch):
    from semimatch.training.metrics import JsonlWriter

    real_write = JsonlWriter.write

    def write(self, record):
        if record["kind"] == "eval" and record["iteration"] == 4:
            raise OSError(errno.EROFS, "Read-only file system")
        real_write(self, record)

    monkeypatch.setattr(JsonlWriter, "write", write)
    with pytest.raises(TrainingError) as info:
        fit(tiny(iterations=6, eval_every=2), out=tmp_path)
    assert str(info.value).startswith(
        f"cannot write metrics.jsonl in {tmp_path}: Read-only file system (EROFS); free space"
    )
    assert "continues from ckpt-0000002.pt (iteration 2)" in str(info.value)
    assert read_jsonl(tmp_path / "metrics.jsonl")[-1]["status"] == "failed"


class _SignalAt(nn.Module):
    """A model that sends this process ``signum`` during its n-th training forward."""

    def __init__(self, n: int, signum: int) -> None:
        super().__init__()
        self.lin = nn.Linear(64, 10)
        self.calls, self.n, self.signum = 0, n, signum

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.n:
                signal.raise_signal(self.signum)
        return self.lin(x.flatten(1))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_iteration_and_names_itself(tmp_path, capsys, signum):
    """The first SIGTERM/SIGINT finishes the iteration, checkpoints and raises
    TrainingInterrupted carrying the signal; the message is in the exception only (whoever
    catches it shows it once), not also logged."""
    before = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as e:
        fit(
            tiny(iterations=50, eval_every=10, forward_mode="joint"),
            out=tmp_path / "run",
            model=_SignalAt(3, signum),
        )
    assert isinstance(e.value, KeyboardInterrupt) and e.value.signum == signum
    name = signal.Signals(signum).name
    assert str(e.value) == (
        f"interrupted ({name}) after iteration 3; resume with "
        f"`semimatch train --resume {tmp_path / 'run'}`"
    )
    assert "interrupted" not in capsys.readouterr().out
    assert ckpt.load(ckpt.latest(tmp_path / "run" / "checkpoints"))["iteration"] == 3
    assert signal.getsignal(signum) is before  # the caller's handler is back


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """One uninterrupted deterministic run, compared against the interrupted ones."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run([*CLI, "--out", str(ref)], check=True, capture_output=True, timeout=300)
    return ref


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, reference_run):
    ref = reference_run

    run = tmp_path / "killed"
    kill_after_first_checkpoint(CLI, run)
    subprocess.run(
        [sys.executable, "-m", "semimatch", "train", "--resume", str(run)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert_same_run(ref, run)


@pytest.mark.skipif(
    not os.environ.get("SEMIMATCH_COMPAT_SRC"),
    reason="set SEMIMATCH_COMPAT_SRC to the src/ folder of another semimatch (e.g. main's)",
)
def test_a_run_of_another_version_resumes_exactly(tmp_path, reference_run):
    """A run that another semimatch (``SEMIMATCH_COMPAT_SRC``: its src/ folder) wrote, stopped
    after iteration 8, continued by this one: the same run as this one's uninterrupted run."""
    run = tmp_path / "other"
    env = {**os.environ, "PYTHONPATH": os.environ["SEMIMATCH_COMPAT_SRC"]}
    args = [*CLI, "--out", str(run), "--keep-checkpoints", "4"]
    subprocess.run(args, check=True, capture_output=True, timeout=300, env=env)
    for k in (12, 16):  # as if stopped after iteration 8
        (run / "checkpoints" / ckpt.checkpoint_name(k)).unlink()
    resume = [sys.executable, "-m", "semimatch", "train", "--resume", str(run)]
    subprocess.run(resume, check=True, capture_output=True, timeout=300)
    assert_same_run(reference_run, run)


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_exactly(tmp_path, reference_run):
    ref = reference_run
    run = tmp_path / "int"
    proc = subprocess.Popen(
        [*CLI, "--out", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the run finished before the signal arrived: nothing to test
        pytest.skip("training finished before SIGINT")
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT) after iteration" in err
    assert (out + err).count("resume with") == 1  # said once, on stderr
    end = read_jsonl(run / "metrics.jsonl")[-1]
    assert end["kind"] == "end" and end["status"] == "interrupted"
    # the checkpoint is taken where the run stopped, not at the last evaluation
    assert ckpt.load(ckpt.latest(run / "checkpoints"))["iteration"] == end["iteration"]
    subprocess.run(
        [sys.executable, "-m", "semimatch", "train", "--resume", str(run)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert_same_run(ref, run)


def test_a_saved_run_predicts_without_reloading_its_dataset(tmp_path):
    """dataset.json carries classes, size and normalisation: predicting from a run directory
    needs neither the images nor a dataset semimatch can load by name."""
    import numpy as np

    import semimatch
    from semimatch.config import ConfigError
    from semimatch.data import from_arrays

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    labels = np.where(np.arange(40) < 20, np.arange(40) % 2, -1)
    data = from_arrays(images, labels, class_names=("even", "odd"))
    fit(
        tiny(dataset="digits", num_labels=None, iterations=2, eval_every=2),
        out=tmp_path / "r",
        data=data,
    )
    saved = json.loads((tmp_path / "r" / "dataset.json").read_text())
    assert saved["class_names"] == ["even", "odd"] and saved["spec"]["image_size"] == [8, 8]
    rows = semimatch.predict(tmp_path / "r", images[:3])
    assert [r["class"] in ("even", "odd") for r in rows] == [True] * 3
    # config.json records the data that trained, not the config's default "digits": evaluating
    # the reloaded run asks for the test images instead of scoring it on digits.
    assert json.loads((tmp_path / "r" / "config.json").read_text())["dataset"] == "arrays"
    run = semimatch.load_run(tmp_path / "r")
    with pytest.raises(ValueError, match=r"or pass it: run.evaluate\(source\)"):
        run.evaluate()
    with pytest.raises(ValueError, match="20 of the 40 images to evaluate have no label"):
        run.evaluate(data.train)
    assert run.evaluate(from_arrays(images[:20], labels[:20]).train)["n"] == 20
    with pytest.raises(ValueError, match="images are 16x16 with 1 channel.*takes 8x8 with 1"):
        run.predict(np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ConfigError, match="data_root tell semimatch how to load a dataset"):
        fit(tiny(num_labels=None, iterations=1, data_root="/x"), out=tmp_path / "s", data=data)


def test_eval_says_which_model_answered(tmp_path):
    run = fit(tiny(iterations=2, eval_every=2, ema_decay=0.0), out=tmp_path)
    assert run.evaluate()["model"] == "raw"  # no EMA: "ema" cannot be what answered
    assert fit(tiny(iterations=2, eval_every=2)).evaluate()["model"] == "ema"


def test_compile_with_the_two_pass_forward_is_refused_with_the_fix(tmp_path):
    from semimatch.config import ConfigError

    with pytest.raises(ConfigError, match="--forward-mode joint"):
        fit(tiny(compile=True, forward_mode="two-pass"), out=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    # Supervised and Pseudo-Label never split off a weak no-grad half: nothing to refuse.
    from semimatch.data import load_dataset
    from semimatch.runs.resolve import resolve

    CPU = torch.device("cpu")
    for algorithm in ("supervised", "pseudolabel"):
        two_pass = tiny(algorithm=algorithm, compile=True, forward_mode="two-pass")
        cfg = resolve(two_pass, load_dataset("digits"), CPU)
        assert cfg.compile and cfg.forward_mode == "two-pass"
    # The default (joint) forward compiles.
    assert resolve(tiny(compile=True), load_dataset("digits"), CPU).forward_mode == "joint"


def test_fit_leaves_the_callers_random_streams_threads_and_modes_alone():
    """fit seeds and configures the process for itself, then puts everything back."""
    import numpy as np

    def draws() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    threads = torch.get_num_threads()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = draws()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    fit(tiny(iterations=2, threads=1, deterministic=True))
    assert draws() == expected
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()


def _digits_with_folds():
    import dataclasses

    from semimatch.data import load_dataset

    data = load_dataset("digits")
    return dataclasses.replace(data, labeled_folds=(np.arange(0, 40), np.arange(100, 130)))


def test_a_predefined_fold_is_the_labeled_set(tmp_path):
    run = fit(tiny(num_labels=None, fold=1, iterations=2), data=_digits_with_folds(), out=tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["kind"] == "fold" and split["labeled"] == list(range(100, 130))
    assert split["unlabeled"] == list(range(1437))  # every training image (digits: 1437)
    assert run.summary["num_labels"] == 30  # what trained, though cfg.num_labels is None


@pytest.mark.parametrize(
    "options, match",
    [
        ({"lt_gamma": 10.0}, "num_labels=20 and lt_gamma=10.0 each choose the labeled images"),
        ({"num_labels": 20, "fold": 0}, "fold: predefined fold); --num-labels none clears a"),
        ({"lt_n1": 10}, "lt_n1 shape the long-tailed split and apply only with lt_gamma"),
        ({"num_labels": None, "lt_reverse": True}, "lt_reverse shape"),
        ({"num_labels": None, "split_seed": 4}, "the given labels involve no draw"),
        ({"num_labels": None, "fold": 0}, "'digits' has no predefined folds; use num_labels"),
        ({"dataset": "stl10", "num_labels": None, "fold": 0}, "fold_indices.txt is missing"),
        ({"num_labels": None, "fold": 2}, "fold must be in 0..1; got 2"),
    ],
)
def test_split_options_that_would_do_nothing_are_refused(tmp_path, options, match):
    from semimatch.config import ConfigError

    data = _digits_with_folds() if options.get("fold") == 2 else None
    if options.get("dataset") == "stl10":
        import dataclasses

        from semimatch.data import load_dataset

        digits = load_dataset("digits")  # named stl10, without a fold file
        data = dataclasses.replace(digits, info=dataclasses.replace(digits.info, name="stl10"))
    with pytest.raises(ConfigError, match=re.escape(match)):
        fit(tiny(iterations=1, **options), data=data, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_exclude_labeled_applies_to_the_given_labels_too(tmp_path):
    from semimatch.data import from_arrays

    rng = np.random.default_rng(0)
    y = np.full(40, -1)
    y[:10] = np.arange(10) % 2
    data = from_arrays(rng.integers(0, 256, (40, 8, 8, 1), dtype=np.uint8), y)
    fit(tiny(num_labels=None, exclude_labeled=True, iterations=1), data=data, out=tmp_path)
    split = json.loads((tmp_path / "split.json").read_text())
    assert split["unlabeled"] == list(range(10, 40))  # was silently all 40 before


def test_a_bad_config_never_costs_the_run_overwrite_would_replace(tmp_path):
    fit(tiny(iterations=2, eval_every=2), out=tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for bad in ({"backbone": "wrn28_2"}, {"num_labels": 5000}, {"weight_decay": -1.0}):
        with pytest.raises((ValueError, RuntimeError)):
            fit(tiny(iterations=2, **bad), out=tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "options, match",
    [
        ({"clip_grad_norm": -1.0}, "clip_grad_norm must be > 0"),
        ({"warmup_iterations": -5}, "warmup_iterations must be >= 0"),
        ({"keep_checkpoints": 0}, "keep_checkpoints must be >= 1"),
        ({"threads": -1}, "threads must be >= 1"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"sgd_momentum": 1.0}, "sgd_momentum must be in [0, 1)"),
        ({"sgd_momentum": 0.0}, "with --sgd-momentum 0 pass --no-nesterov"),
        ({"ema_decay": 1.5}, "ema_decay must be in [0, 1)"),
        ({"bn_momentum": 0.0}, "bn_momentum must be in (0, 1]"),
        ({"augment_device": "gpu"}, "augment_device='gpu' is not a device"),
        ({"augment_device": "cpu", "augment": "pil"}, "drop --augment-device"),
        ({"augment_device": "cuda"}, "on a cpu run; use cpu or the training device"),
        ({"algorithm": "supervised", "exclude_labeled": True}, "which supervised never uses"),
    ],
)
def test_numbers_torch_would_misuse_are_refused_up_front(tmp_path, options, match):
    from semimatch.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(match)):
        fit(tiny(iterations=1, **options), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_sgd_without_momentum_when_asked_plainly():
    run = fit(tiny(iterations=1, sgd_momentum=0.0, nesterov=False))
    assert run.summary["status"] == "finished"


def test_a_run_without_a_directory_keeps_its_metrics_in_memory(tmp_path):
    on_disk = fit(tiny(iterations=2, eval_every=2, log_every=1), out=tmp_path)
    in_memory = fit(tiny(iterations=2, eval_every=2, log_every=1))
    assert [r["kind"] for r in in_memory.metrics] == ["train", "train", "eval", "end"]
    assert stable(in_memory.metrics) == stable(on_disk.metrics)


def test_a_prediction_does_not_depend_on_the_rows_that_share_its_batch():
    """Fixed-size inference: every forward has eval_batch_size rows (the last chunk padded).

    CPU kernels choose blocking and reduction order by shape, so without this a row's
    probabilities changed in the last bits with the call's size on an Intel Xeon (1.3e-7).
    Bitwise equality here holds on any one machine; the shapes the model sees are the promise.
    """
    run = fit(tiny(iterations=2, eval_every=2, eval_batch_size=16, backbone="mlp"))
    images = run.data.test.images[:40]
    shapes: list[int] = []
    hook = run.ema_model.register_forward_hook(lambda m, a, o: shapes.append(a[0].shape[0]))
    full = run.predict_proba(images)
    assert set(shapes) == {16} and len(shapes) == 3  # 40 rows: 16 + 16 + 8 padded to 16
    hook.remove()
    for i in (0, 17, 39):
        assert np.array_equal(run.predict_proba(images[i : i + 1]), full[i : i + 1])
    assert np.array_equal(run.predict_proba(images[5:30]), full[5:30])
    assert np.allclose(full.sum(axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Resuming: runtime options, extending the budget, old run folders
# ----------------------------------------------------------------------------------------------
def test_extending_a_finished_run_continues_its_schedule_and_a_second_resume_is_exact(
    tmp_path, monkeypatch, capsys
):
    cfg = tiny(algorithm="softmatch", iterations=4, eval_every=2, log_every=2, deterministic=True)
    ref, run = tmp_path / "ref", tmp_path / "run"
    for out in (ref, run):
        fit(cfg, out=out)
    before = json.loads((ref / "config.json").read_text())
    capsys.readouterr()
    fit({"iterations": 8}, out=ref, resume=True)  # what `--resume REF --iterations 8` passes
    err = capsys.readouterr().err
    lr = [0.03 * math.cos(7 * math.pi * 4 / (16 * k)) for k in (4, 8)]  # cos(7 pi k / 16K)
    assert f"resuming from iteration 4 of 8 ({ref})\n" in err
    assert (
        "extended from 4 to 8 iterations at iteration 4: the learning rate follows the "
        f"schedule planned for 8 from here ({lr[0]:.6g} -> {lr[1]:.6g}), as do the ramp-ups "
        "set as a share of the budget (--unsup-warmup, --in-warmup); the values derived "
        "from the budget keep those in config.json (bn_momentum, ema_decay, stat_momentum)"
    ) in err
    records = read_jsonl(ref / "metrics.jsonl")
    extended = [r for r in records if r["kind"] == "extended"]
    assert len(extended) == 1 and extended[0]["iteration"] == 4
    assert extended[0]["lr_before"] == pytest.approx(lr[0])
    assert extended[0]["lr_after"] == pytest.approx(lr[1])
    train6 = next(r for r in records if r["kind"] == "train" and r["iteration"] == 6)
    assert train6["lr"] == pytest.approx(0.03 * math.cos(7 * math.pi * 6 / (16 * 8)))
    after = json.loads((ref / "config.json").read_text())
    assert after["auto"].pop("iterations") == "extended from 4 to 8 iterations at iteration 4"
    assert after == {**before, "iterations": 8}  # every derived value kept
    summary = json.loads((ref / "summary.json").read_text())
    assert summary["iterations"] == summary["iterations_done"] == 8
    # The same extension, stopped before its end (its last checkpoint fails), then resumed
    # without --iterations: config.json holds the new budget, and the result is bit-exact.
    _fail_checkpoint_at(monkeypatch, 8, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ckpt.CheckpointError):
        fit({"iterations": 8}, out=run, resume=True)
    assert not (run / "summary.json").exists()  # no longer a finished run
    monkeypatch.undo()
    fit(None, out=run, resume=True)
    assert_same_run(ref, run, iterations=8)


def test_resume_takes_threads_and_says_where_it_continues(tmp_path, capsys):
    from semimatch.cli import main

    run = tmp_path / "run"
    args = [*CLI[3:], "--iterations", "4", "--eval-every", "2", "--keep-checkpoints", "2"]
    assert main([*args, "--out", str(run)]) == 0
    (run / "checkpoints" / "ckpt-0000004.pt").unlink()  # as if killed after iteration 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--threads", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"resuming from iteration 2 of 4 ({run})\n")
    assert main(["train", "--resume", str(run), "--threads", "1"]) == 0  # finished: says so
    assert "has finished its 4 iterations: nothing to train (to extend it: `semimatch train " in (
        capsys.readouterr().err
    )
    assert main(["train", "--resume", str(run), "--seed", "4", "--threads", "1"]) == 2
    assert "drop --seed: they change what it computes" in capsys.readouterr().err


def test_a_run_folder_of_earlier_versions_loads_and_resumes(tmp_path):
    """Before best.pt became a link it was a copy, and config.json had no best_model_only."""
    from semimatch.runs.run import load_run

    run = tmp_path / "run"
    fit(tiny(iterations=4, eval_every=2), out=run)
    best = run / "checkpoints" / "best.pt"
    data = best.read_bytes()
    best.unlink()
    best.write_bytes(data)  # a file of its own
    saved = json.loads((run / "config.json").read_text())
    del saved["best_model_only"]
    (run / "config.json").write_text(json.dumps({**saved, "keep_checkpoints": 2}))
    assert load_run(run).predict(np.zeros((2, 8, 8), np.uint8)).shape == (2,)
    fit({"iterations": 8}, out=run, resume=True)
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.pt", "ckpt-0000006.pt", "ckpt-0000008.pt"]  # its own keep 2
    assert load_run(run).predict(np.zeros((2, 8, 8), np.uint8)).shape == (2,)
