"""benchmarks/text_step.py: its pieces run on the tiny BERT (no timing asserted)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers.scripts import load_script
from helpers.text_fixtures import write_text_corpus, write_tiny_bert

ROOT = Path(__file__).resolve().parents[2]


text_step = load_script("benchmarks/text_step.py")


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("text_step")
    model = write_tiny_bert(tmp / "bert")
    data = write_text_corpus(tmp / "corpus.csv", n=80)
    argv = ["--model", str(model), "--data", str(data), "--batches", "2", "--repeats", "2"]
    argv += ["--warmup", "0", "--max-length", "32", "--matmul-size", "64"]
    argv += ["--memory-steps", "0", "--json", ""]
    return text_step.parse_args(argv)


def test_interleaved_variants_report_times_lengths_flops_and_mfu(args) -> None:
    result = text_step.run(args)
    json.dumps(result)  # what --json writes
    assert result["max_length"] == 32 and result["machine"]["bf16"] in (
        "amx",
        "avx512_bf16",
        "emulated",
    )
    (row,) = result["rows"]
    assert row["batch"] == "2+2" and row["strong_view"] == "TfIdfReplace"
    for variant in text_step.VARIANTS:
        v = row[variant]
        assert len(v["times"]) == len(v["lengths"]) == len(v["gflop_per_step"]) == 2
        assert v["n_ulb"] == 2.0 and 0.0 <= v["weight_sum"] <= 2.0
        assert v["median_s"] > 0 and v["mfu_bf16"] > 0
    # The reference pads every text to max_length; the library pads to the step's longest text
    # (the tiny corpus: at most 12 words + [CLS]/[SEP]), so it counts fewer FLOPs.
    assert row["reference"]["lengths"] == [32, 32]
    assert all(length <= 14 for length in row["semimatch"]["lengths"])
    for variant in ("semimatch-fp32", "semimatch-unchunked"):  # the same batches
        assert row[variant]["lengths"] == row["semimatch"]["lengths"]
    assert min(row["reference"]["gflop_per_step"]) > max(row["semimatch"]["gflop_per_step"])
    # Executed FLOPs: one padded call for the reference and unchunked, the chunks' otherwise.
    assert row["reference"]["encoder_calls"] == [[[6, 32]], [[6, 32]]]
    unchunked = row["semimatch-unchunked"]
    assert unchunked["encoder_calls"] == [[[6, n]] for n in unchunked["lengths"]]
    for calls, n in zip(row["semimatch"]["encoder_calls"], row["semimatch"]["lengths"]):
        assert sum(rows for rows, _ in calls) == 6 and max(length for _, length in calls) == n
    assert row["semimatch"]["encoder_calls"] == row["semimatch-fp32"]["encoder_calls"]
    for a, b in zip(row["semimatch"]["gflop_per_step"], unchunked["gflop_per_step"]):
        assert a <= b
    assert row["speedup"] == pytest.approx(
        row["reference"]["median_s"] / row["semimatch"]["median_s"]
    )
    assert row["speedup_chunks"] == pytest.approx(
        unchunked["median_s"] / row["semimatch"]["median_s"]
    )


@pytest.fixture(scope="module")
def bench(args):
    return text_step.Bench(args.model, args.data, 2, 32, "fp32", ("reference",))


def test_flops_of_one_row_times_rows_equal_the_batch_count(bench) -> None:
    net = bench.nets["reference"]
    x = torch.ones(6, 2, 10, dtype=torch.int64)
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).sum().backward()
    assert counter.get_total_flops() == 6 * bench.row_flops(10) > 0


def test_reference_step_tokenizes_the_stream_texts_to_max_length(bench) -> None:
    bench.prepare_reference(0)
    texts_lb, texts_weak, texts_strong, y_lb = bench._texts[0]
    assert len(texts_lb) == len(texts_weak) == len(texts_strong) == 2
    lb, ulb = bench.stream.indices(0)
    assert texts_lb == [bench.data.train.texts[int(i)] for i in lb]
    assert torch.equal(y_lb, torch.as_tensor(bench.data.train.labels[lb]))
    sums = bench.step("reference", 0)
    assert bench.lengths["reference"] == [32] and float(sums["n_lb"]) == 2.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_memory_child_reports_setup_and_step_peaks(args) -> None:
    child = argparse.Namespace(**{**vars(args), "variant": "semimatch", "batch": 2})
    child.memory_steps = 1
    mem = text_step.memory_child(child)
    assert 0 < mem["setup_peak_mib"] <= mem["peak_mib"]
    assert mem["peak_mib"] == max(mem["setup_peak_mib"], mem["steps_peak_mib"])
