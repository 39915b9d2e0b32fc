"""``semimatch demo`` with a chosen list of methods: validation, summary table, report."""

from __future__ import annotations

import json
import re

import pytest

from semimatch.cli import main
from semimatch.config import ConfigError
from semimatch.demo import DEFAULT_METHODS, demo_runs, parse_methods, run_demo


def test_methods_are_checked_against_the_registered_algorithms(tmp_path, monkeypatch, capsys):
    assert parse_methods(None) == DEFAULT_METHODS == ("supervised", "fixmatch", "softmatch")
    assert parse_methods("fixmatch, SoftMatch,fixmatch") == ("fixmatch", "softmatch")
    assert parse_methods(["dash", "uda"]) == ("dash", "uda")
    with pytest.raises(ConfigError, match=r"unknown method 'fixmach' \(did you mean fixmatch\?\)"):
        parse_methods("fixmach,softmatch")
    with pytest.raises(ConfigError, match="no method given; choose from supervised, pseudolabel"):
        parse_methods(" , ")
    with pytest.raises(ConfigError, match="unknown method 'defixmatch'"):
        run_demo(tmp_path / "d", methods=["defixmatch"])  # before anything trains
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--methods", "softmach"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "semimatch demo: error: unknown method 'softmach' (did you mean softmatch?)"
    )
    assert "choose from supervised, pseudolabel, fixmatch, flexmatch, softmatch, freematch" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no runs/demo-N was made


def test_demo_of_chosen_methods_table_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    rows = run_demo(out, iterations=2, methods="fixmatch,freematch", threads=1)
    assert [r["algorithm"] for r in rows] == ["fixmatch", "freematch"]
    assert demo_runs(out) == ["fixmatch", "freematch"]
    text = capsys.readouterr().out
    table = text[text.index("digits, 20 labels, 2 iterations") :].splitlines()
    assert table[1].split() == ["algorithm", "error", "best", "quantity", "quality", "s/it"]
    assert [line.split()[0] for line in table[2:4]] == ["fixmatch", "freematch"]
    for line, r in zip(table[2:4], rows, strict=True):
        assert line.split()[1] == f"{100 * r['final_error']:.2f}%"
    index = out / "report" / "index.html"
    assert f"report (λ(p), quantity and quality of the runs overlaid): {index}" in text
    html = index.read_text()
    assert (out / "report" / "fig-lambda-overlay.png").exists()
    lambda_rows = re.findall(r"<tr><td>([^<]+)</td>", html.split('id="lambda-table"')[1])
    assert lambda_rows == ["fixmatch (seed 0)", "freematch (seed 0)"]

    # Replacing the demo with other methods leaves one demo in the folder.
    run_demo(out, iterations=1, methods=["supervised"], threads=1, report=False)
    assert demo_runs(out) == ["supervised"]
    assert json.loads((out / "supervised" / "config.json").read_text())["iterations"] == 1
    text = capsys.readouterr().out
    assert f"removed {out / 'fixmatch'}" in text and f"removed {out / 'report'}" in text
    assert sorted(p.name for p in out.iterdir()) == ["supervised"]  # no stale run or report
