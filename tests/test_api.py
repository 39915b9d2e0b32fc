"""The Python door: presets + overrides, your own data / backbone / weighting / augmentations,
``from_torch``, and the three doors (CLI, ``semimatch.train``, the estimator) agreeing exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import semimatch
from semimatch.api import make_config
from semimatch.cli import main
from semimatch.config import ConfigError
from semimatch.data import ArraySource, balanced_split, from_arrays, load_dataset
from semimatch.data.adapters import TorchImageSource, from_torch, to_hwc_uint8
from semimatch.runs.resolve import resolve
from semimatch.runs.run import load_run
from semimatch.sklearn import SemiSupervisedClassifier
from semimatch.training.diagnostics import LABELED_PROBE
from semimatch.training.metrics import read_jsonl

# A tiny, fast digits recipe shared by the tests (8 labeled + 16 unlabeled images per step).
TINY = dict(
    dataset="digits",
    num_labels=20,
    iterations=6,
    batch_size=8,
    uratio=2,
    seed=2,
    eval_every=6,
    log_every=3,
    precision="fp32",
    threads=1,
    tensorboard=False,
)


@pytest.fixture
def restore_determinism():
    """``deterministic=True`` switches a process-wide torch flag; put it back afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


# ----------------------------------------------------------------------------------------------
# Config: preset + overrides
# ----------------------------------------------------------------------------------------------
def test_a_preset_with_overrides_resolves():
    cfg = make_config(preset="cifar10-40-softmatch", iterations=2000, eval_every=100)
    assert (cfg.preset, cfg.algorithm, cfg.dataset, cfg.num_labels) == (
        "cifar10-40-softmatch",
        "softmatch",
        "cifar10",
        40,
    )
    assert (cfg.iterations, cfg.eval_every, cfg.backbone, cfg.n_sigma) == (
        2000,
        100,
        "wrn_28_2",
        2.0,
    )
    # Resolution against a CIFAR-shaped stand-in (no CIFAR here): paper values stay pinned,
    # auto fields are derived, and the method's options build.
    rng = np.random.default_rng(0)
    fake = from_arrays(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 10)
    res = resolve(cfg, fake, torch.device("cpu"))
    assert res.ema_decay == 0.999 and res.bn_momentum == 0.001 and res.ema_warmup is False
    # Presets pin the papers' fp32 (bf16 is a flag), so precision is not derived.
    assert res.stat_momentum == 0.999 and res.precision == "fp32" and res.augment == "batched"
    assert "precision" not in res.auto and "ema_decay" not in res.auto


def test_train_from_a_preset_with_digits_overrides():
    run = semimatch.train(
        preset="cifar10-40-softmatch",
        dataset="digits",
        backbone="cnn",
        **{k: v for k, v in TINY.items() if k not in ("dataset",)},
    )
    assert run.config.preset == "cifar10-40-softmatch" and run.config.iterations == 6
    assert run.config.n_sigma == 2.0 and run.summary["status"] == "finished"
    assert run.evaluate()["n"] == 360


def test_config_errors_name_the_problem():
    with pytest.raises(ConfigError, match="did you mean 'iterations'"):
        make_config(preset="cifar10-40-softmatch", iteratons=5)
    with pytest.raises(ConfigError, match="either a config or a preset"):
        semimatch.train({"iterations": 5}, preset="cifar10-40-softmatch")
    with pytest.raises(ConfigError, match="unknown preset"):
        make_config(preset="cifar10-41-softmatch")


# ----------------------------------------------------------------------------------------------
# Your own weighting function, backbone and augmentations
# ----------------------------------------------------------------------------------------------
class ConfidentHalf:
    """A user weighting function: weight 1 when the (aligned) max probability exceeds 0.5.

    Not an ``nn.Module`` - any object with ``update`` / ``__call__`` will do; it counts calls.
    """

    def __init__(self) -> None:
        self.updates = 0
        self.calls = 0

    def update(self, probs: torch.Tensor) -> None:
        assert probs.dim() == 2 and probs.shape[1] == 10
        self.updates += 1

    def __call__(self, probs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (probs.max(dim=1).values > 0.5).float()


def test_train_with_a_custom_weighting_function(tmp_path):
    weighting = ConfidentHalf()
    run = semimatch.train(weighting=weighting, out=tmp_path / "run", **TINY)
    assert weighting.updates == TINY["iterations"]  # one update per training step
    # one weighting per step, plus the lambda(p) curve logged at each evaluation
    assert weighting.calls == TINY["iterations"] + 1
    assert run.algorithm.weighting is weighting and run.algorithm.name == "custom:ConfidentHalf"
    evals = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[-1]["weighting"] == {"type": "ConfidentHalf"}
    assert set(evals[-1]["lambda_curve"]["w"]) <= {0.0, 1.0}


def test_a_custom_weighting_run_says_so_and_resumes_only_with_it(tmp_path, capsys):
    """summary.json, the report and checkpoints name the custom weighting; a resume that would
    silently continue with the config's built-in algorithm is refused, naming the fix."""
    import json

    from semimatch.errors import TrainingError
    from semimatch.report import comparison_rows

    out = tmp_path / "run"
    semimatch.train(weighting=ConfidentHalf(), out=out, **TINY)
    err = capsys.readouterr().err
    assert "warning: the weighting ConfidentHalf is not an nn.Module: checkpoints cannot" in err
    assert json.loads((out / "summary.json").read_text())["algorithm"] == "custom:ConfidentHalf"
    assert comparison_rows([out])[0]["algorithm"] == "custom:ConfidentHalf"
    assert main(["train", "--resume", str(out)]) == 2
    assert "custom:ConfidentHalf" in capsys.readouterr().err
    with pytest.raises(TrainingError, match="custom:ConfidentHalf.*weighting="):
        semimatch.train(out=out, resume=True)
    # resume=True takes the saved config: options that would change it are refused (the
    # run's own values, as its command gave them, are not a change).
    changed = {**TINY, "batch_size": 4, "eval_every": 3}
    with pytest.raises(ConfigError, match=r"saved config; drop \['batch_size', 'eval_every'\]"):
        semimatch.train(weighting=ConfidentHalf(), out=out, resume=True, **changed)
    run = semimatch.train(weighting=ConfidentHalf(), out=out, resume=True, **TINY)
    assert run.summary["status"] == "finished"
    assert run.summary["algorithm"] == "custom:ConfidentHalf"
    loaded = load_run(out)  # prediction needs no weighting
    assert loaded.algorithm is None and loaded.predict(np.zeros((2, 8, 8), np.uint8)).shape == (2,)


def test_a_weighting_without_the_protocol_is_refused():
    with pytest.raises(ValueError, match="update"):
        semimatch.train(weighting=lambda p: p.max(dim=1).values, **TINY)
    with pytest.raises(ConfigError, match="stat_momentum, tau configure the built-in algorithms"):
        semimatch.train(weighting=ConfidentHalf(), tau=0.5, stat_momentum=0.9, **TINY)


class TinyNet(nn.Module):
    """A user backbone: float NCHW in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)
        self.batches = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches += 1
        return self.fc(x.flatten(1))


def test_train_with_a_custom_backbone_and_reload_it(tmp_path):
    net = TinyNet()
    run = semimatch.train(model=net, out=tmp_path / "run", **TINY)
    assert run.model.model is net  # wrapped by the input normaliser, trained in place
    assert net.batches >= TINY["iterations"] and run.config.backbone == "custom:TinyNet"
    images = load_dataset("digits").test.as_array()[:20]
    with pytest.raises(ValueError, match="pass model="):
        load_run(tmp_path / "run", checkpoint="last", device="cpu")
    again = load_run(tmp_path / "run", checkpoint="last", device="cpu", model=TinyNet())
    assert np.array_equal(again.predict_proba(images), run.predict_proba(images))


class Shift:
    """Weak view: roll the image by -1..1 px (randomness from the rng the loader passes)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.calls += 1
        return np.roll(img, int(rng.integers(-1, 2)), axis=1)


class Invert:
    """Strong view: the negative image."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        self.calls += 1
        return 255 - img


def test_train_with_custom_view_callables():
    weak, strong = Shift(), Invert()
    # num_workers=0 keeps the callables in this process, so their counters are visible here.
    run = semimatch.train(weak_view=weak, strong_view=strong, num_workers=0, **TINY)
    k, b, mu = TINY["iterations"], TINY["batch_size"], TINY["uratio"]
    # Each view also makes the labeled probe of the diagnostics once
    # (semimatch.training.diagnostics).
    probe = min(LABELED_PROBE, TINY["num_labels"])
    assert weak.calls == k * (b + mu * b) + probe  # labeled + unlabeled weak views
    assert strong.calls == k * mu * b + probe
    assert run.config.augment == "pil" and run.summary["status"] == "finished"


def test_strong_augment_is_the_config_variant_and_views_are_the_callables():
    run = semimatch.train(strong_augment="usb", **{**TINY, "iterations": 1, "eval_every": 1})
    assert run.config.strong_augment == "usb"
    with pytest.raises(ValueError, match="weak_view must be a callable"):
        semimatch.train(weak_view=3, **TINY)
    # A callable under the config field's name is refused, naming the keyword it belongs to.
    for arg, view in (("strong_augment", "strong_view"), ("weak_augment", "weak_view")):
        with pytest.raises(ConfigError, match=f"pass your own callable as {view}=") as err:
            semimatch.train(**{arg: Invert()}, **TINY)
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# from_torch
# ----------------------------------------------------------------------------------------------
class PILDigits(Dataset):
    """torchvision-style dataset: (PIL 'L' image, int label) items and a ``classes`` list."""

    classes = [f"digit{i}" for i in range(10)]

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.reads = 0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        self.reads += 1
        return Image.fromarray(self.images[i, :, :, 0], mode="L"), int(self.labels[i])


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_from_torch_converts_pil_and_tensor_datasets(digits):
    x, y = digits.train.as_array()[:40], digits.train.labels[:40]
    labeled = PILDigits(x, y)
    # unlabeled: bare CHW float tensors in [0, 1] (ToTensor output); test: (tensor, tensor)
    unlabeled = [torch.from_numpy(img.transpose(2, 0, 1)).float() / 255 for img in x[:7]]
    test = TensorDataset(torch.from_numpy(x[:5].transpose(0, 3, 1, 2)), torch.from_numpy(y[:5]))
    data = from_torch(labeled, unlabeled, test)
    assert isinstance(data.train, ArraySource) and np.array_equal(data.train.as_array(), x)
    assert np.array_equal(data.train.labels, y)
    assert np.array_equal(data.extra_unlabeled.as_array(), x[:7])
    assert (data.extra_unlabeled.labels == -1).all()
    assert np.array_equal(data.test.as_array(), x[:5]) and np.array_equal(data.test.labels, y[:5])
    assert data.info.num_classes == 10 and data.info.class_names[3] == "digit3"
    assert data.info.spec.image_size == (8, 8) and data.info.spec.channels == 1


def test_from_torch_reads_large_images_lazily():
    class Photos(Dataset):
        targets = [0, 1, 0]

        def __init__(self) -> None:
            self.reads = 0

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            self.reads += 1
            size = 128 if i < 2 else 100  # the last one is the wrong size
            return Image.new("RGB", (size, size), (i, 0, 0)), self.targets[i]

    ds = Photos()
    data = from_torch(ds, num_classes=2, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert isinstance(data.train, TorchImageSource) and data.train.image_shape == (128, 128, 3)
    # labels came from `targets` and mean/std were given: only image 0 (for the size) was read
    assert np.array_equal(data.train.labels, [0, 1, 0]) and ds.reads == 1
    with pytest.raises(ValueError, match=r"labeled\[2\].*Resize"):
        data.train[2]
    assert data.train[1][0, 0].tolist() == [1, 0, 0]


def test_from_torch_rejects_mixed_sizes_and_bad_values():
    imgs = [torch.zeros(1, 8, 8), torch.zeros(1, 9, 8)]
    with pytest.raises(ValueError, match=r"labeled\[1\].*one size"):
        from_torch(list(zip(imgs, [0, 1], strict=True)))
    normalised = [(torch.full((3, 4, 4), -0.5), 0), (torch.zeros(3, 4, 4), 1)]
    with pytest.raises(ValueError, match="Normalize"):
        from_torch(normalised)
    ok = [(torch.zeros(1, 4, 4), 0), (torch.zeros(1, 4, 4), 1)]
    with pytest.raises(ValueError, match=r"test\[0\]: label 5 is out of range"):
        from_torch(ok, test=[(torch.zeros(1, 4, 4), 5)], num_classes=2)
    with pytest.raises(ValueError, match="no label"):
        from_torch([torch.zeros(1, 4, 4)])
    with pytest.raises(ValueError, match="channels"):
        to_hwc_uint8(torch.zeros(2, 4, 4))


def test_train_on_torch_datasets(digits):
    x, y = digits.train.as_array()[:200], digits.train.labels[:200].copy()
    y[20:] = -1  # 20 labeled, the rest unlabeled
    tensors = TensorDataset(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(y))
    test = TensorDataset(
        torch.from_numpy(digits.test.as_array()[:50].transpose(0, 3, 1, 2)),
        torch.from_numpy(digits.test.labels[:50]),
    )
    data = from_torch(tensors, test=test, num_classes=10, hflip=False)
    cfg = {**TINY, "num_labels": None}
    run = semimatch.train(data=data, **cfg)
    assert run.evaluate()["n"] == 50 and run.summary["status"] == "finished"


# ----------------------------------------------------------------------------------------------
# Three doors, one engine
# ----------------------------------------------------------------------------------------------
def test_cli_api_and_estimator_train_the_same_model(tmp_path, digits, restore_determinism):
    """Same seed and settings -> bit-identical weights and test predictions from all three."""
    k, seed = 8, 5
    common = dict(
        algorithm="softmatch",
        iterations=k,
        batch_size=8,
        uratio=2,
        seed=seed,
        precision="fp32",
        deterministic=True,
        threads=1,
    )
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in common.items()]
    assert (
        main(
            [
                "train",
                "--dataset=digits",
                "--num-labels=50",
                "--tensorboard=false",
                *flags,
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    cli = load_run(tmp_path / "cli", checkpoint="last", device="cpu")

    api = semimatch.train(dataset="digits", num_labels=50, tensorboard=False, **common)

    split = balanced_split(digits.train.labels, 10, 50, seed)
    y = np.full(len(digits.train), -1)
    y[split.labeled] = digits.train.labels[split.labeled]
    est = SemiSupervisedClassifier(
        algorithm="softmatch",
        max_iter=k,
        batch_size=8,
        uratio=2,
        random_state=seed,
        precision="fp32",
        device="cpu",
        config={"deterministic": True, "threads": 1},
    ).fit(digits.train.as_array(), y)

    runs = {"cli": cli, "api": api, "estimator": est.run_}
    ref = api.ema_model.state_dict()
    for door, run in runs.items():
        state = run.ema_model.state_dict()
        assert state.keys() == ref.keys(), door
        for name, tensor in ref.items():
            assert torch.equal(state[name].cpu(), tensor.cpu()), f"{door}: {name} differs"
    test_x = digits.test.as_array()
    pred = api.predict(test_x)
    assert np.array_equal(cli.predict(test_x), pred)
    assert np.array_equal(est.predict(test_x), pred)
    assert est.score(test_x, digits.test.labels) == pytest.approx(api.evaluate()["top1"])


def test_predict_decodes_image_files_as_training_does(tmp_path):
    """Prediction must see the pixels training saw: cover + centre-crop + bicubic, not a
    squashing resize (35 grey levels apart on average for a 24x40 photo before the fix)."""
    from semimatch.data.folders import image_files, load_images

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i, (h, w) in enumerate([(12, 20), (30, 18), (9, 9), (8, 8)]):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / cls / f"{i}.png")
    trained_on = load_dataset("imagefolder", root=tmp_path, image_size=8).train.images
    predicted_on = load_images(image_files(tmp_path), (8, 8), 3)
    np.testing.assert_array_equal(predicted_on, trained_on)


def test_predict_warns_once_about_images_it_crops_or_enlarges_a_lot(tmp_path, capsys):
    run = semimatch.train(**{**TINY, "iterations": 2, "eval_every": 2})  # digits: 8x8 input
    rng = np.random.default_rng(0)
    shapes = {"same": (8, 8), "wide": (8, 16), "fourthree": (12, 9), "tiny": (1, 1), "x4": (2, 2)}
    for name, (h, w) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    capsys.readouterr()
    rows = semimatch.predict(run, [tmp_path])
    assert len(rows) == 5  # predicted all the same, only warned
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert warnings == [
        "warning: predict: the model takes 8x8 images (height x width, the size it was trained "
        "at); of the 5 image(s), 1 was centre-cropped to its aspect ratio, losing more than 25% "
        f"of their area (up to 50%: {tmp_path / 'wide.png'} is 8x16) and 1 was enlarged more "
        f"than 4x (up to 8x: {tmp_path / 'tiny.png'} is 1x1). Predictions on them may be poor; "
        "crop or resize the images to 8x8 yourself to choose what the model sees"
    ]
    # At the limits (a 4:3 crop loses exactly 25%, 2x2 -> 8x8 is exactly 4x): no warning.
    semimatch.predict(run, [tmp_path / n for n in ("same.png", "fourthree.png", "x4.png")])
    assert "warning:" not in capsys.readouterr().err


def test_importing_semimatch_first_makes_waiting_openmp_threads_sleep():
    """OMP_WAIT_POLICY=PASSIVE unless set (a shared CPU does not collapse); after torch: unset."""
    import os
    import subprocess
    import sys

    show = "import os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}

    def policy(code: str, **extra: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", f"{code}; {show}"],
            env={**env, **extra},
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    # Two fresh interpreters (each import of torch costs seconds); a value the user set is
    # kept by os.environ.setdefault.
    assert policy("import semimatch") == "PASSIVE"
    assert policy("import torch, semimatch") == "None"


def test_feature_vectors_train_reload_and_predict_through_the_python_api(tmp_path):
    """Any modality goes through the same front door: (N, D) features get an MLP by default."""
    from sklearn.datasets import load_digits

    from semimatch.data import from_features

    X, y = load_digits(return_X_y=True)
    y = y.copy()
    y[60:] = -1
    run = semimatch.train(
        data=from_features(X, y), iterations=4, eval_every=2, out=tmp_path / "run", threads=1
    )
    assert (run.config.backbone, run.config.channels_last) == ("mlp", False)
    again = load_run(tmp_path / "run", checkpoint="last")
    assert np.array_equal(again.predict_proba(X[:7]), run.predict_proba(X[:7]))
    with pytest.raises(ConfigError, match="backbone='cnn' takes images"):
        semimatch.train(data=from_features(X, y), backbone="cnn", iterations=2)


def test_from_torch_refuses_an_empty_inferred_class():
    pairs = [(torch.zeros(1, 4, 4), y) for y in (1, 2, 1, 2)]  # 1-based: no class 0
    with pytest.raises(ValueError, match=r"class 0 has no labeled sample"):
        from_torch(pairs)
    assert from_torch(pairs, num_classes=3).info.num_classes == 3
