"""Fault injection at the data edges of a text run, through the command line: labels as names,
0-based and 1-based integers, missing columns, headerless files and undecodable bytes, with
and without ``--skip-corrupt``. A refusal is one line on stderr naming the flag that fixes it,
exit status 2, no traceback and no run folder; an accepted file trains with the classes it
names, recorded in ``dataset.json`` and (how the labels read) in ``config.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.text_fixtures import text_corpus
from semimatch.cli import main

pytest.importorskip("transformers")

TEXTS, NAMES = text_corpus(48)  # 12 texts of each of 4 classes
CLASSES = sorted(set(NAMES))  # business, science, sport, world
INDEX = [CLASSES.index(n) for n in NAMES]


def write_table(path: Path, labels: list, header: bool = True, order: str = "label,text") -> Path:
    """A CSV/TSV (by suffix) of ``TEXTS`` with ``labels``, columns in ``order``."""
    sep = "\t" if path.suffix == ".tsv" else ","
    rows = [order.split(",")] if header else []
    for text, label in zip(TEXTS, labels):
        rows.append([str(label), text] if order == "label,text" else [text, str(label)])
    path.write_text("".join(sep.join(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("faults")
    out = {
        "names": write_table(d / "names.csv", NAMES),
        "zero": write_table(d / "zero.csv", INDEX),
        "one": write_table(d / "one.csv", [i + 1 for i in INDEX]),
        "headerless": write_table(d / "headerless.tsv", [i + 1 for i in INDEX], header=False),
        "text_first": write_table(d / "t.csv", NAMES, header=False, order="text,label"),
        "mixed": write_table(d / "mixed.csv", [n if i % 5 else i for i, n in enumerate(NAMES)]),
    }
    raw = out["names"].read_bytes().splitlines(keepends=True)
    raw[2] = raw[2].replace(b",", b",caf\xe9 ", 1)  # line 3: Latin-1, not UTF-8
    (d / "latin1.csv").write_bytes(b"".join(raw))
    out["latin1"] = d / "latin1.csv"
    (d / "a.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": n}) + "\n" for t, n in zip(TEXTS, NAMES))
    )
    out["jsonl"] = d / "a.jsonl"
    return out


def train(files: dict[str, Path], bert: Path, data: str, out: Path, *flags: str) -> list[str]:
    return [
        "train", "--dataset", "text", "--data-root", str(files[data]), "--backbone", f"hf:{bert}",
        "--test-size", "8", "--num-labels", "8", "--batch-size", "4", "--uratio", "1",
        "--iterations", "2", "--eval-every", "2", "--threads", "1", "--no-tensorboard",
        "--no-progress", "--out", str(out), *flags,
    ]  # fmt: skip


def assert_refused(capsys, argv: list[str], *expected: str) -> str:
    """``argv`` exits with status 2 and one line on stderr holding every ``expected`` text."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    assert err.startswith(f"semimatch {argv[0]}: error: ")
    for text in expected:
        assert text in err, err
    return err


@pytest.mark.parametrize(
    "data, flags, expected",
    [
        # a missing named column: refused listing the header, not "every text is unlabeled"
        ("names", ["--label-column", "category"], ["no label column 'category' in the header ('label', 'text')", "--label-column"]),  # noqa: E501
        ("names", ["--text-column", "body"], ["no text column 'body' in the header ('label', 'text')", "--text-column", "--no-header"]),  # noqa: E501
        ("jsonl", ["--label-column", "category"], ["no label column 'category' in any line (keys: label, text)"]),  # noqa: E501
        # a headerless file read with a header: its first row is data
        ("headerless", [], ["the first row looks like data", "pass --no-header", "--text-column 1 --label-column 0"]),  # noqa: E501
        ("headerless", ["--no-header", "--text-column", "body"], ["columns are numbered from 0", "--text-column 1"]),  # noqa: E501
        ("headerless", ["--no-header", "--text-column", "5"], ["no text column at position 5; the first row has 2 column(s)"]),  # noqa: E501
        ("jsonl", ["--no-header"], ["--no-header applies to CSV/TSV files"]),
        ("names", ["--no-header"], ["line 1: ('label', 'text') reads like a header row", "read as data (--no-header); pass --header"]),  # noqa: E501
        # labels: 1..4 read as indices only when asked, and then refused (class 0 is empty)
        ("one", ["--label-kind", "index"], ["class index 0 has no labeled text (the labels are 1..4", "--label-kind name"]),  # noqa: E501
        ("names", ["--label-kind", "index"], ["is not a class index", "--label-kind name"]),
        ("mixed", [], ["is a name but", "has the number", "--label-kind name"]),
        # undecodable bytes: the file, the line and the flag that skips them
        ("latin1", [], ["latin1.csv:line 3: undecodable bytes", "--skip-corrupt"]),
    ],
)  # fmt: skip
def test_bad_data_is_refused_in_one_line_before_anything_is_written(
    tmp_path, capsys, files, tiny_bert_dir, data, flags, expected
):
    out = tmp_path / "run"
    assert_refused(capsys, train(files, tiny_bert_dir, data, out, *flags), *expected)
    assert not out.exists()


def test_a_refusal_without_out_leaves_no_run_folder(tmp_path, capsys, files, tiny_bert_dir,
                                                    monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    argv = [a for a in train(files, tiny_bert_dir, "headerless", tmp_path) if a != "--out"]
    argv.remove(str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--no-header" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "data, flags, classes, kind, reason",
    [
        ("names", [], CLASSES, "name", "the labels are names"),
        ("zero", [], ["0", "1", "2", "3"], "index", "exactly the integers 0..3"),
        # AG News' own convention: 4 classes named 1..4, no empty class 0
        ("one", [], ["1", "2", "3", "4"], "name", "the integer labels 1..4 are not 0..C-1"),
        ("zero", ["--label-kind", "name"], ["0", "1", "2", "3"], "name", None),
        ("headerless", ["--no-header"], ["1", "2", "3", "4"], "name", "1..4 are not 0..C-1"),
        ("text_first", ["--no-header", "--text-column", "0", "--label-column", "1"], CLASSES,
         "name", "the labels are names"),
        ("latin1", ["--skip-corrupt"], CLASSES, "name", "the labels are names"),
    ],
)  # fmt: skip
def test_accepted_labels_train_with_the_classes_they_name(
    tmp_path, capsys, files, tiny_bert_dir, data, flags, classes, kind, reason
):
    out = tmp_path / "run"
    assert main(train(files, tiny_bert_dir, data, out, *flags)) == 0
    err = capsys.readouterr().err
    assert json.loads((out / "dataset.json").read_text())["class_names"] == classes
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["label_kind"] == kind
    assert (reason is None) == ("label_kind" not in cfg["auto"])  # given, or derived and why
    assert reason is None or reason in cfg["auto"]["label_kind"]
    if data == "latin1":
        assert "skipped 1 bad row(s)" in err and "latin1.csv:line 3: undecodable bytes" in err
    assert (out / "summary.json").exists()


@pytest.fixture(scope="module")
def named_run(tmp_path_factory, files, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("named") / "run"
    assert main(train(files, tiny_bert_dir, "names", out)) == 0
    return out


@pytest.mark.parametrize(
    "data, flags, expected",
    [
        # integers are not silently the sorted names' indices
        ("zero", [], ["zero.csv:line 2: label '3' is not one of the classes (business, science, sport, world)"]),  # noqa: E501
        ("one", [], ["label '4' is not one of the classes"]),
        ("names", ["--label-column", "category"], ["no label column 'category'", "--label-column"]),  # noqa: E501
        ("headerless", [], ["--no-header"]),
        ("latin1", [], ["line 3: undecodable bytes", "--skip-corrupt"]),
    ],
)  # fmt: skip
def test_eval_refuses_a_test_file_that_does_not_name_the_run_s_classes(
    capsys, files, named_run, data, flags, expected
):
    argv = ["eval", str(named_run), "--test-dir", str(files[data]), "--json", *flags]
    assert_refused(capsys, argv, *expected)
    assert not capsys.readouterr().out


def test_eval_reads_a_test_file_of_the_run_s_class_names(capsys, files, named_run):
    assert_refused(capsys, ["eval", str(named_run), "--no-header"], "read --test-dir; pass it")
    assert main(["eval", str(named_run), "--test-dir", str(files["names"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 48
    flags = ["--no-header", "--text-column", "0", "--label-column", "1"]
    assert main(["eval", str(named_run), "--test-dir", str(files["text_first"]), *flags]) == 0
    assert "48 test texts" in capsys.readouterr().out
    assert main(["eval", str(named_run), "--test-dir", str(files["latin1"]), "--skip-corrupt"]) == 0
    assert "47 test texts" in capsys.readouterr().out


@pytest.fixture(scope="module")
def headerless_run(tmp_path_factory, files, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("headerless") / "run"
    assert main(train(files, tiny_bert_dir, "headerless", out, "--no-header")) == 0
    return out


def test_a_header_the_run_s_no_header_reads_as_data_is_refused_with_the_flag_that_works(
    capsys, files, headerless_run
):
    # --no-header came from the run, not the command: the fix is --header, not "drop it".
    names = str(files["names"])
    run = str(headerless_run)
    for argv in (["eval", run, "--test-dir", names], ["predict", run, names]):
        assert_refused(capsys, argv, "reads like a header row", "(--no-header); pass --header")
    assert main(["predict", str(headerless_run), names, "--header"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1 + 48


def test_predict_reads_tables_as_told_and_says_which_checkpoint_answered(capsys, files, named_run):
    headerless = str(files["headerless"])
    assert main(["predict", str(named_run), headerless, "--no-header", "--text-column", "1"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 + 48
    assert captured.err.strip() == f"{named_run}: ema model, ckpt-0000002.pt, the last checkpoint"
    assert main(["eval", str(named_run)]) == 0  # the same words as eval's
    assert "ema model, ckpt-0000002.pt, the last checkpoint)" in capsys.readouterr().out
    # its refusals name the flags, as eval's do
    assert_refused(capsys, ["predict", str(named_run), headerless], "pass --no-header")
    argv = ["predict", str(named_run), str(files["names"]), "--no-header", "--text-column", "x"]
    assert_refused(capsys, argv, "--text-column 1")


def test_a_run_saved_with_relative_data_paths_says_where_they_are_relative_to(
    tmp_path, capsys, monkeypatch, named_run
):
    # Runs written before data paths were stored absolute hold them as typed.
    run = tmp_path / "old"
    run.mkdir()
    cfg = json.loads((named_run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "data_root": "names.csv"}))
    (run / "dataset.json").write_bytes((named_run / "dataset.json").read_bytes())
    (run / "checkpoints").mkdir()
    for ckpt in (named_run / "checkpoints").iterdir():
        (run / "checkpoints" / ckpt.name).write_bytes(ckpt.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert_refused(
        capsys, ["eval", str(run)], f"text file {tmp_path / 'names.csv'} does not exist",
        "holds data_root 'names.csv', relative to the folder the run was started in",
        "or pass --test-dir PATH",
    )  # fmt: skip


def test_a_text_column_chosen_as_the_label_is_refused_naming_the_flags(
    tmp_path, capsys, tiny_bert_dir
):
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 3)]  # 144 distinct texts
    many = tmp_path / "many.csv"
    many.write_text("label,text\n" + "".join(f"x,{t}\n" for t in texts), encoding="utf-8")
    out = tmp_path / "run"
    argv = train({"many": many}, tiny_bert_dir, "many", out, "--label-column", "text")
    assert_refused(
        capsys, argv, "many.csv:line 2: --label-column holds 144 distinct values in 144",
        "pass --label-kind name if these are 144 classes",
    )  # fmt: skip
    assert not out.exists()


def test_a_run_started_with_a_relative_data_root_is_reloaded_from_any_folder(
    tmp_path, capsys, monkeypatch, files, tiny_bert_dir
):
    monkeypatch.chdir(files["names"].parent)
    out = tmp_path / "run"
    argv = train(files, tiny_bert_dir, "names", out)
    argv[argv.index("--data-root") + 1] = "names.csv"  # relative to this folder
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["data_root"] == str(files["names"])
    assert main([*argv, "--resume", "auto"]) == 0  # the same run: nothing left to do
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 8
    assert main(["train", "--resume", str(out), "--iterations", "4"]) == 0
    assert "done: fixmatch on text | 4 it" in capsys.readouterr().out


def test_a_run_without_a_test_set_or_unlabeled_texts_says_so(
    tmp_path, capsys, files, tiny_bert_dir
):
    """No --test-size/--test-dir: nothing is measured; no --num-labels on fully labeled data:
    the unlabeled stream only repeats the labeled texts. Both train, each with one line."""
    argv = train(files, tiny_bert_dir, "names", tmp_path / "run")
    for flag in ("--test-size", "--num-labels"):
        i = argv.index(flag)
        del argv[i : i + 2]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("no test set (--test-size N carves one, --test-dir FILE names one)") == 1
    assert err.count("training samples is labeled and none is unlabeled") == 1
    assert "--num-labels" in err
    # The tiny BERT has 64 positions: the derived max_length says why it is not 128.
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["max_length"] == 64 and "the encoder has 64 positions" in cfg["auto"]["max_length"]
