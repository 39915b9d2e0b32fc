"""Readers of text files: tables (CSV/TSV/JSONL, optionally gzipped), class folders of ``.txt``
files and USB's NLP JSON layout, as rows of (text, raw label, precomputed augmentations).

Every row keeps where it came from (``file:line N``, ``file: entry "id"`` or a file path), so
the errors of :mod:`semimatch.data.text` name the file and row. Formats are chosen by the
extension (after a ``.gz``): ``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``, ``.json``
(USB's layout ``{"<id>": {"ori": ..., "aug_0": ..., "aug_1": ..., "label": ...}}``). Gzip is
recognised by its magic bytes, whatever the name says; a ``.gz`` file that is not gzip, a
binary file, undecodable bytes (UTF-8 is required; a BOM is allowed), a JSON line that does not
parse or a JSON file in another layout raise a ``ValueError`` naming the file and line.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TEXT_SUFFIXES",
    "RawRow",
    "read_rows",
    "read_text_folder",
    "read_texts",
    "text_format",
]

_GZIP_MAGIC = b"\x1f\x8b"
#: File suffixes (before an optional ``.gz``) and the format each names.
TEXT_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "usb_json",
}
#: Magic bytes of binary formats a text file is sometimes confused with.
_BINARY_MAGIC = {
    b"PK\x03\x04": "a zip archive",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"%PDF": "a PDF document",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ": "an xz archive",
    b"\x28\xb5\x2f\xfd": "a zstd archive",
}


@dataclass
class RawRow:
    """One row as read: its text, raw label (``None`` = none given), precomputed strong views
    (USB's ``aug_0``/``aug_1``) and where it is (``file:line N``)."""

    text: Any
    label: Any
    augs: tuple[Any, ...]
    where: str


def text_format(path: str) -> str:
    """The format named by ``path``'s extension (``.gz`` stripped): csv, tsv, jsonl, usb_json."""
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    ext = os.path.splitext(name)[1]
    if ext not in TEXT_SUFFIXES:
        raise ValueError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; text "
            f"files must end in one of {', '.join(TEXT_SUFFIXES)} (optionally + .gz), or be a "
            "folder of class folders of .txt files"
        )
    return TEXT_SUFFIXES[ext]


def _read_bytes(path: str) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (any name)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file {path} does not exist")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: a corrupt or truncated gzip file ({err})") from err
    if path.lower().endswith(".gz"):
        raise ValueError(f"{path}: the name ends in .gz but the file is not gzip-compressed")
    return data


def _decode(path: str, data: bytes) -> str:
    """UTF-8 text of ``data`` (a BOM is dropped); binary files and bad bytes name the line."""
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise ValueError(f"{path}: this is {what}, not a text file of its extension")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}:line {line}: undecodable bytes {data[err.start : err.end]!r} (byte "
            f"{err.start}); text files must be UTF-8 - convert it, e.g. iconv -f latin1 -t utf-8"
        ) from err
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(f"{path}:line {line}: a NUL byte; this is not a text file")
    return text


def _table_rows(
    path: str, text: str, delimiter: str, text_column: str, label_column: str | None
) -> list[RawRow]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise ValueError(f"{path}: the file is empty (expected a header row)") from None
    except csv.Error as err:
        raise ValueError(f"{path}:line 1: {err}") from err
    header = [h.strip() for h in header]
    if text_column not in header:
        raise ValueError(
            f"{path}:line 1: no text column {text_column!r} in the header {header}; name the "
            "column with text_column="
        )
    t = header.index(text_column)
    lab = header.index(label_column) if label_column in header else None
    rows: list[RawRow] = []
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise ValueError(f"{path}:line {reader.line_num}: {err}") from err
        where = f"{path}:line {reader.line_num}"
        if not rec:  # a blank line
            continue
        if len(rec) != len(header):
            raise ValueError(
                f"{where}: {len(rec)} fields where the header has {len(header)}; quote texts "
                f"that contain the delimiter {delimiter!r}"
            )
        label = rec[lab] if lab is not None else None
        rows.append(RawRow(rec[t], label, (), where))
    return rows


def _jsonl_rows(path: str, text: str, text_column: str, label_column: str) -> list[RawRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{where}: not a JSON object ({err.msg}); is this JSON Lines?"
            ) from err
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
        if text_column not in obj:
            raise ValueError(
                f"{where}: no text column {text_column!r} (keys: {sorted(obj)}); name the "
                "column with text_column="
            )
        rows.append(RawRow(obj[text_column], obj.get(label_column), (), where))
    return rows


def _usb_rows(path: str, text: str) -> list[RawRow]:
    """USB's NLP layout: ``{"<id>": {"ori": text, "aug_0": .., "aug_1": .., "label": ..}}``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}:line {err.lineno}: not valid JSON ({err.msg}); .json files must hold USB's "
            'layout {"<id>": {"ori": ..., "label": ...}} (JSON Lines files end in .jsonl)'
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(
            f'{path}: expected USB\'s layout {{"<id>": {{"ori": ..., "label": ...}}}}, got a '
            f"JSON {type(obj).__name__} (JSON Lines files end in .jsonl)"
        )
    rows = []
    for key, entry in obj.items():
        where = f'{path}: entry "{key}"'
        if not isinstance(entry, dict) or "ori" not in entry:
            raise ValueError(
                f'{where}: expected an object with an "ori" text (USB\'s layout), got '
                f"{json.dumps(entry)[:80]}"
            )
        augs = tuple(entry[k] for k in sorted(entry) if k.startswith("aug_"))
        rows.append(RawRow(entry["ori"], entry.get("label"), augs, where))
    return rows


def read_rows(
    path: str | os.PathLike, text_column: str = "text", label_column: str = "label"
) -> list[RawRow]:
    """The rows of a text file (module docstring); a table without ``label_column`` gives
    rows without labels (``label=None``: unlabeled)."""
    path = os.fspath(os.path.expanduser(path))
    fmt = text_format(path)
    text = _decode(path, _read_bytes(path))
    if fmt == "usb_json":
        return _usb_rows(path, text)
    if fmt == "jsonl":
        return _jsonl_rows(path, text, text_column, label_column)
    if fmt == "csv" and text.lstrip().startswith(("{", "[")):
        raise ValueError(f"{path}: this looks like JSON, not CSV; name it .jsonl or .json")
    return _table_rows(path, text, "," if fmt == "csv" else "\t", text_column, label_column)


def read_text_folder(root: str | os.PathLike, labeled: bool = True) -> list[RawRow]:
    """``root/<class>/*.txt`` (``labeled``; the class is the folder's name) or ``root/*.txt``
    (unlabeled), one text per file, recursively and sorted; hidden entries are skipped."""
    root = os.fspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"text folder {root} does not exist")

    def files(directory: str) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if not f.startswith(".") and f.lower().endswith((".txt", ".txt.gz"))
            ]
        return out

    rows: list[RawRow] = []
    if not labeled:
        groups = [(None, files(root))]
    else:
        names = sorted(
            d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(f"{root}/{d}")
        )
        if not names:
            raise ValueError(f"{root}: no class folders; expected {root}/<class>/<text>.txt")
        groups = [(n, files(os.path.join(root, n))) for n in names]
    for label, paths in groups:
        for p in paths:
            rows.append(RawRow(_decode(p, _read_bytes(p)), label, (), p))
    if not rows:
        raise ValueError(f"{root}: no .txt files found")
    return rows


def read_texts(source: str | os.PathLike, text_column: str = "text") -> list[RawRow]:
    """Texts to classify (``semimatch predict``), labels ignored: ``"-"`` (standard input) or
    a ``.txt`` file, one text per non-blank line; a folder of ``.txt`` files, one text per
    file; or a table/JSON file as :func:`read_rows` reads it (``text_column``)."""
    if os.fspath(source) == "-":
        import sys

        return _lines("stdin", sys.stdin.read())
    path = os.fspath(os.path.expanduser(source))
    if os.path.isdir(path):
        return read_text_folder(path, labeled=False)
    name = path.lower().removesuffix(".gz")
    if name.endswith(".txt"):
        return _lines(path, _decode(path, _read_bytes(path)))
    if os.path.splitext(name)[1] not in TEXT_SUFFIXES:  # text_format's list, with .txt
        raise ValueError(
            f"{path}: cannot tell the format from the extension "
            f"{os.path.splitext(name)[1] or '(none)'!r}; texts to classify are in a .txt file "
            f"(one per line) or a table ending in one of {', '.join(TEXT_SUFFIXES)} "
            "(optionally + .gz), a folder of .txt files, or - (standard input)"
        )
    rows = read_rows(path, text_column, label_column="\0")  # no label column: none read
    return [RawRow(r.text, None, (), r.where) for r in rows]


def _lines(where: str, text: str) -> list[RawRow]:
    rows = [
        RawRow(line, None, (), f"{where}:line {n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip()
    ]
    if not rows:
        raise ValueError(f"{where}: no texts (one text per line)")
    return rows
