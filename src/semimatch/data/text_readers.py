"""Readers of text files: tables (CSV/TSV/JSONL, optionally gzipped), class folders of ``.txt``
files and USB's NLP JSON layout, as rows of (text, raw label, precomputed augmentations).

Every row keeps where it came from (``file:line N``, ``file: entry "id"`` or a file path), so
the errors of :mod:`semimatch.data.text` name the file and row. Formats are chosen by the
extension (after a ``.gz``): ``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``, ``.json``
(USB's layout ``{"<id>": {"ori": ..., "aug_0": ..., "aug_1": ..., "label": ...}}``). Gzip is
recognised by its magic bytes, whatever the name says; a ``.gz`` file that is not gzip, a
binary file, undecodable bytes (UTF-8 is required; a BOM is allowed), a JSON line that does not
parse or a JSON file in another layout raise a ``ValueError`` naming the file and line.

Tables (CSV/TSV) start with a header row naming the columns; with ``header=False`` they do
not, and the columns are addressed by 0-based position (``"0"``, ``"1"``; the default names
``"label"``/``"text"`` stand for positions 0 and 1, the ``label,text`` order of AG News' CSV).
A named column that is not there is refused, listing the columns the file has. With
``skip_corrupt`` undecodable bytes do not stop the read: they are kept as lone surrogates
(``surrogateescape``) so the row they are in can be counted and skipped (:func:`is_decoded`).
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
    "is_decoded",
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


def _decode(path: str, data: bytes, skip_corrupt: bool | None = None) -> str:
    """UTF-8 text of ``data`` (a BOM is dropped); binary files and bad bytes name the line.

    ``skip_corrupt``: True keeps undecodable bytes as lone surrogates (the rows holding them
    are skipped later, with a count); False refuses them and names the option that skips
    them; None (a reader with no such option, e.g. prediction) refuses them."""
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise ValueError(f"{path}: this is {what}, not a text file of its extension")
    if skip_corrupt:
        body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
        text = body.decode("utf-8", errors="surrogateescape")
    else:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            skip = "" if skip_corrupt is None else " or pass skip_corrupt=True to skip such rows"
            raise ValueError(
                f"{path}:line {line}: undecodable bytes {data[err.start : err.end]!r} (byte "
                f"{err.start}); text files must be UTF-8 - convert it (e.g. iconv -f latin1 -t "
                f"utf-8){skip}"
            ) from err
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ValueError(f"{path}:line {line}: a NUL byte; this is not a text file")
    return text


def is_decoded(value: Any) -> bool:
    """Whether ``value`` holds no undecodable bytes (the lone surrogates ``skip_corrupt``
    reading leaves where the file's bytes were not UTF-8); non-strings are."""
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Column names that stand for a position in a file without a header (``header=False``).
_DEFAULT_POSITIONS = {"label": 0, "text": 1}


def _shown_cells(cells: list[str]) -> str:
    return ", ".join(repr(c if len(c) <= 24 else c[:21] + "...") for c in cells)


def _looks_like_data(cells: list[str]) -> bool:
    """A first row of a table that reads as data rather than column names: an empty or
    numeric cell, or one of several words (a text)."""
    return any(not c or c.lstrip("-").isdigit() or len(c.split()) > 2 for c in cells)


def _named_column(path: str, header: list[str], column: str, what: str) -> int:
    if column in header:
        return header.index(column)
    if _looks_like_data(header):
        fix = (
            "the first row looks like data rather than column names: if the file has no header "
            "row pass header=False (columns are then numbered from 0, e.g. text_column=1 "
            "label_column=0)"
        )
    else:
        fix = f"name the column with {what}_column= (or pass header=False if there is no header)"
    raise ValueError(
        f"{path}:line 1: no {what} column {column!r} in the header ({_shown_cells(header)}); {fix}"
    )


def _position(path: str, column: str, what: str, width: int) -> int:
    """The 0-based position ``column`` names in a file without a header."""
    pos = _DEFAULT_POSITIONS[what] if column == what else None
    if pos is None and column.strip().isdigit():
        pos = int(column)
    if pos is None:
        raise ValueError(
            f"{path}: with header=False (no header row) columns are numbered from 0; give the "
            f"{what} column's position, e.g. {what}_column={_DEFAULT_POSITIONS[what]}, not "
            f"{column!r}"
        )
    if width == 1 and column == what == "text":
        pos = 0  # a one-column file is texts alone
    if pos >= width:
        raise ValueError(
            f"{path}:line 1: no {what} column at position {pos}; the first row has {width} "
            f"column(s) (numbered from 0): name it with {what}_column="
        )
    return pos


def _table_rows(
    path: str,
    text: str,
    delimiter: str,
    text_column: str,
    label_column: str | None,
    header: bool = True,
) -> list[RawRow]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        first = next(reader)
    except StopIteration:
        expected = "a header row" if header else "rows"
        raise ValueError(f"{path}: the file is empty (expected {expected})") from None
    except csv.Error as err:
        raise ValueError(f"{path}:line 1: {err}") from err
    width = len(first)
    if header:
        names = [h.strip() for h in first]
        t = _named_column(path, names, text_column, "text")
        lab = None if label_column is None else _named_column(path, names, label_column, "label")
        pending: list[list[str]] = []
        shape = f"the header has {width}"
    else:
        t = _position(path, text_column, "text", width)
        lab = None if label_column is None else _position(path, label_column, "label", width)
        if lab == t:
            raise ValueError(
                f"{path}: text_column and label_column name the same column ({t}); with "
                "header=False give each its position"
            )
        if first[t].strip() == "text" or (lab is not None and first[lab].strip() == "label"):
            raise ValueError(  # its header would become a text of a class named "label"
                f"{path}:line 1: ({_shown_cells(first)}) reads like a header row, but "
                "it is read as data (header=False); pass header=True"
            )
        pending = [first]
        shape = f"line 1 has {width}"
    rows: list[RawRow] = []
    while True:
        if pending:
            rec = pending.pop()
        else:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ValueError(f"{path}:line {reader.line_num}: {err}") from err
        where = f"{path}:line {reader.line_num}"
        if not rec:  # a blank line
            continue
        if len(rec) != width:
            raise ValueError(
                f"{where}: {len(rec)} fields where {shape}; quote texts "
                f"that contain the delimiter {delimiter!r}"
            )
        label = rec[lab] if lab is not None else None
        rows.append(RawRow(rec[t], label, (), where))
    return rows


def _jsonl_rows(path: str, text: str, text_column: str, label_column: str | None) -> list[RawRow]:
    rows = []
    keys: set[str] = set()
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
        keys.update(obj)
        label = None if label_column is None else obj.get(label_column)
        rows.append(RawRow(obj[text_column], label, (), where))
    if label_column is not None and rows and label_column not in keys:
        raise ValueError(
            f"{path}: no label column {label_column!r} in any line (keys: "
            f"{', '.join(sorted(keys))}); name the column with label_column="
        )
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
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str | None = "label",
    *,
    header: bool = True,
    skip_corrupt: bool | None = None,
) -> list[RawRow]:
    """The rows of a text file (module docstring). ``label_column=None`` reads no labels
    (``label=None``: unlabeled); a table without ``label_column`` is refused, as is a JSON
    Lines file with no line holding that key (a line without it is unlabeled).
    ``header=False``: a CSV/TSV file without a header row, columns by position.
    ``skip_corrupt``: see :func:`_decode`."""
    path = os.fspath(os.path.expanduser(path))
    fmt = text_format(path)
    text = _decode(path, _read_bytes(path), skip_corrupt)
    if not header and fmt not in ("csv", "tsv"):
        raise ValueError(
            f"{path}: header=False applies to CSV/TSV files; a {fmt.replace('_', ' ')} file "
            "names its fields"
        )
    if fmt == "usb_json":
        rows = _usb_rows(path, text)
        if label_column is None:
            rows = [RawRow(r.text, None, r.augs, r.where) for r in rows]
        return rows
    if fmt == "jsonl":
        return _jsonl_rows(path, text, text_column, label_column)
    if fmt == "csv" and text.lstrip().startswith(("{", "[")):
        raise ValueError(f"{path}: this looks like JSON, not CSV; name it .jsonl or .json")
    delimiter = "," if fmt == "csv" else "\t"
    return _table_rows(path, text, delimiter, text_column, label_column, header)


def read_text_folder(
    root: str | os.PathLike, labeled: bool = True, skip_corrupt: bool | None = None
) -> list[RawRow]:
    """``root/<class>/*.txt`` (``labeled``; the class is the folder's name) or ``root/*.txt``
    (unlabeled), one text per file, recursively and sorted; hidden entries are skipped.
    ``skip_corrupt``: see :func:`_decode`."""
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
            rows.append(RawRow(_decode(p, _read_bytes(p), skip_corrupt), label, (), p))
    if not rows:
        raise ValueError(f"{root}: no .txt files found")
    return rows


def read_texts(
    source: str | os.PathLike, text_column: str = "text", header: bool = True
) -> list[RawRow]:
    """Texts to classify (``semimatch predict``), labels ignored: ``"-"`` (standard input) or
    a ``.txt`` file, one text per non-blank line; a folder of ``.txt`` files, one text per
    file; or a table/JSON file as :func:`read_rows` reads it (``text_column``, ``header``)."""
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
    rows = read_rows(path, text_column, label_column=None, header=header)
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
