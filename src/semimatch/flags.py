"""How config fields are spelled on the command line, both ways.

``cli_fields`` are the ``Config`` fields that are flags, ``flag`` spells one (``num_labels`` ->
``--num-labels``), ``given_flags`` collects those a command got, and ``as_flags`` rewrites a
library error message in those words, so the command line says what to type.
"""

from __future__ import annotations

import argparse
import functools
import re
from dataclasses import Field, fields
from typing import Any

from semimatch.config import Config, coerce

__all__ = ["API_KEYWORDS", "as_flags", "cli_fields", "flag", "given_flags"]

#: Keywords of the Python API that are not ``Config`` fields, as ``semimatch train`` spells
#: them: a field under another name (``load_text(skip_bad=)`` is ``--skip-corrupt``) or a flag
#: of the command itself (``fit(resume=True)`` is ``--resume RUN_DIR``).
API_KEYWORDS = {
    "skip_bad": "--skip-corrupt",
    "resume": "--resume",
    "overwrite": "--overwrite",
    "out": "--out",
}
#: What ``keyword=True`` is on the command line where it is not just the flag.
_TRUE_SPELLING = {"resume": "--resume RUN_DIR"}
#: Python keywords with no command-line counterpart: an aside naming one is Python's alone.
_PYTHON_ONLY = ("class_names", "model", "data", "weighting", "tokenizer")


def cli_fields() -> list[Field[Any]]:
    """The ``Config`` fields that are command-line flags (all but the bookkeeping ones)."""
    return [f for f in fields(Config) if f.metadata.get("cli", True)]


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on a command line (their parser's default is "not given"), with
    their values checked: what a resume takes exactly, even a value equal to the default."""
    given = {f.name: getattr(args, f.name) for f in cli_fields() if hasattr(args, f.name)}
    return {k: coerce(k, v, source="command line") for k, v in given.items()}


def flag(name: str) -> str:
    """The command-line spelling of config field ``name``."""
    return "--" + name.replace("_", "-")


def as_flags(message: str) -> str:
    """Say a library error in command-line words: config fields become the flags to type.

    The library names Python keywords ("threads must be >= 1", "pass skip_corrupt=True",
    "got forward_mode='x'"); the command line reads "--threads must be >= 1", "pass
    --skip-corrupt", "got --forward-mode 'x'".  A field is rewritten only where it is an
    identifier: ``name=value``, ``name:``, a name with an underscore, a list of names, or a name
    opening the message.  The API's other keywords are rewritten as ``API_KEYWORDS`` says
    ("pass skip_bad=True" -> "pass --skip-corrupt"; ``resume``/``overwrite``/``out`` only as
    ``name=``).  Quoted text, `commands` and paths (tokens with a slash) are what the user gave
    or must type as they are, so they stay untouched.  Asides for the other door go: "(CLI:
    ...)", "(in Python: ...)", an aside naming a keyword the command line does not have
    ("(or pass class_names=)") and one that only repeats the flag before it.
    """
    message = re.sub(r"\s*\((?:CLI|in Python): [^)]*\)", "", message)
    python_only = "|".join(_PYTHON_ONLY)
    message = re.sub(rf"\s*\([^()]*(?<![\w.])(?:{python_only})=[^()]*\)", "", message)
    message = _flag_pattern().sub(_flag_words, message)
    return re.sub(r"(--[\w-]+(?: [^\s()]+)?) \((--[\w-]+(?: [^\s()]+)?)\)", _once, message)


def _once(m: re.Match[str]) -> str:
    """ "--resume auto (--resume 'auto')" -> "--resume auto": the aside was the Python spelling."""
    same = m[1].replace("'", "") == m[2].replace("'", "")
    return m[1] if same else m[0]


@functools.cache
def _flag_pattern() -> re.Pattern[str]:
    """The regular expression of ``as_flags`` (built once: it lists every field name)."""
    # API keywords with an underscore are identifiers wherever they stand (skip_bad); the
    # others are English words too (out, resume), rewritten only as ``name=``.
    names = [f.name for f in cli_fields()] + [k for k in API_KEYWORDS if "_" in k]
    assigned = sorted(names + [k for k in API_KEYWORDS if "_" not in k], key=len, reverse=True)
    names.sort(key=len, reverse=True)

    def word(alternatives: list[str]) -> str:  # a whole name: not cfg.x, --x, a/x, x.txt
        return rf"(?<![\w.\-/])(?:{'|'.join(alternatives)})(?![\w\-/]|\.\w)"

    name, snake = word(names), word([n for n in names if "_" in n])
    # A value is quoted, or a run of word characters, dots, colons, signs (1e-3, cuda:0,
    # two-pass) ending in a word character: a sentence's full stop is not part of it.
    value = r"'[^'\n]*'|\"[^\"\n]*\"|[\w.:+\-]*\w"
    return re.compile(
        rf"(?P<list>\[(?:'(?:{'|'.join(names)})'(?:, )?)+\])"  # ['n_sigma', 'tau']
        r"|(?P<protected>(?<!\w)'[^'\n]*'(?!\w)|(?<!\w)\"[^\"\n]*\"(?!\w)|`[^`]*`"
        r"|[^\s'\"`]*/[^\s'\"`]*)"  # quoted, a `command`, a path
        rf"|(?P<assign>{word(assigned)})=(?P<value>{value})?"  # lr=0.1, image_size=
        rf"|(?P<label>{name})(?=:)"  # fold: must be in 0..9
        rf"|(?P<snake>{snake})"  # num_labels anywhere: an identifier, not an English word
        rf"|^(?P<first>{name})(?= )"  # lr must be > 0
    )


def _flag_words(m: re.Match[str]) -> str:
    if m["protected"]:
        return m["protected"]
    if m["list"]:
        return ", ".join(flag(n) for n in re.findall(r"'([^']*)'", m["list"]))
    if m["assign"] is None:
        return _spell(m["label"] or m["snake"] or m["first"])
    name, value = m["assign"], m["value"] or ""
    if value == "True":
        return _TRUE_SPELLING.get(name, _spell(name))
    if value == "False":
        return "--no-" + _spell(name).removeprefix("--")
    if value == "None":
        value = "none"
    before = m.string[: m.start()]
    if re.search(r"(?:\bpass|\buse|\be\.g\.|\bwith)\s*\(?$", before, re.IGNORECASE):
        value = value.strip("'\"")  # a suggestion: what to type, without Python's quotes
    return f"{_spell(name)} {value}" if value else _spell(name)


def _spell(name: str) -> str:
    """The flag of a config field or of an API keyword (``API_KEYWORDS``)."""
    return API_KEYWORDS.get(name, flag(name))
