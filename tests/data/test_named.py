"""Named datasets (CIFAR, SVHN, STL-10, MNIST, Fashion-MNIST, digits) on tiny files written
by the tests, the registry's names and options, and each bad-input error."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.fake_files import FAKE_CIFAR_CLASSES, FAKE_CIFAR_PER_FILE, write_idx
from semimatch.data import DATASETS, load_dataset, read_idx
from semimatch.data.named import default_root


def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


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
    assert info.spec.image_size == (32, 32) and info.spec.channels == 3 and info.spec.hflip is True
    assert info.spec.mean == (0.4914, 0.4822, 0.4465) and len(info.spec.std) == 3
    assert ds.extra_unlabeled is None


def test_cifar10_hflip_option_overrides_default(fake_cifar10_root):
    assert load_dataset("cifar10", root=fake_cifar10_root, hflip=False).info.spec.hflip is False


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
    assert ds.info.spec.hflip is False
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
    assert ds.info.spec.image_size == (96, 96) and ds.info.spec.hflip is True
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
    assert ds.info.spec.channels == 1 and ds.info.spec.image_size == (28, 28)
    assert ds.info.spec.hflip is (name == "fashion_mnist")
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
    assert ds.info.spec.hflip is False and ds.info.num_classes == 10
    assert np.bincount(ds.test.labels).min() >= 35  # stratified
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.test.as_array(), ds.test.as_array())


def test_digits_refuses_loader_options_it_cannot_use():
    with pytest.raises(ValueError, match="digits ships with scikit-learn"):
        load_dataset("digits", root="/data")


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
    assert default_root() == str(tmp_path)
