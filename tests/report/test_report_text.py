"""``semimatch report`` on a text run: the same quantity / quality / λ(p) views as an image run,
the classes by name, and nothing about images (a real 12-iteration SoftMatch run of the tiny
BERT on the tiny corpus, as test_engine_text.py trains)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from helpers.report_pages import SOFTMATCH_FIGURES as FIGURES
from helpers.report_pages import assert_png, figures, parse
from helpers.text_fixtures import write_text_corpus
from semimatch.cli import main
from semimatch.config import Config
from semimatch.report import read_run
from semimatch.report.lambdas import final_lambda, num_classes
from semimatch.report.runs import RunData
from semimatch.runs.engine import fit

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Path:
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("text_report")
    corpus = write_text_corpus(folder / "news.csv", n=240)
    cfg = Config(
        algorithm="softmatch",
        dataset="text",
        data_root=str(corpus),
        test_size=80,
        backbone=f"hf:{tiny_bert_dir}",
        num_labels=16,
        batch_size=8,
        uratio=2,
        iterations=12,
        eval_every=4,
        log_every=2,
        threads=1,
        tensorboard=False,
        seed=0,
    )
    fit(cfg, out=folder / "run")
    return folder / "run"


def visible_text(html: str) -> str:
    """What a reader sees: no tags, no embedded PNGs, no config.json dump."""
    html = re.sub(r"<details>.*?</details>", "", html, flags=re.S)
    html = re.sub(r"<style>.*?</style>", "", html, flags=re.S)
    return re.sub(r"<[^>]+>", " ", html)


def test_the_text_report_shows_the_pseudo_label_views_and_no_image_panels(text_run, capsys):
    assert main(["report", str(text_run)]) == 0
    index = text_run / "report" / "index.html"
    assert str(index) in capsys.readouterr().out
    html, rows, refs = parse(index)
    # Contains: the comparison row, error and quantity/quality curves, λ(p) overlay + table
    # (rebuilt from the logged SoftMatch state), per-class quantity/accuracy and confusion.
    assert refs == figures(index.parent) == FIGURES
    for name in FIGURES:
        assert_png(index.parent / name)
    (row,) = rows
    assert (row["algorithm"], row["dataset"], row["labels"], row["status"]) == (
        "softmatch",
        "text",
        "16",
        "finished",
    )
    assert row["final quantity"] != "n/a" and row["final quality"] != "n/a"
    assert "rebuilt from the logged softmatch state" in html
    assert '<p class="note">' not in html  # nothing missing: a finished run with a test set
    # The classes are named (a text dataset's names, not digits).
    names = json.loads((text_run / "dataset.json").read_text())["class_names"]
    assert names == ["business", "science", "sport", "world"]
    assert "0 = business, 1 = science, 2 = sport, 3 = world" in html
    # Does not contain: anything about images (example grids, pixels, image sizes).
    seen = visible_text(html).lower()
    for word in ("image", "pixel", " px", "example"):
        assert word not in seen, word
    assert html.count("<img") == len(FIGURES)


def test_the_report_reads_the_class_count_from_dataset_json(text_run):
    """dataset.json (DatasetInfo as saved: num_classes, class_names) gives C before any
    record does; the run's own final λ(p) is rebuilt with it."""
    run = read_run(text_run)
    assert num_classes(run) == 4
    curve, note = final_lambda(run)
    assert curve is not None and curve.num_classes == 4 and "rebuilt" in note
    no_records = RunData(text_run, "run", {}, None, [], dataset=run.dataset)
    assert num_classes(no_records) == 4
    names_only = RunData(text_run, "run", {}, None, [], dataset={"class_names": ["a", "b"]})
    assert num_classes(names_only) == 2
