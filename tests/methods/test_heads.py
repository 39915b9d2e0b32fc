"""Heads on the backbone's features: the tap reads the classifier's input, the step hands a
method that needs features those of its joint forward, and the heads train with the model."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from semimatch.config import Config, ConfigError
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.heads import (
    attach_heads,
    feature_layer,
    heads_of,
    num_features,
    record_features,
)
from semimatch.methods.registry import build_algorithm
from semimatch.models.cnn import MLP, SmallCNN
from semimatch.models.wrn import WideResNet
from semimatch.training.recipe import check_needs
from semimatch.training.step import train_step


class FeatureMatch(SSLAlgorithm):
    """FixMatch plus a cosine loss between the projected weak and strong features."""

    def __init__(self, num_classes: int) -> None:
        fixmatch = build_algorithm("fixmatch", num_classes)
        super().__init__(fixmatch.weighting, name="featurematch")
        self.seen: StepOutputs | None = None

    @property
    def needs(self) -> Needs:
        return dataclasses.replace(super().needs, features=True)

    def make_heads(self, num_features: int) -> nn.Module:
        return nn.ModuleDict({"proj": nn.Linear(num_features, 4)})

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        self.seen = out
        loss, unlabeled = super().loss(out)
        proj = out.heads["proj"]
        weak, strong = proj(out.feats_weak), proj(out.feats_student[0])
        return loss + (1 - F.cosine_similarity(weak, strong).mean()), unlabeled


@pytest.mark.parametrize(
    "build",
    [
        lambda: SmallCNN(num_classes=3, in_channels=1, width=4),
        lambda: WideResNet(num_classes=3, in_channels=1, widen_factor=1, blocks_per_group=1),
    ],
)
def test_tap_records_the_classifier_input(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    attach_heads(model, nn.Identity(), 3)
    x = torch.rand(5, 1, 16, 16)
    with record_features(model) as feats:
        logits = model(x)
    assert len(feats) == 1
    torch.testing.assert_close(feats[0], model.forward_features(x))
    torch.testing.assert_close(logits, model.fc(feats[0]))
    model(x)  # outside the block nothing is kept
    assert model._ssl_tap.records is None


def test_feature_size_and_text_head() -> None:
    mlp = MLP(in_features=6, num_classes=3, hidden=(8,))
    assert num_features(feature_layer(mlp, 3)) == mlp.fc.in_features

    class Text(nn.Module):  # HFClassifier's shape: an MLP head whose input is the pooled feat
        def __init__(self) -> None:
            super().__init__()
            self.num_features = 5
            self.head = nn.Sequential(nn.Linear(5, 5), nn.GELU(), nn.Linear(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x * 2)

    text = Text()
    assert feature_layer(text, 3) is text.head  # not the head's last Linear
    attach_heads(text, nn.Identity(), 3)
    x = torch.rand(2, 5)
    with record_features(text) as feats:
        text(x)
    torch.testing.assert_close(feats[0], x * 2)


def test_no_linear_classifier_is_refused() -> None:
    with pytest.raises(ValueError, match="no nn.Linear classifier with 7 outputs"):
        feature_layer(SmallCNN(num_classes=3, in_channels=1, width=4), 7)


def test_step_hands_the_joint_forward_features_and_heads_train() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    algo = FeatureMatch(3)
    attach_heads(model, algo.make_heads(16), 3)
    x_lb, u_w, u_s = torch.rand(4, 1, 12, 12), torch.rand(6, 1, 12, 12), torch.rand(6, 1, 12, 12)
    loss, _ = train_step(model, algo, x_lb, torch.tensor([0, 1, 2, 0]), u_w, u_s)
    out = algo.seen
    assert out is not None and out.heads is heads_of(model)
    # The features are those of the one joint forward (BatchNorm saw the joint batch).
    with torch.no_grad():
        joint = model.forward_features(torch.cat([x_lb, u_w, u_s]))
    torch.testing.assert_close(out.feats_lb, joint[:4])
    torch.testing.assert_close(out.feats_weak, joint[4:10])
    torch.testing.assert_close(out.feats_student[0], joint[10:])
    assert not out.feats_weak.requires_grad and out.feats_student[0].requires_grad
    loss.backward()
    proj = heads_of(model)["proj"]
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert any(k.startswith("ssl_heads.proj.") for k in model.state_dict())


def test_a_copy_records_on_its_own() -> None:
    """The weight EMA deep-copies the model: its tap is its own."""
    model = SmallCNN(num_classes=3, in_channels=1, width=4).eval()
    attach_heads(model, nn.Identity(), 3)
    twin = copy.deepcopy(model)
    x = torch.rand(2, 1, 12, 12)
    with record_features(model) as mine, record_features(twin) as theirs:
        model(x)
    assert len(mine) == 1 and theirs == []


def test_features_need_the_joint_forward() -> None:
    algo = FeatureMatch(3)
    cfg = Config(forward_mode="split")
    with pytest.raises(ConfigError, match="--forward-mode joint"):
        check_needs(algo, "featurematch", None, True, cfg)
    model = SmallCNN(num_classes=3, in_channels=1, width=4)
    attach_heads(model, algo.make_heads(16), 3)
    x = torch.rand(2, 1, 12, 12)
    with pytest.raises(ValueError, match="--forward-mode joint"):
        train_step(model, algo, x, torch.tensor([0, 1]), x, x, forward_mode="split")


@pytest.mark.parametrize("name", ["mixmatch", "remixmatch", "crmatch"])
def test_a_method_with_its_own_forward_refuses_another_forward_mode(name) -> None:
    """--forward-mode would do nothing for a method that forwards the model itself."""
    algo = build_algorithm(name, 3)
    with pytest.raises(ConfigError, match="forwards the model itself.*--forward-mode joint"):
        check_needs(algo, name, None, True, Config(forward_mode="two-pass"))
    check_needs(algo, name, None, True, Config(forward_mode="joint"))


def test_texts_are_refused_for_mixing_before_the_rotation_hint() -> None:
    """ReMixMatch on token ids: refused outright, not sent to --lambda-rot 0 first."""
    algo = build_algorithm("remixmatch", 3)
    with pytest.raises(ConfigError, match="cannot run on token ids"):
        check_needs(algo, "remixmatch", None, False, Config())
