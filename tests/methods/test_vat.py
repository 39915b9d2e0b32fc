"""VAT (semimatch.methods.vat) against a float64 transcription of its equations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers.reference_impl import cross_entropy, entropy_oracle, rampup_oracle, vat_linear_oracle
from helpers.runs import short_cli_run
from semimatch.config import ConfigError
from semimatch.data.modalities import modality
from semimatch.methods.registry import build_algorithm
from semimatch.presets import PRESETS
from semimatch.training.recipe import check_needs
from semimatch.training.step import StepInfo, train_step


@pytest.mark.parametrize(
    ("options", "ratio", "shape"),
    [({}, 0.0, "linear"),
     (dict(unsup_warmup=0.4, entropy_weight=0.06, vat_eps=2.5, lambda_u=0.7), 0.4, "linear"),
     (dict(unsup_warmup=0.3, rampup_shape="sigmoid"), 0.3, "sigmoid")],
)  # fmt: skip
def test_loss_matches_the_equations_over_steps(options, ratio, shape):
    """L = CE(lb) + lambda_u r(k) LDS(r_adv) + lambda_ent H(p(u)), one power iteration from
    d ~ N(0, I), for a linear model whose input gradient the oracle writes in closed form."""
    rng = np.random.default_rng(2)
    total, C, D = 10, 4, 7  # noqa: N806
    algo = build_algorithm("vat", C, **options)
    lam, ent_w = options.get("lambda_u", 1.0), options.get("entropy_weight", 1.0)
    eps = options.get("vat_eps", 6.0)
    for k in range(6):
        W, b = rng.normal(size=(C, D)), rng.normal(size=C)  # noqa: N806
        model = torch.nn.Linear(D, C).double()
        with torch.no_grad():
            model.weight.copy_(torch.from_numpy(W))
            model.bias.copy_(torch.from_numpy(b))
        x_lb, u_w = rng.normal(size=(5, D)), rng.normal(size=(9, D))
        y = rng.integers(0, C, 5)
        torch.manual_seed(k)
        loss, sums = train_step(
            model, algo, torch.from_numpy(x_lb), torch.from_numpy(y), torch.from_numpy(u_w),
            info=StepInfo(k, iterations=total),
        )  # fmt: skip
        assert all(p.grad is None for p in model.parameters())  # the power iteration's own
        torch.manual_seed(k)
        d = torch.randn(9, D, dtype=torch.float64).numpy()
        lds = vat_linear_oracle(W, b, u_w, d, 1e-6, eps)
        want = (
            cross_entropy(x_lb @ W.T + b, y).mean()
            + lam * rampup_oracle(k, total, ratio, shape) * lds
            + ent_w * entropy_oracle(u_w @ W.T + b)
        )
        assert lds > 0
        assert loss.item() == pytest.approx(want, rel=1e-6, abs=1e-7)
        assert sums["extra_loss_sum"].item() == pytest.approx(
            9 * entropy_oracle(u_w @ W.T + b), rel=1e-5
        )


def test_perturbed_forwards_leave_batchnorm_statistics_to_the_step_forward():
    """The running statistics after a VAT step are those of the step's own forward alone."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    twin = copy.deepcopy(net)
    x_lb, u = torch.randn(4, 3), torch.randn(6, 3)
    loss, _ = train_step(net, build_algorithm("vat", 3), x_lb, torch.zeros(4, dtype=torch.long), u,
                         info=StepInfo(0, iterations=5))  # fmt: skip
    twin(torch.cat([x_lb, u]))
    for (key, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_texts_are_refused_and_images_perturbed_after_normalisation():
    from semimatch.methods.vat import perturbable
    from semimatch.models import InputNormalizer

    algo = build_algorithm("vat", 3)
    with pytest.raises(ConfigError, match="--algorithm vat .* token ids"):
        check_needs(algo, "vat", None, continuous=False)
    check_needs(algo, "vat", None, continuous=True)
    assert modality("text").continuous is False and modality("image").continuous is True
    inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    net = InputNormalizer(inner, (0.5,), (0.25,))
    pixels = torch.randint(0, 256, (2, 1, 3, 4), dtype=torch.uint8)
    forward, z = perturbable(net, pixels)
    assert forward is inner and z.is_floating_point()
    torch.testing.assert_close(forward(z), net(pixels))
    with pytest.raises(ValueError, match="--algorithm"):
        perturbable(torch.nn.Identity(), torch.zeros(2, 5, dtype=torch.long))


def test_state_dict_round_trip_and_presets():
    algo = build_algorithm("vat", 3, vat_eps=2.0)
    fresh = build_algorithm("vat", 3, vat_eps=2.0)
    fresh.load_state_dict(algo.state_dict())
    assert dict(fresh.state_dict()) == {} and fresh.needs.model and fresh.needs.strong_views == 0
    values = PRESETS["cifar10-40-vat"].values
    assert (values["entropy_weight"], values["vat_eps"], values["unsup_warmup"]) == (0.06, 6.0, 0.4)
    assert values["uratio"] == 1 and "imdb-20-vat" not in PRESETS


@pytest.mark.slow
def test_a_short_run_from_the_command_line(tmp_path):
    trains = short_cli_run(tmp_path / "run", "vat")
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] > 0 for r in trains)
