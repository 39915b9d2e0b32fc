"""The records' sinks (``Recorder``) and the console lines."""

from __future__ import annotations

import errno

import pytest

from semimatch.config import Config
from semimatch.runs.records import Recorder, WriteFailed, summary_line
from semimatch.runs.run import RunDir
from semimatch.training.metrics import read_jsonl

CFG = Config(tensorboard=False, progress=False, iterations=10)


def record(k: int, kind: str = "train") -> dict:
    return {"kind": kind, "iteration": k, "loss": 1.0 / k}


def test_a_run_without_a_folder_keeps_its_records_in_memory():
    rec = Recorder(None, CFG, start=0, resumed=False, is_main=True)
    rec.train(record(2))
    rec.end(2, "finished", "")
    assert [r["kind"] for r in rec.history()] == ["train", "end"]
    other_rank = Recorder(None, CFG, start=0, resumed=False, is_main=False)
    other_rank.train(record(2))
    assert other_rank.history() == []


def test_a_resumed_log_drops_the_records_past_its_checkpoint(tmp_path):
    run_dir = RunDir(tmp_path)
    rec = Recorder(run_dir, CFG, start=0, resumed=False, is_main=True)
    for k in (2, 4, 6):
        rec.train(record(k))
    rec = Recorder(run_dir, CFG, start=4, resumed=True, is_main=True)
    assert [r["iteration"] for r in read_jsonl(run_dir.metrics)] == [2, 4]
    rec.train(record(6))
    assert [r["iteration"] for r in rec.history()] == [2, 4, 6]


def test_a_failed_write_names_the_file_and_where_to_continue(tmp_path, monkeypatch):
    rec = Recorder(RunDir(tmp_path), CFG, start=0, resumed=False, is_main=True)

    def full(record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec.writer, "write", full)
    with pytest.raises(WriteFailed, match="metrics.jsonl.*iteration 2; no checkpoint was saved"):
        rec.train(record(2))
    rec.end(2, "failed", "disk full")  # a failed run's end record may be lost: no second error
    with pytest.raises(WriteFailed):
        rec.end(2, "finished", "")


def test_the_summary_line_shows_the_outcome():
    line = summary_line(
        {
            "algorithm": "softmatch",
            "dataset": "digits",
            "iterations_done": 10,
            "final_error": 0.25,
            "best_error": 0.2,
            "median20_error": 0.3,
            "final_quantity": None,
            "sec_per_iter": 0.5,
        }
    )
    assert line == (
        "done: softmatch on digits | 10 it | error 25.00% (best 20.00%, median last 20 "
        "30.00%) | quantity n/a | 0.500 s/it"
    )
