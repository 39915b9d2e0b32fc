"""CRMatch (semimatch.methods.crmatch) against a float64 transcription of its equations; its heads,
the rotations, the modalities, the presets, a resumed run and two gloo processes."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from helpers.gloo import run_on_gloo
from helpers.reference_impl import crmatch_map_oracle, crmatch_tanh_oracle
from helpers.runs import TINY, assert_resume_is_exact, short_cli_run
from semimatch.cli import main
from semimatch.config import Config, ConfigError
from semimatch.methods.crmatch import record_feature_map, rotations
from semimatch.methods.heads import attach_heads, heads_of
from semimatch.methods.registry import build_algorithm
from semimatch.models.cnn import SmallCNN
from semimatch.models.wrn import WideResNet
from semimatch.presets import PRESETS
from semimatch.runs.engine import fit
from semimatch.training.recipe import check_needs
from semimatch.training.step import StepInfo, train_step

C, D, SIDE = 3, 5, 4  # classes, features, image side


class TanhNet(nn.Module):
    """``fc(tanh(body(flat(x))))``: features without BatchNorm (the oracle's model)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(SIDE * SIDE, D)
        self.fc = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.body(x.flatten(1))))


def tanh_net(algo: nn.Module, rng: np.random.Generator) -> tuple[nn.Module, dict[str, np.ndarray]]:
    """A float64 ``TanhNet`` with ``algo``'s heads, its weights drawn by ``rng`` (large, so some
    rows pass the threshold), and those weights by the oracle's names."""
    model = TanhNet()
    attach_heads(model, algo.make_heads(D), C)
    model.double()
    heads = heads_of(model)
    named = {"W1": model.body.weight, "b1": model.body.bias, "Wc": model.fc.weight,
             "bc": model.fc.bias, "Wd": heads["ds"].weight, "bd": heads["ds"].bias}  # fmt: skip
    if "rot" in heads:
        named.update(R1=heads["rot"][0].weight, r1=heads["rot"][0].bias,
                     R2=heads["rot"][2].weight, r2=heads["rot"][2].bias)  # fmt: skip
    params = {}
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)) * 2.0))
            params[name] = p.detach().numpy().copy()
    return model, params


@pytest.mark.parametrize(
    ("options", "n_u"),
    [({}, 5), ({}, 2),
     (dict(tau=0.6, lambda_u=2.0, lambda_fd=0.5, lambda_rot=0.7, fd_grad="strong"), 4),
     (dict(tau=0.85, lambda_rot=0.0), 5)],
)  # fmt: skip
def test_loss_matches_the_equations_over_steps(options, n_u):
    """Thresholded pseudo-labels, max(0, cos) of the projected weak/strong features on the
    confident rows, rotation cross-entropy on the first B weak rows turned four ways."""
    rng = np.random.default_rng(5)
    algo = build_algorithm("crmatch", C, **options)
    lambdas = tuple(options.get(k, 1.0) for k in ("lambda_u", "lambda_fd", "lambda_rot"))
    tau, n_lb = options.get("tau", 0.95), 3
    masked = []
    for k in range(4):
        model, params = tanh_net(algo, rng)
        x_lb, u_w, u_s = (rng.normal(size=(n, 1, SIDE, SIDE)) for n in (n_lb, n_u, n_u))
        y = rng.integers(0, C, n_lb)
        t = torch.from_numpy
        loss, sums = train_step(model, algo, t(x_lb), t(y), t(u_w), (t(u_s),), info=StepInfo(k))
        want = crmatch_tanh_oracle(params, x_lb, y, u_w, u_s, tau, lambdas, min(n_lb, n_u))
        # L_u goes through the shared float32 cross-entropy of SSLAlgorithm.loss.
        assert loss.item() == pytest.approx(want, rel=1e-6)
        loss.backward()
        assert heads_of(model)["ds"].weight.grad is not None
        assert sums["n_ulb"].item() == n_u
        masked.append(sums["weight_sum"].item())
    assert 0 < sum(masked) < 4 * n_u  # the threshold both kept and dropped rows


@pytest.mark.parametrize("fd_grad", ["both", "strong"])
def test_the_feature_distance_trains_the_weak_view_only_with_fd_grad_both(fd_grad):
    torch.manual_seed(0)
    algo = build_algorithm("crmatch", C, tau=1e-6, lambda_rot=0.0, fd_grad=fd_grad)
    model = TanhNet()
    attach_heads(model, algo.make_heads(D), C)
    x_lb, u_s = torch.randn(3, 1, SIDE, SIDE), torch.randn(4, 1, SIDE, SIDE)
    u_w = torch.randn(4, 1, SIDE, SIDE, requires_grad=True)
    loss, _ = train_step(model, algo, x_lb, torch.tensor([0, 1, 2]), u_w, (u_s,))
    loss.backward()
    reached = u_w.grad is not None and u_w.grad.abs().sum() > 0
    assert reached == (fd_grad == "both")  # the weak logits are detached either way


def test_rotations_are_usb_rot90_in_its_label_order():
    x = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    views, labels = rotations(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for r in range(4):
        want = np.rot90(x.numpy(), r, axes=(2, 3))  # counter-clockwise, as USB's rotate_img
        np.testing.assert_array_equal(views[2 * r : 2 * r + 2].numpy(), want)
    assert torch.equal(views[2:4, 0, 0], x[:, 0, :, 2])  # 90 degrees: the last column on top
    for bad in (torch.zeros(2, 6), torch.zeros(2, 1, 3, 4), torch.zeros(2, 7, dtype=torch.long)):
        with pytest.raises(ValueError, match="--lambda-rot 0"):
            rotations(bad)


def test_heads_needs_and_state():
    algo = build_algorithm("crmatch", C)
    needs = algo.needs
    assert needs.features and not needs.forward and needs.strong_views == 1
    heads = algo.make_heads(8)
    assert heads["ds"].weight.shape == (8, 8)
    assert [m.__class__.__name__ for m in heads["rot"]] == ["Linear", "ReLU", "Linear"]
    assert heads["rot"][2].out_features == 4
    assert "rot" not in build_algorithm("crmatch", C, lambda_rot=0.0).make_heads(8)
    assert dict(algo.state_dict()) == {}  # no memory, no queue: the weights are the state
    assert algo.describe()["weighting"] == {"type": "fixed", "tau": 0.95, "lambda_max": 1.0}
    # Its one joint forward is its own (as MixMatch's): another --forward-mode is refused
    # (it would do nothing); rotation makes it spatial (square images only, checked against
    # the data before training).
    check_needs(algo, "crmatch", None, continuous=False, cfg=Config(forward_mode="joint"))
    with pytest.raises(ConfigError, match="forwards the model itself"):
        check_needs(algo, "crmatch", None, continuous=False, cfg=Config(forward_mode="split"))
    assert needs.spatial and needs.extra_rows == 4
    assert not build_algorithm("crmatch", C, lambda_rot=0.0).needs.spatial
    with pytest.raises(ValueError, match="fd_grad"):
        build_algorithm("crmatch", C, fd_grad="weak")
    with pytest.raises(ValueError, match="lambda_fd"):
        build_algorithm("crmatch", C, lambda_fd=-1.0)
    # The heads are part of the model: a state_dict round trip gives the same model.
    rng = np.random.default_rng(0)
    model, _ = tanh_net(algo, rng)
    twin, _ = tanh_net(algo, np.random.default_rng(1))
    twin.load_state_dict(model.state_dict())
    assert any(k.startswith("ssl_heads.rot.") for k in model.state_dict())
    x = torch.randn(6, 1, SIDE, SIDE, dtype=torch.float64)
    for a, b in zip(heads_of(model).parameters(), heads_of(twin).parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(model(x), twin(x))


def test_presets_follow_usb():
    image = PRESETS["cifar10-40-crmatch"].values
    assert (image["tau"], image["lambda_u"], image["lambda_fd"], image["lambda_rot"]) == (
        0.95, 1.0, 1.0, 1.0
    )  # fmt: skip
    assert (image["fd_grad"], image["uratio"], image["ema_decay"]) == ("both", 7, 0.999)
    assert image["fd_input"] == "map"  # USB's ds_classifier on the WRN's flattened 8 x 8 map
    names = {n for n in PRESETS if n.endswith("-crmatch")}
    assert {"cifar100-400-crmatch", "svhn-250-crmatch", "stl10-1000-crmatch"} <= names
    assert {"imdb-20-crmatch", "yahoo_answers-2000-crmatch"} <= names
    text = PRESETS["ag_news-40-crmatch"].values
    assert (text["lambda_rot"], text["fd_grad"], text["uratio"]) == (0.0, "strong", 1)
    assert text["fd_input"] == "features"
    assert (text["lr"], text["layer_decay"]) == (5e-5, 0.65)


def test_a_short_run_from_the_command_line(tmp_path):
    trains = short_cli_run(tmp_path / "run", "crmatch")
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] > 0 for r in trains)


def test_feature_vectors_need_lambda_rot_0():
    from semimatch.data import from_features

    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype("float32")
    data = from_features(x, (x[:, 0] > 0).astype(int))
    cfg = dict(algorithm="crmatch", iterations=2, eval_every=2, num_labels=10, batch_size=4,
               threads=1, tensorboard=False)  # fmt: skip
    with pytest.raises(ConfigError, match="--lambda-rot 0"):  # before training
        fit(Config(**cfg), data=data)
    run = fit(Config(**cfg, lambda_rot=0.0), data=data)
    assert set(heads_of(run.model)) == {"ds"}  # no rotation head without rotation
    trains = [r for r in run.metrics if r["kind"] == "train"]
    assert trains and all(np.isfinite(r["extra_loss"]) for r in trains)


def test_a_text_run_on_a_tiny_bert(tmp_path, tiny_bert_dir, capsys):
    from helpers.text_fixtures import write_text_corpus

    corpus = write_text_corpus(tmp_path / "news.csv", n=60)
    args = ["train", "--dataset", "text", "--data-root", str(corpus), "--test-size", "20",
            "--backbone", f"hf:{tiny_bert_dir}", "--num-labels", "8", "--batch-size", "4",
            "--uratio", "1", "--threads", "1", "--tensorboard", "false", "--algorithm",
            "crmatch", "--iterations", "2", "--eval-every", "2"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "--lambda-rot 0" in capsys.readouterr().err.strip().splitlines()[-1]
    out = tmp_path / "run"
    assert main([*args, "--lambda-rot", "0", "--fd-grad", "strong", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["algorithm"], cfg["lambda_rot"], cfg["fd_grad"]) == ("crmatch", 0.0, "strong")


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The heads (model, EMA, optimiser state) resume exactly: the same final state as an
    uninterrupted run."""
    caplog.set_level(logging.WARNING, logger="semimatch")  # quiet, restored after the test
    cfg = Config(**TINY, algorithm="crmatch", iterations=4, eval_every=2, log_every=1,
                 deterministic=True, tau=0.3)  # fmt: skip
    assert_resume_is_exact(cfg, tmp_path, monkeypatch, stop_at=2)


# --- torchrun: each process's loss is a mean over its rows, DDP averages the gradients ---------

WORLD = 2


def shard_step(rank: int | None) -> dict[str, torch.Tensor]:
    """One step on the global batch (rank None) or on rank ``rank``'s half of it; the loss and
    the gradients, as DDP would average them (the sum over ranks / WORLD)."""
    rng = np.random.default_rng(9)
    algo = build_algorithm("crmatch", C, tau=0.5)
    model, _ = tanh_net(algo, rng)
    n = 8  # per step: 8 labeled and 8 unlabeled rows, so the B rotated rows are the weak ones
    x_lb, u_w, u_s = (torch.from_numpy(rng.normal(size=(n, 1, SIDE, SIDE))) for _ in range(3))
    y = torch.from_numpy(rng.integers(0, C, n))
    rows = slice(None) if rank is None else slice(rank * n // WORLD, (rank + 1) * n // WORLD)
    loss, _ = train_step(model, algo, x_lb[rows], y[rows], u_w[rows], (u_s[rows],))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    return {"loss": loss.detach(), **grads}


def test_two_gloo_processes_equal_one(tmp_path):
    ranks = run_on_gloo(shard_step, tmp_path, world=WORLD)
    reference = shard_step(None)
    for key, want in reference.items():
        got = (ranks[0][key] + ranks[1][key]) / WORLD
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_an_empty_unlabeled_shard_gives_a_finite_loss_that_reaches_every_head():
    """One rank may draw no unlabeled row: the loss stays finite and every head is in its graph
    (DDP waits for every parameter's gradient)."""
    torch.manual_seed(0)
    algo = build_algorithm("crmatch", C)
    model = TanhNet()
    attach_heads(model, algo.make_heads(D), C)
    empty = torch.zeros(0, 1, SIDE, SIDE)
    x_lb = torch.randn(3, 1, SIDE, SIDE)
    loss, sums = train_step(model, algo, x_lb, torch.tensor([0, 1, 2]), empty, (empty,))
    assert torch.isfinite(loss) and sums["n_ulb"].item() == 0
    loss.backward()
    assert all(p.grad is not None for p in heads_of(model).parameters())


def test_the_memory_preflight_counts_the_rotated_rows():
    from semimatch.training.memory import step_rows

    # FixMatch's joint rows (1 + 2 mu per labeled row), plus the 4 rotations of B weak rows.
    assert step_rows(build_algorithm("crmatch", C).needs, 7, "joint") == (1 + 14 + 4, 15)
    no_rotation = build_algorithm("crmatch", C, lambda_rot=0.0).needs
    assert step_rows(no_rotation, 7, "joint") == step_rows(
        build_algorithm("fixmatch", C).needs, 7, "joint"
    )


# --- fd_input="map": USB's WRN head on the flattened feature map before pooling ----------------


class TanhConvNet(nn.Module):
    """``fc(mean_hw tanh(conv1x1(x)))``: a feature map (N, D, 8, 8) without BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, D, 1), nn.Tanh())
        self.fc = nn.Linear(D, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("options", [{}, dict(tau=0.7, lambda_rot=0.5, fd_grad="strong")])
def test_the_map_projection_matches_the_equations_over_steps(options):
    rng = np.random.default_rng(8)
    algo = build_algorithm("crmatch", C, fd_input="map", **options)
    lambdas = tuple(options.get(k, 1.0) for k in ("lambda_u", "lambda_fd", "lambda_rot"))
    for k in range(3):
        model = TanhConvNet()
        attach_heads(model, algo.make_heads(D), C)
        model.double()
        heads = heads_of(model)
        assert heads["ds"][2].in_features == 8 * 8 * D
        named = {"W1": model.body[0].weight, "b1": model.body[0].bias, "Wc": model.fc.weight,
                 "bc": model.fc.bias, "Wd": heads["ds"][2].weight, "bd": heads["ds"][2].bias,
                 "R1": heads["rot"][0].weight, "r1": heads["rot"][0].bias,
                 "R2": heads["rot"][2].weight, "r2": heads["rot"][2].bias}  # fmt: skip
        params = {}
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape)) * 2.0))
                params[name] = p.detach().numpy().copy()
        x_lb, u_w, u_s = (rng.normal(size=(n, 1, 8, 8)) for n in (3, 4, 4))
        y = rng.integers(0, C, 3)
        t = torch.from_numpy
        loss, _ = train_step(model, algo, t(x_lb), t(y), t(u_w), (t(u_s),), info=StepInfo(k))
        want = crmatch_map_oracle(params, x_lb, y, u_w, u_s, options.get("tau", 0.95), lambdas, 3)
        assert loss.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    "build",
    [lambda: SmallCNN(num_classes=3, in_channels=1, width=4),
     lambda: WideResNet(num_classes=3, in_channels=1, widen_factor=1, blocks_per_group=1)],
)  # fmt: skip
def test_the_recorded_map_is_the_one_pooled_into_the_features(build):
    torch.manual_seed(0)
    model = build().eval()
    attach_heads(model, nn.Identity(), 3)
    x = torch.rand(2, 1, 16, 16)
    with record_feature_map(model) as maps:
        model(x)
    torch.testing.assert_close(maps[-1].mean(dim=(2, 3)), model.forward_features(x))
    n = len(maps)
    model(x)
    assert n > 1 and len(maps) == n  # recorded within the block only: its hooks are removed


def test_the_map_needs_a_convolutional_backbone():
    algo = build_algorithm("crmatch", C, fd_input="map", lambda_rot=0.0)
    model = TanhNet()
    attach_heads(model, algo.make_heads(D), C)
    x = torch.randn(2, 1, SIDE, SIDE)
    with pytest.raises(ValueError, match="--fd-input features"):
        train_step(model, algo, x, torch.tensor([0, 1]), x, (x,))
