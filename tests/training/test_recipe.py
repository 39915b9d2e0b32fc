"""``build_parts`` (one builder for training and reloading), the optimiser and the schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semimatch.config import Config, ConfigError
from semimatch.data import from_arrays
from semimatch.models import ResizeInput
from semimatch.training.recipe import build_parts, lr_factor, make_optimizer


def info():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    return from_arrays(images, np.arange(20) % 4).info


def resolved(**kw) -> Config:
    values = dict(backbone="cnn", bn_momentum=0.1, ema_decay=0.99, ema_warmup=True, lr=0.03)
    return Config(**{**values, **kw})


def test_training_and_reloading_build_the_same_parts():
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    train = build_parts(resolved(algorithm="softmatch"), info(), cpu)
    torch.manual_seed(0)
    reload = build_parts(resolved(algorithm="softmatch"), info(), cpu, training=False)
    for a, b in zip(train.net.state_dict().values(), reload.net.state_dict().values()):
        assert torch.equal(a, b)
    assert train.algorithm_name == reload.algorithm_name == "softmatch"
    assert train.algorithm.state_dict().keys() == reload.algorithm.state_dict().keys()
    assert train.ema is not None and reload.ema is not None
    bn = [m for m in train.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.1 for m in bn)


def test_only_training_uses_the_channels_last_layout():
    cfg = resolved(channels_last=True)
    weight = next(p for p in build_parts(cfg, info(), torch.device("cpu")).net.parameters()
                  if p.dim() == 4)  # fmt: skip
    assert weight.is_contiguous(memory_format=torch.channels_last)
    reload = build_parts(cfg, info(), torch.device("cpu"), training=False)
    weight = next(p for p in reload.net.parameters() if p.dim() == 4)
    assert weight.is_contiguous()


def test_a_reloaded_custom_weighting_run_has_no_algorithm_and_no_ema_without_decay():
    parts = build_parts(
        resolved().replace(ema_decay=0.0), info(), torch.device("cpu"), with_algorithm=False
    )
    assert parts.algorithm is None and parts.ema is None and parts.algorithm_name == "custom"


def test_an_option_the_algorithm_rejects_is_a_config_error():
    with pytest.raises(ConfigError, match="have no effect with algorithm 'fixmatch'"):
        build_parts(resolved(algorithm="fixmatch", n_sigma=1.0), info(), torch.device("cpu"))
    with pytest.raises(ValueError, match="pass model= a fresh instance"):
        build_parts(resolved().replace(backbone="custom:Net"), info(), torch.device("cpu"))


def test_weight_decay_skips_biases_and_batchnorm():
    net = build_parts(resolved(weight_decay=5e-4), info(), torch.device("cpu")).net
    decay, no_decay = make_optimizer(net, resolved(weight_decay=5e-4)).param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() > 1 for p in decay["params"])
    assert all(p.dim() <= 1 for p in no_decay["params"])


def test_the_schedule_is_fixmatchs_cosine_after_the_warm_up():
    f = lr_factor(Config(iterations=100, warmup_iterations=10))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(math.cos(7 * math.pi * 9 / 1600))
    g = lr_factor(Config(iterations=100))
    for k in (0, 50, 99):
        assert g(k) == pytest.approx(math.cos(7 * math.pi * k / 1600))
    assert lr_factor(Config(iterations=100, schedule="constant"))(50) == 1.0


def test_adamw_is_usbs_recipe_with_layer_decay_and_its_schedule(tiny_bert_dir):
    from semimatch.models.hf import build_hf
    from semimatch.training.optim import param_group_lrs, warmup_schedule

    net = build_hf(str(tiny_bert_dir), 4)  # 2 layers: depths 0 (embeddings) .. 3 (head)
    cfg = Config(optimizer="adamw", lr=1e-3, weight_decay=5e-4, layer_decay=0.5,
                 iterations=100, warmup_iterations=10)  # fmt: skip
    opt = make_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = param_group_lrs(opt)
    assert lrs["head.0.weight"] == (1e-3, 5e-4) and lrs["head.0.bias"] == (1e-3, 0.0)
    assert lrs["backbone.encoder.layer.1.output.dense.weight"] == (5e-4, 5e-4)
    assert lrs["backbone.encoder.layer.0.output.dense.weight"] == (2.5e-4, 5e-4)
    assert lrs["backbone.embeddings.word_embeddings.weight"] == (1.25e-4, 5e-4)
    assert lrs["backbone.embeddings.LayerNorm.weight"] == (1.25e-4, 0.0)
    factor, want = lr_factor(cfg), warmup_schedule(100, 10)
    assert [factor(k) for k in range(100)] == [want(k) for k in range(100)]
    assert factor(0) == 0.0 and factor(10) == 1.0  # USB's warm-up: 0 at the first iteration
    sgd = Config(iterations=100, warmup_iterations=10)
    assert lr_factor(sgd)(0) == pytest.approx(0.1)  # SGD keeps FixMatch's min(1, (k+1)/W)


def rgb_info(side: int = 32):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, side, side, 3), dtype=np.uint8)
    return from_arrays(images, np.arange(8) % 2).info


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> str:
    """A local weights file for torchvision's mobilenet_v3_small (random, seeded; 1000 classes
    like ImageNet's): nothing is downloaded."""
    import torchvision.models as tvm

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("weights") / "mobilenet.pth"
    torch.save(tvm.get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    return str(path)


def test_a_pretrained_image_backbone_sees_its_weights_resolution_and_normalisation(
    small_weights,
):
    """Pretrained weights see inputs as they were trained on: resized to the backbone's
    resolution (224 px for torchvision's mobilenet_v3_small, bilinear) and normalised with
    ImageNet's mean/std, not the dataset's; augmentation stays at the native 32 px (the resize
    happens inside the model)."""
    from semimatch.models.pretrained import input_spec

    cfg = resolved(backbone="torchvision:mobilenet_v3_small", pretrained=small_weights)
    net = build_parts(cfg, rgb_info(), torch.device("cpu")).net.eval()
    spec = input_spec("torchvision:mobilenet_v3_small")
    assert spec.size == (224, 224) and spec.interpolation == "bilinear"
    backbone = net.model.model  # InputNormalizer(ResizeInput(backbone))
    seen = []
    backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        out = net(x)
        big = torch.nn.functional.interpolate(
            x.float() / 255, size=(224, 224), mode="bilinear", align_corners=False
        )
        mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        std = torch.tensor(spec.std).view(1, 3, 1, 1)
        manual = backbone((big - mean) / std)
    assert tuple(seen[0]) == (2, 3, 224, 224)
    torch.testing.assert_close(out, manual, rtol=1e-4, atol=1e-4)
    assert net.mean == pytest.approx(spec.mean) and net.std == pytest.approx(spec.std)


def test_random_init_backbones_keep_the_native_resolution_and_the_data_s_statistics():
    data = rgb_info()
    net = build_parts(
        resolved(backbone="torchvision:mobilenet_v3_small"), data, torch.device("cpu")
    )
    assert not isinstance(net.net.model, ResizeInput)
    assert net.net.mean == pytest.approx(data.spec.mean)


def test_pretrained_gray_images_use_the_weights_average_statistics(small_weights):
    rng = np.random.default_rng(0)
    gray = from_arrays(rng.integers(0, 256, (8, 32, 32, 1), dtype=np.uint8), np.arange(8) % 2)
    cfg = resolved(backbone="torchvision:mobilenet_v3_small", pretrained=small_weights)
    net = build_parts(cfg, gray.info, torch.device("cpu")).net
    assert net.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert isinstance(net.model, ResizeInput) and net.model.size == (224, 224)
