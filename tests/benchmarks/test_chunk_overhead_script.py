"""benchmarks/chunk_overhead.py: the call-overhead measurement runs on the tiny BERT."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers.scripts import load_script
from helpers.text_fixtures import write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_measure_reports_every_split(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    module = load_script("benchmarks/chunk_overhead.py", folder_on_path=True)
    model = write_tiny_bert(tmp_path / "bert")
    argv = ["--model", str(model), "--rows", "6", "--length", "8", "--calls", "2,3"]
    out = module.main([*argv, "--repeats", "2", "--precision", "fp32"])
    assert set(out["median_s"]) == {1, 2, 3} and all(t > 0 for t in out["median_s"].values())
    assert set(out["overhead_tokens"]) == {2, 3} and out["per_token_ms"] > 0
    for k in (2, 3):  # the definition: extra time per call over the time per token
        want = (out["median_s"][k] - out["median_s"][1]) / (k - 1) * 1e3 / out["per_token_ms"]
        assert out["overhead_tokens"][k] == pytest.approx(want)
    with pytest.raises(SystemExit):
        module.main([*argv[:6], "--calls", "1"])
