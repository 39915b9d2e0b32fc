"""ReMixMatch (semimatch.methods.remixmatch) against a float64 transcription of the equations."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers.gloo import run_on_gloo
from helpers.reference_impl import (
    rampup_oracle,
    remixmatch_marginal_oracle,
    remixmatch_mlp_oracle,
    remixmatch_rotate_oracle,
)
from helpers.runs import TINY, assert_resume_is_exact, short_cli_run
from semimatch.config import Config, ConfigError
from semimatch.data.sources import DatasetInfo, FeatureSpec, ImageSpec, TextSpec
from semimatch.methods.heads import attach_heads
from semimatch.methods.mixmatch import mixup_draw
from semimatch.methods.registry import build_algorithm
from semimatch.methods.remixmatch import ReMixMatchAlignment, rotate_batch, rotation_draw
from semimatch.presets import PRESETS
from semimatch.runs.engine import fit
from semimatch.training.memory import step_rows
from semimatch.training.recipe import check_needs
from semimatch.training.step import StepInfo, train_step


class TanhNet(nn.Module):
    """``z = fc(tanh(fc1(flat(x))))``: the features are fc's input (``methods.heads``)."""

    def __init__(self, inputs: int, hidden: int, classes: int, norm: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.norm = nn.BatchNorm1d(hidden) if norm else nn.Identity()
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.norm(self.fc1(x.flatten(1)))))


def _params(model: TanhNet) -> list[np.ndarray]:
    rot = model.ssl_heads["rotation"]
    layers = (model.fc1, model.fc, rot)
    return [t.detach().numpy() for m in layers for t in (m.weight, m.bias)]


@pytest.mark.parametrize(
    ("options", "views", "ratio"),
    [({}, 2, 1 / 64),
     (dict(da_estimate="ema", lambda_u=3.0, lambda_u1=0.7, lambda_rot=0.2, temperature=0.7,
           mixup_alpha=0.5, unsup_warmup=0.5), 1, 0.5),
     (dict(da_window=3, unsup_warmup=0.3), 3, 0.3)],
)  # fmt: skip
def test_loss_matches_the_equations_over_steps(options, views, ratio):
    """Five steps on random batches: the aligned anchor (the window or the EMA carried across
    steps), MixUp with the step's draw, the pre-mixup and rotation terms, the ramp."""
    rng = np.random.default_rng(5)
    total, C, S, H, B, seed = 10, 3, 4, 6, 5, 13  # noqa: N806
    counts = [2.0, 4.0, 2.0]  # p(y) exact in float32 (its buffer)
    algo = build_algorithm(
        "remixmatch", C, strong_views=views, labeled_counts=counts, **options
    ).double()
    get = {"lambda_u": 1.5, "lambda_u1": 0.5, "lambda_rot": 0.5, "temperature": 0.5,
           "mixup_alpha": 0.75, "da_window": 128, **options}.get  # fmt: skip
    means: list[np.ndarray] = []
    ema = None
    for k in range(5):
        model = TanhNet(S * S, H, C).double()
        attach_heads(model, algo.make_heads(H).double(), C)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))
        x_lb = rng.normal(size=(B, 1, S, S))
        u = [rng.normal(size=(B, 1, S, S)) for _ in range(views + 1)]
        y = rng.integers(0, C, B)
        t = torch.from_numpy
        loss, sums = train_step(model, algo, t(x_lb), t(y), t(u[0]), tuple(map(t, u[1:])),
                                info=StepInfo(k, iterations=total, seed=seed))  # fmt: skip
        params = _params(model)
        h = np.tanh(u[0].reshape(B, -1) @ params[0].T + params[1])
        logits = h @ params[2].T + params[3]
        mean = np.mean(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), axis=0)
        if get("da_estimate", "window") == "ema":
            ema = mean if ema is None else 0.999 * ema + 0.001 * mean
            p_tilde = ema
        else:
            p_tilde = remixmatch_marginal_oracle(means, get("da_window"), C)
        means.append(mean)
        lam, perm = mixup_draw(get("mixup_alpha"), B * (views + 2), seed, k, 0)
        turns = rotation_draw(B, seed, k, 0).numpy()
        want = remixmatch_mlp_oracle(
            params, x_lb, y, u[0], u[1:], lam, perm.numpy(), turns,
            np.array(counts) / sum(counts), p_tilde, get("temperature"), get("lambda_u"),
            get("lambda_u1"), get("lambda_rot"), rampup_oracle(k, total, ratio, "linear"),
        )  # fmt: skip
        assert loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert sums["n_ulb"].item() == B and sums["weight_sum"].item() == B
        loss.backward()
        assert model.ssl_heads["rotation"].weight.grad.abs().sum() > 0


def test_rotation_is_pils_and_reproducible():
    """A quarter turn is PIL's ``rotate(90 k)`` of the (square) image (USB's dataset), the
    turns come from (seed, iteration, rank) alone."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 3, 5, 5), dtype=np.uint8)
    turns = torch.tensor([0, 1, 2, 3, 1, 3])
    out = rotate_batch(torch.from_numpy(imgs), turns).numpy()
    for img, k, got in zip(imgs, turns.tolist(), out):
        pil = np.asarray(Image.fromarray(img.transpose(1, 2, 0)).rotate(90 * k)).transpose(2, 0, 1)
        assert np.array_equal(got, pil)
        assert np.array_equal(got, remixmatch_rotate_oracle(img, k))
    a, b = rotation_draw(64, 3, 7, 0), rotation_draw(64, 3, 7, 0)
    assert torch.equal(a, b) and set(a.tolist()) == {0, 1, 2, 3}
    assert not torch.equal(a, rotation_draw(64, 3, 8, 0))
    assert not torch.equal(a, rotation_draw(64, 3, 7, 1))


def test_only_the_first_mixed_chunk_updates_batchnorm_statistics():
    """The anchor, the labeled, the pre-mixup and the rotated forwards leave the running
    statistics; of the mixed chunks the first alone updates them (USB)."""
    torch.manual_seed(0)
    net = TanhNet(4, 6, 3, norm=True)
    algo = build_algorithm("remixmatch", 3, strong_views=2)
    attach_heads(net, algo.make_heads(6), 3)
    twin = copy.deepcopy(net)
    x_lb, u = torch.randn(4, 1, 2, 2), [torch.randn(4, 1, 2, 2) for _ in range(3)]
    loss, _ = train_step(net, algo, x_lb, torch.zeros(4, dtype=torch.long), u[0], tuple(u[1:]),
                         info=StepInfo(0, iterations=5, seed=2))  # fmt: skip
    lam, perm = mixup_draw(0.75, 16, 2, 0, 0)
    x = torch.cat([x_lb, u[1], u[2], u[0]])
    twin(lam * x[:4] + (1 - lam) * x[perm][:4])
    for (key, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a, b), key
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_alignment_state_round_trips_and_resumes_the_window():
    """The window, its position and p(y) are buffers: a state_dict copy aligns as the
    original does from then on (the ring buffer wraps after da_window batches)."""
    torch.manual_seed(1)
    one = ReMixMatchAlignment(3, "window", 4, labeled_counts=[1, 1, 2])
    for _ in range(6):
        one(torch.softmax(torch.randn(5, 3), dim=1))
    two = ReMixMatchAlignment(3, "window", 4)
    two.load_state_dict(one.state_dict())
    assert int(two.position) == 2 and two.p_data.tolist() == [0.25, 0.25, 0.5]
    for _ in range(3):
        p = torch.softmax(torch.randn(5, 3), dim=1)
        assert torch.equal(one(p), two(p))
    assert set(build_algorithm("remixmatch", 3, da_estimate="ema").state_dict()) == {
        "alignment.p_data",
        "alignment.p_model",
        "alignment.initialized",
    }
    with pytest.raises(ValueError, match="labeled_counts"):
        ReMixMatchAlignment(3, labeled_counts=[1, 2])


def _aligned_on_rank(rank: int, estimate: str, batches: list[torch.Tensor], world: int):
    align = ReMixMatchAlignment(3, estimate, 2, labeled_counts=[1, 2, 3])
    out = [align(b.tensor_split(world)[rank]) for b in batches]
    return [o.tolist() for o in out], align.state_dict()


@pytest.mark.parametrize("estimate", ["window", "ema"])
def test_two_gloo_processes_align_as_one(tmp_path, estimate):
    """Under torchrun the marginal is the global batch's (USB gathers the probabilities): two
    processes, each aligning its half (one of them once empty), hold one process's state."""
    torch.manual_seed(2)
    batches = [torch.softmax(torch.randn(n, 3), dim=1) for n in (6, 4, 1, 6)]
    ref_rows, ref_state = _aligned_on_rank(0, estimate, batches, 1)
    results = run_on_gloo(_aligned_on_rank, tmp_path, estimate, batches, 2)
    for step, want in enumerate(ref_rows):
        got = [row for rows, _ in results for row in rows[step]]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    for _, state in results:
        for key, value in ref_state.items():
            torch.testing.assert_close(state[key], value)


def _info(spec) -> DatasetInfo:
    return DatasetInfo("d", 3, ("a", "b", "c"), spec)


def test_square_images_only_refused_in_one_line_naming_the_flag():
    algo = build_algorithm("remixmatch", 3)
    features, text = FeatureSpec(4, (0.0,) * 4, (1.0,) * 4), TextSpec("t", 16)
    for spec, noun in ((features, "feature vectors"), (text, "texts")):
        with pytest.raises(ConfigError, match=f"^--algorithm remixmatch rotates .* on {noun};"):
            check_needs(algo, "remixmatch", None, True, None, _info(spec))
    rect = _info(ImageSpec((8, 12), 1, (0.5,), (0.25,), False))
    with pytest.raises(ConfigError, match="^--algorithm remixmatch .* square images, not 8x12"):
        check_needs(algo, "remixmatch", None, True, None, rect)
    # Without the rotation loss: MixMatch's refusal of token ids only.
    plain = build_algorithm("remixmatch", 3, lambda_rot=0.0)
    check_needs(plain, "remixmatch", None, True, None, _info(features))
    check_needs(plain, "remixmatch", None, True, None, rect)
    with pytest.raises(ConfigError, match="--algorithm remixmatch .* token ids"):
        check_needs(plain, "remixmatch", None, False, None, _info(text))
    square = _info(ImageSpec((8, 8), 1, (0.5,), (0.25,), False))
    check_needs(algo, "remixmatch", None, True, Config(), square)
    # Its own forward: the step's forward mode would do nothing, so another one is refused.
    with pytest.raises(ConfigError, match="forwards the model itself"):
        check_needs(algo, "remixmatch", None, True, Config(forward_mode="split"), square)
    with pytest.raises(ValueError, match="--algorithm remixmatch .* square images"):
        algo.rotation_loss(nn.Identity(), torch.zeros(2, 1, 4, 6), torch.zeros(2, dtype=torch.long))


def test_feature_vectors_are_refused_before_training(tmp_path):
    from semimatch.data import from_features

    rng = np.random.default_rng(0)
    data = from_features(rng.normal(size=(60, 4)).astype(np.float32), np.arange(60) % 3)
    cfg = Config(algorithm="remixmatch", num_labels=9, iterations=1, threads=1, tensorboard=False)
    with pytest.raises(ConfigError, match="--algorithm remixmatch rotates .* feature vectors"):
        fit(cfg, data=data, out=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_needs_presets_and_description():
    algo = build_algorithm("remixmatch", 3)
    needs = algo.needs
    assert needs.features and needs.spatial and not needs.forward and needs.strong_views == 8
    assert not needs.strong_as_weak
    assert not build_algorithm("remixmatch", 3, lambda_rot=0.0).needs.features
    # The memory pre-flight counts every row forwarded with gradient: labeled + mu (K strong +
    # weak) mixed, mu unmixed and mu rotated first strong views; the data: 1 + mu (1 + K).
    two = build_algorithm("remixmatch", 3, strong_views=2)
    assert step_rows(two.needs, 3, "joint") == (1 + 3 * 5, 1 + 3 * 3)
    assert algo.describe()["weighting"]["not_a_weighting_method"]
    values = PRESETS["cifar10-40-remixmatch"].values
    assert (values["lambda_u"], values["lambda_u1"], values["lambda_rot"]) == (1.5, 0.5, 0.5)
    assert (values["strong_views"], values["da_estimate"], values["uratio"]) == (2, "ema", 1)
    assert (values["mixup_alpha"], values["temperature"], values["unsup_warmup"]) == (
        0.75,
        0.5,
        1 / 64,
    )
    assert values["strong_augment"] == "fixmatch"  # RandAugment, as every preset
    assert not any(name.endswith("-remixmatch") and "lt-" in name for name in PRESETS)
    assert not any(name.startswith("ag_news") and "remixmatch" in name for name in PRESETS)


def test_a_short_run_from_the_command_line(tmp_path):
    """Digits through the CLI with CTAugment's strong views; p(y) is the labeled draw's."""
    trains = short_cli_run(
        tmp_path / "run",
        "remixmatch",
        "--strong-views",
        "2",
        "--strong-augment",
        "ctaugment",
        uratio=1,
    )
    assert trains and all(np.isfinite(r["loss"]) for r in trains)
    assert all(r["extra_loss"] > 0 for r in trains)  # the rotation term from the first step


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """The window, MixUp, the rotations and the ramp-up resume exactly."""
    caplog.set_level(logging.WARNING, logger="semimatch")  # quiet, restored after the test
    cfg = Config(**TINY, algorithm="remixmatch", iterations=6, eval_every=2, log_every=1,
                 deterministic=True, strong_views=2, da_window=3, unsup_warmup=0.5)  # fmt: skip
    result = assert_resume_is_exact(cfg, tmp_path, monkeypatch, stop_at=3)
    p_data = result.algorithm.alignment.p_data
    assert p_data.sum().item() == pytest.approx(1.0) and (p_data > 0).all()
