"""Measuring a model: fixed-shape test forwards, the confusion matrix, the live λ(p) curve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from semimatch.data import from_arrays
from semimatch.methods.registry import build_algorithm
from semimatch.training.evaluation import evaluate_model, lambda_curve, pad_rows

CPU = torch.device("cpu")


def test_lambda_curve_is_the_live_weighting():
    algo = build_algorithm("fixmatch", 10, tau=0.8)
    curve = lambda_curve(algo, 10, CPU)
    for p, w in zip(curve["p"], curve["w"]):
        assert w == (1.0 if p >= 0.8 else 0.0)
    assert lambda_curve(build_algorithm("supervised", 10), 10, CPU) is None


def test_pad_rows_appends_zero_rows_only_when_short():
    x = torch.ones(3, 2)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 2) and torch.equal(padded[:3], x) and not padded[3:].any()
    assert pad_rows(x, 3) is x


class _FirstPixel(nn.Module):
    """Predicts class (pixel value mod C) of the first pixel; records its batch sizes."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes, self.rows = num_classes, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(x))
        cls = x[:, 0, 0, 0].long() % self.num_classes
        return nn.functional.one_hot(cls, self.num_classes).float()


def test_the_confusion_matrix_counts_every_test_image_with_fixed_size_forwards():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 50)
    images = np.zeros((50, 4, 4, 1), np.uint8)
    pred = np.where(rng.random(50) < 0.7, labels, (labels + 1) % 3)
    images[:, 0, 0, 0] = pred
    model = _FirstPixel(3)
    result = evaluate_model(model, from_arrays(images, labels).train, 3, CPU, batch_size=16)
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (labels, pred), 1)
    assert result["confusion"] == expected.tolist() and result["n"] == 50
    assert result["top1"] == pytest.approx((pred == labels).mean())
    assert set(model.rows) == {16} and len(model.rows) == 4


def test_unlabeled_images_cannot_be_evaluated():
    data = from_arrays(np.zeros((4, 4, 4, 1), np.uint8), np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match="1 of the 4 images to evaluate have no label"):
        evaluate_model(_FirstPixel(2), data.train, 2, CPU)
