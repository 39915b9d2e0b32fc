"""Texts in memory, one-time tokenization, dynamic padding, evaluation batches, prediction
input, the model wrapper and text training streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers.tiny_tokenizer import tiny_tokenizer
from semimatch.data import (
    TextSource,
    TokenInput,
    TrainStream,
    balanced_split,
    eval_batches,
    from_texts,
    given_split,
    to_model_input,
    tokenize_dataset,
    wrap_model,
)
from semimatch.data.text import stack_text_views, stack_texts
from semimatch.data.text_views import Precomputed, TfIdfReplace


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tiny_tokenizer"))


TEXTS = [
    "the cat sat on the mat",
    "dogs run",
    "stock market rates rise",
    "the team wins the game !",
    "a big bank",
    "the old dog sat",
    "new rates fall . the market",
    "team play",
]


def _ds(tok, max_length=16, labels=None, **kw):
    labels = [0, 1, 0, 1, -1, -1, 0, 1] if labels is None else labels
    return from_texts(TEXTS * 3, labels * 3, tokenizer=tok, max_length=max_length, **kw)


def test_from_texts_labels_by_index_or_name():
    ds = from_texts(["a", "b", "c"], [1, -1, 0])
    assert ds.info.kind == "text" and ds.info.class_names == ("0", "1")
    assert ds.train.labels.tolist() == [1, -1, 0]
    named = from_texts(["a", "b", "c"], ["pos", None, "neg"], ["d"], ["pos"])
    assert named.info.class_names == ("neg", "pos") and named.train.labels.tolist() == [1, -1, 0]
    assert named.test.labels.tolist() == [1]
    fixed = from_texts(["a", "b"], ["pos", "neg"], class_names=["neg", "pos"])
    assert fixed.train.labels.tolist() == [1, 0]
    indexed = from_texts(["a", "b"], [1, 0], class_names=["neg", "pos"], label_kind="index")
    assert indexed.train.labels.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"texts\[1\]: label 0 is not one of the classes"):
        from_texts(["a", "b"], ["pos", 0], class_names=["neg", "pos"])  # 0 names no class
    with pytest.raises(ValueError, match=r"test_texts\[0\]: label 'odd' in the test set"):
        from_texts(["a", "b"], ["pos", "neg"], ["c"], ["odd"])
    with pytest.raises(ValueError, match=r"texts\[1\]: empty text"):
        from_texts(["a", ""], [0, 1])
    with pytest.raises(ValueError, match="every text is unlabeled"):
        from_texts(["a", "b"], [-1, -1], class_names=["x", "y"])
    with pytest.raises(ValueError, match="one string"):
        from_texts("abc", [0, 1, 2])


def test_a_label_column_of_free_text_is_refused_unless_label_kind_says_it_is_classes():
    texts = [f"text number {i}" for i in range(202)]
    free = r"texts\[0\]: label_column holds 202 distinct values in 202 labeled rows "
    with pytest.raises(ValueError, match=free + r"\(e\.g\. 'text number 0', 'text number 1'\)"):
        from_texts(texts, texts)
    with pytest.raises(ValueError, match="label_column holds 150 distinct values in 150"):
        from_texts(texts[:150], list(range(150)))  # an ID column: integers 0..149
    assert from_texts(texts, texts, label_kind="name").info.num_classes == 202  # the escape
    # many classes with at least two labeled texts each, or few classes: never refused
    assert from_texts(texts, [f"c{i // 2}" for i in range(202)]).info.num_classes == 101
    assert from_texts(texts[:100], texts[:100]).info.num_classes == 100


def test_tokenized_once_with_word_starts(tiny_tok):
    ds = _ds(tiny_tok)
    assert ds.info.spec.tokenizer == tiny_tok.name_or_path and ds.info.spec.max_length == 16
    assert ds.info.input_shape == (2, 16) and ds.info.sample_shape == ()
    s = ds.train[1]  # "dogs run": dog ##s | run
    vocab = tiny_tok.get_vocab()
    assert s.ids.tolist() == [vocab["dog"], vocab["##s"], vocab["run"]]
    assert s.word_starts.tolist() == [0, 2] and s.augs == ()
    enc = ds.train.encoding
    assert enc.prefix == (vocab["[CLS]"],) and enc.suffix == (vocab["[SEP]"],)
    assert enc.pad_id == vocab["[PAD]"] and enc.content_length == 14
    with pytest.raises(ValueError, match="not tokenized yet"):
        TextSource(["a"], [0])[0]


def test_truncation_keeps_the_special_tokens(tiny_tok):
    ds = _ds(tiny_tok, max_length=5)
    s = ds.train[0]
    assert len(s.ids) == 3  # 5 - [CLS] - [SEP]
    x = stack_texts([s], ds.train.encoding)
    vocab = tiny_tok.get_vocab()
    assert x[0, 0].tolist() == [vocab["[CLS]"], *s.ids.tolist(), vocab["[SEP]"]]


def test_dynamic_padding_to_the_longest_of_the_batch(tiny_tok):
    ds = _ds(tiny_tok)
    enc = ds.train.encoding
    samples = [ds.train[1], ds.train[0]]  # 3 and 6 content tokens
    x = stack_texts(samples, enc)
    assert x.dtype == torch.int64 and x.shape == (2, 2, 8)  # 6 + [CLS] + [SEP]
    assert x[0, 1].tolist() == [1] * 5 + [0] * 3 and x[1, 1].tolist() == [1] * 8
    assert (x[0, 0, 5:] == enc.pad_id).all()
    a, b = stack_text_views([[ds.train[1]], [ds.train[0]]], enc)  # one common length
    assert a.shape == b.shape == (1, 2, 8)
    assert stack_texts([np.zeros(40, np.int32)], enc).shape == (1, 2, 16)  # capped


def test_eval_batches_pad_each_batch(tiny_tok):
    ds = _ds(tiny_tok)
    seen, lengths = [], []
    for x, y in eval_batches(ds.train, 3):
        assert x.shape[0] == y.shape[0] and x.shape[1] == 2
        lengths.append(x.shape[2])
        assert int(x[:, 1].sum(1).max()) == x.shape[2]  # padded to the longest, no further
        seen += y.tolist()
    assert seen == ds.train.labels.tolist() and len(set(lengths)) > 1


def test_prediction_input_matches_training(tiny_tok):
    ds = _ds(tiny_tok)
    x = to_model_input(["dogs run", "the cat sat on the mat"], ds.info)
    ref = stack_texts([ds.train[1], ds.train[0]], ds.train.encoding)
    assert torch.equal(x, ref)
    with pytest.raises(ValueError, match="one string"):
        to_model_input("dogs run", ds.info)
    with pytest.raises(ValueError, match="item 1 is a int"):
        to_model_input(["a", 3], ds.info)


def test_text_models_are_not_wrapped_and_token_input_splits_the_batch(tiny_tok):
    class Mean(nn.Module):
        def forward(self, ids, mask):
            return (ids * mask).sum(1, keepdim=True).float()

    ds = _ds(tiny_tok)
    model = Mean()
    assert wrap_model(model, ds.info) is model  # text models take the packed batch as it is
    net = TokenInput(model)  # the adapter for a forward(input_ids, attention_mask)
    x = stack_texts([ds.train[0], ds.train[1]], ds.train.encoding)
    assert torch.equal(net(x), (x[:, 0] * x[:, 1]).sum(1, keepdim=True).float())
    assert list(net.state_dict()) == []  # Mean has no parameters; keys would be model.*


def test_precomputed_augmentations_are_tokenized(tiny_tok):
    ds = from_texts(
        ["the cat", "a dog", "the game"],
        [0, 1, -1],
        augmentations=[("a cat", "the cats"), ("dog",), ()],
        tokenizer=tiny_tok,
    )
    assert isinstance(ds.views.strong, Precomputed)
    vocab = tiny_tok.get_vocab()
    assert [a.tolist() for a in ds.train[0].augs] == [
        [vocab["a"], vocab["cat"]],
        [vocab["the"], vocab["cat"], vocab["##s"]],
    ]
    assert ds.train[2].augs == ()
    plain = _ds(tiny_tok)
    assert isinstance(plain.views.strong, TfIdfReplace)  # the default without augmentations


def test_balanced_split_and_carved_test_set(tiny_tok):
    ds = _ds(tiny_tok)
    split = balanced_split(ds.train.labels, 2, 4, seed=3)
    assert np.bincount(ds.train.labels[split.labeled]).tolist() == [2, 2]
    assert split.labeled.tolist() == balanced_split(ds.train.labels, 2, 4, seed=3).labeled.tolist()


# --------------------------------------------------------------------------------------------
# Training streams
# --------------------------------------------------------------------------------------------
def _stream(ds, **kw):
    args = {"batch_size": 4, "uratio": 2, "seed": 5}
    return TrainStream(ds, given_split(ds.train.labels), **(args | kw))


def test_stream_pads_the_three_views_to_one_length(tiny_tok):
    ds = _ds(tiny_tok)
    st = _stream(ds)
    for k in range(6):
        b = st.batch(k)
        assert b.x_lb.shape[1:] == b.u_weak.shape[1:] == b.u_strong.shape[1:]
        assert b.x_lb.shape[:2] == (4, 2) and b.u_weak.shape[:2] == (8, 2)
        longest = max(int(t[:, 1].sum(1).max()) for t in (b.x_lb, b.u_weak, b.u_strong))
        assert b.x_lb.shape[2] == longest <= ds.info.spec.max_length
        torch.cat([b.x_lb, b.u_weak, b.u_strong])  # what the step does
        assert b.y_lb.dtype == torch.int64 and (b.y_lb >= 0).all()


def test_stream_is_a_function_of_seed_and_iteration_for_any_workers(tiny_tok):
    ds = _ds(tiny_tok)
    ref = [_stream(ds).batch(k) for k in range(4)]
    for workers in (1, 2):
        got = list(_stream(ds, num_workers=workers).batches(0, 4))
        for a, b in zip(got, ref):
            for x, y in zip(a, b):  # u_strong_more: a tuple of views (empty here)
                xs, ys = (x, y) if isinstance(x, tuple) else ((x,), (y,))
                assert len(xs) == len(ys) and all(map(torch.equal, xs, ys))
    other = _stream(ds, seed=6).batch(0)
    assert not torch.equal(other.u_strong, ref[0].u_strong) or not torch.equal(
        other.x_lb, ref[0].x_lb
    )


def test_weak_view_is_the_original_text(tiny_tok):
    ds = _ds(tiny_tok)
    st = _stream(ds)
    b = st.batch(0)
    _, pool_idx = st.indices(0)
    want = stack_texts([ds.train[int(i)] for i in st.split.unlabeled[pool_idx]], ds.train.encoding)
    assert torch.equal(b.u_weak[:, :, : want.shape[2]], want)


def test_a_text_stream_needs_tokenized_texts(tiny_tok):
    raw = from_texts(TEXTS, [0, 1] * 4)
    with pytest.raises(ValueError, match="not tokenized; call semimatch.data.tokenize_dataset"):
        TrainStream(raw, given_split(raw.train.labels), batch_size=2, uratio=1, seed=0)
    tok = tokenize_dataset(raw, tiny_tok, 12, strong="cutoff")
    assert type(tok.views.strong).__name__ == "SpanCutoff" and tok.info.spec.max_length == 12
    with pytest.raises(ValueError, match="strong text view 'nope'"):
        tokenize_dataset(raw, tiny_tok, strong="nope")


def test_tfidf_is_fitted_on_the_unlabeled_pool_per_stream(tiny_tok):
    ds = _ds(tiny_tok)
    st = _stream(ds)
    assert st.views is not ds.views and st.views.strong.num_docs == len(ds.train)
    assert ds.views.strong.num_docs == 0  # the dataset's views stay unfitted


def test_supervised_text_stream_has_no_unlabeled_views(tiny_tok):
    ds = _ds(tiny_tok)
    b = _stream(ds, use_unlabeled=False, uratio=0).batch(0)
    assert b.u_strong is None and b.u_weak.shape == (0, *b.x_lb.shape[1:])
    assert b.u_weak.dtype == torch.int64


def test_ranks_share_the_single_process_batch(tiny_tok):
    ds = _ds(tiny_tok)

    def rows(x):  # each row's unpadded ids (padding differs between ranks)
        return [r[0][r[1] > 0].tolist() for r in x]

    whole = _stream(ds).batch(2)
    ranks = [_stream(ds, rank=r, world_size=2).batch(2) for r in range(2)]
    for field in ("x_lb", "u_weak", "u_strong"):
        want = rows(getattr(whole, field))
        got = [rows(getattr(b, field)) for b in ranks]
        assert got[0] == want[0::2] and got[1] == want[1::2]


def test_text_info_survives_a_json_round_trip(tiny_tok):
    import json

    from semimatch.data import DatasetInfo

    info = _ds(tiny_tok).info
    d = json.loads(json.dumps(info.to_dict()))  # as run.py writes dataset.json
    back = DatasetInfo.from_dict(d)
    assert back == info and back.input_shape == (2, 16)
    # the flat form of run folders written before the modality specs
    flat = {**{k: v for k, v in d.items() if k != "spec"}, **d["spec"], "image_size": []}
    flat.update(channels=2, mean=[], std=[], hflip=False)
    assert DatasetInfo.from_dict(flat) == info


def test_load_dataset_text_options(tmp_path):
    from semimatch.data import load_dataset

    train = tmp_path / "train.jsonl"
    train.write_text('{"t": "the cat", "y": "a"}\n{"t": "dogs", "y": "b"}\n{"t": "x", "y": ""}\n')
    test = tmp_path / "test.jsonl"
    test.write_text('{"t": "a cat", "y": "b"}\n')
    ds = load_dataset("text", train, test_dir=str(test), text_column="t", label_column="y")
    assert ds.train.labels.tolist() == [0, 1, -1] and ds.test.labels.tolist() == [1]
    with pytest.raises(ValueError, match="text needs root="):
        load_dataset("text")
    with pytest.raises(ValueError, match="does not take option"):
        load_dataset("text", train, image_size=32)


def test_carving_a_test_set_checks_its_size(tmp_path):
    from semimatch.data import load_text

    path = tmp_path / "a.csv"
    path.write_text("label,text\n" + "".join(f"{c},text {i}\n" for i in range(3) for c in "ab"))
    ds = load_text(path, test_size=2, test_seed=1)
    assert len(ds.test) == 2 and sorted(ds.test.labels.tolist()) == [0, 1] and len(ds.train) == 4
    assert load_text(path, test_size=2, test_seed=1).test.texts == ds.test.texts  # seeded
    with pytest.raises(ValueError, match="not divisible by the 2 classes"):
        load_text(path, test_size=3)
    with pytest.raises(ValueError, match="would leave class 'a' .3 labeled texts. none to train"):
        load_text(path, test_size=6)
    with pytest.raises(ValueError, match="has a test set already"):
        load_text(path, test=path, test_size=2)


def test_a_tokenizer_is_loaded_from_its_folder(tmp_path):
    from semimatch.data.text import tokenizer_named

    tok = tiny_tokenizer(tmp_path / "tok")
    tok.save_pretrained(str(tmp_path / "saved"))
    name = str(tmp_path / "saved")  # a new folder: never registered nor loaded before
    loaded = tokenizer_named(name)  # from the folder, offline
    assert loaded("dogs run")["input_ids"] == tok("dogs run")["input_ids"]
    assert tokenizer_named(name) is loaded  # cached
    with pytest.raises((ValueError, OSError), match="nowhere"):
        tokenizer_named(str(tmp_path / "nowhere"))
