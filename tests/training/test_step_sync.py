"""GPU readiness: one training iteration never reads a tensor's value on the host.

Tensors on the ``meta`` device have shapes but no data, so any host read inside the iteration
(``.item()``, ``.tolist()``, ``bool(tensor)``, printing, data-dependent Python branches) raises.
The whole iteration -- forward, alignment, weighting updates, metric sums, backward, optimiser
step and EMA update -- running on ``meta`` proves it issues no host-device synchronisation; the
engine reads the accumulated sums once per log window.
"""

from __future__ import annotations

import pytest
import torch

from semimatch.methods.registry import build_algorithm
from semimatch.models import InputNormalizer, build_model
from semimatch.training.ema import ModelEMA
from semimatch.training.step import StepInfo, train_step


@pytest.mark.parametrize(
    "algorithm",
    [
        "supervised",
        "pseudolabel",
        "fixmatch",
        "flexmatch",
        "softmatch",
        "freematch",
        "adamatch",
        "dash",
        "uda",
        "pimodel",
        "meanteacher",
        "vat",
    ],  # fmt: skip
)
@pytest.mark.parametrize("forward_mode", ["two-pass", "joint", "split"])
def test_training_iteration_has_no_host_sync(algorithm, forward_mode):
    meta = torch.device("meta")
    net = InputNormalizer(build_model("cnn", 10, in_channels=1), (0.5,), (0.25,)).to(meta)
    options = {"per_class": True} if algorithm == "softmatch" else {}
    if algorithm == "dash":  # step 0 is the warm-up, step 1 sets rho_init
        options = {"dash_warmup": 1}
    algo = build_algorithm(algorithm, 10, num_unlabeled=40, **options).to(meta)
    ema = ModelEMA(net, 0.99, warmup=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, foreach=True)
    x = torch.empty(8, 1, 28, 28, dtype=torch.uint8, device=meta)
    y = torch.empty(8, dtype=torch.long, device=meta)
    u = torch.empty(16, 1, 28, 28, dtype=torch.uint8, device=meta)
    t = torch.empty(16, dtype=torch.long, device=meta)
    for step in range(2):
        loss, sums = train_step(
            net,
            algo,
            x,
            y,
            u,
            u if algo.uses_strong else None,
            t,
            forward_mode=forward_mode,
            # FlexMatch's memory update is on the device too; the ramp-up reads the budget,
            # Mean Teacher the EMA's model.
            info=StepInfo(step, t, 10, ema.module),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net, step)
    assert loss.device == meta and loss.shape == ()
    assert sums["conf_hist"].shape == (50,) and sums["class_weight"].shape == (10,)
