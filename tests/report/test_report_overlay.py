"""The report's comparison of runs of different methods: lambda(p), quantity and quality overlaid.

The lambda(p) rebuilt from a run's records (``semimatch.report.lambdas``) is checked against the
weighting modules themselves at random confidences, and the overlay against real 12-iteration
digits runs (the fixture of ``test_report``) of FixMatch, SoftMatch, FreeMatch and supervised.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.report_pages import parse, train_real_run, write_synthetic_run
from semimatch.methods.adamatch import AdaMatchThreshold
from semimatch.methods.dash import DashThreshold
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.flexmatch import FlexMatchThreshold
from semimatch.methods.freematch import FreeMatchThreshold
from semimatch.methods.softmatch import SoftMatchWeighting
from semimatch.methods.uda import UDAWeighting
from semimatch.report.figures import Figures, lambda_overlay_figure, pseudo_label_figure
from semimatch.report.lambdas import LAMBDA_FORMULAS, final_lambda, lambda_values
from semimatch.report.runs import expand_run_dirs, read_run, read_runs, series

C = 5


def _modules() -> dict[str, torch.nn.Module]:
    return {
        "fixed": FixedThreshold(0.7),
        "softmatch": SoftMatchWeighting(C, momentum=0.5, n_sigma=1.5),
        "softmatch-linear": SoftMatchWeighting(C, momentum=0.5, shape="linear"),
        "softmatch-quadratic-per-class": SoftMatchWeighting(
            C, momentum=0.5, per_class=True, shape="quadratic"
        ),
        "flexmatch": FlexMatchThreshold(C, num_unlabeled=40, tau=0.6),
        "freematch": FreeMatchThreshold(C, momentum=0.5),
        "adamatch": AdaMatchThreshold(0.9),
        "dash-soft": DashThreshold(rho_init=1.2, period=2, temperature=0.5),
        "dash-hard": DashThreshold(rho_init=1.0, period=1, rho_min=0.5, temperature=0.5),
        "uda": UDAWeighting(0.8, temperature=0.4),
    }


def _grid_probs(q: np.ndarray, c: int) -> torch.Tensor:
    """Rows with max ``q`` on class ``c`` and ``1 - q`` spread over the others (float64)."""
    probs = np.repeat(((1 - q) / (C - 1))[:, None], C, axis=1)
    probs[:, c] = q
    return torch.from_numpy(probs)


@pytest.mark.parametrize("name", list(_modules()))
def test_lambda_from_the_record_equals_the_weighting_module(name: str) -> None:
    """For every weighting type: drive the module, write its describe() as the log does, and
    compare the rebuilt lambda(p) with the module's own weights, class by class."""
    module = _modules()[name]
    rng = np.random.default_rng(7)
    for _ in range(6):
        probs = torch.from_numpy(rng.dirichlet(np.full(C, 0.3), 32)).float()
        extra = {}
        if isinstance(module, FlexMatchThreshold):
            extra["indices"] = torch.from_numpy(rng.choice(40, 32, replace=False))
        if isinstance(module, AdaMatchThreshold):
            extra["probs_lb"] = torch.from_numpy(rng.dirichlet(np.full(C, 0.5), 8)).float()
        module.update(probs, **extra)
    state = json.loads(json.dumps(module.describe()))  # as metrics.jsonl stores it
    assert state["type"] in LAMBDA_FORMULAS
    q = np.sort(rng.uniform(1 / C + 0.01, 1.0, 400))
    got = lambda_values(state, q, C)
    assert got is not None and got.shape in ((1, q.size), (C, q.size))
    for c in range(C):
        probs = _grid_probs(q, c)
        want = module(probs.float()).double().numpy()
        # Away from a step (a float32 threshold vs float64 q decides the side there).
        if isinstance(module, DashThreshold):
            edge = np.abs(module.sample_loss(probs).numpy() - float(module.rho()))
        elif isinstance(module, SoftMatchWeighting):
            edge = np.full(q.size, 1.0)
        else:
            edge = np.min(np.abs(q[:, None] - np.atleast_1d(_thresholds(state))[None]), axis=1)
        keep = edge > 1e-6
        assert keep.sum() > 300
        row = got[c if got.shape[0] > 1 else 0]
        np.testing.assert_allclose(row[keep], want[keep], rtol=0, atol=1e-6)
    if name.startswith("dash-hard"):
        assert state["hard"] is True  # the hard branch (-log q) was exercised
    if name in ("flexmatch", "freematch"):
        assert got.shape[0] == C and len(set(np.round(state["thresholds"], 6))) > 1


def _thresholds(state: dict) -> list[float]:
    return state.get("thresholds") or [state.get("threshold", state.get("tau"))]


def test_softmatch_formula_is_the_papers_truncated_gaussian() -> None:
    """An independent closed form: lambda(p) = exp(-(p - mu)^2 / (2 sigma^2 / n_sigma^2))."""
    state = {"type": "softmatch", "mean": 0.7, "std": 0.2, "n_sigma": 2.0}
    q = np.array([0.2, 0.5, 0.69, 0.7, 0.9])
    want = [math.exp(-((p - 0.7) ** 2) / (2 * 0.04 / 4)) if p < 0.7 else 1.0 for p in q]
    np.testing.assert_allclose(lambda_values(state, q, 10)[0], want, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Real runs of different methods
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of 12-iteration digits runs (two in a subfolder); SoftMatch's folder is not
    named after it."""
    root = tmp_path_factory.mktemp("family") / "runs"
    for folder, algorithm in (
        ("base/fixmatch", "fixmatch"),
        ("base/supervised", "supervised"),
        ("sm-a", "softmatch"),
        ("freematch", "freematch"),
    ):
        train_real_run(root / folder, algorithm)
    return root


LABELS = {
    "fixmatch": "fixmatch (seed 0)",
    "freematch": "freematch (seed 0)",
    "sm-a": "softmatch (sm-a, seed 0)",
    "supervised": "supervised (seed 0)",
}


def test_lambda_overlay_has_one_line_per_run_with_the_formula(family: Path, tmp_path: Path) -> None:
    runs = read_runs([family])  # a folder of runs: every run under it, sorted
    assert [r.name for r in runs] == ["fixmatch", "supervised", "freematch", "sm-a"]
    figs = Figures(tmp_path)
    saved, found = lambda_overlay_figure(figs, runs)
    assert saved is not None and saved[0] == "fig-lambda-overlay.png"
    (ax,) = figs.drawn["fig-lambda-overlay.png"].axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    # one line per run with an unlabeled loss; supervised has none and says why
    assert set(lines) == {f"{LABELS[n]}, it 12" for n in ("fixmatch", "freematch", "sm-a")}
    assert found[1][1] is None and "supervised" in found[1][2]
    last = {r.name: r.evals[-1]["weighting"] for r in runs}
    for name, want in (
        ("fixmatch", lambda p: (p >= 0.95).astype(float)),
        ("freematch", lambda p: np.mean([p >= t for t in last["freematch"]["thresholds"]], 0)),
        (
            "sm-a",
            lambda p: np.where(
                p >= last["sm-a"]["mean"],
                1.0,
                np.exp(-((p - last["sm-a"]["mean"]) ** 2) / (2 * last["sm-a"]["std"] ** 2 / 4)),
            ),
        ),
    ):
        line = lines[f"{LABELS[name]}, it 12"]
        p, w = (np.asarray(v, dtype=float) for v in line.get_data())
        assert p[0] == pytest.approx(0.1) and p[-1] == 1.0  # digits: C = 10
        np.testing.assert_allclose(w, want(p), atol=1e-9)
        # and it agrees with the curve the engine sampled from the live module
        sampled = next(r for r in runs if r.name == name).evals[-1]["lambda_curve"]
        again = lambda_values(last[name], sampled["p"], 10).mean(axis=0)
        np.testing.assert_allclose(again, sampled["w"], atol=1e-6)


def test_quantity_and_quality_overlay_one_line_per_run(family: Path, tmp_path: Path) -> None:
    runs = read_runs([family])
    figs = Figures(tmp_path)
    assert pseudo_label_figure(figs, runs) is not None
    quantity_ax, quality_ax = figs.drawn["fig-pseudo-labels.png"].axes
    for ax, key in ((quantity_ax, "quantity"), (quality_ax, "quality")):
        solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-" and ln.get_xdata().size]
        logged = [(r, series(r.train, key)) for r in runs]
        logged = [(r, pts) for r, pts in logged if pts]  # FixMatch: no weight yet, no quality
        assert [ln.get_label() for ln in solid] == [LABELS[r.path.name] for r, _ in logged]
        for ln, (_, pts) in zip(solid, logged, strict=True):
            x, y = zip(*pts, strict=True)
            assert list(ln.get_xdata()) == list(x) and list(ln.get_ydata()) == list(y)
        if key == "quantity":
            assert len(solid) == 3  # every run with an unlabeled loss
    legend = [t.get_text() for t in quality_ax.get_legend().get_texts()]
    assert legend[-1] == "dashed: unweighted accuracy" and len(legend) == len(solid) + 1


def test_cli_report_of_a_folder_of_runs(family: Path, tmp_path: Path) -> None:
    from semimatch.cli import main

    assert main(["report", str(family / "base"), "-o", str(tmp_path / "cmp")]) == 0
    text, rows, refs = parse(tmp_path / "cmp" / "index.html")
    assert [r["algorithm"] for r in rows] == ["fixmatch", "supervised"]
    assert "fig-lambda-overlay.png" in refs
    table = re.search(r'<table id="lambda-table">(.*?)</table>', text, re.S).group(1)
    cells = [re.findall(r"<t[dh]>(.*?)</t[dh]>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)]
    head, *body = cells
    assert head[:3] == ["run", "iteration", "λ(0.5)"] and head[-1] == "from"
    by_label = {row[0]: row for row in body}
    assert by_label["fixmatch (seed 0)"][2:8] == ["0.000"] * 4 + ["1.000"] * 2
    assert by_label["supervised (seed 0)"][1:8] == ["n/a"] * 7


def test_records_without_a_formula_fall_back_to_the_sampled_curve(tmp_path: Path) -> None:
    """A custom weighting, or an old record that lacks a key, is drawn from the engine's
    sampled curve, dashed and labelled so; a folder that holds no run is an error."""
    run_dir = write_synthetic_run(tmp_path / "custom", evals=2)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]
    for rec in recs:
        if rec["kind"] == "eval":
            rec["weighting"] = {"type": "mystery", "alpha": 1}
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    old = write_synthetic_run(tmp_path / "old-dash", evals=1)
    recs = [json.loads(ln) for ln in (old / "metrics.jsonl").read_text().splitlines()]
    recs[-2]["weighting"] = {"type": "dash", "rho": 0.5, "hard": False}  # no temperature
    (old / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    assert expand_run_dirs([tmp_path]) == [run_dir, old]

    for path, why in (
        (run_dir, "no formula for weighting type 'mystery'"),
        (old, "lacks temperature"),
    ):
        run = read_run(path)
        curve, note = final_lambda(run)
        assert curve is not None and curve.source == "sampled" and why in note
        assert curve.w == run.evals[-1]["lambda_curve"]["w"]
    figs = Figures(tmp_path)
    lambda_overlay_figure(figs, [read_run(run_dir)])
    (line,) = figs.drawn["fig-lambda-overlay.png"].axes[0].get_lines()
    assert line.get_label() == "softmatch (custom, seed 0), it 20 (sampled)"
    assert line.get_linestyle() == "--"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a run directory .* and holds none"):
        read_runs([tmp_path / "empty"])
