"""Console messages go through the "semimatch" logger: visible by default, silenced or
redirected with the standard logging module, never by swapping the process's stdout."""

from __future__ import annotations

import logging

import numpy as np

from semimatch.api import train
from semimatch.log import logger, quiet
from semimatch.sklearn import SemiSupervisedClassifier

TINY = dict(dataset="digits", num_labels=20, iterations=4, batch_size=8, uratio=2, seed=0,
            eval_every=2, precision="fp32", threads=1, tensorboard=False)  # fmt: skip


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_training_lines_are_log_records_and_shown_on_stdout(capsys):
    collect = _Collect()
    logger.addHandler(collect)
    try:
        train(**TINY)
    finally:
        logger.removeHandler(collect)
    assert [line.split("]")[0] for line in collect.lines[:2]] == ["[2/4", "[4/4"]
    assert collect.lines[-1].startswith("done: fixmatch on digits | 4 it")
    assert capsys.readouterr().out.splitlines() == collect.lines  # the default console handler


def test_the_logger_level_silences_training_but_not_the_callers_prints(capsys):
    with quiet():
        print("mine")
        train(**TINY)
    assert capsys.readouterr().out == "mine\n"
    assert logger.level == logging.INFO  # restored


def test_a_quiet_estimator_leaves_stdout_to_the_caller(capsys):
    X, y = np.random.default_rng(0).random((60, 4)), np.repeat(np.arange(3), 20)
    y[::2] = -1
    SemiSupervisedClassifier(max_iter=2, batch_size=8, uratio=1, random_state=0).fit(X, y)
    assert capsys.readouterr().out == ""
    assert logger.level == logging.INFO


def test_a_closed_pipe_is_no_logging_error(monkeypatch, capsys, close_stdout):
    """`semimatch train | head -1`: once the reader has gone, each later line is dropped
    quietly instead of a "--- Logging error ---" traceback on stderr."""
    close_stdout()
    logger.info("[10/40]  top1 45.00%")
    monkeypatch.undo()
    assert capsys.readouterr().err == ""
