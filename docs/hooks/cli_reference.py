"""MkDocs hook: the command-line and configuration references are generated at every build.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it
with ``semimatch --help`` and every subcommand's ``--help``, printed by
``semimatch.cli.build_parser`` itself. ``docs/reference/config.md`` holds
``<!-- config-fields -->``, replaced by a table of ``semimatch.Config``'s fields (flag, default,
help) read from the dataclass. So neither page can drift from the code: a renamed or new flag
appears at the next ``mkdocs build``. ``tests/test_docs.py`` checks the generated text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
CONFIG_MARKER = "<!-- config-fields -->"
#: The column width argparse wraps the help at (it reads $COLUMNS): fixed, so the page does not
#: depend on the terminal that built it.
WIDTH = "80"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _importable() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    if src.is_dir() and str(src) not in sys.path:  # a checkout that is not installed
        sys.path.insert(0, str(src))


def cli_markdown() -> str:
    """The reference in Markdown: the top-level help, then one section per subcommand."""
    _importable()
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


def config_markdown() -> str:
    """A table of the ``Config`` fields: the field, its flag, its default and its help."""
    import dataclasses

    _importable()
    from semimatch.config import Config
    from semimatch.flags import flag

    def cell(text: str) -> str:
        text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| field | command-line flag | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        if f.default is None:
            default = f.metadata.get("none", "auto")
        elif isinstance(f.default, bool):
            default = str(f.default).lower()
        else:
            default = f"`{f.default}`"
        shown = f"`{flag(f.name)}`" if f.metadata.get("cli", True) else "(not a flag)"
        help_text = cell(f.metadata.get("help", ""))
        rows.append(f"| `{f.name}` | {shown} | {cell(default)} | {help_text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001 - MkDocs' hook API
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_markdown())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_markdown())
    return markdown
