"""Checkpoints: atomic writes, safe loads, and a clear error instead of a silent restart.

A checkpoint is a plain dict of tensors and Python primitives, loaded with
``torch.load(..., weights_only=True)``: opening a checkpoint can never execute code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_atomic", "load", "latest", "prune", "FORMAT_VERSION"]

FORMAT_VERSION = 1
_NAME = re.compile(r"^ckpt-(\d{7,})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


def checkpoint_name(iteration: int) -> str:
    return f"ckpt-{iteration:07d}.pt"


def save_atomic(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file, fsync, rename, fsync the folder.

    A crash (even SIGKILL) at any point leaves either the old file or the new one, never a
    truncated checkpoint under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT_VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``) or raise ``CheckpointError`` saying why."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a semimatch checkpoint ({reason}). "
            "Delete it to resume from the previous checkpoint, or start a new run."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"checkpoint {path} has format {found!r}; this semimatch reads format "
            f"{FORMAT_VERSION}. Use the semimatch version that wrote it."
        )
    return state


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


def prune(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` numbered checkpoints (best.pt is never touched)."""
    for _, p in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)
