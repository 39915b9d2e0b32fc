"""CoMatch (semimatch.methods.comatch) against a float64 transcription of the paper's equations;
its memory bank and alignment window as state (resume, two processes equal one)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from helpers.gloo import run_on_gloo
from helpers.reference_impl import CoMatchOracle, comatch_embed_oracle, comatch_mlp_oracle
from helpers.runs import assert_same_run, stop_after
from semimatch import distributed as dist
from semimatch.cli import main
from semimatch.config import Config, ConfigError
from semimatch.methods.consistency import StepOutputs
from semimatch.methods.heads import attach_heads, heads_of
from semimatch.methods.registry import build_algorithm
from semimatch.presets import PRESETS
from semimatch.runs.engine import fit
from semimatch.training.recipe import check_needs
from semimatch.training.step import StepInfo, train_step

C, D, H = 3, 5, 6  # classes, input size, feature size


class Tiny(nn.Module):
    """``tanh(Linear)`` features and a Linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.fc = nn.Linear(D, H), nn.Linear(H, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.body(x)))


def tiny_model(algo, seed: int = 0) -> nn.Module:
    """The tiny model with the method's heads, in float64."""
    torch.manual_seed(seed)
    model = Tiny()
    attach_heads(model, algo.make_heads(H), C)
    return model.double()


def params(model: nn.Module) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The backbone's and the projection head's weights as numpy arrays."""
    net = [model.body.weight, model.body.bias, model.fc.weight, model.fc.bias]
    proj = heads_of(model)["proj"]
    head = [proj[0].weight, proj[0].bias, proj[2].weight, proj[2].bias]
    return [p.detach().numpy() for p in net], [p.detach().numpy() for p in head]


def batch(rng: np.random.Generator, n_lb: int = 4, n_u: int = 5):
    """A labeled batch, its labels and three unlabeled views (weak, strong 0, strong 1)."""
    t = torch.from_numpy
    views = [t(rng.normal(scale=3.0, size=(n, D))) for n in (n_lb, n_u, n_u, n_u)]
    return views[0], t(rng.integers(0, C, n_lb)), views[1], views[2:]


@pytest.mark.parametrize(
    "options",
    [dict(tau=0.4, contrast_tau=0.3, queue_batch=2, da_len=3),
     dict(tau=0.5, contrast_tau=0.5, queue_batch=1, da_len=2, smoothing_start=4, lambda_c=2.0,
          lambda_u=0.7, temperature=0.3, smoothing_alpha=0.6, comatch_eps="usb"),
     dict(queue_batch=2)],
)  # fmt: skip
def test_loss_matches_the_paper_over_steps(options):
    """Alignment window, memory smoothing once the bank is full, the masked soft cross-entropy
    and the graph contrastive loss, step after step (the bank and window carry over)."""
    algo = build_algorithm("comatch", C, **options).double()
    model = tiny_model(algo)
    net, head = params(model)
    oracle = CoMatchOracle(
        C, tau=options.get("tau", 0.95), lambda_u=options.get("lambda_u", 1.0),
        lambda_c=options.get("lambda_c", 1.0), T=options.get("temperature", 0.2),
        contrast_tau=options.get("contrast_tau", 0.8),
        alpha=options.get("smoothing_alpha", 0.9), queue_batch=options["queue_batch"],
        da_len=options.get("da_len", 32), start=options.get("smoothing_start", 0),
        usb=options.get("comatch_eps") == "usb",
    )  # fmt: skip
    rng = np.random.default_rng(5)
    masks = []
    for k in range(7):
        x_lb, y_lb, u_w, strong = batch(rng)
        loss, sums = train_step(model, algo, x_lb, y_lb, u_w, strong, info=StepInfo(k))
        logits, feats = zip(*(comatch_mlp_oracle(net, v.numpy()) for v in (x_lb, u_w, *strong)))
        z = [comatch_embed_oracle(head, f) for f in feats]
        want = oracle.step(k, logits[0], y_lb.numpy(), logits[1], logits[2], *z)
        # The step's labeled cross-entropy is float32 (every method's); the rest is float64.
        sup = torch.nn.functional.cross_entropy(model(x_lb).float(), y_lb).item()
        assert sup == pytest.approx(want["sup"], rel=1e-6)
        assert loss.item() - sup == pytest.approx(want["loss"] - want["sup"], rel=1e-10)
        assert sums["extra_loss_sum"].item() / 5 == pytest.approx(want["contrast"], rel=1e-6)
        assert sums["weight_sum"].item() == want["mask"].sum()
        masks.append(want["mask"].mean())
        loss.backward()
    assert heads_of(model)["proj"][0].weight.grad.abs().sum() > 0
    if "tau" in options:  # the threshold both kept and cut rows
        assert 0 < np.mean(masks) < 1


def test_the_bank_and_the_window_are_state_and_resume_exactly():
    rng = np.random.default_rng(1)
    batches = [batch(rng) for _ in range(6)]
    algo = build_algorithm("comatch", C, queue_batch=1, da_len=2).double()
    model = tiny_model(algo)
    for k in range(4):
        train_step(model, algo, *batches[k][:3], batches[k][3], info=StepInfo(k))
    state = algo.state_dict()
    assert state["bank.feats"].shape == (9, 64) and state["alignment.means"].shape == (2, C)
    twin = build_algorithm("comatch", C, queue_batch=1, da_len=2).double()
    assert twin.state_dict()["bank.feats"].shape == (0, 64)  # sized by the first step
    twin.load_state_dict(state)
    for k in (4, 5):
        a, _ = train_step(model, algo, *batches[k][:3], batches[k][3], info=StepInfo(k))
        b, _ = train_step(model, twin, *batches[k][:3], batches[k][3], info=StepInfo(k))
        assert a.item() == b.item()
    for key, value in algo.state_dict().items():
        assert torch.equal(value, twin.state_dict()[key]), key


def _run_shard(rank: int, world: int, scope: str = "global") -> dict:
    """Four steps on this process's share of each global batch (SGD on the averaged
    gradient): the losses, the final bank, window and weights."""
    algo = build_algorithm("comatch", C, tau=0.4, contrast_tau=0.3, queue_batch=1, da_len=2,
                           contrast_scope=scope).double()  # fmt: skip
    model = tiny_model(algo)
    rng = np.random.default_rng(2)
    losses = []
    for k in range(4):
        x_lb, y_lb, u_w, strong = batch(rng, n_lb=4, n_u=6)
        lb, u = (
            slice(rank * 4 // world, (rank + 1) * 4 // world),
            slice(rank * 6 // world, (rank + 1) * 6 // world),
        )
        loss, _ = train_step(model, algo, x_lb[lb], y_lb[lb], u_w[u], [s[u] for s in strong],
                             info=StepInfo(k))  # fmt: skip
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * dist.all_reduce_sum(p.grad) / world
                p.grad = None
        losses.append(dist.all_reduce_sum(loss.detach()) / world)
    return {"losses": torch.stack(losses), **algo.state_dict(),
            **{f"model.{k}": v for k, v in model.state_dict().items()}}  # fmt: skip


def test_two_gloo_processes_equal_one(tmp_path):
    """The gathered bank and window, the global graph and its gradient: two processes train
    as one process on the global batch does."""
    one = _run_shard(0, 1)
    for two in run_on_gloo(_run_shard, tmp_path, 2):
        for key, value in one.items():
            # The labeled cross-entropy is float32 (each process's mean); the rest float64.
            tol = 1e-6 if key == "losses" else 1e-10
            torch.testing.assert_close(two[key], value, rtol=tol, atol=tol * 1e-2, msg=key)
    assert one["bank.ptr"].item() == 0 and one["bank.feats"].abs().sum() > 0


def test_usb_per_process_graph_differs_under_two_processes(tmp_path):
    """``contrast_scope="process"`` (USB): each process's graph is its own rows only."""
    one = _run_shard(0, 1, "process")
    two = run_on_gloo(_run_shard, tmp_path, 2, "process")[0]
    assert torch.equal(one["losses"], _run_shard(0, 1)["losses"])  # one process: the same
    assert not torch.allclose(two["losses"], one["losses"])


def test_needs_presets_and_description():
    algo = build_algorithm("comatch", 3)
    needs = algo.needs
    assert needs.strong_views == 2 and needs.features and needs.iteration and needs.forward
    assert algo.describe()["weighting"]["type"] == "fixed" and algo.has_extra_loss
    head = algo.make_heads(8)["proj"]
    assert [m.__class__.__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[2].out_features == 64
    values = PRESETS["cifar10-40-comatch"].values
    assert (values["tau"], values["contrast_tau"], values["temperature"]) == (0.95, 0.8, 0.2)
    assert (values["queue_batch"], values["da_len"], values["smoothing_start"]) == (5, 32, 1024)
    assert (values["uratio"], values["lambda_c"], values["proj_size"]) == (7, 1.0, 64)
    assert PRESETS["stl10-40-comatch"].values["lambda_c"] == 5.0
    assert PRESETS["cifar100-400-comatch"].values["backbone"] == "wrn_28_2"
    nlp = PRESETS["ag_news-40-comatch"].values
    assert (nlp["queue_batch"], nlp["uratio"], nlp["batch_size"]) == (128, 1, 8)
    assert algo.smooths_at(6) and not algo.smooths_at(5)
    usb = build_algorithm("comatch", 3, smoothing_start=1024)
    assert not usb.smooths_at(1023) and usb.smooths_at(1024)


def test_what_cannot_apply_is_refused_naming_the_flag(capsys):
    algo = build_algorithm("comatch", 3)
    with pytest.raises(ConfigError, match="--forward-mode joint"):
        check_needs(algo, "comatch", None, True, Config(forward_mode="two-pass"))
    for flag, value in (("--queue-batch", "0"), ("--contrast-tau", "1.5"), ("--da-len", "0")):
        args = ["train", "--dataset", "digits", "--algorithm", "comatch", flag, value,
                "--iterations", "1", "--no-tensorboard"]  # fmt: skip
        assert main(args) == 2
        assert flag in capsys.readouterr().err.splitlines()[-1]
    x = torch.zeros(2, H)
    out = StepOutputs(x, torch.tensor([0, 1]), x.sum(), x, (x,), iteration=0, feats_lb=x,
                      feats_weak=x, feats_student=(x,), heads=algo.make_heads(H))  # fmt: skip
    with pytest.raises(ValueError, match="two strong views"):
        algo.loss(out)


def test_a_short_run_from_the_command_line(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--algorithm", "comatch", "--num-labels", "20",
            "--iterations", "4", "--eval-every", "4", "--log-every", "1", "--batch-size", "8",
            "--uratio", "1", "--queue-batch", "1", "--precision", "fp32", "--no-tensorboard",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    trains = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "train"]  # fmt: skip
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] > 0 for r in trains)
    assert main(["eval", str(out)]) == 0  # the run reloads with its heads


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, caplog):
    """Through the command line: the bank, the alignment window and the heads resume exactly,
    the same final state as an uninterrupted run (smoothing active from iteration 2)."""
    caplog.set_level(logging.WARNING, logger="semimatch")  # quiet, restored after the test
    ref, run = tmp_path / "ref", tmp_path / "run"
    args = ["train", "--dataset", "digits", "--algorithm", "comatch", "--num-labels", "20",
            "--batch-size", "8", "--uratio", "2", "--seed", "3", "--iterations", "6",
            "--eval-every", "2", "--log-every", "1", "--queue-batch", "1", "--da-len", "2",
            "--tau", "0.5", "--deterministic", "--precision", "fp32", "--threads", "1",
            "--no-tensorboard"]  # fmt: skip
    assert main([*args, "--out", str(ref)]) == 0
    fired = stop_after(monkeypatch, 3)
    assert main([*args, "--out", str(run)]) != 0
    monkeypatch.undo()
    assert fired and main(["train", "--resume", str(run)]) == 0
    assert_same_run(ref, run, iterations=6)


def test_texts_train_with_the_projection_on_the_pooled_features(tmp_path, tiny_bert_dir):
    """A tiny random BERT: the heads read the text head's input (USB's pooled ``feat``), two
    strong text views per row."""
    from helpers.text_fixtures import text_corpus
    from semimatch.data import from_texts

    texts, labels = text_corpus(40)
    labels = [y if i < 8 else None for i, y in enumerate(labels)]
    data = from_texts(texts, labels, test_texts=texts[:8], test_labels=labels[:8])
    cfg = Config(backbone=f"hf:{tiny_bert_dir}", iterations=3, eval_every=3, batch_size=4,
                 uratio=1, threads=1, tensorboard=False, progress=False, max_length=32,
                 algorithm="comatch", queue_batch=1, proj_size=8)  # fmt: skip
    run = fit(cfg, data=data, out=tmp_path / "run")
    trains = [r for r in read_records(tmp_path / "run") if r["kind"] == "train"]
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] > 0 for r in trains)
    heads = [k for k in run.model.state_dict() if "ssl_heads.proj." in k]
    assert len(heads) == 4


def test_feature_vectors_train(tmp_path):
    from semimatch.data import from_features

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 8)).astype(np.float32), rng.integers(0, 3, 120)
    labels = np.where(np.arange(120) < 12, y, -1)
    data = from_features(x, labels, test_features=x[:20], test_labels=y[:20])
    cfg = Config(iterations=3, eval_every=3, batch_size=6, uratio=2, threads=1,
                 tensorboard=False, progress=False, algorithm="comatch", queue_batch=1)  # fmt: skip
    fit(cfg, data=data, out=tmp_path / "run")
    trains = [r for r in read_records(tmp_path / "run") if r["kind"] == "train"]
    assert trains and all(np.isfinite(r["loss"]) and r["extra_loss"] > 0 for r in trains)


def read_records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_step_past_queue_batch_smooths_only_with_a_full_bank():
    """A run that starts past ``queue_batch`` (an empty bank) trains on the aligned ``p``
    until the bank is full."""
    rng = np.random.default_rng(4)
    algo = build_algorithm("comatch", C, queue_batch=2, tau=0.3).double()
    twin = build_algorithm("comatch", C, queue_batch=2, tau=0.3).double()
    model = tiny_model(algo)
    for k in range(3):
        x_lb, y_lb, u_w, strong = batch(rng)
        a, _ = train_step(model, algo, x_lb, y_lb, u_w, strong, info=StepInfo(100 + k))
        b, _ = train_step(model, twin, x_lb, y_lb, u_w, strong, info=StepInfo(k))
        assert (a.item() == b.item()) == (k < 2)  # smoothed from the third step on (full)
    assert algo.bank.filled.item() == algo.bank.feats.shape[0] == 2 * 9
