"""``semimatch.report``: figures, HTML and comparison table on real and synthetic run directories.

A real 12-iteration SoftMatch run on digits (and a supervised one) come from the engine; the
crashed / running / no-eval / no-test-set cases are written to the metrics.jsonl schema
(``semimatch.training.metrics``) with ``JsonlWriter`` (``helpers.report_pages``).  Set
SEMIMATCH_REPORT_EXAMPLE=DIR to keep a copy of the real run's report (for screenshots).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest

from helpers.report_pages import (
    SOFTMATCH_FIGURES,
    assert_png,
    figures,
    parse,
    train_real_run,
    write_synthetic_run,
)
from semimatch.report import build_report, comparison_rows, format_row, read_run, run_status
from semimatch.training.metrics import JsonlWriter, read_jsonl


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_real_run(tmp_path_factory.mktemp("real") / "run", "softmatch")


@pytest.fixture(scope="module")
def real_report(real_run: Path) -> Path:
    """The report of the real run in its default folder, built once for the module."""
    return build_report([real_run])


@pytest.fixture(scope="module")
def supervised_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_real_run(tmp_path_factory.mktemp("sup") / "supervised", "supervised")


def tear_last_line(path: Path) -> None:
    """Append half a record, as a process killed in the middle of a write leaves it."""
    with open(path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"kind": "train", "iteration": 99, "time": 17')


def make_old(path: Path, seconds: float = 86400.0) -> None:
    metrics = path / "metrics.jsonl"
    t = metrics.stat().st_mtime - seconds
    os.utime(metrics, (t, t))


def pixels_near(rgb: np.ndarray, hex_color: str, tol: float = 40.0) -> int:
    target = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return int((np.linalg.norm(rgb - target, axis=2) < tol).sum())


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------
def test_real_run_report_has_every_figure(real_run: Path, real_report: Path) -> None:
    index = real_report
    assert index == real_run / "report" / "index.html"
    expected = SOFTMATCH_FIGURES
    assert figures(index.parent) == expected
    for name in expected:
        assert_png(index.parent / name)
    text, rows, refs = parse(index)
    assert refs == expected
    assert len(rows) == 1 and rows[0]["status"] == "finished"
    assert '<p class="note">' not in text  # nothing is missing in a finished SoftMatch run
    example = os.environ.get("SEMIMATCH_REPORT_EXAMPLE")
    if example:  # a copy for humans (the docs screenshot); off by default
        shutil.copytree(index.parent, example, dirs_exist_ok=True)


def test_comparison_table_equals_logged_metrics(real_run: Path, real_report: Path) -> None:
    records = read_jsonl(real_run / "metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    summary = json.loads((real_run / "summary.json").read_text())
    (row,) = comparison_rows([real_run])
    assert row["name"] == "run"
    assert (row["algorithm"], row["dataset"], row["labels"]) == ("softmatch", "digits", 20)
    assert (row["iterations_done"], row["iterations"], row["status"]) == (12, 12, "finished")
    assert row["best_error"] == evals[-1]["best_error"] == min(r["error"] for r in evals)
    assert row["best_error"] == summary["best_error"]
    assert row["median20_error"] == evals[-1]["median20_error"] == summary["median20_error"]
    assert row["final_error"] == evals[-1]["error"] == summary["final_error"]
    assert row["final_quantity"] == evals[-1]["window"]["quantity"] == summary["final_quantity"]
    assert row["final_quality"] == evals[-1]["window"]["quality"] == summary["final_quality"]
    assert row["sec_per_iter"] == statistics.median(r["sec_per_iter"] for r in train)

    _, (cells,), _ = parse(real_report)
    assert cells == format_row(row)
    assert cells["best error"] == f"{100 * evals[-1]['best_error']:.2f}%"
    assert cells["median-20 error"] == f"{100 * evals[-1]['median20_error']:.2f}%"
    assert cells["final quantity"] == f"{evals[-1]['window']['quantity']:.3f}"
    assert cells["final quality"] == f"{evals[-1]['window']['quality']:.3f}"
    assert cells["sec / iter"] == f"{row['sec_per_iter']:.4f}"
    assert cells["iterations"] == "12 / 12"


def test_several_runs_are_overlaid(
    real_run: Path, supervised_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synth = write_synthetic_run(tmp_path / "other" / "run", evals=6)
    monkeypatch.chdir(tmp_path)
    index = build_report([real_run, synth, supervised_run])
    assert index == tmp_path / "semimatch-report" / "index.html"
    _, rows, refs = parse(index)
    # Two folders called "run": told apart by their parent folder.
    assert [r["name"] for r in rows] == [f"{real_run.parent.name}/run", "other/run", "supervised"]
    assert [r["algorithm"] for r in rows] == ["softmatch", "softmatch", "supervised"]
    assert refs == figures(index.parent)
    for slug in (f"{real_run.parent.name}-run", "other-run"):
        for kind in ("lambda", "per-class", "confusion"):
            assert f"fig-{kind}-{slug}.png" in refs
    # supervised: test error and confusion, but no pseudo-label figures
    assert "fig-confusion-supervised.png" in refs and "fig-lambda-supervised.png" not in refs
    # One line per run in the overlaid figures, in the run's colour (tab10 order).
    err = assert_png(index.parent / "fig-error.png")
    for color in ("#1f77b4", "#ff7f0e", "#2ca02c"):
        assert pixels_near(err, color) > 100, color
    pl = assert_png(index.parent / "fig-pseudo-labels.png")
    for color in ("#1f77b4", "#ff7f0e"):
        assert pixels_near(pl, color) > 100, color


def test_crashed_real_run_with_torn_last_line(real_run: Path, tmp_path: Path) -> None:
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(real_run / "config.json", crashed)
    lines = (real_run / "metrics.jsonl").read_text().splitlines(keepends=True)
    second_eval = [i for i, ln in enumerate(lines) if '"kind": "eval"' in ln][1]
    (crashed / "metrics.jsonl").write_text("".join(lines[: second_eval + 2]))  # + 1 train
    tear_last_line(crashed)
    make_old(crashed)

    kept = read_jsonl(crashed / "metrics.jsonl")
    (row,) = comparison_rows([crashed])
    assert row["status"] == "crashed"
    assert row["iterations_done"] == kept[-1]["iteration"] == 10
    last_eval = [r for r in kept if r["kind"] == "eval"][-1]
    assert row["best_error"] == last_eval["best_error"]
    assert row["final_quantity"] == last_eval["window"]["quantity"]

    index = build_report([crashed])
    text, (cells,), refs = parse(index)
    assert cells["status"] == "crashed" and cells["iterations"] == "10 / 12"
    assert "presumed crashed" in text and "1 unreadable line(s)" in text
    assert refs == {
        "fig-error.png",
        "fig-pseudo-labels.png",
        "fig-lambda-overlay.png",
        "fig-lambda-crashed.png",
        "fig-per-class-crashed.png",
        "fig-confusion-crashed.png",
        "fig-diagnostics.png",
    }
    for ref in refs:
        assert_png(index.parent / ref)


def test_running_vs_crashed_status(tmp_path: Path) -> None:
    run = read_run(write_synthetic_run(tmp_path / "r", evals=3, finished=False))
    assert run.end is None and run.summary is None
    mtime = run.metrics_mtime
    assert run_status(run, now=mtime + 5) == "running"
    assert run_status(run, now=mtime + 86400) == "crashed"
    # An end record decides, whatever the age.
    JsonlWriter(tmp_path / "r" / "metrics.jsonl").write(
        {"kind": "end", "iteration": 30, "time": 0.0, "status": "interrupted", "message": "x"}
    )
    assert run_status(read_run(tmp_path / "r"), now=mtime + 86400) == "interrupted"


def test_run_without_eval_records(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "young", evals=1, finished=False)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:2]))  # two train records, no eval
    index = build_report([run])
    text, (cells,), refs = parse(index)
    assert refs == {"fig-pseudo-labels.png"}
    assert_png(index.parent / "fig-pseudo-labels.png")
    assert "No evaluation record yet (first one at iteration 10)" in text
    assert cells["status"] == "running" and cells["best error"] == "n/a"
    assert cells["final quantity"] == "0.650"  # last train window before the first eval

    # Only config.json: the run has just started.
    (run / "metrics.jsonl").unlink()
    text, (cells,), refs = parse(build_report([run]))
    assert refs == set() and figures(index.parent) == set()  # old figures removed
    assert "No metrics logged yet" in text and cells["iterations"] == "0 / 100"


def test_no_test_set_and_no_quality(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "blind", test_set=False, quality=False)
    index = build_report([run])
    text, (cells,), refs = parse(index)
    assert refs == {
        "fig-pseudo-labels.png",
        "fig-lambda-overlay.png",
        "fig-lambda-blind.png",
        "fig-per-class-blind.png",
    }
    for ref in refs:
        assert_png(index.parent / ref)
    assert "No test set" in text and "quality is not available" in text
    assert cells["best error"] == cells["final quality"] == "n/a"
    assert cells["final quantity"] == "0.850"


def test_supervised_run_has_no_pseudo_label_figures(supervised_run: Path) -> None:
    text, (cells,), refs = parse(build_report([supervised_run]))
    # The diagnostics need no pseudo-labels: labeled weak/strong accuracy and the error swing.
    assert refs == {"fig-error.png", "fig-confusion-supervised.png", "fig-diagnostics.png"}
    assert "No pseudo-label statistics" in text
    assert cells["final quantity"] == "n/a" and cells["status"] == "finished"


def test_cli_hook(tmp_path: Path) -> None:
    from semimatch.cli import main

    run = write_synthetic_run(tmp_path / "run", evals=1, test_set=False)
    assert main(["report", str(run), "--out", str(tmp_path / "cli")]) == 0
    _, (cells,), refs = parse(tmp_path / "cli" / "index.html")
    assert cells["name"] == "run" and "fig-lambda-run.png" in refs


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_dirs is empty"):
        build_report([])
    with pytest.raises(ValueError, match="list"):
        build_report(tmp_path)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_report([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        build_report([tmp_path])
    run = write_synthetic_run(tmp_path / "r", evals=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        build_report([run], out=tmp_path / "file")
