"""Every script in examples/ runs, at a tiny size (SEMIMATCH_EXAMPLE_SMALL=1), so none rots."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.text_fixtures import write_text_corpus, write_tiny_bert

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run examples/<name> in this process, as ``python examples/<name> ARGS`` would."""
    monkeypatch.setenv("SEMIMATCH_EXAMPLE_SMALL", "1")
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")


def test_every_example_is_tested() -> None:
    tested = {
        "images_from_folder.py",
        "texts_from_csv.py",
        "estimator_grid_search.py",
        "resume_after_interruption.py",
        "torchrun_launch.sh",
        "compare_methods_report.py",
    }
    assert {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")} == tested


def test_images_from_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    run_example("images_from_folder.py", "--out", str(tmp_path / "run"), monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "test: {'top1'" in out
    assert (tmp_path / "digits-as-png" / "train" / "0").is_dir()
    assert (tmp_path / "run" / "summary.json").exists()
    assert out.count(" -> ") == 3  # three predictions


def test_texts_from_csv(tmp_path: Path, monkeypatch, capsys) -> None:
    model = write_tiny_bert(tmp_path / "bert")
    csv = write_text_corpus(tmp_path / "corpus.csv", n=120)
    args = ["--csv", str(csv), "--model", str(model), "--out", str(tmp_path / "run")]
    run_example("texts_from_csv.py", *args, monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "test: {'top1'" in out
    assert "'the team won the game' -> " in out
    assert (tmp_path / "run" / "hf").is_dir()  # the tokenizer travels with the run


def test_estimator_grid_search(monkeypatch, capsys) -> None:
    run_example("estimator_grid_search.py", monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "{'clf__algorithm': 'fixmatch'} validation accuracy" in out
    assert "best: {'clf__algorithm':" in out


@pytest.mark.slow  # two child processes, each importing torch: ~10-20 s
def test_resume_after_interruption(tmp_path: Path, monkeypatch, capsys) -> None:
    run_example(
        "resume_after_interruption.py", "--out", str(tmp_path / "run"), monkeypatch=monkeypatch
    )
    out = capsys.readouterr().out
    assert "exited with status 130" in out  # the first checkpoint comes long before the end
    assert "done: 12 iterations" in out


def test_compare_methods_report(tmp_path: Path, monkeypatch, capsys) -> None:
    args = ["--methods", "fixmatch,softmatch", "--out", str(tmp_path)]
    run_example("compare_methods_report.py", *args, monkeypatch=monkeypatch)
    out = capsys.readouterr().out
    assert "fixmatch" in out and "softmatch" in out
    assert (tmp_path / "report" / "index.html").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_torchrun_launch(tmp_path: Path) -> None:
    env = dict(os.environ, SEMIMATCH_EXAMPLE_SMALL="1")
    env["TORCHRUN"] = f"{sys.executable} -m torch.distributed.run"
    subprocess.run(
        ["bash", str(EXAMPLES / "torchrun_launch.sh"), str(tmp_path / "run")],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (tmp_path / "run" / "summary.json").exists()
