"""``TrainState``: what a checkpoint saves is exactly what a resume restores."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from semimatch.config import Config
from semimatch.errors import TrainingError
from semimatch.methods.registry import build_algorithm
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.state import TrainState, read_checkpoint
from semimatch.training.ema import ModelEMA

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


def test_one_reader_serves_a_resume_and_a_reload(tmp_path):
    """``read_checkpoint``: the saved method and pool (an older checkpoint without its method
    name stands for the config's), and one error for weights that do not fit."""
    path = state(0).save(tmp_path, 1, Config(), CPU)
    saved = read_checkpoint(path, CPU)
    assert saved.algorithm_name("fixmatch") == "softmatch" and saved.num_unlabeled is None
    with pytest.raises(ckpt.CheckpointError, match=r"does not match run/config.json \(.*\); why"):
        saved.load_into({"model": nn.Linear(3, 5), "ema": None}, "run/config.json", "why")
    older = {k: v for k, v in saved.state.items() if k not in ("format", "algorithm_name")}
    older_path = ckpt.save_atomic(older, tmp_path / "older.pt")
    assert read_checkpoint(older_path, CPU).algorithm_name("fixmatch") == "fixmatch"


def test_the_default_keeps_one_checkpoint_and_best_costs_nothing_while_it_is_kept(tmp_path):
    s = trained(state(0), 1)
    for k, best in ((1, True), (2, True)):
        s.save(tmp_path, k, Config(), CPU, best=best)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "ckpt-0000002.pt"]
    assert os.path.samefile(tmp_path / "best.pt", tmp_path / "ckpt-0000002.pt")  # one file
    s.save(tmp_path, 3, Config(), CPU)  # not a better model: best.pt keeps iteration 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "ckpt-0000003.pt"]
    best = ckpt.load(tmp_path / "best.pt")
    assert best["iteration"] == 2 and best["model_only"] and "optimizer" not in best
    assert best["ema"] and best["algorithm"]  # what eval/predict (and Run.algorithm) read
    with pytest.raises(ckpt.CheckpointError, match="only the weights.*resume from the run's last"):
        state(1).restore(tmp_path / "best.pt", Config(), CPU, rank=0)


def test_a_disabled_ema_stores_no_second_copy_of_the_model(tmp_path):
    s = trained(state(0), 1)
    s.ema = None  # ema_decay=0 (hf: backbones' default)
    saved = ckpt.load(s.save(tmp_path, 1, Config(), CPU))
    assert saved["ema"] == {}


def _die_at_change(n: int) -> None:
    """Make this process exit at once (no clean-up: as SIGKILL) at its n-th rename, link or
    deletion of a file."""
    count = [0]

    def dying(real):
        def call(*args, **kwargs):
            if count[0] == n:
                os._exit(3)
            count[0] += 1
            return real(*args, **kwargs)

        return call

    for name in ("replace", "link", "unlink"):
        setattr(os, name, dying(getattr(os, name)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="simulates SIGKILL with fork + os._exit")
def test_a_kill_at_any_moment_of_saving_leaves_a_loadable_best_and_last(tmp_path):
    """The child process dies (os._exit: no clean-up, as SIGKILL) at the n-th file-system
    change of four saves (best, best, worse, worse; keep 1, best.pt slimmed); whatever n, the
    folder holds a loadable last checkpoint and a best.pt of the best iteration saved so far."""
    s = trained(state(0), 1)
    plan = [(1, True), (2, True), (3, False), (4, False)]
    n, survived = 0, False
    while not survived:
        folder = tmp_path / f"crash-{n}"
        folder.mkdir()
        pid = os.fork()
        if pid == 0:  # the child: save, dying at the n-th change
            _die_at_change(n)
            for k, best in plan:
                s.save(folder, k, Config(), CPU, best=best)
            os._exit(0)
        survived = os.waitpid(pid, 0)[1] == 0
        found = ckpt.list_checkpoints(folder)
        last = found[-1][0] if found else 0
        if last:
            assert ckpt.load(found[-1][1])["iteration"] == last
        if last > 1:  # the first save had made best.pt before the second began
            best = ckpt.load(folder / "best.pt")["iteration"]
            assert best == 2 if last > 2 else best in (1, 2)
        ckpt.remove_stale_temporaries(folder)
        assert not [p for p in folder.iterdir() if ".tmp" in p.name]
        n += 1
    assert n > 8  # every link, rename and deletion of the four saves was a crash point
