"""semimatch's console messages go through the ``logging`` logger named ``"semimatch"``.

By default they appear on standard output as plain lines (evaluation lines, the summary), around
the progress bar if there is one; ``status`` lines (what a run is doing before it trains:
loading a model, tokenizing) and warnings go to standard error, so standard output keeps the
results. Silence or redirect them with the standard library:
``logging.getLogger("semimatch").setLevel(logging.WARNING)``, or remove its handler and set
``propagate = True`` to route them through your application's own logging configuration.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

logger = logging.getLogger("semimatch")
#: The attribute that marks a record as a status line (``status``).
STATUS = "semimatch_status"


def status(message: str) -> None:
    """Say what the run is doing (an INFO record, on standard error): a line while a model
    loads or texts are tokenized, so a command is never silent for long before it trains.
    Hidden like every INFO line by ``quiet`` (the estimator's ``verbose=0``); under torchrun
    only rank 0 says it."""
    from semimatch.distributed import is_main_process

    if is_main_process():
        logger.info(message, extra={STATUS: True})


class ConsoleHandler(logging.Handler):
    """Plain lines on the *current* ``sys.stdout`` (pytest, notebooks and ``redirect_stdout``
    swap it after import), written with ``tqdm.write`` so an active progress bar stays intact;
    status lines go to ``sys.stderr`` as they are, warnings as ``warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            text, stream = self.format(record), sys.stdout
            if getattr(record, STATUS, False):
                stream = sys.stderr
            if record.levelno >= logging.WARNING:
                text, stream = f"warning: {text}", sys.stderr
            tqdm.write(text, file=stream)
            stream.flush()
        except BrokenPipeError:  # the reader left (`semimatch train | head`): no traceback
            pass  # per line; training goes on and metrics.jsonl keeps the record
        except Exception:  # a closed stream must not stop training
            self.handleError(record)


if not logger.handlers:  # the default console output, unless the application set one up
    logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the console handler already shows it: no duplicate via root


@contextlib.contextmanager
def quiet(level: int = logging.WARNING) -> Iterator[None]:
    """Show only messages at ``level`` or above while the block runs (e.g. a quiet ``fit``)."""
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
