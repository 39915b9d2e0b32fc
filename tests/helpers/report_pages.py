"""Run folders for the report's tests and readers of what ``semimatch report`` writes.

A real run trains on digits (``train_real_run``); the crashed / running / no-eval / no-test-set
cases are written to the ``metrics.jsonl`` schema (``semimatch.training.metrics``) with
``JsonlWriter`` (``write_synthetic_run``). ``parse`` reads the HTML (offline-safe: no external
resource, no script) and its comparison table, ``assert_png`` a figure.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from semimatch.config import Config
from semimatch.runs.engine import fit
from semimatch.training.metrics import JsonlWriter

C = 10


TABLE_HEADER = [
    "name",
    "algorithm",
    "dataset",
    "labels",
    "iterations",
    "best error",
    "best chosen on",
    "median-20 error",
    "final error",
    "final quantity",
    "final quality",
    "sec / iter",
    "status",
]


# ----------------------------------------------------------------------------------------------
# Run directories
# ----------------------------------------------------------------------------------------------
def train_real_run(out: Path, algorithm: str) -> Path:
    torch.set_num_threads(1)
    cfg = Config(
        algorithm=algorithm,
        dataset="digits",
        num_labels=20,
        iterations=12,
        eval_every=4,
        log_every=2,
        batch_size=16,
        uratio=2,
        seed=0,
        threads=1,
    )
    fit(cfg, out=out)
    return out


def write_synthetic_run(
    path: Path,
    *,
    evals: int = 5,
    eval_every: int = 10,
    test_set: bool = True,
    quality: bool = True,
    finished: bool = True,
    t0: float = 1.7e9,
) -> Path:
    """A SoftMatch-like run on C classes written to the ``metrics.jsonl`` schema."""
    path.mkdir(parents=True)
    iterations = evals * eval_every if finished else 10 * eval_every
    cfg = {
        "algorithm": "softmatch",
        "dataset": "synthetic",
        "num_labels": 40,
        "iterations": iterations,
        "seed": 0,
        "backbone": "cnn",
        "eval_every": eval_every,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    log = JsonlWriter(path / "metrics.jsonl")
    rng = np.random.default_rng(0)
    errors: list[float] = []
    for j in range(1, evals + 1):
        k = j * eval_every
        for half in (k - eval_every // 2, k):
            log.write(
                {
                    "kind": "train",
                    "iteration": half,
                    "time": t0 + half,
                    "lr": 0.03,
                    "loss": 2.0 / j,
                    "sup_loss": 1.0 / j,
                    "unsup_loss": 1.0 / j,
                    "quantity": 0.6 + 0.05 * j,
                    "quality": 0.5 + 0.06 * j if quality else None,
                    "pl_acc": 0.45 + 0.06 * j if quality else None,
                    "full_weight_frac": 0.3,
                    "sec_per_iter": 0.1 + 0.01 * j,
                }
            )
        rec: dict[str, Any] = {
            "kind": "eval",
            "iteration": k,
            "time": t0 + k + 0.5,
            "lr": 0.03,
            "model": "ema",
        }
        if test_set:
            errors.append(0.8 - 0.1 * j + (0.05 if j == 3 else 0.0))
            conf = rng.integers(0, 20, (C, C)) + np.diag(np.full(C, 10 * j))
            rec.update(
                top1=1 - errors[-1],
                error=errors[-1],
                best_error=min(errors),
                median20_error=statistics.median(errors[-20:]),
                per_class_acc=list(rng.random(C)),
                confusion=conf.tolist(),
            )
        else:
            rec.update(top1=None, error=None, best_error=None, median20_error=None)
        hist = np.histogram(rng.beta(2 + j, 2, 500), bins=50, range=(0, 1))[0]
        rec["window"] = {
            "quantity": 0.6 + 0.05 * j,
            "quality": 0.5 + 0.06 * j if quality else None,
            "pl_acc": 0.45 + 0.06 * j if quality else None,
            "full_weight_frac": 0.3,
            "per_class_quantity": [
                None if c == j else float(v) for c, v in enumerate(rng.random(C))
            ],
            "per_class_pl_acc": [
                None if c == j or not quality else float(v) for c, v in enumerate(rng.random(C))
            ],
            "conf_hist": hist.tolist(),
            "sup_loss": 1.0 / j,
            "unsup_loss": 1.0 / j,
            "sec_per_iter": None,
        }
        mean = 0.3 + 0.1 * j
        p = np.linspace(1 / C, 1, 51)
        rec["weighting"] = {"type": "softmatch", "mean": mean, "std": 0.1, "n_sigma": 2.0}
        rec["lambda_curve"] = {
            "p": p.tolist(),
            "w": np.where(p < mean, np.exp(-((p - mean) ** 2) / (2 * 0.05**2)), 1.0).tolist(),
        }
        rec["p_model"] = [1 / C] * C
        log.write(rec)
    if finished:
        log.write(
            {
                "kind": "end",
                "iteration": iterations,
                "time": t0 + iterations + 1,
                "status": "finished",
                "message": "",
            }
        )
    return path


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------
def assert_png(path: Path, min_w: int = 300, min_h: int = 200) -> np.ndarray:
    """A readable PNG of a reasonable size that is not a flat image."""
    assert path.exists(), path
    with Image.open(path) as im:
        assert im.format == "PNG", path
        im.load()
        assert im.size[0] >= min_w and im.size[1] >= min_h, (path, im.size)
        rgb = np.asarray(im.convert("RGB"), dtype=float)
    assert rgb.std() > 10, f"{path} is (nearly) a single colour"
    return rgb


class _TableParser(HTMLParser):
    """The cells of <table id="comparison">."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._in_table = self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "comparison") in attrs:
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.rows[-1][-1] += data


def parse(index: Path) -> tuple[str, list[dict[str, str]], set[str]]:
    """(html, table rows as dicts, referenced PNG files); checks the HTML is offline-safe."""
    text = index.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "external resource"
    assert "<script" not in text
    parser = _TableParser()
    parser.feed(text)
    header, *rows = parser.rows
    assert header == TABLE_HEADER
    refs = set(re.findall(r'href="([^"]+\.png)"', text))
    for ref in refs:  # each linked file is also embedded, byte for byte
        data = base64.b64encode((index.parent / ref).read_bytes()).decode()
        assert f'<a href="{ref}"><img' in text and f"base64,{data}" in text
    return text, [dict(zip(header, r, strict=True)) for r in rows], refs


def figures(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.png")}


#: The figures of a SoftMatch run's report (a text run's report has the same set).
SOFTMATCH_FIGURES = {
    "fig-error.png",
    "fig-pseudo-labels.png",
    "fig-lambda-overlay.png",
    "fig-lambda-run.png",
    "fig-per-class-run.png",
    "fig-confusion-run.png",
    "fig-diagnostics.png",
}
