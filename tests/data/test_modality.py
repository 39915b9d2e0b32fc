"""Modalities: stored samples and raw user inputs -> model tensors, and the model wrapper."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import semimatch
from semimatch.config import Config, ConfigError
from semimatch.data import from_arrays, from_features, to_model_input, wrap_model
from semimatch.data.modalities import MODALITIES, check_config, modality
from semimatch.data.sources import KINDS
from semimatch.models import InputNormalizer


def _image_info(size=(6, 5), channels=1):
    x = np.zeros((4, *size, channels), np.uint8)
    return from_arrays(x, [0, 1, 0, 1]).info


def test_images_become_uint8_nchw_of_the_training_size():
    info = _image_info()
    x = np.arange(2 * 6 * 5, dtype=np.uint8).reshape(2, 6, 5)
    t = to_model_input(x, info)
    assert t.dtype == torch.uint8 and t.shape == (2, 1, 6, 5)
    assert torch.equal(t[:, 0], torch.from_numpy(x))
    assert torch.equal(to_model_input(x / 255.0, info), t)  # float in [0, 1] -> the same bytes
    with pytest.raises(ValueError, match="this model takes 6x5 with 1"):
        to_model_input(np.zeros((2, 5, 6), np.uint8), info)
    with pytest.raises(ValueError, match=r"\(N, H, W\) or \(N, H, W, C\)"):
        to_model_input(np.zeros((2, 30), np.uint8), info)
    with pytest.raises(ValueError, match=r"float images must be in \[0, 1\]"):
        to_model_input(np.full((2, 6, 5), 3.0), info)
    assert to_model_input(np.zeros((0, 6, 5), np.uint8), info).shape == (0, 1, 6, 5)


def test_features_become_standardised_float32_vectors():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (20, 4))
    ds = from_features(x, np.arange(20) % 2)
    t = to_model_input(x, ds.info)
    assert t.dtype == torch.float32 and t.shape == (20, 4)
    # the same numbers the training samples hold, bit for bit
    np.testing.assert_array_equal(t.numpy(), ds.train.as_array())
    with pytest.raises(ValueError, match="rows have 3 features; this model takes 4"):
        to_model_input(x[:, :3], ds.info)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        to_model_input(x[None], ds.info)


def test_the_model_wrapper_follows_the_modality():
    model = nn.Linear(4, 2)
    image = wrap_model(nn.Identity(), _image_info(channels=3))
    assert isinstance(image, InputNormalizer)
    feats = from_features(np.random.default_rng(0).normal(size=(6, 4)), [0, 1] * 3).info
    assert wrap_model(model, feats) is model  # batches are standardised already


def test_modalities_are_looked_up_by_kind():
    assert set(MODALITIES) == {"image", "features", "text"}
    assert modality("features").dtype == torch.float32 and modality("image").dtype == torch.uint8
    assert modality("text").dtype == torch.int64 and modality("text").ragged
    with pytest.raises(ValueError, match="unknown data kind 'audio'"):
        modality("audio")


# --- the modality decides; nothing outside data/ asks for the kind ----------------------------
SRC = Path(semimatch.__file__).parent


def _names_a_kind(node: ast.AST) -> bool:
    """``x.kind``, ``kind`` or ``*_kind``: an expression holding a modality's name."""
    if isinstance(node, ast.Attribute):
        return node.attr == "kind" or node.attr.endswith("_kind")
    return isinstance(node, ast.Name) and (node.id == "kind" or node.id.endswith("_kind"))


def _modality_names(node: ast.AST) -> bool:
    """A modality's name as a constant, or a tuple/list/set of them."""
    if isinstance(node, ast.Constant):
        return node.value in KINDS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_modality_names(e) for e in node.elts)
    return False


def kind_branches(tree: ast.AST) -> list[int]:
    """Line numbers of the comparisons of a kind with a modality's name (``info.kind ==
    "text"``, ``kind in ("image", "text")``): the branches a Modality method replaces."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_modality_names, operands)) and any(map(_names_a_kind, operands)):
                lines.append(node.lineno)
    return lines


def test_the_check_finds_kind_branches():
    code = (
        'if info.kind == "text": pass\n'
        'if kind in ("image", "text"): pass\n'
        'if x.kind != "features": pass'
    )
    assert kind_branches(ast.parse(code)) == [1, 2, 3]
    fine = 'if y.dtype.kind == "O": pass\nprint("text")\nmod = modality(info)\nif mod.ragged: pass'
    assert kind_branches(ast.parse(fine)) == []


def test_no_code_outside_the_data_layer_branches_on_the_modality():
    """The modality objects (semimatch.data.modalities) answer what the kind would decide:
    a new modality is one subclass there, not an edit in every front door."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "data":  # samples, sources and the modalities themselves
            continue
        found += [f"{rel}:{n}" for n in kind_branches(ast.parse(path.read_text()))]
    assert not found, f"branches on the data's kind outside semimatch.data: {found}"


def test_each_modality_derives_its_own_defaults():
    derived: dict[str, dict] = {}
    for kind in MODALITIES:
        got: dict = {}
        mod = modality(kind)
        derive = lambda name, value, why, got=got: got.setdefault(name, value)  # noqa: E731
        cfg = Config(algorithm="fixmatch", backbone="hf:x" if kind == "text" else None)
        derive("batch_size", *mod.batch_size)
        derive("optimizer", *mod.default_optimizer(cfg))
        derived[kind] = got
    assert derived["image"] == derived["features"] == {"batch_size": 64, "optimizer": "sgd"}
    assert derived["text"] == {"batch_size": 8, "optimizer": "adamw"}  # USB's NLP recipe
    info = _image_info(size=(32, 32), channels=3)
    got = {}
    modality(info).derive_backbone(info, lambda n, v, why: got.update({n: v}))
    assert got == {"backbone": "wrn_28_2"}


def test_options_of_another_modality_are_refused():
    feats = from_features(np.random.default_rng(0).normal(size=(6, 4)), [0, 1] * 3)
    with pytest.raises(ConfigError, match="max_length shape text inputs; features holds"):
        check_config(Config(max_length=16), feats)
    with pytest.raises(ConfigError, match="'hf:bert' is a text encoder; features holds"):
        check_config(Config(backbone="hf:bert"), feats)
    check_config(Config(), feats)  # nothing foreign: no error


def test_image_runs_predict_files_others_take_inputs_as_they_are(tmp_path):
    from PIL import Image

    info = _image_info(size=(6, 5), channels=1)
    Image.fromarray(np.full((12, 10), 200, np.uint8)).save(tmp_path / "a.png")
    given = modality(info).predict_inputs([tmp_path], info)
    assert given.paths == [str(tmp_path / "a.png")] and given.inputs.shape == (1, 6, 5, 1)
    x = np.zeros((2, 6, 5), np.uint8)
    assert modality(info).predict_inputs(x, info).paths is None
    assert modality("text").predict_inputs(["a text"], info).inputs == ["a text"]
