"""semimatch's console messages go through the ``logging`` logger named ``"semimatch"``.

By default they appear on standard output as plain lines (evaluation lines, the summary), around
the progress bar if there is one. Silence or redirect them with the standard library:
``logging.getLogger("semimatch").setLevel(logging.WARNING)``, or remove its handler and set
``propagate = True`` to route them through your application's own logging configuration.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

logger = logging.getLogger("semimatch")


class ConsoleHandler(logging.Handler):
    """Plain lines on the *current* ``sys.stdout`` (pytest, notebooks and ``redirect_stdout``
    swap it after import), written with ``tqdm.write`` so an active progress bar stays intact;
    warnings go to ``sys.stderr`` as ``warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            text, stream = self.format(record), sys.stdout
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
