"""``TrainState``: what a checkpoint saves is exactly what a resume restores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semimatch import checkpoint as ckpt
from semimatch.algorithms import build_algorithm
from semimatch.config import Config
from semimatch.ema import ModelEMA
from semimatch.errors import TrainingError
from semimatch.state import TrainState

CPU = torch.device("cpu")


def state(seed: int, algorithm: str = "softmatch") -> TrainState:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0 / (k + 1))
    algo = build_algorithm(algorithm, 4)
    return TrainState(
        net,
        ModelEMA(net, 0.9),
        algo,
        algo.name,
        optimizer,
        scheduler,
        torch.amp.GradScaler("cpu", enabled=False),
    )


def trained(s: TrainState, steps: int) -> TrainState:
    for k in range(steps):
        x = torch.randn(16, 3)
        loss = s.net(x).logsumexp(dim=1).mean()
        s.optimizer.zero_grad()
        loss.backward()
        s.optimizer.step()
        s.scheduler.step()
        s.ema.update(s.net, k)
        s.algorithm.weigh(torch.softmax(torch.randn(16, 4), dim=1))
        s.log_window.add({"n_lb": torch.tensor(16.0)})
    s.history["errors"].append(0.5)
    return s


def test_a_restored_state_continues_exactly(tmp_path):
    a = trained(state(0), 3)
    path = a.save(tmp_path, 3, Config(), CPU, best=True)
    assert (tmp_path / "best.pt").is_file()
    b = state(1)
    assert b.restore(path, Config(), CPU, rank=0) == 3
    assert b.history == a.history and b.log_window.state() == a.log_window.state()
    torch.manual_seed(5)
    trained(a, 2)
    torch.manual_seed(5)
    trained(b, 2)
    for x, y in zip(
        [
            *a.net.state_dict().values(),
            *a.ema.state_dict().values(),
            *a.algorithm.state_dict().values(),
        ],
        [
            *b.net.state_dict().values(),
            *b.ema.state_dict().values(),
            *b.algorithm.state_dict().values(),
        ],
    ):
        assert torch.equal(x, y)
    assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]


def test_save_keeps_the_last_k(tmp_path):
    s = state(0)
    for k in (1, 2, 3):
        s.save(tmp_path, k, Config(keep_checkpoints=2), CPU)
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path)] == [
        "ckpt-0000002.pt",
        "ckpt-0000003.pt",
    ]


def test_another_algorithm_cannot_resume_the_checkpoint(tmp_path):
    path = state(0).save(tmp_path, 1, Config(), CPU)
    with pytest.raises(TrainingError, match="trained with algorithm 'softmatch'.*'fixmatch'"):
        state(0, "fixmatch").restore(path, Config(), CPU, rank=0)


def test_a_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    path = state(0).save(tmp_path, 1, Config(), CPU)
    other = state(0)
    other.net = nn.Sequential(nn.Linear(3, 5))
    with pytest.raises(ckpt.CheckpointError, match="does not match this run's model/config"):
        other.restore(path, Config(), CPU, rank=0)
