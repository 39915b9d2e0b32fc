"""Every dataset path on tiny files written by the tests, and each bad-input error."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAKE_CIFAR_CLASSES, FAKE_CIFAR_PER_FILE, write_idx
from semimatch.data import (
    DATASETS,
    ArraySource,
    LazyImageSource,
    from_arrays,
    load_dataset,
    read_idx,
)
from semimatch.data import datasets as dsmod


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


# --- CIFAR ------------------------------------------------------------------------------------
def test_cifar10_reads_torchvision_pickle_layout(fake_cifar10_root):
    ds = load_dataset("cifar10", root=fake_cifar10_root)
    n = 5 * FAKE_CIFAR_PER_FILE
    assert len(ds.train) == n and len(ds.test) == FAKE_CIFAR_PER_FILE
    x = ds.train.as_array()
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert ds.train.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.train.labels[:10], np.arange(10))
    # CHW-flattened rows become HWC images: channel c of image 0 is row 0's c-th 1024 bytes.
    with open(fake_cifar10_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f)["data"][0]
    for c in range(3):
        np.testing.assert_array_equal(x[0, :, :, c], row[c * 1024 : (c + 1) * 1024].reshape(32, 32))
    info = ds.info
    assert info.num_classes == 10 and info.class_names == tuple(FAKE_CIFAR_CLASSES)
    assert info.image_size == (32, 32) and info.channels == 3 and info.hflip is True
    assert info.mean == (0.4914, 0.4822, 0.4465) and len(info.std) == 3
    assert ds.extra_unlabeled is None


def test_cifar10_hflip_option_overrides_default(fake_cifar10_root):
    assert load_dataset("cifar10", root=fake_cifar10_root, hflip=False).info.hflip is False


def test_cifar100_reads_fine_labels(tmp_path):
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 100)):
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": (np.arange(n) % 100).tolist(),
            "coarse_labels": [0] * n,
        }
        with open(base / name, "wb") as f:
            pickle.dump(entry, f)
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i}" for i in range(100)]}, f)
    ds = load_dataset("cifar100", root=tmp_path)
    assert ds.info.num_classes == 100 and ds.info.class_names[7] == "c7"
    assert ds.train.as_array().shape == (200, 32, 32, 3)
    np.testing.assert_array_equal(ds.test.labels, np.arange(100))


def test_cifar10_missing_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "download=True" in msg and "--download" in msg


def test_cifar10_download_goes_through_torchvision(tmp_path, fake_cifar10_root, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR10:  # stands in for the network: "downloads" by copying the fake files
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            shutil.copytree(
                fake_cifar10_root / "cifar-10-batches-py", Path(root) / "cifar-10-batches-py"
            )

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    ds = load_dataset("cifar10", root=tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True)]
    assert len(ds.train) == 5 * FAKE_CIFAR_PER_FILE


def test_cifar_corrupt_batch_file_names_it(tmp_path, fake_cifar10_root):
    root = tmp_path / "copy"
    shutil.copytree(fake_cifar10_root, root)
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset("cifar10", root=root)


# --- SVHN / STL-10 --------------------------------------------------------------------------
def test_svhn_mat_files_and_extra(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6), ("extra", 9)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # SVHN stores digit 0 as 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", root=tmp_path)
    assert ds.train.as_array().shape == (12, 32, 32, 3) and ds.extra_unlabeled is None
    assert ds.info.hflip is False
    np.testing.assert_array_equal(ds.train.labels, (np.arange(12) % 10 + 1) % 10)
    ds = load_dataset("svhn", root=tmp_path, extra=True)
    assert len(ds.extra_unlabeled) == 9
    assert ds.extra_unlabeled.labels.min() >= 0  # ground truth kept for monitoring only


def test_stl10_binary_layout_and_unlabeled(tmp_path):
    base = tmp_path / "stl10_binary"
    base.mkdir()
    rng = np.random.default_rng(0)
    raw = {}
    for split, n in (("train", 4), ("test", 3), ("unlabeled", 5)):
        raw[split] = rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8)
        raw[split].tofile(base / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(base / f"{split}_y.bin")
    ds = load_dataset("stl10", root=tmp_path)
    # torchvision: reshape (-1, 3, 96, 96) then swap the last two axes -> CHW; we give HWC.
    expected = np.transpose(raw["train"].reshape(-1, 3, 96, 96), (0, 1, 3, 2)).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ds.train.as_array(), expected)
    np.testing.assert_array_equal(ds.train.labels, np.arange(4))
    assert ds.info.image_size == (96, 96) and ds.info.hflip is True
    unl = ds.extra_unlabeled
    assert len(unl) == 5 and unl.as_array() is None and (unl.labels == -1).all()
    exp_u = np.transpose(raw["unlabeled"].reshape(-1, 3, 96, 96), (0, 1, 3, 2)).transpose(
        0, 2, 3, 1
    )
    np.testing.assert_array_equal(unl[2], exp_u[2])
    np.testing.assert_array_equal(unl.gather([4, 0]), exp_u[[4, 0]])
    restored = pickle.loads(pickle.dumps(unl))  # workers under spawn get a fresh memory map
    np.testing.assert_array_equal(restored[1], exp_u[1])
    assert ds.labeled_folds is None  # no fold_indices.txt: folds unavailable, not invented


def _fake_stl10(root, n_train=6):
    base = root / "stl10_binary"
    base.mkdir()
    for split, n in (("train", n_train), ("test", 2), ("unlabeled", 3)):
        np.zeros(n * 3 * 96 * 96, dtype=np.uint8).tofile(base / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(base / f"{split}_y.bin")
    return base


def test_stl10_reads_the_predefined_folds(tmp_path):
    base = _fake_stl10(tmp_path)
    (base / "fold_indices.txt").write_text("0 3 5\n\n1 2 4 \n")  # the file's own format
    ds = load_dataset("stl10", root=tmp_path)
    assert [f.tolist() for f in ds.labeled_folds] == [[0, 3, 5], [1, 2, 4]]


@pytest.mark.parametrize(
    "text, match", [("0 1 x\n", "line 1 is not a list of integer"), ("0\n6 1\n", "line 2 indexes")]
)
def test_stl10_bad_fold_file_is_named(tmp_path, text, match):
    base = _fake_stl10(tmp_path)
    (base / "fold_indices.txt").write_text(text)
    with pytest.raises(ValueError, match=match):
        load_dataset("stl10", root=tmp_path)


@pytest.mark.parametrize("name", ["svhn", "stl10", "cifar100"])
def test_named_datasets_missing_raise_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset(name, root=tmp_path)


# --- MNIST / Fashion-MNIST (IDX) ------------------------------------------------------------
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_like_from_idx_directory(fake_idx_dir, name):
    ds = load_dataset(name, root=fake_idx_dir)
    assert ds.train.as_array().shape == (30, 28, 28, 1) and len(ds.test) == 10
    assert ds.info.channels == 1 and ds.info.image_size == (28, 28)
    assert ds.info.hflip is (name == "fashion_mnist")
    np.testing.assert_array_equal(ds.test.labels, np.arange(10))
    name_of = {"mnist": "0", "fashion_mnist": "T-shirt/top"}
    assert ds.info.class_names[0] == name_of[name]


def test_mnist_torchvision_raw_layout(tmp_path, fake_idx_dir):
    shutil.copytree(fake_idx_dir, tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", root=tmp_path)
    expected = read_idx(next(fake_idx_dir.glob("train-images*")))
    np.testing.assert_array_equal(ds.train.as_array()[..., 0], expected)


def test_mnist_missing_lists_the_places_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path) in str(err.value) and str(tmp_path / "MNIST" / "raw") in str(err.value)
    assert "download=True" in str(err.value)


@pytest.mark.skipif(
    not os.path.isdir("/usr/share/datasets/fashion-mnist"), reason="Debian fashion-mnist absent"
)
def test_fashion_mnist_system_copy_used_without_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMIMATCH_DATA", str(tmp_path))  # empty default root
    ds = load_dataset("fashion-mnist")
    assert len(ds.train) == 60000 and len(ds.test) == 10000
    np.testing.assert_array_equal(ds.test.labels[:5], [9, 2, 1, 1, 6])


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    good = write_idx(tmp_path / "a-idx3-ubyte", np.zeros((2, 3, 4), np.uint8))
    assert read_idx(good).shape == (2, 3, 4)
    trunc = tmp_path / "t-idx3-ubyte"
    trunc.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(trunc)
    png = _png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(png)


def test_idx_labels_out_of_range(tmp_path, fake_idx_dir):
    root = tmp_path / "bad"
    shutil.copytree(fake_idx_dir, root)
    for p in root.glob("train-labels*"):
        p.unlink()
    write_idx(root / "train-labels-idx1-ubyte", np.full(30, 12, np.uint8))
    with pytest.raises(ValueError, match="label 12 .* out of range"):
        load_dataset("mnist", root=root)


# --- digits ---------------------------------------------------------------------------------
def test_digits_offline_default():
    ds = load_dataset("digits")
    assert len(ds.train) + len(ds.test) == 1797 and len(ds.test) == 360
    x = ds.train.as_array()
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.uint8 and x.max() == 255
    assert ds.info.hflip is False and ds.info.num_classes == 10
    assert np.bincount(ds.test.labels).min() >= 35  # stratified
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.test.as_array(), ds.test.as_array())


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
    assert info.image_size == (12, 12) and info.channels == 3
    assert isinstance(ds.train, ArraySource)  # small images live in memory
    x = ds.train.as_array()
    assert x.shape == (12, 12, 12, 3)
    np.testing.assert_array_equal(x[:, 0, 0, 0], ds.train.labels * 100)
    assert len(ds.extra_unlabeled) == 5 and (ds.extra_unlabeled.labels == -1).all()
    np.testing.assert_array_equal(ds.test.labels, [1, 1, 2, 2])  # indices of the train classes
    assert len(info.mean) == 3 and all(s > 0 for s in info.std)


def test_paths_starting_with_a_tilde_mean_the_home_folder(tiny_image_folder, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_image_folder))
    ds = load_dataset("imagefolder", root="~/train", unlabeled_dir="~/unlabeled", test_dir="~/test")
    assert len(ds.train) == 12 and len(ds.extra_unlabeled) == 5 and len(ds.test) == 4


def test_digits_refuses_loader_options_it_cannot_use():
    with pytest.raises(ValueError, match="digits ships with scikit-learn"):
        load_dataset("digits", root="/data")


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
    assert ds.info.channels == 1 and ds.info.image_size == (8, 8)
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


# --- arrays -----------------------------------------------------------------------------------
def test_from_arrays_sklearn_convention():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 6, 6), dtype=np.uint8)
    y = np.array([0, 1, 2] * 6 + [-1, -1])
    xt, yt = rng.random((4, 6, 6)), np.array([0, 1, 2, 0])
    ds = from_arrays(x, y, xt, yt, class_names=["a", "b", "c"])
    assert ds.train.as_array().shape == (20, 6, 6, 1)
    assert ds.info.num_classes == 3 and ds.info.class_names == ("a", "b", "c")
    np.testing.assert_array_equal(ds.train.labels, y)
    np.testing.assert_array_equal(ds.test.as_array()[..., 0], np.rint(xt * 255).astype(np.uint8))
    np.testing.assert_allclose(ds.info.mean[0], x.mean() / 255, atol=1e-3)
    rgb = from_arrays(rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8), [0, 1, 0, 1, -1])
    assert rgb.info.channels == 3 and rgb.info.num_classes == 2


def test_from_arrays_bad_inputs():
    x = np.zeros((4, 5, 5), np.uint8)
    with pytest.raises(ValueError, match="out of range"):
        from_arrays(x, [0, 1, 5, 0], class_names=["a", "b"])
    with pytest.raises(ValueError, match="out of range"):
        from_arrays(x, [0, 1, -3, 0])
    with pytest.raises(ValueError, match="one label per image"):
        from_arrays(x, [0, 1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        from_arrays(x * 2.0 + 3.0, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="channels-first"):
        from_arrays(np.zeros((4, 3, 5, 5), np.uint8), [0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        from_arrays(x, [0, 0, -1, 0])
    with pytest.raises(ValueError, match="integers"):
        from_arrays(x, ["a", "b", "a", "b"])
    with pytest.raises(ValueError, match="test_labels"):
        from_arrays(x, [0, 1, 0, 1], x, [0, 1, 2, -1], class_names=["a", "b", "c"])


# --- names and options ------------------------------------------------------------------------
def test_unknown_dataset_name_lists_valid_ones():
    with pytest.raises(ValueError) as err:
        load_dataset("cifar-11")
    msg = str(err.value)
    assert "did you mean 'cifar10'" in msg
    assert all(name in msg for name in DATASETS)


def test_unknown_option_is_rejected(fake_cifar10_root):
    with pytest.raises(ValueError, match="extra"):
        load_dataset("cifar10", root=fake_cifar10_root, extra=True)


def test_default_root_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SEMIMATCH_DATA", str(tmp_path))
    assert dsmod.default_root() == str(tmp_path)


def test_labeled_folder_labels_by_the_runs_class_names(tmp_path):
    from semimatch.data.datasets import labeled_folder

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
