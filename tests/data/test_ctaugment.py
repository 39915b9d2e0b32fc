"""CTAugment (FixMatch's libml/ctaugment.py): each op and whole strong views against the per-image
PIL path, the policy's bin probabilities and threshold, the rate update against a float64
transcription of the reference formulas, the rates as state (round trip, two gloo processes),
refusals, and a CLI run whose resume equals the uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import semimatch
from helpers.gloo import run_on_gloo
from semimatch.cli import main
from semimatch.config import Config, ConfigError
from semimatch.data import from_features
from semimatch.data.ctaugment import CTA_OPS, CTAParams, CTAugment, apply_pil, proximity
from semimatch.runs.resolve import resolve

NAMES = [name for name, _ in CTA_OPS]
BINS = dict(CTA_OPS)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _images(n: int, size: int, channels: int, seed: int = 0) -> np.ndarray:
    """Half noise, half noisy gradients (natural-looking histograms and edges)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n, size, size, channels))
    ramp = np.linspace(0, 1, size)
    smooth = rng.uniform(0, 255, (n, 1, 1, channels)) * ramp[None, :, None, None] + rng.normal(
        0, 8, (n, size, size, channels)
    )
    out = np.where(np.arange(n)[:, None, None, None] % 2 == 0, noise, smooth)
    return np.clip(out, 0, 255).astype(np.uint8)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (28, 1)])
@pytest.mark.parametrize("name", NAMES)
def test_each_op_matches_the_pil_path(name: str, size: int, channels: int) -> None:
    n = 24
    images = _images(n, size, channels, seed=size)
    a = torch.linspace(0, 0.999, n, dtype=torch.float64)
    args = torch.stack([a, a.flip(0)], 1).unsqueeze(1)  # every level, every resampling filter
    ops = torch.full((n, 1), NAMES.index(name))
    centres = torch.randint(size, (n, 2, 2), generator=torch.Generator().manual_seed(0))
    params = CTAParams(None, ops, args, centres)
    got = _nhwc(CTAugment((size, size), True).apply(_nchw(images), params, cutout=False))
    want = np.stack(
        [
            apply_pil(img, ops[i].tolist(), args[i].tolist(), centres[i].tolist(), cutout=False)
            for i, img in enumerate(images)
        ]
    )
    diff = np.abs(got.astype(int) - want.astype(int))
    # The RandAugment pair's tolerance: NEAREST warps may pick the neighbouring pixel where a
    # sampling point lies within ~1e-5 of a boundary (PIL's fixed-point coordinates).
    assert (diff.max(axis=-1) > 0).mean() < 0.005, (diff.max(axis=-1) > 0).mean()


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (28, 1)])
def test_whole_strong_views_match_pil_replaying_the_same_parameters(
    size: int, channels: int
) -> None:
    images = _images(48, size, channels, seed=1)
    aug = CTAugment((size, size), hflip=True)
    aug.rates.uniform_(0, 1, generator=torch.Generator().manual_seed(3))  # a learned state
    params = aug.sample_params(48, size, size, torch.Generator().manual_seed(0))
    got = _nhwc(aug.apply(_nchw(images), params))
    pad, want = aug.weak.padding[0], []
    for i, img in enumerate(images):
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
        top, left = int(params.weak.top[i]), int(params.weak.left[i])
        view = padded[top : top + size, left : left + size]
        view = np.ascontiguousarray(view[:, ::-1] if bool(params.weak.flip[i]) else view)
        ops, args, centres = params.ops[i].tolist(), params.args[i].tolist(), params.centres[i]
        want.append(apply_pil(view, ops, args, centres.tolist()))
    diff = np.abs(got.astype(int) - np.stack(want).astype(int))
    assert (diff > 1).mean() < 0.005 and diff.mean() < 0.05, ((diff > 1).mean(), diff.mean())
    # FixMatch's final cutout at level 1: a grey square of 2 * (side // 2) px, clipped.
    assert (got == 127).all(axis=-1).sum((1, 2)).max() >= (2 * ((1 + int(size * 0.499)) // 2)) ** 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_equal_cpu_views_with_a_cpu_generator() -> None:
    x = _nchw(_images(64, 32, 3))
    aug = CTAugment((32, 32), hflip=True)
    cpu = aug(x, torch.Generator().manual_seed(0))
    gpu = aug.to("cuda")(x.cuda(), torch.Generator().manual_seed(0)).cpu()
    assert (cpu != gpu).float().mean() < 0.005


def _rate_to_p(rate: np.ndarray, decay: float = 0.99, th: float = 0.85) -> np.ndarray:
    """The reference's ``rate_to_p``, transcribed in float64."""
    p = rate.astype(np.float64) + (1 - decay)
    p = p / p.max()
    p[p < th] = 0
    return p


def test_bin_probabilities_and_threshold_follow_rate_to_p() -> None:
    aug = CTAugment((8, 8), hflip=False)
    aug.rates.uniform_(0, 1, generator=torch.Generator().manual_seed(1))
    got = aug.bin_probs()
    for i, (_, bins) in enumerate(CTA_OPS):
        for j, nb in enumerate(bins):
            want = _rate_to_p(aug.rates[i, j, :nb].double().numpy())
            np.testing.assert_allclose(got[i, j, :nb].numpy(), want, rtol=1e-12)
            assert (got[i, j, nb:] == 0).all()


def test_policies_draw_only_bins_above_the_threshold_and_probes_draw_uniformly() -> None:
    aug = CTAugment((8, 8), hflip=False)
    aug.rates.zero_()
    aug.rates[:, :, 5] = 1.0  # only bin 5 of every argument reaches th: (0 + .01) / 1.01 < .85
    ops, args = aug.sample_policy(4000, torch.Generator().manual_seed(0), probe=False)
    nbins = torch.tensor([[*b, 0, 0][:2] for _, b in CTA_OPS])[ops]
    used = nbins > 0
    assert ((args * nbins).floor()[used] == 5).all()  # (bin + U) / bins: inside bin 5
    assert (args[~used] == 0).all()
    counts = torch.bincount(ops.flatten(), minlength=len(CTA_OPS)).double()
    assert (counts / counts.sum() - 1 / len(CTA_OPS)).abs().max() < 0.015  # ops uniformly
    _, probe_args = aug.sample_policy(4000, torch.Generator().manual_seed(0), probe=True)
    a = probe_args[..., 0][ops != NAMES.index("identity")]
    assert abs(float(a.mean()) - 0.5) < 0.02 and float(a.min()) >= 0 and float(a.max()) < 1


def test_rate_update_matches_a_float64_transcription_of_the_reference() -> None:
    gen = torch.Generator().manual_seed(2)
    aug = CTAugment((8, 8), hflip=False)
    oracle = {name: [np.ones(b) for b in bins] for name, bins in CTA_OPS}
    for _ in range(3):  # several steps, bins hit repeatedly
        ops, args = aug.sample_policy(64, gen, probe=True)
        probs = torch.softmax(torch.randn(64, 5, generator=gen, dtype=torch.float64), 1)
        labels = torch.randint(5, (64,), generator=gen)
        prox = proximity(probs, labels)
        aug.update(ops, args, prox)
        for i in range(64):
            error = probs[i].numpy().copy()
            error[int(labels[i])] -= 1
            q = 1 - 0.5 * np.abs(error).sum()  # FixMatch's training loop
            assert abs(q - float(prox[i])) < 1e-12
            for s in range(2):
                name = NAMES[int(ops[i, s])]
                for a, rate in zip(args[i, s].tolist(), oracle[name], strict=False):
                    b = int(a * len(rate) * 0.999)  # update_rates
                    rate[b] = rate[b] * 0.99 + q * (1 - 0.99)
    for i, (name, bins) in enumerate(CTA_OPS):
        for j, nb in enumerate(bins):
            np.testing.assert_allclose(aug.rates[i, j, :nb].numpy(), oracle[name][j], atol=1e-6)
    assert (aug.rates != 1).sum() > 50


def test_rates_round_trip_through_a_state_dict_and_drive_the_views() -> None:
    aug = CTAugment((16, 16), hflip=True)
    aug.rates.uniform_(0, 1, generator=torch.Generator().manual_seed(4))
    other = CTAugment((16, 16), hflip=True)
    other.load_state_dict(aug.state_dict())
    assert torch.equal(other.rates, aug.rates)
    x = _nchw(_images(8, 16, 3))
    same = [a(x, torch.Generator().manual_seed(5)) for a in (aug, other)]
    assert torch.equal(*same)
    fresh = CTAugment((16, 16), hflip=True)(x, torch.Generator().manual_seed(5))
    assert not torch.equal(fresh, same[0])  # the rates change which bins are drawn


def _rates_after_half(rank: int, ops, args, prox) -> torch.Tensor:  # noqa: ANN001
    aug = CTAugment((8, 8), hflip=False)
    half = slice(rank * 16, (rank + 1) * 16)
    aug.update(ops[half], args[half], prox[half])  # each rank its own probe results
    return aug.rates


def test_two_gloo_processes_hold_the_rates_of_one(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(6)
    aug = CTAugment((8, 8), hflip=False)
    ops, args = aug.sample_policy(32, gen, probe=True)
    prox = torch.rand(32, generator=gen)
    ranks = run_on_gloo(_rates_after_half, tmp_path, ops, args, prox)
    aug.update(ops, args, prox)  # one process, all results in rank order
    for rates in ranks:
        assert torch.equal(rates, aug.rates)


CLI = ["train", "--dataset", "digits", "--algorithm", "fixmatch", "--num-labels", "20"]
CLI += ["--iterations", "6", "--eval-every", "3", "--log-every", "3", "--batch-size", "8"]
CLI += ["--uratio", "2", "--seed", "1", "--precision", "fp32", "--no-tensorboard"]
CLI += ["--threads", "1", "--strong-augment", "ctaugment", "--keep-checkpoints", "2"]


def test_a_cli_run_learns_rates_and_its_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main([*CLI, "--out", str(run)]) == 0
    last = run / "checkpoints" / "ckpt-0000006.pt"
    ref = torch.load(last, weights_only=False)
    assert (ref["augment"]["rates"] != 1).any()  # the probe moved the rates
    last.unlink()  # as if stopped after iteration 3
    assert main(["train", "--resume", str(run)]) == 0
    got = torch.load(last, weights_only=False)
    for part in ("augment", "model"):
        for key, value in ref[part].items():
            assert torch.equal(got[part][key], value), (part, key)


def test_ctaugment_is_refused_where_it_cannot_run(tmp_path, capsys) -> None:
    assert main([*CLI, "--out", str(tmp_path / "r"), "--augment", "pil"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--augment batched" in err[0], err
    features = from_features(np.random.default_rng(0).normal(size=(40, 5)), np.arange(40) % 4)
    with pytest.raises(ConfigError, match="--strong-augment ctaugment augments images"):
        resolve(Config(strong_augment="ctaugment"), features, torch.device("cpu"))


@pytest.mark.slow
def test_a_torchrun_job_of_two_gloo_processes_trains_with_ctaugment(tmp_path: Path) -> None:
    """Two ranks probe their own labeled halves and gather the results (CTAugment.update); the
    job finishes and the checkpoint holds moved rates."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(semimatch.__file__).parents[1]))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "semimatch", *CLI, "--out", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = torch.load(run / "checkpoints" / "ckpt-0000006.pt", weights_only=False)
    assert (saved["augment"]["rates"] != 1).sum() > 10
