"""Shared fixtures: tiny on-disk datasets in the real formats, written per test session.

Every dataset here is a few dozen images, so tests exercise the real readers (torchvision's
CIFAR pickle layout, IDX files, image folders) without downloads.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_files import FAKE_CIFAR_CLASSES, FAKE_CIFAR_PER_FILE, write_idx  # noqa: F401
from helpers.text_fixtures import write_tiny_bert  # noqa: F401 - the fixture below uses it


@pytest.fixture(scope="session")
def idx_writer() -> Callable[[Path, np.ndarray], Path]:
    """The IDX writer, for tests that build their own (e.g. broken) IDX files."""
    return write_idx


def _fake_cifar_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3072) CHW-flattened uint8 images and labels ``i % 10`` (torchvision's layout)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture(scope="session")
def fake_cifar10_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding ``cifar-10-batches-py/`` with 5x20 train and 20 test images."""
    root = tmp_path_factory.mktemp("cifar_root")
    base = root / "cifar-10-batches-py"
    base.mkdir()
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        data, labels = _fake_cifar_images(FAKE_CIFAR_PER_FILE, seed=i)
        entry = {"batch_label": name, "data": data, "labels": labels.tolist()}
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": FAKE_CIFAR_CLASSES, "num_vis": 3072}, f)
    return root


def _fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8)


@pytest.fixture(scope="session", params=["gz", "raw"])
def fake_idx_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with the four MNIST-style IDX files (30 train, 10 test), gzipped or raw."""
    root = tmp_path_factory.mktemp(f"idx_{request.param}")
    ext = ".gz" if request.param == "gz" else ""
    for prefix, n, seed in (("train", 30, 0), ("t10k", 10, 1)):
        x, y = _fake_mnist(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y)
    return root


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/train/{bird,cat,dog}/`` (4 RGB 12x12 PNGs each), ``root/unlabeled/`` (5 images)
    and ``root/test/{cat,dog}/`` (2 each). Pixel (0, 0) of each labeled image encodes its class
    in the red channel (bird 0, cat 100, dog 200)."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["bird", "cat", "dog"]):
        for i in range(4):
            img = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            img[0, 0, 0] = 100 * c
            _save_png(root / "train" / name / f"{i}.png", img)
    for i in range(5):
        _save_png(root / "unlabeled" / f"u{i}.png", rng.integers(0, 256, (12, 12, 3), np.uint8))
    for name in ("cat", "dog"):
        for i in range(2):
            _save_png(
                root / "test" / name / f"{i}.png", rng.integers(0, 256, (12, 12, 3), np.uint8)
            )
    (root / "train" / "README.txt").write_text("not an image; ignored")
    return root


class _ClosedPipe:
    """A standard output whose reader has gone (``... | head -1``): every write fails."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture
def close_stdout(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to replace ``sys.stdout`` by a closed pipe (``monkeypatch.undo()`` restores).

    A function, not a patch at set-up: pytest's output capture sets ``sys.stdout`` again when
    the test body starts.
    """
    return lambda: monkeypatch.setattr("sys.stdout", _ClosedPipe())


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face folder of a tiny random BERT (2 layers, hidden 16) and its vocabulary:
    ``config.json``, ``model.safetensors`` and ``vocab.txt`` (``write_tiny_bert``)."""
    pytest.importorskip("transformers")
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "tiny-bert")


@pytest.fixture
def run_folder() -> Callable[..., object]:
    """``run_folder(path, cfg=None, checkpoint=True)``: a run directory as a run writes it
    (config, split, dataset, metrics; a checkpoint of iteration 2), without training, on 20
    8x8 images of 4 classes (``from_arrays``, seed 0) with the split that labels them all."""
    from semimatch.config import Config
    from semimatch.data import from_arrays, given_split
    from semimatch.runs import checkpoint as ckpt
    from semimatch.runs.run import RunDir

    def make(path: Path, cfg: Config | None = None, checkpoint: bool = True) -> RunDir:
        rng = np.random.default_rng(0)
        data = from_arrays(rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), np.arange(20) % 4)
        run_dir = RunDir(path)
        run_dir.write_start(cfg or Config(), given_split(data.train.labels), data.info)
        run_dir.metrics.write_text("")
        if checkpoint:
            run_dir.checkpoints.mkdir()
            ckpt.save_atomic({"iteration": 2}, run_dir.checkpoints / ckpt.checkpoint_name(2))
        return run_dir

    return make


@pytest.fixture(autouse=True)
def restore_the_semimatch_log_level():
    """A test that quiets the ``semimatch`` logger must not silence the tests after it (their
    stdout checks read its INFO lines): the level is put back after every test."""
    logger = logging.getLogger("semimatch")
    level = logger.level
    yield
    logger.setLevel(level)
