"""The training step on text batches equals the reference equations: a tiny random BERT (no
dropout, so one forward over the concatenated views equals one per view), the padded
``(N, 2, L)`` batches of the text stream, and the float64 oracle of the SoftMatch/FixMatch loss.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.reference_impl import (
    AlgorithmOracle,
    SoftMatchOracle,
    UniformAlignmentOracle,
    softmax,
    step_loss,
)
from helpers.text_fixtures import text_corpus, write_tiny_bert
from semimatch.data import TrainStream, from_texts
from semimatch.data.splits import balanced_split
from semimatch.methods.registry import build_algorithm
from semimatch.training.step import train_step

pytest.importorskip("transformers")
C = 4


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp("bert") / "nodrop", dropout=0.0)


@pytest.fixture(scope="module")
def stream(bert):
    from semimatch.models.hf import load_tokenizer

    texts, names = text_corpus(80, seed=2)
    data = from_texts(texts, names, tokenizer=load_tokenizer(str(bert)), max_length=24)
    split = balanced_split(data.train.labels, C, 8, seed=0, include_labeled_in_unlabeled=True)
    return TrainStream(data, split, batch_size=4, uratio=2, seed=1)


def model(bert, seed: int = 0):
    from semimatch.models.hf import build_hf

    torch.manual_seed(seed)
    return build_hf(str(bert), C, dropout=0.0).train()


@pytest.mark.parametrize("name", ["softmatch", "fixmatch"])
def test_text_step_matches_the_oracle(bert, stream, name):
    options = {"stat_momentum": 0.6} if name == "softmatch" else {"tau": 0.3}
    algorithm = build_algorithm(name, C, **options)
    oracle = (
        AlgorithmOracle(SoftMatchOracle(C, 0.6), UniformAlignmentOracle(C, 0.6))
        if name == "softmatch"
        else AlgorithmOracle(("fixed", 0.3))
    )
    net = model(bert)
    for k in range(3):
        b = stream.batch(k)
        assert b.x_lb.dtype == torch.int64 and b.x_lb.shape[1] == 2
        net.zero_grad()
        loss, sums = train_step(net, algorithm, b.x_lb, b.y_lb, b.u_weak, b.u_strong)
        loss.backward()
        with torch.no_grad():  # one forward per view: equal to the joint one (no BatchNorm)
            lb, weak, strong = (net(x).double().numpy() for x in (b.x_lb, b.u_weak, b.u_strong))
        weights, pseudo, _ = oracle.weigh(softmax(weak))
        want, sup, unsup = step_loss(lb, b.y_lb.numpy(), strong, pseudo, weights)
        assert loss.item() == pytest.approx(want, abs=1e-5)
        assert sums["sup_loss_sum"].item() / len(b.y_lb) == pytest.approx(sup, abs=1e-5)
        assert sums["weight_sum"].item() == pytest.approx(weights.sum(), abs=1e-4)

        # The gradient is that of the equation with weights and pseudo-labels held constant.
        ref = model(bert)
        ref.load_state_dict(net.state_dict())
        ce_u = F.cross_entropy(ref(b.u_strong), torch.as_tensor(pseudo), reduction="none")
        w = torch.as_tensor(weights, dtype=torch.float32)
        (F.cross_entropy(ref(b.x_lb), b.y_lb) + (w * ce_u).sum() / len(pseudo)).backward()
        for (n, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-3, msg=n)
        with torch.no_grad():  # move on, so the next step's statistics see a new model
            for p in net.parameters():
                p -= 0.05 * p.grad


def test_padding_never_changes_a_texts_logits(bert, stream):
    net = model(bert).eval()
    b = stream.batch(0)
    x = b.u_weak
    wider = torch.zeros(x.shape[0], 2, x.shape[2] + 5, dtype=x.dtype)
    wider[:, :, : x.shape[2]] = x  # pad id 0, mask 0
    torch.testing.assert_close(net(x), net(wider), atol=1e-5, rtol=1e-5)
    assert np.isfinite(net(torch.zeros(2, 2, 6, dtype=torch.int64)).detach().numpy()).all()
