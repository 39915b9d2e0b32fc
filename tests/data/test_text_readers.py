"""Text files: CSV/TSV/JSONL (gzipped or not), class folders of .txt, USB's NLP JSON, and the
errors naming the file and row for every kind of bad input (through ``load_text``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from semimatch.data import from_texts, load_dataset, load_text
from semimatch.data.text_readers import read_rows, text_format

CSV = "label,text\nWorld,the market rises\nSports,the team wins\n,an old game\n-1,a new bank\n"


def _write(path: Path, text: str | bytes, gz: bool = False) -> Path:
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_csv_with_names_and_unlabeled_rows(tmp_path):
    ds = load_text(_write(tmp_path / "a.csv", CSV))
    assert ds.info.kind == "text" and ds.info.class_names == ("Sports", "World")
    assert ds.train.texts == ["the market rises", "the team wins", "an old game", "a new bank"]
    assert ds.train.labels.tolist() == [1, 0, -1, -1]
    assert ds.test is None and ds.extra_unlabeled is None


def test_tsv_with_configured_columns_and_integer_labels(tmp_path):
    tsv = "id\tbody\ty\n1\tthe cat, sat\t1\n2\ta dog\t0\n3\tthe mat\t\n"
    ds = load_text(_write(tmp_path / "a.tsv", tsv), text_column="body", label_column="y")
    assert ds.train.texts == ["the cat, sat", "a dog", "the mat"]
    assert ds.train.labels.tolist() == [1, 0, -1] and ds.info.class_names == ("0", "1")


def test_jsonl_with_null_and_minus_one_labels(tmp_path):
    rows = [{"text": "a", "label": 2}, {"text": "b", "label": None}, {"text": "c", "label": -1}]
    rows += [{"text": "d", "label": 0}, {"text": "e"}]
    path = _write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n")
    ds = load_text(path)  # 0 and 2 are not 0..C-1: the classes named "0" and "2"
    assert ds.train.labels.tolist() == [1, -1, -1, 0, -1] and ds.info.class_names == ("0", "2")


def test_gzip_is_recognised_by_its_magic_bytes(tmp_path):
    by_name = load_text(_write(tmp_path / "a.csv.gz", CSV, gz=True))
    by_magic = load_text(_write(tmp_path / "b.csv", CSV, gz=True))  # gzipped, plain name
    assert (
        by_name.train.texts
        == by_magic.train.texts
        == load_text(_write(tmp_path / "c.csv", CSV)).train.texts
    )


def test_class_folders_of_txt_files(tmp_path):
    for cls, texts in {"neg": ["bad game", "old bank"], "pos": ["a win"]}.items():
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i, t in enumerate(texts):
            (tmp_path / "train" / cls / f"{i}.txt").write_text(t + "\n")
    (tmp_path / "unl").mkdir()
    (tmp_path / "unl" / "x.txt").write_text("the new team")
    ds = load_text(tmp_path / "train", unlabeled=tmp_path / "unl")
    assert ds.info.class_names == ("neg", "pos") and ds.train.labels.tolist() == [0, 0, 1]
    assert ds.train.texts[2] == "a win\n" and ds.extra_unlabeled.texts == ["the new team"]
    assert ds.extra_unlabeled.labels.tolist() == [-1]
    named = load_dataset("text", tmp_path / "train", unlabeled_dir=str(tmp_path / "unl"))
    assert named.train.texts == ds.train.texts


def test_usb_json_keeps_the_back_translations(tmp_path):
    usb = {
        "0": {"ori": "the cat sat", "aug_0": "a cat sat", "aug_1": "the cat sits", "label": "1"},
        "1": {"ori": "stock market", "aug_0": "the market", "aug_1": "stocks", "label": "0"},
    }
    ds = load_text(_write(tmp_path / "train.json", json.dumps(usb)))
    assert ds.train.texts == ["the cat sat", "stock market"]
    assert ds.train.augmentations == [("a cat sat", "the cat sits"), ("the market", "stocks")]
    assert ds.train.labels.tolist() == [1, 0] and ds.train.has_augmentations


def test_usb_s_nlp_folder_is_train_json_and_test_json(tmp_path):
    """USB's data/<dataset>/: train.json is the pool, test.json the test set, dev.json unused;
    test_size carves from train.json instead, test_dir replaces test.json."""
    row = {"ori": "the cat", "aug_0": "a cat", "aug_1": "the cats", "label": "0"}
    pool = {str(i): {**row, "label": str(i % 2)} for i in range(6)}
    _write(tmp_path / "train.json", json.dumps(pool))
    _write(tmp_path / "dev.json", json.dumps({"0": {"ori": "dev", "label": "0"}}))
    _write(tmp_path / "test.json", json.dumps({"0": {"ori": "a test", "label": "1"}}))
    ds = load_dataset("text", tmp_path)
    assert (len(ds.train), ds.test.texts, ds.test.labels.tolist()) == (6, ["a test"], [1])
    assert ds.train.has_augmentations
    carved = load_dataset("text", tmp_path, test_size=2)
    assert (len(carved.train), len(carved.test)) == (4, 2)
    assert load_dataset("text", tmp_path, test_dir=str(tmp_path / "dev.json")).test.texts == ["dev"]
    (tmp_path / "test.json").unlink()
    with pytest.raises(ValueError, match="needs its test.json too; add it, or pass test_dir"):
        load_dataset("text", tmp_path)


def test_a_test_file_and_its_unknown_labels(tmp_path):
    train = _write(tmp_path / "train.csv", CSV)
    ds = load_text(train, test=_write(tmp_path / "test.csv", "label,text\nWorld,big rates\n"))
    assert ds.test.labels.tolist() == [1]
    bad = _write(tmp_path / "bad.csv", "label,text\nWorld,x\nBusiness,big rates\n")
    with pytest.raises(ValueError, match=r"bad\.csv:line 3: label 'Business' in the test set is "):
        load_text(train, test=bad)
    unl = _write(tmp_path / "unl.csv", "label,text\nWorld,x\n,y\n")
    with pytest.raises(ValueError, match=r"unl\.csv:line 3: a test text without a label"):
        load_text(train, test=unl)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", "label,body\nWorld,x\n", r"a\.csv:line 1: no text column 'text' in the header"),
        ("a.csv", "label,text\nWorld,x\nSports,  \n", r"a\.csv:line 3: empty text"),
        ("a.csv", b"label,text\nWorld,x\nSports,caf\xe9\n", r"a\.csv:line 3: undecodable bytes"),
        ("a.csv", b"\x89PNG\r\n\x1a\n\x00\x00", r"a\.csv: this is a PNG image, not a text file"),
        ("a.csv", '{"text": "x"}\n', r"a\.csv: this looks like JSON, not CSV"),
        ("a.csv", "label,text\nWorld,x,y\n", r"a\.csv:line 2: 3 fields where the header has 2"),
        ("a.csv", "label,text\nWorld,x\n1,y\n", r"a\.csv:line 3.*names and numbers|a name but"),
        ("a.csv.gz", "label,text\nWorld,x\n", r"a\.csv\.gz: the name ends in \.gz but the file"),
        ("a.jsonl", '{"text": "x"}\nlabel,text\n', r"a\.jsonl:line 2: not a JSON object"),
        ("a.jsonl", '{"body": "x"}\n', r"a\.jsonl:line 1: no text column 'text'"),
        ("a.jsonl", '{"text": 3, "label": 0}\n', r"a\.jsonl:line 1: the text is a int"),
        ("a.json", '[{"ori": "x"}]', r"a\.json: expected USB's layout"),
        ("a.json", '{"0": {"text": "x"}}', r'a\.json: entry "0": expected an object with an "ori"'),
        ("a.json", "label,text\n", r"a\.json:line 1: not valid JSON"),
        ("a.txt", "x", r"a\.txt: cannot tell the format from the extension '\.txt'"),
    ],
)
def test_bad_input_names_the_file_and_row(tmp_path, name, content, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(ValueError, match=message):
        load_text(path)


def test_a_missing_file_and_a_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        load_text(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="no class folders"):
        (tmp_path / "empty").mkdir()
        load_text(tmp_path / "empty")


def test_skip_bad_skips_and_counts(tmp_path, capsys):
    path = _write(tmp_path / "a.csv", "label,text\nWorld,x\nSports, \nWorld,\nSports,y\n")
    ds = load_text(path, skip_corrupt=True)
    assert ds.train.texts == ["x", "y"]
    err = capsys.readouterr().err
    assert "skipped 2 bad row(s) (skip_corrupt)" in err and "a.csv:line 3: empty text" in err
    assert load_text(path, skip_bad=True).train.texts == ["x", "y"]  # the former name


def test_readers_directly(tmp_path):
    assert text_format("x.TSV.gz") == "tsv" and text_format("x.ndjson") == "jsonl"
    rows = read_rows(_write(tmp_path / "a.csv", CSV))
    assert [r.where.rsplit(":", 1)[1] for r in rows] == ["line 2", "line 3", "line 4", "line 5"]
    quoted = read_rows(_write(tmp_path / "q.csv", 'text,label\n"a, ""quoted""\nline",1\n'))
    assert quoted[0].text == 'a, "quoted"\nline' and quoted[0].label == "1"


def test_texts_to_classify_name_every_format_they_take(tmp_path):
    """``semimatch predict``'s reader takes .txt files (one text per line): its error lists
    them with the tables' extensions."""
    from semimatch.data.text_readers import read_texts

    rows = read_texts(_write(tmp_path / "q.txt", "one\n\ntwo\n"))
    assert [r.text for r in rows] == ["one", "two"]
    with pytest.raises(ValueError, match=r"extension '\.md'; .*\.txt file .*\.csv, \.tsv"):
        read_texts(_write(tmp_path / "notes.md", "a text\n"))


AG_NEWS = Path("/work/shared/data/ag_news/ag_news_test.csv.gz")


@pytest.mark.skipif(not AG_NEWS.exists(), reason="the AG News file is not on this machine")
def test_ag_news_loads_with_7600_texts_in_4_classes():
    ds = load_text(AG_NEWS)
    assert len(ds.train) == 7600
    assert ds.info.class_names == ("Business", "Sci/Tech", "Sports", "World")
    assert np.bincount(ds.train.labels).tolist() == [1900] * 4
    carved = load_dataset("text", AG_NEWS, test_size=2000, test_seed=0)
    assert len(carved.train) == 5600 and np.bincount(carved.test.labels).tolist() == [500] * 4
    assert sorted(carved.train.texts + carved.test.texts) == sorted(ds.train.texts)


def test_integer_labels_are_indices_only_when_exactly_0_to_c_minus_1(tmp_path):
    """AG News labels 1..4 are four classes named "1".."4" (never five with an empty "0"); the
    labels 0..C-1 are indices; label_kind says which where the labels alone do not."""
    one = load_text(_write(tmp_path / "one.csv", "label,text\n1,a\n2,b\n3,c\n4,d\n1,e\n"))
    assert one.info.class_names == ("1", "2", "3", "4") and one.label_kind == "name"
    assert one.train.labels.tolist() == [0, 1, 2, 3, 0]
    zero = load_text(_write(tmp_path / "zero.csv", "label,text\n1,a\n0,b\n"))
    assert zero.info.class_names == ("0", "1") and zero.label_kind == "index"
    wide = from_texts(["a", "b", "c"], [2, 10, 2])  # names sort as numbers: "2" before "10"
    assert wide.info.class_names == ("2", "10") and wide.train.labels.tolist() == [0, 1, 0]
    named = load_text(tmp_path / "zero.csv", label_kind="name")
    assert named.info.class_names == ("0", "1") and named.label_kind == "name"
    with pytest.raises(ValueError, match=r"class index 0 has no labeled text .the labels are 1..4"):
        load_text(tmp_path / "one.csv", label_kind="index")
    with pytest.raises(ValueError, match="label_kind: expected 'index', 'name' or None"):
        load_text(tmp_path / "one.csv", label_kind="names")
    test = _write(tmp_path / "t.csv", "label,text\n4,x\n0,y\n")
    with pytest.raises(ValueError, match=r"t\.csv:line 3: label '0' in the test set is unknown"):
        load_text(tmp_path / "one.csv", test=test)
    # a trained run's named classes: an integer is a class only by its name, never an index
    with pytest.raises(ValueError, match=r"label '1' is not one of the classes .Sports, World."):
        load_text(tmp_path / "zero.csv", class_names=["Sports", "World"])


def test_missing_columns_are_refused_listing_what_the_file_has(tmp_path):
    path = _write(tmp_path / "a.csv", CSV)
    with pytest.raises(ValueError, match=r"no label column 'category' in the header .'label', "):
        load_text(path, label_column="category")
    assert load_text(path, unlabeled=path).extra_unlabeled.labels.tolist() == [-1] * 4
    unl = load_text(path, unlabeled=_write(tmp_path / "u.csv", "text\nx\n"))  # labels unread
    assert unl.extra_unlabeled.texts == ["x"]


def test_headerless_tables_address_columns_by_position(tmp_path):
    tsv = _write(tmp_path / "a.tsv", "3\tthe market\n1\tthe team\n3\ta bank\n")
    with pytest.raises(ValueError, match=r"a\.tsv:line 1: .*looks like data.*header=False"):
        load_text(tsv)
    ds = load_text(tsv, header=False)  # default positions: label 0, text 1
    assert ds.train.texts == ["the market", "the team", "a bank"]
    assert ds.info.class_names == ("1", "3") and ds.train.labels.tolist() == [1, 0, 1]
    swapped = _write(tmp_path / "b.csv", "the market,World\nthe team,Sports\n")
    ds = load_text(swapped, header=False, text_column="0", label_column="1")
    assert ds.info.class_names == ("Sports", "World") and ds.train.texts[0] == "the market"
    rows = read_rows(_write(tmp_path / "c.csv", "just texts\nmore\n"), header=False,
                     label_column=None)  # fmt: skip
    assert [r.text for r in rows] == ["just texts", "more"]  # one column: the texts
    with pytest.raises(ValueError, match=r"the same column .0."):
        load_text(swapped, header=False, text_column="0")
    with pytest.raises(ValueError, match=r"header=False applies to CSV/TSV files"):
        load_text(_write(tmp_path / "a.jsonl", '{"text": "x", "label": "a"}\n'), header=False)
    with pytest.raises(ValueError, match=r"line 1: .'label', 'text'. reads like a header row"):
        load_text(_write(tmp_path / "h.csv", CSV), header=False)  # not a class named "label"
    (tmp_path / "f" / "a").mkdir(parents=True)
    (tmp_path / "f" / "a" / "0.txt").write_text("x")
    with pytest.raises(ValueError, match=r"header=False applies to CSV/TSV files; .* folder"):
        load_text(tmp_path / "f", header=False)


def test_skip_corrupt_skips_undecodable_rows_and_files(tmp_path, capsys):
    path = _write(tmp_path / "a.csv", b"label,text\nWorld,x\nSports,caf\xe9\nWorld,y\nSports,z\n")
    with pytest.raises(ValueError, match=r"a\.csv:line 3: undecodable bytes.*skip_corrupt=True"):
        load_text(path)
    ds = load_text(path, skip_corrupt=True)
    assert ds.train.texts == ["x", "y", "z"]
    assert "a.csv:line 3: undecodable bytes (not UTF-8)" in capsys.readouterr().err
    bad_label = _write(tmp_path / "b.csv", b"label,text\nWorld,x\nSp\xf6rts,w\nSports,z\n")
    assert load_text(bad_label, skip_corrupt=True).info.class_names == ("Sports", "World")
    for cls, data in {"neg": [b"bad", b"b\xe4d"], "pos": [b"good"]}.items():
        (tmp_path / "f" / cls).mkdir(parents=True)
        for i, text in enumerate(data):
            (tmp_path / "f" / cls / f"{i}.txt").write_bytes(text)
    assert load_text(tmp_path / "f", skip_corrupt=True).train.texts == ["bad", "good"]


@pytest.mark.skipif(not AG_NEWS.exists(), reason="the AG News file is not on this machine")
def test_ag_news_with_its_own_1_to_4_labels_and_no_header(tmp_path):
    """AG News as distributed: headerless CSV, class 1..4 first (World, Sports, Business,
    Sci/Tech), 4 classes of 1,900 texts, no empty class."""
    import csv

    order = ["World", "Sports", "Business", "Sci/Tech"]
    with gzip.open(AG_NEWS, "rt", encoding="utf-8", newline="") as f:
        rows = [(str(order.index(r["label"]) + 1), r["text"]) for r in csv.DictReader(f)]
    path = tmp_path / "train.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    ds = load_text(path, header=False)
    assert ds.info.class_names == ("1", "2", "3", "4") and ds.label_kind == "name"
    assert np.bincount(ds.train.labels).tolist() == [1900] * 4
