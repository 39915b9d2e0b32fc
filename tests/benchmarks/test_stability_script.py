"""benchmarks/stability.py: the swing arithmetic, and the published table is the committed logs'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.scripts import RESULTS, load_script

ROOT = Path(__file__).resolve().parents[2]
stability = load_script("benchmarks/stability.py")


def _run(folder: Path, errors: list[float], flips: list[float | None]) -> Path:
    folder.mkdir(parents=True)
    records = [{"kind": "train", "iteration": 1}]
    for k, (error, flip) in enumerate(zip(errors, flips), start=1):
        records.append(
            {
                "kind": "eval",
                "iteration": 10 * k,
                "error": error,
                "pl_flip": flip,
                "lb_weak_acc": 1.0,
                "lb_strong_acc": 0.75,
            }
        )
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (folder / "summary.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps({"ema_decay": 0.0}))
    return folder


def test_swings_skip_the_first_two_evaluations_and_late_ones_are_the_second_half(
    tmp_path: Path,
) -> None:
    errors = [0.75, 0.40, 0.30, 0.34, 0.30, 0.31, 0.29, 0.29]
    run = _run(tmp_path / "s" / "fixmatch" / "seed0", errors, [None] + [0.1] * 7)
    n = stability.cell_numbers(run)
    assert n["best"] == pytest.approx(29.0) and n["final"] == pytest.approx(29.0)
    # |34-30|, |30-34|, |31-30|, |29-31|, |29-29|: the 75 -> 40 -> 30 start is left out
    assert n["swing"] == pytest.approx((4 + 4 + 1 + 2 + 0) / 5)
    # iterations 40..80 (>= half of 80): |30-34|, |31-30|, |29-31|, |29-29|
    assert n["late_swing"] == pytest.approx((4 + 1 + 2 + 0) / 4)
    assert n["max_late_swing"] == pytest.approx(4.0)
    # the rises among them: 31-30 only (the drops 34 -> 30 and 31 -> 29 are improvements)
    assert n["late_rise"] == pytest.approx((0 + 1 + 0 + 0) / 4)
    assert n["max_late_rise"] == pytest.approx(1.0)
    assert n["median_last"] == pytest.approx(30.0)
    assert (n["late_flip"], n["weak"], n["strong"]) == pytest.approx((10.0, 100.0, 75.0))
    row = stability.table(tmp_path, "s").splitlines()[2]
    assert row.startswith("| fixmatch | 1 | 29.0 ± 0.0 | 29.0 ± 0.0 | 30.0 ± 0.0 | 2.2 ± 0.0 |")


def test_the_short_text_table_of_the_text_page_is_the_committed_runs() -> None:
    text = (ROOT / "docs" / "benchmarks" / "text.md").read_text()
    table = stability.table(RESULTS, "agnews10w-40", ["supervised", "fixmatch", "softmatch"])
    assert table.count("\n") >= 4  # the header and at least the three methods
    assert table in text
