"""The command line: train / eval / predict / presets / datasets and its error messages."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import semimatch
from semimatch.api import predict
from semimatch.cli import main
from semimatch.presets import PRESETS
from semimatch.training.metrics import read_jsonl

TRAIN = [
    "train",
    "--dataset",
    "digits",
    "--algorithm",
    "fixmatch",
    "--num-labels",
    "20",
    "--iterations",
    "6",
    "--eval-every",
    "3",
    "--log-every",
    "3",
    "--batch-size",
    "8",
    "--uratio",
    "2",
    "--seed",
    "1",
    "--precision",
    "fp32",
    "--no-tensorboard",
]


def cli_env() -> dict[str, str]:
    """The environment for a ``python -m semimatch`` subprocess: this tree's code first (an
    installed copy elsewhere would otherwise answer)."""
    paths = [str(Path(semimatch.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def test_train_writes_the_run_directory(trained, capsys):
    assert (trained / "metrics.jsonl").exists() and (trained / "summary.json").exists()
    records = read_jsonl(trained / "metrics.jsonl")
    assert [r["iteration"] for r in records if r["kind"] == "eval"] == [3, 6]
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["algorithm"] == "fixmatch" and cfg["num_labels"] == 20 and cfg["tau"] is None


def test_eval_prints_the_test_accuracy(trained, capsys):
    assert main(["eval", str(trained), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((trained / "summary.json").read_text())
    assert result["n"] == 360
    # The default is the last checkpoint (no validation set: best.pt was chosen on the test set).
    assert result["error"] == pytest.approx(summary["final_error"], abs=1e-9)
    assert result["selected_on"] == "last" and result["checkpoint"].endswith("ckpt-0000006.pt")
    assert main(["eval", str(trained), "--json", "--checkpoint", "best"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["error"] == pytest.approx(summary["best_error"], abs=1e-9)
    assert result["selected_on"] == "test"
    assert main(["eval", str(trained), "--model", "raw", "--checkpoint", "last"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_eval_scores_a_labeled_folder(tmp_path, capsys):
    """--test-dir gives what the run's own test set gives for the same images, and a folder
    with some of the classes is labeled by class name, not by its own folder order."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 6)):
        for name, level in (("cat", 90), ("dog", 160), ("eel", 120)):
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 60, (6, 10, 3)), 0, 255).astype(np.uint8)
                (tmp_path / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    for i in range(6):
        (tmp_path / "dogs" / "dog").mkdir(parents=True, exist_ok=True)
        (tmp_path / "dogs" / "dog" / f"{i}.png").write_bytes(
            (tmp_path / "test" / "dog" / f"{i}.png").read_bytes()
        )
    run = tmp_path / "run"
    train = ["train", "--dataset", "imagefolder", "--data-root", str(tmp_path / "train")]
    train += ["--test-dir", str(tmp_path / "test"), "--image-size", "8", "--num-labels", "6"]
    train += ["--iterations", "4", "--eval-every", "4", "--batch-size", "4", "--uratio", "1"]
    assert main([*train, "--out", str(run), "--tensorboard", "false"]) == 0
    capsys.readouterr()

    def scores(*extra: str) -> dict:
        assert main(["eval", str(run), "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    own = scores()
    assert scores("--test-dir", str(tmp_path / "test")) == own
    dogs = scores("--test-dir", str(tmp_path / "dogs"))
    assert dogs["n"] == 6 and dogs["top1"] == pytest.approx(own["per_class_acc"][1])
    assert main(["eval", str(run), "--test-dir", str(tmp_path / "train" / "cat")]) == 2
    assert "/cat/<class>/<image>" in capsys.readouterr().err  # a class folder, not a root


def test_predict_writes_a_csv(trained, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i in range(3):
        img = (digits.images[i] * (255 / 16)).astype(np.uint8)
        p = tmp_path / f"d{i}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(trained), *paths, "--output", str(out)]) == 0
    # which checkpoint answered, as eval says it
    assert (
        capsys.readouterr().err == f"{trained}: ema model, ckpt-0000006.pt, the last checkpoint\n"
    )
    for flags in (["--header"], ["--no-header"], ["--text-column", "x"]):  # text runs only
        assert main(["predict", str(trained), *paths, *flags]) == 2
        assert f"{flags[0]}: {trained} classifies images, not texts" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == paths
    for r in rows:
        assert r["class"] in [str(c) for c in range(10)]
        assert 0.0 < float(r["confidence"]) <= 1.0


def test_predict_takes_folders(trained, tmp_path, capsys):
    for rel in ("imgs/b.png", "imgs/sub/a.png", "imgs/.hidden/c.png", "one.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 128, np.uint8)).save(tmp_path / rel)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    (tmp_path / "imgs" / "notes.pdf").write_bytes(b"%PDF-1.4")  # Pillow writes, cannot read
    out = tmp_path / "pred.csv"
    args = ["predict", str(trained), str(tmp_path / "imgs"), str(tmp_path / "one.png")]
    assert main([*args, "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    paths = [str(tmp_path / p) for p in ("imgs/b.png", "imgs/sub/a.png", "one.png")]
    assert [r["path"] for r in rows] == paths
    api_rows = predict(trained, [tmp_path / "imgs", str(tmp_path / "one.png")])  # same in Python
    assert [(r["path"], r["class"]) for r in api_rows] == [(r["path"], r["class"]) for r in rows]
    assert [r["path"] for r in predict(trained, tmp_path / "imgs")] == paths[:2]
    (tmp_path / "empty").mkdir()
    assert main(["predict", str(trained), str(tmp_path / "empty")]) == 2
    assert "no image files under" in capsys.readouterr().err


def test_predict_reports_an_unreadable_image(trained, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(trained), str(bad)]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_predict_from_standard_input_needs_a_text_run(trained, capsys):
    assert main(["predict", str(trained), "-"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"semimatch predict: error: - (standard input) is for text runs; {trained} classifies "
        "images: pass image files or folders"
    ]


def test_presets_lists_every_preset(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in (
        "cifar10-40-fixmatch",
        "cifar10-40-softmatch",
        "cifar100-400-softmatch",
        "svhn-40-fixmatch",
        "stl10-40-softmatch",
        "cifar10lt-100-softmatch",
    ):
        assert name in out and name in PRESETS
    assert "WRN-28-8" in out


def test_datasets_lists_names(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out.split()
    assert {"cifar10", "digits", "imagefolder", "fashion_mnist"} <= set(out)


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["train", "--num-label", "20"], "did you mean --num-labels"),
        (["train", "--algorithm", "defixmatch", "--out", "x"], "--algorithm 'defixmatch'"),
        (["train", "--preset", "cifar10-40-softmach"], "did you mean 'cifar10-40-softmatch'"),
        (["train", "--dataset", "cifar11", "--out", "x"], "cifar10"),
    ],
)
def test_bad_input_gets_a_clear_message(argv, expected, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors exit with 2
        code = e.code
    assert code == 2
    assert expected in capsys.readouterr().err


def test_errors_suggest_the_flag_not_the_python_keyword(tmp_path, capsys, monkeypatch):
    """The library says "pass skip_corrupt=True"; the command line says the flag to type."""
    monkeypatch.chdir(tmp_path)  # the runs without --out reserve a folder under ./runs
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name in ("a", "b"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / name / f"{i}.png")
    (data / "a" / "broken.png").write_bytes(b"not an image")
    Image.fromarray(np.zeros((6, 10, 3), np.uint8)).save(data / "b" / "wide.png")
    folder = ["train", "--dataset", "imagefolder", "--data-root", str(data)]
    run = [*folder, "--num-labels", "4", "--iterations", "1", "--batch-size", "2"]
    assert main(run) == 2
    assert "or pass --skip-corrupt to skip unreadable images" in capsys.readouterr().err
    assert main([*run, "--skip-corrupt"]) == 2
    err = capsys.readouterr().err
    assert "pass --image-size (e.g. --image-size 32) to resize them" in err
    out = ["--out", str(tmp_path / "run"), "--tensorboard", "false"]
    run += ["--skip-corrupt", "--image-size", "8", "--uratio", "1", *out]
    assert main(run) == 0
    err = capsys.readouterr().err
    assert "warning: skipped 1 unreadable image file(s)" in err  # a line, not a UserWarning
    assert "UserWarning" not in err
    assert "warning: no test set (set test_dir; --test-dir on the command line)" in err
    assert main(["eval", str(tmp_path / "run")]) == 2
    assert (
        "no test set; score labeled images DIR/<class>/<image> with `semimatch eval RUN "
        "--test-dir DIR`" in capsys.readouterr().err
    )


def test_resume_refuses_overrides(trained, capsys):
    assert main(["train", "--resume", str(trained), "--lr", "0.1"]) == 2
    assert "--lr" in capsys.readouterr().err
    for extra in (["--out", str(trained) + "-copy"], ["--overwrite"]):
        assert main(["train", "--resume", str(trained), *extra]) == 2
        assert f"continues that run in place; drop {extra[0]}" in capsys.readouterr().err


def test_a_run_stopped_before_its_first_checkpoint_starts_again_as_its_refusal_says(
    tmp_path, capsys, monkeypatch
):
    from semimatch.runs.checkpoint import CheckpointError
    from semimatch.runs.state import TrainState

    def disk_full(*args, **kwargs):
        raise CheckpointError("disk full")

    monkeypatch.setattr(TrainState, "save", disk_full)
    out = tmp_path / "early run"  # a space: the command quotes it
    assert main([*TRAIN, "--out", str(out)]) == 2
    failed = capsys.readouterr().err
    started = json.loads((out / "config.json").read_text())  # derived (auto) values included
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint yet" in err and "--eval-every" in err
    command = re.search(r"`(semimatch train [^`]*)`", err)[1]
    assert f"no checkpoint was saved yet: fix the cause, then `{command}`" in failed
    assert main(shlex.split(command)[1:]) == 0  # the same run, from its first iteration
    assert json.loads((out / "config.json").read_text()) == started
    assert (out / "summary.json").exists()


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a semimatch run directory" in capsys.readouterr().err


def test_help_states_the_algorithms_real_defaults(capsys):
    """`--tau` etc. default to None ("the algorithm's default"); the help names each algorithm's
    value, and it must be the one its builder actually uses (stat_momentum: the budget's)."""
    import inspect
    import re
    from dataclasses import fields

    from semimatch.config import Config
    from semimatch.methods.registry import DATA_INPUTS, methods

    labels = {f.name: f.metadata.get("none") for f in fields(Config)}
    checked = 0
    for algo, spec in methods().items():
        for name, param in list(inspect.signature(spec.build).parameters.items())[1:]:
            if name in DATA_INPUTS:  # the data's (FlexMatch's pool size): no field, no flag
                assert name not in labels
                continue
            if name in ("stat_momentum", "dash_warmup", "rho_period"):  # derived from the budget
                assert "iteration budget" in labels[name]
                continue
            shown = re.search(rf"(?:^|[/ ]){algo}(?:/\w+)*: ([^;]+)", labels[name])[1]
            if isinstance(param.default, bool) or param.default is None:
                assert shown == str(param.default).lower(), name
            elif isinstance(param.default, float):
                assert float(shown) == param.default, name
            elif isinstance(param.default, int):
                assert int(shown) == param.default, name
            else:
                assert shown == param.default, name
            checked += 1
    # tau x5, lambda_u x8, threshold_warmup, n_sigma, per_class, UA, ua_momentum/init,
    # stats_on, shape, lambda_e, use_quantile, clip_thresh, temperature x2, dash_gamma,
    # dash_c, rho_min, dash_warmup_extra, tsa_schedule, tsa_mask; lambda_u, unsup_warmup and
    # rampup_shape x3 (pimodel, meanteacher, vat), vat_eps, vat_xi, entropy_weight; mixmatch's
    # lambda_u, temperature, mixup_alpha, unsup_warmup, rampup_shape; softmatch's unsup_warmup
    # and rampup_shape, second_view x2 (pimodel, meanteacher); comatch's 12 options;
    # remixmatch's lambda_u, lambda_u1, lambda_rot, temperature, mixup_alpha, strong_views,
    # da_estimate, da_window, unsup_warmup, rampup_shape; simmatch's 12 (tau, lambda_u,
    # lambda_in, sim_temperature, proj_size, proj_heads, da_len, propagation, smoothing_alpha,
    # bank_teacher, bank_momentum, in_warmup)
    assert checked == 93
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    # The algorithms' list is one token longer than a help line: argparse breaks it anywhere.
    tau_default = (
        "(default:pseudolabel/fixmatch/flexmatch/adamatch/comatch/crmatch/simmatch:0.95;uda:0.8)"
    )
    assert tau_default in out.replace(" ", "")
    assert "(default: off)" in out and "clip the gradient norm to this value (default: off)" in out


def _parse_error(argv: list[str], capsys) -> str:
    """argparse's message for ``argv`` (it exits with 2)."""
    from semimatch.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_switches_take_no_prefix_and_old_values(capsys):
    """--x / --no-x, and --x true|false for commands written before the switches."""
    from semimatch.cli import build_config, build_parser

    def config(*argv: str):
        return build_config(build_parser().parse_args(["train", *argv]))

    assert config("--deterministic").deterministic is True
    assert config("--deterministic", "false").deterministic is False
    assert config("--deterministic=True").deterministic is True  # str(True) in old scripts
    assert config("--no-tensorboard").tensorboard is False
    assert config("--no-nesterov", "--download").download is True
    assert config("--no-nesterov").nesterov is False
    # bool | None: auto (None) is the default, decided when the run starts
    assert config("--progress").progress is True
    assert config("--no-progress").progress is False
    assert config("--preset", "cifar10-40-softmatch", "--ema-warmup", "auto").ema_warmup is None
    assert config("--per-class", "none").per_class is None
    assert "--no-deterministic takes no value" in _parse_error(
        ["train", "--no-deterministic", "true"], capsys
    )
    err = _parse_error(["train", "--deterministic", "auto"], capsys)
    assert "argument --deterministic: expected true or false" in err and "'auto'" in err
    err = _parse_error(["train", "--progress", "maybe"], capsys)
    assert "expected true, false or auto" in err


def test_help_shows_what_each_option_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for shown in (
        "--deterministic [BOOL], --no-deterministic",
        "--download [BOOL], --no-download",
        "--progress [BOOL|auto], --no-progress",
        "--data-root PATH",
        "--test-dir PATH",
        "--iterations INT",
        "--lr FLOAT",
        "--device DEVICE",
        "--augment-device DEVICE",
        "--backbone STR",
        "--algorithm {supervised,pseudolabel,fixmatch,flexmatch,softmatch,freematch,adamatch,"
        "dash,uda,",  # then the other methods of the package, by name
        "--shape {gaussian,linear,quadratic,auto}",
        "--dash-warmup INT",
        "--stats-on {aligned,raw,auto}",
        "--out PATH",
    ):
        assert shown in out, shown
    assert not re.search(r"--[\w-]+ V\b", out)  # the old catch-all metavar
    assert "(default: false)" in out and "(default: False)" not in out


def test_version(capsys):
    import semimatch

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"semimatch {semimatch.__version__}\n"
    # the package metadata (pyproject.toml) states the same version
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'\nversion = "{semimatch.__version__}"\n' in pyproject


def test_a_closed_pipe_ends_quietly(close_stdout):
    """`semimatch presets | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    close_stdout()
    assert main(["presets"]) == 141


def test_a_closed_pipe_ends_quietly_in_a_real_process():
    """The same through a real pipe whose reader closed before the first line was written
    (python needs seconds to import torch, so the pipe is closed long before)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "semimatch", "presets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""  # no traceback, no "Exception ignored"


def test_sigterm_stops_training_with_143_and_one_resume_hint(tmp_path):
    """A scheduler's SIGTERM: the run checkpoints, says once (stdout and stderr together) how
    to resume, and exits 128 + 15 like any well-behaved tool."""
    run = tmp_path / "run"
    argv = [*TRAIN, "--iterations", "100000", "--eval-every", "2", "--log-every", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "semimatch", *argv, "--threads", "1", "--out", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream: a message printed twice would show here
        text=True,
        env=cli_env(),
    )
    first = proc.stdout.readline()  # the first evaluation line: training is under way
    assert first.startswith("[     2/100000]"), first
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, rest
    assert rest.count("interrupted") == 1, rest
    assert "interrupted (SIGTERM) after iteration" in rest
    assert f"resume with `semimatch train --resume {run}`" in rest
    assert read_jsonl(run / "metrics.jsonl")[-1]["status"] == "interrupted"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--threads", "0"], "--threads must be >= 1"),
        (["--num-labels", "7"], "--num-labels 7 cannot be split evenly over the 10 classes"),
        (["--forward-mode", "x"], "--forward-mode 'x' in command line is not valid"),
        (["--n-sigma", "1"], "option(s) --n-sigma have no effect with algorithm 'fixmatch'"),
        (["--sgd-momentum", "0"], "with --sgd-momentum 0 pass --no-nesterov"),
        (["--lt-n1", "5"], "apply only with --lt-gamma"),
    ],
)
def test_train_errors_name_the_flags(options, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--iterations", "1", *options]) == 2
    err = capsys.readouterr().err
    assert "semimatch train: error: " in err and message in err
    assert not list(tmp_path.iterdir())  # the reserved run folder is gone again


QUICK = ["--iterations", "2", "--eval-every", "2", "--batch-size", "8", "--uratio", "1"]
QUICK += ["--no-tensorboard", "--threads", "1", "--precision", "fp32"]


def test_train_without_out_writes_a_new_run_folder(tmp_path, monkeypatch, capsys):
    """No silent loss: without --out the run goes to runs/<dataset>-<algorithm>-N, announced
    before training, a new N each time."""
    monkeypatch.chdir(tmp_path)
    for n in (1, 2):
        assert main(["train", "--dataset", "digits", *QUICK]) == 0
        run = Path("runs") / f"digits-fixmatch-{n}"
        assert json.loads((run / "config.json").read_text())["iterations"] == 2
        assert (run / "summary.json").exists()
        err = capsys.readouterr().err
        assert err.startswith(f"semimatch train: writing the run to {run} (pass --out to choose)")
    assert main(["train", "--algorithm", "supervised", *QUICK]) == 0
    assert (tmp_path / "runs" / "digits-supervised-1" / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "digits-fixmatch-1",
        "digits-fixmatch-2",
        "digits-supervised-1",
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--resume", "auto"], "--resume auto needs --out RUN_DIR"),
        (["--overwrite"], "--overwrite replaces the run in --out; pass --out"),
    ],
)
def test_options_that_need_out_say_so(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_torchrun_needs_out(tmp_path, monkeypatch, capsys):
    """Each process would reserve a folder of its own: one run needs one --out."""
    monkeypatch.chdir(tmp_path)
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)
    assert main(["train", *QUICK]) == 2
    assert "under torchrun all processes must write one run: pass --out" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_demo_writes_a_new_folder_and_keeps_an_existing_demo(tmp_path, monkeypatch, capsys):
    """demo: runs/demo-N by default, --threads reaches every run, an --out holding a demo is
    refused unless --overwrite."""
    from semimatch.demo import DEFAULT_METHODS, run_demo
    from semimatch.errors import TrainingError

    monkeypatch.chdir(tmp_path)
    demo = ["demo", "--iterations", "1", "--threads", "1", "--no-report"]  # report: test_demo
    assert main(demo) == 0
    out = Path("runs") / "demo-1"
    assert capsys.readouterr().err.startswith(f"semimatch demo: writing the run to {out}")
    for algo in DEFAULT_METHODS:
        cfg = json.loads((out / algo / "config.json").read_text())
        assert cfg["algorithm"] == algo and cfg["threads"] == 1 and cfg["iterations"] == 1
    stamp = (out / "fixmatch" / "metrics.jsonl").stat().st_mtime_ns
    assert main([*demo, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a demo (supervised, fixmatch, softmatch); pass --overwrite" in err
    with pytest.raises(TrainingError, match="already holds a demo"):
        run_demo(out, iterations=1, overwrite=False)  # the Python API's opt-in refusal
    assert (out / "fixmatch" / "metrics.jsonl").stat().st_mtime_ns == stamp  # untouched
    assert main([*demo, "--out", str(out), "--overwrite", "--seed", "1"]) == 0
    assert json.loads((out / "fixmatch" / "config.json").read_text())["seed"] == 1
    assert sorted(p.name for p in Path("runs").iterdir()) == ["demo-1"]
    assert "expected an integer >= 1, got 0" in _parse_error(["demo", "--threads", "0"], capsys)


def test_sigterm_before_the_training_loop_exits_143_and_cleans_up(tmp_path, monkeypatch):
    """SIGTERM while the run is still starting (e.g. loading data) is no silent kill: the
    command stops with 143, the still empty run folder it reserved is removed, and the
    caller's SIGTERM handler is back afterwards."""

    def starting(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("semimatch.runs.engine.fit", starting)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", *QUICK]) == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert not list(tmp_path.iterdir())


def _text_file(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def test_text_errors_name_flags_not_python_keywords(trained, tmp_path, monkeypatch, capsys):
    """The library's "pass skip_bad=True", "resume=True continues ..." and "(or pass
    class_names=)" are Python; the command line names its flags (or nothing it lacks)."""
    monkeypatch.chdir(tmp_path)
    rows = [(f"text {i}", "sport" if i % 2 else "world") for i in range(12)]
    train = ["train", "--dataset", "text", "--data-root", str(tmp_path / "news.csv")]
    _text_file(tmp_path / "news.csv", [*rows, ("", "world")])  # an empty text
    assert main(train) == 2
    err = capsys.readouterr().err
    assert "pass --skip-corrupt" in err and "skip_bad" not in err, err
    _text_file(tmp_path / "news.csv", [*rows, ("text x", "3")])  # a number among names
    assert main(train) == 2
    err = capsys.readouterr().err
    assert "semimatch train: error: " in err and "class_names" not in err, err
    assert main(["train", "--resume", str(trained), "--lr", "0.1"]) == 2
    err = capsys.readouterr().err
    assert f"--resume {trained} continues that run with its saved config; drop --lr" in err
    assert "resume=" not in err, err


def test_an_unreachable_hub_model_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A Hub name that is not a local folder, offline: one line naming --backbone and the fix,
    exit 2, and no run folder (with or without --out)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = _text_file(tmp_path / "news.csv", [(f"text {i}", str(i % 2)) for i in range(12)])
    args = ["train", "--dataset", "text", "--data-root", str(data), "--iterations", "1"]
    for out in ([], ["--out", "run"]):
        code = main([*args, "--backbone", "hf:semimatch-test/no-such-model", *out])
        assert code == 2
        errors = [ln for ln in capsys.readouterr().err.splitlines() if "writing the run" not in ln]
        assert len(errors) == 1 and errors[0].startswith("semimatch train: error: --backbone ")
        assert "pass --backbone hf:<local folder>" in errors[0]
        assert "`hf download semimatch-test/no-such-model`" in errors[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["news.csv"]
