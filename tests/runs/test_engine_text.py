"""Text runs end to end on a tiny random BERT: the CLI (train, eval, predict from files and stdin),
the resolved recipe, a reload without the source model folder, exact resume after SIGKILL and
the options that do not apply to text (or only to it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import semimatch
from helpers.runs import assert_same_run, kill_after_first_checkpoint
from helpers.text_fixtures import text_corpus, write_text_corpus, write_tiny_bert
from semimatch.config import Config, ConfigError
from semimatch.data import from_texts
from semimatch.runs.engine import fit
from semimatch.training.metrics import read_jsonl

pytest.importorskip("transformers")

SEMIMATCH = [sys.executable, "-m", "semimatch"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_text_corpus(tmp_path_factory.mktemp("corpus") / "news.csv", n=240)


def train_args(corpus: Path, bert: Path, *extra: str) -> list[str]:
    return [
        *SEMIMATCH, "train", "--dataset", "text", "--data-root", str(corpus), "--test-size",
        "80", "--backbone", f"hf:{bert}", "--num-labels", "16", "--batch-size", "8",
        "--uratio", "2", "--threads", "1", "--tensorboard", "false", *extra,
    ]  # fmt: skip


def test_a_text_run_through_the_command_line(tmp_path, corpus):
    bert = write_tiny_bert(tmp_path / "bert")  # a copy of its own: deleted below
    run = tmp_path / "run"
    args = ["--algorithm", "supervised", "--lr", "3e-3", "--iterations", "60"]
    done = subprocess.run(
        [*train_args(corpus, bert, *args), "--eval-every", "60", "--out", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = json.loads((run / "config.json").read_text())
    # USB's fine-tuning recipe, derived and recorded: AdamW, the encoder's positions (64) cap
    # the default 128 tokens, TF-IDF strong view for data without augs; and the measured weight
    # EMA (0.999 with the warm-up; USB's recipe has none).
    assert (cfg["optimizer"], cfg["layer_decay"], cfg["ema_decay"]) == ("adamw", 1.0, 0.999)
    assert cfg["ema_warmup"] is True
    assert (cfg["max_length"], cfg["text_strong"], cfg["channels_last"]) == (64, "tfidf", False)
    assert set(cfg["auto"]) >= {"optimizer", "ema_decay", "max_length", "text_strong"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_error"] < 0.6  # 4 balanced classes: chance is 0.75

    # Prediction needs neither the data nor the model folder the run started from.
    shutil.rmtree(bert)
    assert {p.name for p in (run / "hf").iterdir()} >= {"config.json", "tokenizer.json"}
    (tmp_path / "q.txt").write_text("the team win the game\n\nstock market company\n")
    out = subprocess.run(
        [*SEMIMATCH, "predict", str(run), str(tmp_path / "q.txt"), "-"],
        input="science cat dog\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "source,class,confidence,text"
    sources = [line.split(",")[0] for line in lines[1:]]
    assert sources == [
        f"{tmp_path / 'q.txt'}:line 1",
        f"{tmp_path / 'q.txt'}:line 3",
        "stdin:line 1",
    ]
    assert all(
        line.split(",")[1] in ("world", "sport", "business", "science") for line in lines[1:]
    )

    api = semimatch.load_run(run)
    proba = api.predict_proba(["the team win the game", "stock market company", "science cat dog"])
    assert [float(x) for x in proba.max(axis=1)] == pytest.approx(
        [float(line.split(",")[2]) for line in lines[1:]], abs=1e-6
    )
    scored = subprocess.run(
        [*SEMIMATCH, "eval", str(run), "--test-dir", str(corpus), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert json.loads(scored.stdout)["n"] == 240


def test_resume_after_sigkill_equals_an_uninterrupted_text_run(tmp_path, corpus, tiny_bert_dir):
    args = train_args(corpus, tiny_bert_dir, "--algorithm", "softmatch", "--lr", "3e-3")
    args += ["--iterations", "16", "--eval-every", "4", "--log-every", "2", "--seed", "3"]
    args += ["--deterministic", "true"]
    ref, run = tmp_path / "ref", tmp_path / "killed"
    subprocess.run([*args, "--out", str(ref)], check=True, capture_output=True, timeout=300)
    kill_after_first_checkpoint(args, run, jitter=0.3)
    subprocess.run(
        [*SEMIMATCH, "train", "--resume", str(run)], check=True, capture_output=True, timeout=300
    )
    assert_same_run(ref, run)
    assert read_jsonl(run / "metrics.jsonl")[-1]["kind"] == "end"


def test_a_text_run_says_what_it_does_before_it_trains(tmp_path, corpus, tiny_bert_dir,
                                                      capsys, monkeypatch):  # fmt: skip
    """Loading the tokenizer, tokenizing and loading the encoder each get a line (stderr)
    before the first training line; standard output keeps the results."""
    from semimatch.cli import main

    args = ["--iterations", "2", "--eval-every", "2", "--no-progress", "--out", str(tmp_path)]
    assert main(train_args(corpus, tiny_bert_dir, *args)[3:]) == 0
    out, err = capsys.readouterr()
    said = [
        f"loading the tokenizer of hf:{tiny_bert_dir}",
        "tokenizing 240 texts",
        f"loading the encoder hf:{tiny_bert_dir}",
    ]
    assert [line for line in err.splitlines() if line in said] == said
    assert not set(said) & set(out.splitlines())
    monkeypatch.setattr("sys.stderr", sys.stdout)  # one stream: the lines' order shows
    assert main(train_args(corpus, tiny_bert_dir, *args, "--overwrite")[3:]) == 0
    lines = capsys.readouterr().out.splitlines()
    first_training = next(i for i, line in enumerate(lines) if line.startswith("[2/2]"))
    assert max(lines.index(line) for line in said) < first_training


def tiny_config(bert: Path, **values) -> Config:
    base = dict(
        backbone=f"hf:{bert}", iterations=2, eval_every=2, batch_size=4, uratio=1,
        threads=1, tensorboard=False, progress=False,
    )  # fmt: skip
    return Config(**{**base, **values})


def test_texts_passed_in_train_and_record_their_tokenizer(tmp_path, tiny_bert_dir):
    texts, labels = text_corpus(40)
    labels = [y if i < 8 else None for i, y in enumerate(labels)]
    data = from_texts(texts, labels, test_texts=texts[:8], test_labels=labels[:8])
    run = fit(tiny_config(tiny_bert_dir, algorithm="fixmatch", max_length=32), data=data,
              out=tmp_path / "run")  # fmt: skip
    assert run.info.spec.tokenizer == str(tiny_bert_dir) and run.info.spec.max_length == 32
    assert run.config.dataset == "texts" and run.config.lr == 5e-5
    again = semimatch.load_run(tmp_path / "run")
    assert again.info.spec.tokenizer == str(tmp_path / "run" / "hf")
    torch.testing.assert_close(
        torch.as_tensor(again.predict_proba(texts[:5])),
        torch.as_tensor(run.predict_proba(texts[:5])),
    )


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(backbone=None), "pass --backbone hf:<model name or local folder>"),
        (dict(backbone="cnn"), "backbone='cnn' is not one: pass --backbone"),
        (dict(text_strong="rot13"), "text_strong='rot13' is not a text view"),
        (dict(text_strong="precomputed"), "this data has none"),
        (dict(max_length=2), "max_length must be >= 3"),
        (dict(max_length=65), "exceeds the 64 positions"),
        (dict(augment="batched"), "augment=batched apply to images"),
        (dict(strong_augment="usb"), "strong_augment=usb apply to images"),
        (dict(optimizer="sgd", layer_decay=0.65), "layer_decay is AdamW's"),
        (dict(sgd_momentum=0.5), "sgd_momentum configure SGD, and the optimizer is adamw"),
        (dict(warmup_iterations=2), "leaves none of the 2 iterations"),
        (dict(pretrained="/some/weights.pth"), "pass true (the default) or false"),
        (dict(layer_decay=1.5), "layer_decay must be in (0, 1]"),
    ],
)
def test_text_options_are_checked_before_anything_is_written(tmp_path, corpus, tiny_bert_dir,
                                                             values, message):  # fmt: skip
    cfg = tiny_config(tiny_bert_dir, dataset="text", data_root=str(corpus), test_size=80,
                      num_labels=8, **values)  # fmt: skip
    with pytest.raises(ConfigError, match=_escape(message)):
        fit(cfg, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(max_length=64), "max_length shape text inputs"),
        (dict(text_column="body"), "apply only to dataset='text'"),
        (dict(test_size=100), "apply only to dataset='text'"),
        (dict(backbone="hf:bert-base-uncased"), "is a text encoder"),
        (dict(layer_decay=0.65), "layer_decay is AdamW's"),
        (dict(pretrained=True), "has none - drop pretrained"),
    ],
)
def test_text_options_are_refused_for_images(tmp_path, values, message):
    cfg = Config(dataset="digits", num_labels=20, iterations=2, threads=1, **values)
    with pytest.raises(ConfigError, match=_escape(message)):
        fit(cfg, out=tmp_path / "run")


def _escape(text: str) -> str:
    import re

    return re.escape(text)
