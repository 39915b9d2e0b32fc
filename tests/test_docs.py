"""The documentation stays true: the CLI reference is the parser's help, and every
``semimatch ...`` command in the README and the docs parses against the current CLI."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from helpers.scripts import load_script
from semimatch.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _hook():
    return load_script("docs/hooks/cli_reference.py")


def test_the_cli_reference_is_generated_from_the_parser() -> None:
    hook = _hook()
    page = (DOCS / "reference/cli.md").read_text()
    assert hook.MARKER in page  # the hook fills it at build time
    text = hook.on_page_markdown(page, None, None, None)
    assert hook.MARKER not in text
    for command in ("train", "eval", "predict", "report", "presets", "datasets", "demo"):
        assert f"## semimatch {command}\n" in text
    for flag in ("--num-labels", "--n-sigma", "--resume", "--skip-corrupt", "--methods"):
        assert flag in text


def commands(text: str) -> list[tuple[str, bool]]:
    """``semimatch`` commands of the fenced blocks of a Markdown page, continuation lines
    joined, and whether the page shows them failing to parse (the next line is an argparse
    error). A ``torchrun ... -m semimatch ...`` line counts from ``semimatch``."""
    found = []
    for block in FENCE.findall(text):
        lines = block.splitlines()
        console = any(line.startswith("$ ") for line in lines)  # a transcript: $ marks input
        i = 0
        while i < len(lines):
            if console and not lines[i].startswith("$ "):
                i += 1
                continue
            line = lines[i].strip().removeprefix("$ ")
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            i += 1
            m = re.search(r"(?:^|\s-m\s|&&\s)semimatch\s(.*)", line)
            if not m or line.startswith(("#", "python -c")):
                continue
            nxt = lines[i] if i < len(lines) else ""
            fails = "error: unrecognized arguments" in nxt or "error: argument" in nxt
            found.append(("semimatch " + m.group(1), fails))
    return found


def argv(command: str) -> list[str]:
    """The arguments of a shell command line: up to a comment, pipe or redirection."""
    words = shlex.split(command, comments=True)
    for stop in ("|", ">", "&&", ";"):
        if stop in words:
            words = words[: words.index(stop)]
    return words[1:]


CASES = [
    pytest.param(cmd, fails, id=f"{page.relative_to(ROOT)}: {cmd[:60]}")
    for page in PAGES
    for cmd, fails in commands(page.read_text())
]


def test_the_docs_show_commands() -> None:
    readme = [c for c in CASES if c.id.startswith("README.md")]
    assert len(readme) >= 5 and len(CASES) >= 30


@pytest.mark.parametrize("command, fails", CASES)
def test_documented_commands_parse(command: str, fails: bool) -> None:
    parser = build_parser()
    if fails:  # shown failing on purpose (a typo and its suggestion)
        with pytest.raises(SystemExit):
            parser.parse_args(argv(command))
        return
    try:
        parser.parse_args(argv(command))
    except SystemExit as e:
        if e.code == 0:  # --help, --version
            return
        pytest.fail(f"{command!r} does not parse with the current CLI")


def test_a_command_with_an_unknown_flag_is_caught() -> None:
    """The check is the parser's own: a flag the CLI does not have fails it."""
    page = "```bash\npip install -e . && semimatch demo --no-such-flag 3  # a comment\n```\n"
    ((command, fails),) = commands(page)
    assert command.startswith("semimatch demo --no-such-flag") and not fails
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv(command))
    assert e.value.code == 2


def test_the_config_reference_lists_every_field() -> None:
    import dataclasses

    from semimatch import Config

    hook = _hook()
    page = (DOCS / "reference/config.md").read_text()
    assert hook.CONFIG_MARKER in page
    text = hook.on_page_markdown(page, None, None, None)
    for f in dataclasses.fields(Config):
        assert f"| `{f.name}` |" in text
    assert "| `num_labels` | `--num-labels` |" in text
