"""Tests of semimatch.training.optim: AdamW groups, layer-wise lr decay, the warm-up schedules.

Expected learning rates are computed here from parameter names (independently of
``layer_ids``) and expected schedule factors from USB's formulas at chosen iterations.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from semimatch.models import SmallCNN, build_model
from semimatch.training.optim import layer_ids, make_adamw, param_group_lrs, warmup_schedule


def _expected_bert(name: str, p: torch.Tensor, lr: float, wd: float, d: float, n_layers: int):
    """USB's (lr, weight decay) of a parameter of a BERT classifier, from its name alone."""
    if name.startswith("backbone.embeddings."):
        depth = 0
    elif m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", name):
        depth = int(m.group(1)) + 1
    else:
        assert name.startswith("head."), name
        depth = n_layers + 1
    no_decay = p.ndim == 1  # biases and LayerNorm weights; embeddings (2-d) decay
    return lr * d ** (n_layers + 1 - depth), 0.0 if no_decay else wd


def test_bert_groups_match_usb(tiny_bert_dir: Path) -> None:
    model = build_model(f"hf:{tiny_bert_dir}", 4)
    opt = make_adamw(model, lr=5e-5, weight_decay=5e-4, layer_decay=0.65)
    got = param_group_lrs(opt)
    named = dict(model.named_parameters())
    assert set(got) == set(named)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)  # each exactly once
    for name, p in named.items():
        lr, wd = _expected_bert(name, p, 5e-5, 5e-4, 0.65, n_layers=2)
        assert got[name] == (pytest.approx(lr, rel=1e-12), wd), name
    # The extremes: head at lr, embeddings at lr * 0.65^3; LayerNorm never decays.
    assert got["head.2.weight"] == (5e-5, 5e-4)
    emb = got["backbone.embeddings.word_embeddings.weight"]
    assert emb == (pytest.approx(5e-5 * 0.65**3), 5e-4)
    assert got["backbone.encoder.layer.1.output.LayerNorm.weight"][1] == 0.0
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)


def test_the_lrs_are_the_ones_applied() -> None:
    """One AdamW step moves each parameter by its group's lr: lr * (wd * p + g / (|g| + eps))."""
    torch.manual_seed(0)
    model = _Stacked()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_adamw(model, lr=0.1, weight_decay=0.01, layer_decay=0.5)
    model(torch.randn(4, 3)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    lrs = param_group_lrs(opt)
    for name, p in model.named_parameters():
        lr, wd = lrs[name]
        g, p0 = grads[name], before[name]
        expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
        assert torch.allclose(p.detach(), expected, atol=1e-6), name


class _Stacked(nn.Module):
    """A timm-style model: stem, blocks.{0,1,2}, a final norm joining the last block, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.zeros(1, 1, 4))

    def group_matcher(self, coarse: bool = False) -> dict:
        return {
            "stem": r"^stem|^pos",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def no_weight_decay(self) -> set[str]:
        return {"pos"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x) + self.pos[0, 0]
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.head(self.norm(x))


def test_timm_style_group_matcher_and_no_weight_decay() -> None:
    model = _Stacked()
    ids, n = layer_ids(model)
    assert n == 5  # stem, 3 blocks (norm joins the last), head
    expected = {"stem": 0, "pos": 0, "blocks.0": 1, "blocks.1": 2, "blocks.2": 3, "norm": 3}
    for name, depth in ids.items():
        prefix = name.rsplit(".", 1)[0] if name != "pos" else "pos"
        assert depth == expected.get(prefix, 4), name
    opt = make_adamw(model, lr=1.0, weight_decay=0.1, layer_decay=0.5)
    lrs = param_group_lrs(opt)
    assert lrs["pos"] == (0.0625, 0.0)  # stem depth, listed in no_weight_decay
    assert lrs["stem.weight"] == (0.0625, 0.1)
    assert lrs["norm.weight"] == (0.5, 0.0) and lrs["blocks.2.weight"] == (0.5, 0.1)
    assert lrs["blocks.0.weight"] == (0.125, 0.1)
    assert lrs["head.weight"] == (1.0, 0.1) and lrs["head.bias"] == (1.0, 0.0)


def test_wrapped_model_prefixes_and_wrapper_parameters_go_on_top() -> None:
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = _Stacked()
            self.extra = nn.Linear(2, 2)

    ids, n = layer_ids(Wrapper())
    assert ids["model.stem.weight"] == 0 and ids["model.blocks.1.bias"] == 2
    assert ids["extra.weight"] == n - 1 == 4


def test_no_layer_structure() -> None:
    cnn = SmallCNN(3, 1)
    opt = make_adamw(cnn, lr=1e-3, weight_decay=5e-4)  # layer_decay 1: any model
    assert len(opt.param_groups) == 2
    for name, (lr, wd) in param_group_lrs(opt).items():
        p = cnn.get_parameter(name)
        assert lr == 1e-3 and wd == (5e-4 if p.ndim > 1 else 0.0)
    with pytest.raises(ValueError, match="layer_decay=1.0"):
        make_adamw(cnn, lr=1e-3, weight_decay=5e-4, layer_decay=0.7)
    for kwargs, match in [
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"layer_decay": 1.5}, "layer_decay"),
        ({"layer_decay": 0}, "layer_decay"),
    ]:
        args = {"lr": 1e-3, "weight_decay": 0.0, "layer_decay": 1.0, **kwargs}
        with pytest.raises(ValueError, match=match):
            make_adamw(cnn, **args)


def test_frozen_parameters_are_left_out() -> None:
    model = _Stacked()
    model.stem.requires_grad_(False)
    names = set(param_group_lrs(make_adamw(model, 1.0, 0.0, 0.5)))
    assert "stem.weight" not in names and "blocks.0.weight" in names


def test_usb_cosine_schedule_with_warmup_values() -> None:
    f = warmup_schedule(102_400, 5_120)
    # Warm-up: k / W, zero at the first iteration.
    assert f(0) == 0.0 and f(2_560) == 0.5 and f(5_119) == pytest.approx(5_119 / 5_120)
    assert f(5_120) == 1.0
    # Half-way through the cosine span: cos(7 pi / 32); at the end cos(7 pi / 16).
    assert f(5_120 + 48_640) == pytest.approx(math.cos(7 * math.pi / 32), rel=1e-12)
    assert f(102_400) == pytest.approx(math.cos(7 * math.pi / 16), rel=1e-12)
    assert f(102_399) > f(102_400)
    lin = warmup_schedule(100, 10, shape="linear")
    assert [lin(k) for k in (0, 5, 10, 55, 100, 120)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    const = warmup_schedule(100, 4, shape="constant")
    assert [const(k) for k in (0, 1, 4, 99)] == [0.0, 0.25, 1.0, 1.0]
    assert warmup_schedule(10, 0)(0) == 1.0  # no warm-up
    for args, match in [
        ((0, 0), "iterations"),
        ((10, 10), "warmup_iterations"),
        ((10, -1), "warmup_iterations"),
        ((10, 1, "step"), "shape"),
    ]:
        with pytest.raises(ValueError, match=match):
            warmup_schedule(*args)


def test_lambda_lr_scales_every_group_by_the_factor(tiny_bert_dir: Path) -> None:
    model = build_model(f"hf:{tiny_bert_dir}", 2)
    opt = make_adamw(model, lr=1e-4, weight_decay=5e-4, layer_decay=0.7)
    base = param_group_lrs(opt)
    f = warmup_schedule(40, 8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    for k in range(12):  # the lr used by optimizer step k is base * f(k)
        now = param_group_lrs(opt)
        for name, (lr, _) in base.items():
            assert now[name][0] == pytest.approx(lr * f(k), rel=1e-12, abs=0)
        opt.step()
        sched.step()
