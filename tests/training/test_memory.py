"""The pre-flight memory check (``semimatch.training.memory``) and the out-of-memory step.

The estimate against a real step's measured peak is checked by
``tests/benchmarks/test_memory_estimate_script.py`` (a fresh process per case).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from semimatch.cli import main
from semimatch.config import Config, ConfigError
from semimatch.errors import TrainingError
from semimatch.methods.consistency import Needs
from semimatch.methods.registry import build_algorithm
from semimatch.runs import engine
from semimatch.runs.engine import fit
from semimatch.training import memory
from semimatch.training.memory import (
    StepMemory,
    check_step_memory,
    estimate_step,
    saved_bytes,
    step_rows,
)

CPU = torch.device("cpu")
SMALL = ["--algorithm", "fixmatch", "--num-labels", "20", "--uratio", "2", "--threads", "1"]
SMALL += ["--precision", "fp32", "--no-tensorboard", "--eval-every", "3", "--log-every", "3"]


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(100, 50), nn.BatchNorm1d(50), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(50, 10))  # fmt: skip


def test_the_probe_counts_what_autograd_keeps_and_changes_nothing() -> None:
    net = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))
    total, largest = saved_bytes(net, torch.randn(8, 100), Config(precision="fp32"), CPU)
    # Linear 1 keeps its input, ReLU its output (Linear 2 keeps the same tensor), + the logits;
    # the weights are the parameters' own storage and not counted.
    assert total == 4 * 8 * (100 + 50 + 10) and largest == 4 * 8 * 100

    net, x = _mlp(), torch.randn(8, 100)
    bn = net[1]
    before = (bn.running_mean.clone(), int(bn.num_batches_tracked), torch.get_rng_state())
    net.eval()
    estimate_step(net, Config(batch_size=64, uratio=7), x)  # a forward in train mode, with dropout
    assert torch.equal(bn.running_mean, before[0]) and int(bn.num_batches_tracked) == before[1]
    assert torch.equal(torch.get_rng_state(), before[2]) and not net.training
    assert all(p.grad is None for p in net.parameters())


def test_the_estimate_counts_rows_per_forward_mode_and_the_optimiser_state() -> None:
    net, x = _mlp(), torch.randn(4, 100)
    params = 4 * sum(p.numel() for p in net.parameters())
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    joint = estimate_step(net, Config(batch_size=8, uratio=7), x, optimizer=sgd)
    assert joint.rows_per_b == 15 and joint.data_rows_per_b == 15  # B + weak + strong
    assert joint.grads == params and joint.optimizer == params  # one momentum buffer
    two_pass = estimate_step(net, Config(uratio=7, forward_mode="two-pass"), x)
    assert two_pass.rows_per_b == 8 and two_pass.optimizer == 0  # the weak view: no grad
    adamw = torch.optim.AdamW(net.parameters())
    supervised = estimate_step(
        net, Config(batch_size=64, uratio=7), x, optimizer=adamw, needs=Needs(unlabeled=False)
    )
    assert supervised.rows_per_b == 1 and supervised.optimizer == 2 * params  # two moments
    # Linear in the batch: each labeled row adds the activations of its 15 rows and its data.
    per_b = joint.act_per_row * 15 + joint.data_per_row * 15
    assert joint.extra(64) - joint.extra(32) == pytest.approx(32 * per_b, abs=2)
    assert joint.act_per_row >= 4 * (100 + 50 + 50)  # input, BN input, ReLU output (fp32)


@pytest.mark.parametrize(
    ("name", "mode", "rows", "data_rows"),
    [
        ("fixmatch", "joint", 15, 15),  # B + weak + strong, all in the joint forward
        ("fixmatch", "two-pass", 8, 15),  # the weak view without grad
        ("pseudolabel", "joint", 8, 8),  # the weak view is the student
        ("supervised", "joint", 1, 1),
        ("vat", "joint", 15, 8),  # the weak view, then the adversarial forward with grad
        ("mixmatch", "joint", 15, 15),  # its own forward of labeled + two weak views
    ],
)
def test_rows_follow_what_the_method_forwards(name, mode, rows, data_rows) -> None:
    needs = build_algorithm(name, 3).needs
    assert step_rows(needs, 7, mode) == (rows, data_rows)


def _fake(world_size: int = 1) -> StepMemory:
    # 300 fixed bytes + 150 per labeled row (10 x 15 rows) on one process
    return StepMemory(
        resident=1000, grads=100, optimizer=100, transient=100, act_fixed=0, act_per_row=10.0,
        rows_per_b=15.0, data_per_row=0.0, data_rows_per_b=15.0, world_size=world_size,
    )  # fmt: skip


def test_a_batch_over_the_available_memory_is_refused_with_the_largest_that_fits() -> None:
    est = _fake()
    with pytest.raises(ConfigError) as e:
        check_step_memory(est, Config(batch_size=1000), available=30_000)
    message = str(e.value)
    assert "batch_size=1000 (1000 labeled + 14000 unlabeled rows)" in message
    fits = int(re.search(r"use batch_size=(\d+) or less", message)[1])
    assert est.extra(fits) <= 30_000 / memory.MARGIN < est.extra(fits + 1)  # with the margin
    assert "memory_check=False skips" in message and "\n" not in message
    # Two processes on this host share the memory; the global batch stays a multiple of 2.
    with pytest.raises(ConfigError, match=r"per process \(2 on this host\)") as e:
        check_step_memory(_fake(2), Config(batch_size=1000), available=60_000, processes=2)
    assert int(re.search(r"use batch_size=(\d+)", str(e.value))[1]) % 2 == 0
    with pytest.raises(ConfigError, match="even the smallest batch does not fit"):
        check_step_memory(est, Config(batch_size=8), available=200)
    with pytest.raises(ConfigError, match=r"free memory, or start a new run \(use batch_size="):
        check_step_memory(est, Config(batch_size=1000), available=30_000, resuming=True)


def test_an_estimate_close_to_the_available_memory_warns(capsys) -> None:
    est = _fake()
    need = est.extra(100)  # 15 300 bytes
    check_step_memory(est, Config(batch_size=100), available=int(need * 1.2))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "close to the limit" in err and "batch_size=" in err
    check_step_memory(est, Config(batch_size=100), available=int(need * 2))  # comfortable
    check_step_memory(est, Config(batch_size=10**9), available=None)  # unknown: not checked
    assert capsys.readouterr().err == ""


def test_available_memory_reads_meminfo_and_the_cgroup_limit(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000 kB\nMemAvailable:    2000 kB\n")
    assert memory._meminfo_available(str(meminfo)) == 2000 * 1024
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    assert memory._cgroup_headroom(str(tmp_path)) == 600_000
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_headroom(str(tmp_path)) is None
    assert memory.available_bytes(CPU) > 0


def test_the_cli_refuses_an_oversize_batch_in_one_line_before_writing(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """The issue's repro: digits at --batch-size 100000 (memory mocked: the same everywhere)."""
    monkeypatch.setattr(memory, "available_bytes", lambda device: 4 * 10**9)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--batch-size", "100000", *SMALL, "--out", str(out)]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert re.search(r"needs about [\d.]+ GB more memory but 4\.0 GB is available", line)
    fits = int(re.search(r"use --batch-size (\d+) or less \(or a smaller --uratio", line)[1])
    assert 64 < fits < 100000 and "--no-memory-check skips this check" in line
    assert not out.exists()
    # --overwrite: the refusal comes before the old run is cleared.
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"old": 1}\n')
    assert main([*argv, "--overwrite"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_text() == '{"old": 1}\n'


def test_no_memory_check_skips_it_and_a_labeled_batch_over_the_labels_is_fine(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    base = ["train", "--dataset", "digits", "--iterations", "1", *SMALL]
    assert main([*base, "--batch-size", "64", "--out", str(tmp_path / "a")]) == 2
    assert "--batch-size" in capsys.readouterr().err
    argv = [*base, "--batch-size", "64", "--no-memory-check", "--out", str(tmp_path / "b")]
    assert main(argv) == 0  # 64 labeled rows drawn from 20 labels, with replacement
    assert json.loads((tmp_path / "b" / "config.json").read_text())["memory_check"] is False
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10**12)
    assert main([*base, "--batch-size", "64", "--out", str(tmp_path / "c")]) == 0


def _allocator_fails_at(k_fail: int):
    real = engine.train_step

    def step(*args, info=None, **kwargs):
        if info is not None and info.iteration == k_fail:
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                "allocate memory: you tried to allocate 400000000000000 bytes. Error code 12"
            )
        return real(*args, info=info, **kwargs)

    return step


def test_an_out_of_memory_step_ends_in_one_line_and_keeps_the_checkpoints(
    tmp_path: Path, monkeypatch
) -> None:
    cfg = Config(dataset="digits", num_labels=20, iterations=6, eval_every=3, log_every=3,
                 batch_size=8, uratio=2, threads=1, tensorboard=False)  # fmt: skip
    out = tmp_path / "run"
    monkeypatch.setattr(engine, "train_step", _allocator_fails_at(4))
    with pytest.raises(TrainingError) as e:
        fit(cfg, out=out)
    message = str(e.value)
    assert message.startswith("out of memory at iteration 5") and "\n" not in message
    assert "last good checkpoint is" in message and "lower --batch-size (now 8)" in message
    saved = sorted((out / "checkpoints").iterdir())
    content = {p.name: p.read_bytes() for p in saved}
    # Resumed: the fix is not a new batch (the run keeps its own), and its work stays.
    with pytest.raises(TrainingError, match=r"free memory and resume it \(`semimatch train"):
        fit(out=out, resume=True)
    assert {p.name: p.read_bytes() for p in sorted((out / "checkpoints").iterdir())} == content


def test_a_model_the_probe_cannot_run_is_not_checked(monkeypatch) -> None:
    """The first step reports such a model's error in full; the check does not mask it."""
    from semimatch.data import from_arrays

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("the model's own error")

    data = from_arrays(torch.zeros(8, 4, 4, 3, dtype=torch.uint8).numpy(), [0, 1] * 4)
    algorithm = type("A", (), {"uses_unlabeled": True, "uses_strong": True,
                               "student_view": "strong"})()  # fmt: skip
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1)
    assert memory.preflight(Config(), data, Broken(), algorithm, None, None, CPU) is None
