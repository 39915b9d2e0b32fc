"""Image folders: scanning, decoding, corrupt files, sizes and held-out folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semimatch.data import ArraySource, LazyImageSource, load_dataset
from semimatch.data.folders import labeled_folder


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)
    return path


def _folder(root: Path, classes: dict[str, int], size=(10, 10), channels=3) -> Path:
    rng = np.random.default_rng(1)
    for name, n in classes.items():
        for i in range(n):
            _png(root / name / f"{i}.png", rng.integers(0, 256, (*size, channels), np.uint8))
    return root


# --- image folders ---------------------------------------------------------------------------
def test_imagefolder_with_unlabeled_and_test_dirs(tiny_image_folder):
    ds = load_dataset(
        "imagefolder",
        root=tiny_image_folder / "train",
        unlabeled_dir=tiny_image_folder / "unlabeled",
        test_dir=tiny_image_folder / "test",
    )
    info = ds.info
    assert info.class_names == ("bird", "cat", "dog") and info.num_classes == 3
    assert info.spec.image_size == (12, 12) and info.spec.channels == 3
    assert isinstance(ds.train, ArraySource)  # small images live in memory
    x = ds.train.as_array()
    assert x.shape == (12, 12, 12, 3)
    np.testing.assert_array_equal(x[:, 0, 0, 0], ds.train.labels * 100)
    assert len(ds.extra_unlabeled) == 5 and (ds.extra_unlabeled.labels == -1).all()
    np.testing.assert_array_equal(ds.test.labels, [1, 1, 2, 2])  # indices of the train classes
    assert len(info.spec.mean) == 3 and all(s > 0 for s in info.spec.std)


def test_paths_starting_with_a_tilde_mean_the_home_folder(tiny_image_folder, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_image_folder))
    ds = load_dataset("imagefolder", root="~/train", unlabeled_dir="~/unlabeled", test_dir="~/test")
    assert len(ds.train) == 12 and len(ds.extra_unlabeled) == 5 and len(ds.test) == 4


def test_imagefolder_unlabeled_dir_inside_root_is_not_a_class(tmp_path):
    root = _folder(tmp_path / "data", {"a": 2, "b": 2})
    _folder(root / "unlabeled", {"sub": 3})
    ds = load_dataset("imagefolder", root=root, unlabeled_dir="unlabeled")
    assert ds.info.class_names == ("a", "b") and len(ds.extra_unlabeled) == 3


def test_imagefolder_grayscale_and_mixed_sizes(tmp_path):
    root = _folder(tmp_path / "g", {"a": 2, "b": 2}, size=(10, 10), channels=1)
    _png(root / "a" / "big.png", np.zeros((20, 14, 1), np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("imagefolder", root=root)
    ds = load_dataset("imagefolder", root=root, image_size=8)
    assert ds.info.spec.channels == 1 and ds.info.spec.image_size == (8, 8)
    assert ds.train.as_array().shape == (5, 8, 8, 1)
    ds = load_dataset("imagefolder", root=root, image_size=(6, 9), channels=3)
    assert ds.train.as_array().shape == (5, 6, 9, 3)


def test_imagefolder_large_images_load_lazily(tmp_path):
    root = _folder(tmp_path / "big", {"a": 2, "b": 1}, size=(120, 130))
    ds = load_dataset("imagefolder", root=root, image_size=100)
    assert isinstance(ds.train, LazyImageSource) and ds.train.as_array() is None
    img = ds.train[2]
    assert img.shape == (100, 100, 3) and img.dtype == np.uint8
    assert ds.train.gather([0, 2]).shape == (2, 100, 100, 3)
    # A file corrupted after loading is reported by path when it is read.
    (root / "b" / "0.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"b[/\\]0\.png"):
        ds.train[2]


def test_imagefolder_empty_and_single_class(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        load_dataset("imagefolder", root=tmp_path / "empty")
    single = _folder(tmp_path / "one", {"only": 3})
    with pytest.raises(ValueError, match="single class"):
        load_dataset("imagefolder", root=single)
    empty_class = _folder(tmp_path / "ec", {"a": 2})
    (empty_class / "b").mkdir()
    with pytest.raises(ValueError, match="holds no image"):
        load_dataset("imagefolder", root=empty_class)
    with pytest.raises(FileNotFoundError):
        load_dataset("imagefolder", root=tmp_path / "nope")
    with pytest.raises(ValueError, match="root"):
        load_dataset("imagefolder")


def test_imagefolder_corrupt_image_reported_or_skipped(tmp_path, capsys):
    root = _folder(tmp_path / "c", {"a": 3, "b": 3})
    bad = root / "b" / "1.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")) as err:
        load_dataset("imagefolder", root=root)
    assert "skip_corrupt=True" in str(err.value)
    capsys.readouterr()
    ds = load_dataset("imagefolder", root=root, skip_corrupt=True)
    assert len(ds.train) == 5
    assert f"warning: skipped 1 unreadable image file(s) (skip_corrupt), e.g. {bad}" in (
        capsys.readouterr().err
    )


def test_imagefolder_truncated_image_caught_at_decode(tmp_path):
    root = _folder(tmp_path / "t", {"a": 2, "b": 2}, size=(40, 40))
    path = root / "a" / "0.jpg"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:200])  # header intact, data cut
    with pytest.raises(ValueError, match="0.jpg"):
        load_dataset("imagefolder", root=root)


def test_imagefolder_test_dir_with_unknown_class(tiny_image_folder, tmp_path):
    test = _folder(tmp_path / "test", {"cat": 1, "zebra": 1})
    with pytest.raises(ValueError, match="zebra"):
        load_dataset("imagefolder", root=tiny_image_folder / "train", test_dir=test)


def test_labeled_folder_labels_by_the_runs_class_names(tmp_path):
    root = _folder(tmp_path / "held_out", {"dog": 2, "ant": 3}, size=(12, 20))
    src = labeled_folder(root, ("ant", "cat", "dog"), (8, 8), 3)  # "cat" absent: fine
    assert src.labels.tolist() == [0, 0, 0, 2, 2]
    trained_like = load_dataset("imagefolder", root=root, image_size=8).train
    decoded = np.stack([src[i] for i in range(len(src))])
    np.testing.assert_array_equal(decoded, trained_like.as_array())
    (root / "ant" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png.*skip_corrupt=True"):
        labeled_folder(root, ("ant", "cat", "dog"), (8, 8), 3)
    assert len(labeled_folder(root, ("ant", "cat", "dog"), (8, 8), 3, skip_corrupt=True)) == 5
    with pytest.raises(ValueError, match=r"\['dog'\] in .* are not among the training classes"):
        labeled_folder(root, ("ant", "cat"), (8, 8), 3)
    (tmp_path / "empty" / "ant").mkdir(parents=True)
    with pytest.raises(ValueError, match="no image files found under .*<class>/<image>"):
        labeled_folder(tmp_path / "empty", ("ant",), (8, 8), 3)
    with pytest.raises(FileNotFoundError, match="test_dir: no directory at"):
        labeled_folder(tmp_path / "nope", ("ant",), (8, 8), 3)
