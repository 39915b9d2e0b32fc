"""Writers of tiny files in the real dataset formats (used by conftest's fixtures and by tests
that write their own, e.g. broken, files)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

#: Images per CIFAR batch file in the fake CIFAR-10 (5 train files + 1 test file).
FAKE_CIFAR_PER_FILE = 20
FAKE_CIFAR_CLASSES = [f"class{c}" for c in range(10)]


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzip it when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path
