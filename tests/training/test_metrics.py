"""WindowSums, summarize, the JSON-lines log and the median-of-last metric."""

from __future__ import annotations

import json
import math

import pytest
import torch

from semimatch.training.metrics import (
    JsonlWriter,
    WindowSums,
    median_of_last,
    read_jsonl,
    summarize,
)


def step_sums(n_ulb: float, weight_sum: float, correct: float, known: float) -> dict:
    """Sums shaped like ``semimatch.training.step.metric_sums`` (3 classes, all float32)."""

    def f(*values: float) -> torch.Tensor:
        return torch.tensor(values[0] if len(values) == 1 else values, dtype=torch.float32)

    return {
        "n_lb": f(2.0),
        "sup_loss_sum": f(1.0),
        "lb_correct": f(1.0),
        "n_ulb": f(n_ulb),
        "unsup_loss_sum": f(0.5 * n_ulb),
        "weight_sum": f(weight_sum),
        "full_weight": f(weight_sum),
        "known": f(known),
        "correct": f(correct),
        "weight_known": f(weight_sum),
        "weight_correct": f(min(correct, weight_sum)),
        "class_count": f(n_ulb, 0.0, 0.0),
        "class_weight": f(weight_sum, 0.0, 0.0),
        "class_known": f(known, 0.0, 0.0),
        "class_correct": f(correct, 0.0, 0.0),
        "conf_hist": torch.zeros(50).index_fill_(0, torch.tensor([49]), float(n_ulb)),
    }


def test_window_sums_accumulate_reduce_and_reset():
    window = WindowSums()
    assert window.steps == 0 and window.reduce() == {}
    a, b = step_sums(4, 2, 1, 2), step_sums(8, 6, 5, 6)
    window.add(a)
    window.add(b)
    assert window.steps == 2
    out = window.reduce()
    assert out["n_ulb"] == 12.0 and out["weight_sum"] == 8.0 and out["n_lb"] == 4.0
    assert out["class_count"] == [12.0, 0.0, 0.0]
    assert isinstance(out["n_ulb"], float) and isinstance(out["class_count"], list)
    assert out["conf_hist"][49] == 12.0
    # Adding must not alias the caller's tensors.
    assert a["n_ulb"].item() == 4.0
    m = summarize(out)
    assert m["quantity"] == pytest.approx(8 / 12)  # pooled over samples, not a mean of ratios
    assert m["pl_acc"] == pytest.approx(6 / 8)
    assert m["sup_loss"] == pytest.approx(0.5) and m["unsup_loss"] == pytest.approx(0.5)
    assert m["per_class_quantity"] == [pytest.approx(8 / 12), None, None]
    assert m["conf_hist"][49] == 12 and isinstance(m["conf_hist"][49], int)
    window.reset()
    assert window.steps == 0 and window.reduce() == {}


def test_window_sums_checkpoint_state(tmp_path):
    window = WindowSums()
    window.add(step_sums(4, 2, 1, 2))
    torch.save(window.state(), tmp_path / "w.pt")
    restored = WindowSums()
    restored.load_state(torch.load(tmp_path / "w.pt", weights_only=True))
    for w in (window, restored):
        w.add(step_sums(8, 6, 5, 6))
    assert restored.steps == 2 and restored.reduce() == window.reduce()


def test_summarize_is_none_where_undefined():
    m = summarize({"n_lb": 0.0, "n_ulb": 0.0})
    for key in (
        "sup_loss",
        "train_acc",
        "unsup_loss",
        "quantity",
        "full_weight_frac",
        "quality",
        "pl_acc",
        "per_class_quantity",
        "per_class_pl_acc",
        "conf_hist",
    ):
        assert m[key] is None, key
    window = WindowSums()
    window.add(step_sums(4, 0.0, 0.0, 0.0))  # no weight, no known labels
    m = summarize(window.reduce())
    assert m["quantity"] == 0.0 and m["quality"] is None and m["pl_acc"] is None
    assert m["per_class_pl_acc"] == [None, None, None]


def test_jsonl_writer_parseable_lines_with_nan_as_null(tmp_path):
    path = tmp_path / "run" / "sub" / "metrics.jsonl"  # parents are created
    writer = JsonlWriter(path)
    writer.write(
        {
            "kind": "train",
            "iteration": 1,
            "loss": float("nan"),
            "quality": None,
            "nested": {"x": [1.0, float("inf"), (2.0, float("-inf"))]},
        }
    )
    writer.write({"kind": "train", "iteration": 2, "loss": 0.5})
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])  # strict JSON: no NaN/Infinity literals
    assert "NaN" not in lines[0] and "Infinity" not in lines[0]
    assert first["loss"] is None and first["quality"] is None
    assert first["nested"] == {"x": [1.0, None, [2.0, None]]}
    assert read_jsonl(path)[1] == {"kind": "train", "iteration": 2, "loss": 0.5}
    # Appending: a second writer on the same file continues it.
    JsonlWriter(path).write({"kind": "eval", "iteration": 2, "top1": 0.9})
    assert [r["kind"] for r in read_jsonl(path)] == ["train", "train", "eval"]


def test_read_jsonl_skips_torn_last_line_and_blanks(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1}\n\n{"iteration": 2}\n{"iteration": 3, "lo')
    assert read_jsonl(path) == [{"iteration": 1}, {"iteration": 2}]


def test_truncate_after_drops_later_records_and_end_marker(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = JsonlWriter(path)
    writer.truncate_after(5)  # no file yet: nothing to do, no error
    assert not path.exists()
    for k in (100, 200, 300):
        writer.write({"kind": "train", "iteration": k, "loss": 1.0 / k})
        writer.write({"kind": "eval", "iteration": k, "top1": float("nan")})
    writer.write({"kind": "end", "iteration": 300, "status": "interrupted"})
    with open(path, "a") as f:
        f.write('{"kind": "train", "itera')  # torn by a crash
    writer.truncate_after(200)
    records = read_jsonl(path)
    assert [(r["kind"], r["iteration"]) for r in records] == [
        ("train", 100),
        ("eval", 100),
        ("train", 200),
        ("eval", 200),
    ]
    assert records[1]["top1"] is None
    assert all(json.loads(line) for line in path.read_text().splitlines())
    writer.write({"kind": "train", "iteration": 300, "loss": 0.1})
    assert read_jsonl(path)[-1]["iteration"] == 300


def test_median_of_last():
    assert median_of_last([]) is None
    assert median_of_last([3.0]) == 3.0
    values = [float(v) for v in range(100)]
    assert median_of_last(values) == pytest.approx(89.5)  # median of 80..99
    assert median_of_last(values, n=5) == 97.0
    assert median_of_last([5.0, 1.0, 3.0], n=20) == 3.0
    assert not math.isnan(median_of_last([1.0, 2.0]))
