"""Checkpoints: atomic writes, safe loads, and a clear error instead of a silent restart.

A checkpoint is a plain dict of tensors and Python primitives, loaded with
``torch.load(..., weights_only=True)``: opening a checkpoint can never execute code.

``best.pt`` is a reference, not a copy: a hard link to the numbered checkpoint with the lowest
test error while retention keeps that file (no byte stored twice), and once retention removes
it, either that full checkpoint alone or only its weights (``model_only``: what evaluation and
prediction read).  Every step is a rename or a link, so a crash (even SIGKILL) at any moment
leaves a loadable ``best.pt`` and a loadable last checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from semimatch.log import logger

__all__ = [
    "CheckpointError",
    "save_atomic",
    "copy_atomic",
    "link_atomic",
    "load",
    "model_only",
    "save_best",
    "same_file",
    "latest",
    "prune",
    "remove_stale_temporaries",
    "FORMAT_VERSION",
    "BEST",
]

FORMAT_VERSION = 1
#: The checkpoint with the lowest test error so far (a hard link, or its weights only).
BEST = "best.pt"
#: What evaluation and prediction read (``load_run``); ``model_only`` keeps only these.
MODEL_KEYS = (
    "iteration", "config", "model", "ema", "algorithm", "algorithm_name", "num_unlabeled",
    "history",
)  # fmt: skip
_NAME = re.compile(r"^ckpt-(\d{7,})\.pt$")
# Temporary files of save_atomic/copy_atomic (".<name>.tmp-<pid>"), and ".best.tmp" of
# semimatch versions before copy_atomic.
_TEMPORARY = re.compile(r"^\..+\.tmp-\d+$|^\.best\.tmp$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used or written; the message names the file and the reason."""


def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:07d}.pt"


def _temporary(path: Path) -> Path:
    """The name ``path`` is written under before the rename (hidden; the pid avoids clashes)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync the folder.

    A crash (even SIGKILL) at any point leaves either the old file or the new one, never a
    truncated checkpoint under the final name.  A failed write (disk full, no permission, I/O
    error) removes the temporary file and raises ``CheckpointError`` saying why, with the free
    space and the space the checkpoint needs; files already in the folder are untouched.
    """
    payload = {"format": FORMAT_VERSION, **state}
    # torch's zip writer reports a failed write as a RuntimeError; the size is measured only
    # then (a second serialisation costs nothing on the normal path).
    return _write_atomic(
        Path(path),
        lambda f: torch.save(payload, f),
        lambda: _serialized_size(payload),
        (OSError, RuntimeError),
    )


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` as ``save_atomic`` writes (a failed copy leaves ``dst`` as it
    was, removes its temporary file and raises ``CheckpointError``)."""
    src = Path(src)

    def copy(f: BinaryIO) -> None:
        with open(src, "rb") as fsrc:
            shutil.copyfileobj(fsrc, f)

    return _write_atomic(
        Path(dst), copy, lambda: src.stat().st_size if src.is_file() else None, (OSError,)
    )


def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> bool:
    """Make ``dst`` a hard link to ``src`` atomically (a link under a temporary name, renamed
    over ``dst``): ``dst`` is the old file or ``src``'s, never missing or partial.

    Returns False, leaving ``dst`` as it was, where the file system has no hard links (FAT,
    some network shares); a failed rename raises ``CheckpointError``.
    """
    src, dst = Path(src), Path(dst)
    tmp = _temporary(dst)
    _discard(tmp)  # a temporary left by a killed process of the same pid
    try:
        os.link(src, tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise _write_error(dst, e, None) from e
        return False  # EPERM, ENOTSUP, EXDEV, EMLINK...: no hard links here
    try:
        os.replace(tmp, dst)
        _fsync_folder(dst.parent)
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise _write_error(dst, e, None) from e
        raise
    return True


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are names of one file (a hard link); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def model_only(state: dict[str, Any]) -> dict[str, Any]:
    """The part of checkpoint ``state`` that evaluation and prediction read: the weights (model,
    EMA, the algorithm's statistics) and the record; no optimiser, schedule, RNG or windows, so
    it cannot be resumed from (``TrainState.restore`` says so)."""
    return {**{k: state[k] for k in MODEL_KEYS if k in state}, "model_only": True}


def save_best(path: Path, state: dict[str, Any], only_weights: bool) -> Path:
    """Make ``best.pt`` next to ``path`` (just written from ``state``) refer to it: a hard link,
    or where the file system has none, a copy of ``state``'s weights (``only_weights``: as
    ``model_only``) or of the whole file."""
    best = path.parent / BEST
    if link_atomic(path, best):
        return best
    if only_weights:
        return save_atomic(model_only(state), best)
    return copy_atomic(path, best)


def _write_atomic(
    path: Path,
    write: Callable[[BinaryIO], None],
    need: Callable[[], int | None],
    errors: tuple[type[BaseException], ...],
) -> Path:
    """Temporary file, ``write``, fsync, rename, fsync the folder.  On any failure the
    temporary file goes; one of ``errors`` becomes a ``CheckpointError`` naming the folder,
    the free space and ``need()`` bytes."""
    tmp = _temporary(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, errors):
            raise _write_error(path, e, need()) from e
        raise
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; folders cannot be opened on Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    # Best effort: the error being reported matters more than a failed clean-up.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


class _CountingSink:
    """A write-only file that counts bytes: the checkpoint's size without memory or disk."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _serialized_size(payload: dict[str, Any]) -> int | None:
    sink = _CountingSink()
    try:
        torch.save(payload, sink)
    except Exception:  # the state itself cannot be serialised: the size is unknown
        return None
    return sink.size


def _free_space(folder: Path) -> int | None:
    """Free bytes on the file system of ``folder`` (or of its nearest existing parent)."""
    for p in (folder, *folder.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def describe_write_failure(
    path: Path, e: BaseException, need: int | None = None, what: str = "the checkpoint"
) -> str:
    """One line: which file, in which folder, why, the free space there and (if known) the
    space ``what`` needs."""
    if isinstance(e, OSError) and e.errno is not None:
        name = errno.errorcode.get(e.errno, f"errno {e.errno}")
        reason = f"{e.strerror or os.strerror(e.errno)} ({name})"
    else:
        # torch's zip writer reports a failed write as "[enforce fail at inline_container.cc:
        # 672] . unexpected pos ...": say what happened, keep its words for reference.
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text)
        reason = f"the write stopped part-way (torch: {text})"
    free = _free_space(path.parent)
    message = (
        f"cannot write {path.name} in {path.parent}: {reason}; free space there: {_size(free)}"
    )
    if need is not None:
        short = free is not None and free < need
        message += f", {what} needs {_size(need)}{' (not enough space)' if short else ''}"
    return message


def _write_error(path: Path, e: BaseException, need: int | None) -> CheckpointError:
    intact = f". Files already in {path.parent} are intact" if path.parent.is_dir() else ""
    return CheckpointError(describe_write_failure(path, e, need) + intact)


def load(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) or raise ``CheckpointError`` saying why
    (``mmap``: tensors stay in the file until read, for a copy of part of it)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises many types for truncated/corrupt/unsafe files
        raise CheckpointError(
            f"checkpoint {path} cannot be used: {_load_failure(path, e)}. Delete it to resume "
            "from the previous checkpoint, or start a new run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}; this semimatch reads format "
            f"{FORMAT_VERSION}. Use the semimatch version that wrote it."
        )
    return state


def _load_failure(path: Path, e: Exception) -> str:
    """What is wrong with a file ``torch.load`` refused, in our words.

    torch's own message may advise loading with ``weights_only=False``, which would run any
    code the file holds; semimatch never does that, so that advice is not passed on.
    """
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    if isinstance(e, pickle.UnpicklingError) and found:
        return (
            f"it holds a pickled Python object ({found.group(1)}), not only tensors and plain "
            "values - an unsafe pickle that could run code when loaded, so semimatch will not "
            "load it (its own checkpoints hold none)"
        )
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        return f"it cannot be read ({err.strerror or err})"
    if size == 0:
        return "the file is empty (0 bytes)"
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        return f"it is not a PyTorch checkpoint (not a zip archive; {size} bytes)"
    if not zipfile.is_zipfile(path):
        return (
            f"it is truncated or corrupt (its zip archive is incomplete; {size} bytes) - "
            "a write or copy that was cut short"
        )
    text = str(e).strip().split("\n")[0].split(". ")[0]
    if not text or "weights_only" in str(e):
        return f"its contents are corrupt ({type(e).__name__} while reading the archive)"
    return f"torch could not read its contents ({text})"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """Numbered checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest(folder: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(folder)
    return ckpts[-1][1] if ckpts else None


def prune(folder: str | os.PathLike, keep: int, best_model_only: bool = True) -> None:
    """Delete all but the newest ``keep`` numbered checkpoints.

    ``best.pt`` survives: where it is a link to a checkpoint that goes, deleting that name
    leaves the file under ``best.pt``; with ``best_model_only`` ``best.pt`` is first rewritten
    with that checkpoint's weights only (``model_only``), which frees the rest.  A checkpoint
    that cannot be deleted (or slimmed) is reported and kept: training can go on, and the
    newer checkpoints are already safe.
    """
    folder = Path(folder)
    best = folder / BEST
    for _, p in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        try:
            if best_model_only and same_file(best, p):
                save_atomic(model_only(load(p, mmap=True)), best)
            p.unlink(missing_ok=True)
        except (OSError, CheckpointError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else e
            logger.warning(f"cannot delete the old checkpoint {p} ({reason}); kept")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files a killed run left in ``folder``; return how many.

    Call it only when this process owns the run directory (resuming or overwriting it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if _TEMPORARY.match(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError:  # gone already, or not ours to delete: leave it
                continue
            removed += 1
    return removed
