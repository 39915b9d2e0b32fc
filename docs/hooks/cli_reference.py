"""MkDocs hook: the command-line reference is generated from the parser at every build.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it
with ``semimatch --help`` and every subcommand's ``--help``, printed by
``semimatch.cli.build_parser`` itself, so the page cannot drift from the code (a renamed or new
flag appears at the next ``mkdocs build``). ``tests/test_docs.py`` checks the generated text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
#: The column width argparse wraps the help at (it reads $COLUMNS): fixed, so the page does not
#: depend on the terminal that built it.
WIDTH = "100"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_markdown() -> str:
    """The reference in Markdown: the top-level help, then one section per subcommand."""
    src = Path(__file__).resolve().parents[2] / "src"
    if src.is_dir() and str(src) not in sys.path:  # a checkout that is not installed
        sys.path.insert(0, str(src))
    from semimatch.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        parts = ["```text", parser.format_help().rstrip(), "```", ""]
        for name, sub in _subparsers(parser).items():
            parts += [f"## semimatch {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs' hook API
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_markdown())
