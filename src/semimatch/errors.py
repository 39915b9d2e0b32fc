"""The exceptions a training run raises for its caller (the CLI maps them to exit codes)."""

from __future__ import annotations

import signal

__all__ = ["TrainingError", "TrainingInterrupted"]


class TrainingError(RuntimeError):
    """Training stopped for a reason the user must act on (message says which and what to do)."""


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on SIGINT (Ctrl-C) or SIGTERM after saving a checkpoint.

    The message says where it stopped and how to resume; ``signum`` is the signal, so a
    command can exit with ``128 + signum`` (130 for Ctrl-C, 143 for SIGTERM) as shells expect.
    Being a ``KeyboardInterrupt``, it still stops a script that does not catch it.
    """

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)
