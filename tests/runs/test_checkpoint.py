"""Checkpoint files: a failed write leaves the files already there and a clear error; stale
temporaries go; an unusable file is explained in our words (never "load it with
weights_only=False")."""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from semimatch.runs import checkpoint as ckpt

STATE = {"iteration": 2, "w": torch.arange(1000, dtype=torch.float32)}


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _serialized_size(state: dict) -> int:
    buf = io.BytesIO()
    torch.save({"format": ckpt.FORMAT_VERSION, **state}, buf)
    return len(buf.getvalue())


@pytest.fixture
def previous(tmp_path: Path) -> Path:
    """A folder holding one good checkpoint (iteration 1)."""
    return ckpt.save_atomic({"iteration": 1, "w": torch.ones(3)}, tmp_path / "ckpt-0000001.pt")


def _failing_file_writes(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    """torch.save writes part of the file, then fails - on real files only, so measuring the
    checkpoint's size in memory still works."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, io.BufferedWriter):
            f.write(b"PK\x03\x04partial")
            raise error
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_full_disk_is_a_clear_error_and_the_previous_checkpoint_survives(previous, monkeypatch):
    folder = previous.parent
    _failing_file_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save_atomic(STATE, folder / "ckpt-0000002.pt")
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot write ckpt-0000002.pt in {folder}: No space left on device (ENOSPC)" in message
    assert re.search(r"free space there: \d+(\.\d)? (bytes|KiB|MiB|GiB|TiB), the ch", message)
    need = _serialized_size(STATE)
    assert f"the checkpoint needs {ckpt._size(need)}" in message
    assert isinstance(info.value.__cause__, OSError)
    assert _temporaries(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["ckpt-0000001.pt"]
    monkeypatch.undo()
    assert ckpt.load(previous)["iteration"] == 1


def test_torchs_zip_writer_error_is_explained_with_the_space_it_lacks(previous, monkeypatch):
    # What torch raises when the disk fills under its zip writer (seen on a 64 KiB tmpfs).
    error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662")
    _failing_file_writes(monkeypatch, error)
    usage = shutil.disk_usage(previous.parent)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=2048))
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.save_atomic(STATE, previous.parent / "ckpt-0000002.pt")
    message = str(info.value)
    assert "the write stopped part-way (torch: unexpected pos 768 vs 662)" in message
    assert "enforce fail" not in message
    assert "free space there: 2.0 KiB, the checkpoint needs" in message
    assert "(not enough space)" in message
    assert f"Files already in {previous.parent} are intact" in message
    assert _temporaries(previous.parent) == []
    monkeypatch.undo()
    assert ckpt.load(previous)["iteration"] == 1


def test_a_refused_rename_removes_the_written_temporary(previous, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(ckpt.CheckpointError, match=r"Permission denied \(EACCES\); free space"):
        ckpt.save_atomic(STATE, previous.parent / "ckpt-0000002.pt")
    assert _temporaries(previous.parent) == []


def test_an_interrupted_write_removes_its_temporary_and_stays_an_interrupt(previous, monkeypatch):
    _failing_file_writes(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_atomic(STATE, previous.parent / "ckpt-0000002.pt")
    assert _temporaries(previous.parent) == []


def test_a_failed_best_copy_keeps_the_old_best(previous, monkeypatch):
    folder = previous.parent
    best = ckpt.copy_atomic(previous, folder / "best.pt")
    newer = ckpt.save_atomic(STATE, folder / "ckpt-0000002.pt")

    def full(src, dst, *args):
        dst.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.copy_atomic(newer, best)
    message = str(info.value)
    assert f"cannot write best.pt in {folder}: No space left on device (ENOSPC)" in message
    assert f"the checkpoint needs {ckpt._size(newer.stat().st_size)}" in message
    assert _temporaries(folder) == []
    monkeypatch.undo()
    assert ckpt.load(best)["iteration"] == 1


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    stale = [".ckpt-0000004.pt.tmp-4242", ".best.pt.tmp-17", ".best.tmp"]
    keep = ["ckpt-0000002.pt", "best.pt", "notes.tmp", ".ckpt-0000002.pt.tmp-x"]
    for name in stale + keep:
        (tmp_path / name).write_bytes(b"x")
    assert ckpt.remove_stale_temporaries(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert ckpt.remove_stale_temporaries(tmp_path / "missing") == 0


@pytest.fixture
def written(tmp_path: Path) -> bytes:
    path = ckpt.save_atomic(STATE, tmp_path / "good.pt")
    return path.read_bytes()


def _load_error(path: Path) -> str:
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    # torch's advice to load with weights_only=False would run code from the file
    assert "weights_only" not in message and "likely succeed" not in message
    return message


def test_a_truncated_checkpoint_is_called_truncated(tmp_path, written):
    for cut in (100, len(written) - 30):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(written[:cut])
        message = _load_error(path)
        assert f"it is truncated or corrupt (its zip archive is incomplete; {cut} bytes)" in message


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(os.urandom(500))
    assert "it is not a PyTorch checkpoint (not a zip archive; 500 bytes)" in _load_error(path)
    path.write_bytes(b"")
    assert "the file is empty (0 bytes)" in _load_error(path)


class Custom:
    """A class a checkpoint must never contain."""

    def __init__(self) -> None:
        self.value = 3


def test_a_pickled_object_is_called_an_unsafe_pickle(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"format": ckpt.FORMAT_VERSION, "x": Custom()}, path)
    message = _load_error(path)
    assert f"it holds a pickled Python object ({__name__}.Custom)" in message
    assert "an unsafe pickle" in message


# ----------------------------------------------------------------------------------------------
# best.pt: a reference to the best checkpoint, not a copy
# ----------------------------------------------------------------------------------------------
FULL = {
    "iteration": 1,
    "model": {"w": torch.arange(1000, dtype=torch.float32)},
    "ema": {},
    "optimizer": {"state": {0: {"exp_avg": torch.ones(1000), "exp_avg_sq": torch.ones(1000)}}},
    "rng": {"torch": torch.get_rng_state()},
}


def test_best_is_a_hard_link_while_its_checkpoint_is_kept(tmp_path):
    first = ckpt.save_atomic(FULL, tmp_path / "ckpt-0000001.pt")
    best = ckpt.save_best(first, FULL, only_weights=True)
    assert best == tmp_path / "best.pt" and os.path.samefile(best, first)  # no second copy
    second = ckpt.save_atomic({**FULL, "iteration": 2}, tmp_path / "ckpt-0000002.pt")
    ckpt.prune(tmp_path, keep=2)
    assert os.path.samefile(best, first)
    assert _temporaries(tmp_path) == []
    ckpt.save_best(second, {**FULL, "iteration": 2}, only_weights=True)  # a new best
    assert os.path.samefile(best, second) and os.stat(first).st_nlink == 1


@pytest.mark.parametrize("model_only", [True, False])
def test_retention_never_deletes_the_best_and_slims_it_to_its_weights(tmp_path, model_only):
    first = ckpt.save_atomic(FULL, tmp_path / "ckpt-0000001.pt")
    best = ckpt.save_best(first, FULL, only_weights=model_only)
    full_size = first.stat().st_size
    ckpt.save_atomic({**FULL, "iteration": 2}, tmp_path / "ckpt-0000002.pt")
    ckpt.prune(tmp_path, keep=1, best_model_only=model_only)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt-0000002.pt"]
    saved = ckpt.load(best)
    assert saved["iteration"] == 1 and torch.equal(saved["model"]["w"], FULL["model"]["w"])
    if model_only:  # what eval and predict read, without the optimiser's two moments
        assert saved["model_only"] and "optimizer" not in saved and "rng" not in saved
        assert best.stat().st_size < full_size / 2
    else:
        assert best.stat().st_size == full_size and "optimizer" in saved


def test_without_hard_links_best_is_its_weights_or_a_copy(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")  # what vfat answers

    monkeypatch.setattr(os, "link", no_links)
    first = ckpt.save_atomic(FULL, tmp_path / "ckpt-0000001.pt")
    best = ckpt.save_best(first, FULL, only_weights=True)
    assert ckpt.load(best)["model_only"] and not os.path.samefile(best, first)
    best = ckpt.save_best(first, FULL, only_weights=False)
    assert best.read_bytes() == first.read_bytes()
    assert _temporaries(tmp_path) == []


def test_a_full_disk_while_linking_keeps_the_old_best(tmp_path, monkeypatch):
    first = ckpt.save_atomic(FULL, tmp_path / "ckpt-0000001.pt")
    best = ckpt.save_best(first, FULL, only_weights=True)
    second = ckpt.save_atomic({**FULL, "iteration": 2}, tmp_path / "ckpt-0000002.pt")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(ckpt.CheckpointError, match="cannot write best.pt .* space left"):
        ckpt.save_best(second, {**FULL, "iteration": 2}, only_weights=True)
    assert ckpt.load(best)["iteration"] == 1 and _temporaries(tmp_path) == []
