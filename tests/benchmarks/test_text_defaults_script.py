"""benchmarks/text_defaults.py: the README's text command as written vs the explicit one, on
the tiny BERT (two short runs through the command line)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.scripts import load_script
from helpers.text_fixtures import write_text_corpus, write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_both_commands_run_and_the_ratio_is_of_their_medians(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    module = load_script("benchmarks/text_defaults.py", folder_on_path=True)
    data = write_text_corpus(tmp_path / "news.csv", n=2080)  # --test-size 2000 + 80
    model = write_tiny_bert(tmp_path / "bert")
    out = module.main(["--data", str(data), "--model", str(model), "--iterations", "3",
                       "--repeats", "1", "--json", str(tmp_path / "r.json")])  # fmt: skip
    written, explicit = out["runs"]["as_written"][0], out["runs"]["explicit"][0]
    assert (written["batch"], written["precision"]) == ("8+8", "fp32")  # the derived defaults
    assert (explicit["batch"], explicit["precision"]) == ("8+8", "bf16")
    assert len(written["sec_per_iter"]) == 2  # the first iteration is left out
    medians = out["median_sec_per_iter"]
    assert out["ratio"] == pytest.approx(medians["as_written"] / medians["explicit"])
    assert (tmp_path / "r.json").exists()
