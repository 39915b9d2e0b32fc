"""A method from outside semimatch: the package in tests/plugins/toy_method declares the entry-point
group ``semimatch.methods``; pip-installed into a temporary folder, its methods train through the
command line, the Python API and the estimator, resume exactly, show in ``--help`` with their
options and are drawn in the report, with no edit under src/.  ``twinmatch`` needs two strong
views and the unlabeled rows' pool indices (the needs protocol).

Entry points load before ``Config`` is made, so every check that needs the plug-in runs in a
child process whose ``PYTHONPATH`` holds the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import semimatch
from semimatch.methods.consistency import Needs, SSLAlgorithm, StepOutputs, UnlabeledResult
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.registry import register_method
from semimatch.training.step import StepInfo, train_step

PLUGIN = Path(__file__).parents[1] / "plugins" / "toy_method"
SRC = Path(semimatch.__file__).parents[1]  # the semimatch under test, for the child processes
SHORT = ["--dataset", "digits", "--num-labels", "20", "--eval-every", "3", "--batch-size", "8",
         "--uratio", "2", "--threads", "1", "--progress", "none", "--seed", "0"]  # fmt: skip


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child process that sees the pip-installed toy package."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "toy_method"
    shutil.copytree(PLUGIN, source)  # setuptools writes build/ and *.egg-info beside the source
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
           "--no-index", "--target", str(tmp / "site"), str(source)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    path = os.pathsep.join([str(tmp / "site"), str(SRC)])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _run(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_plug_in_is_nowhere_under_src_and_shows_in_help(plugin_env):
    for path in SRC.joinpath("semimatch").rglob("*.py"):
        text = path.read_text()
        assert "toymatch" not in text and "twinmatch" not in text, path
    out = _run(plugin_env, "-m", "semimatch", "train", "--help")
    assert out.returncode == 0, out.stderr
    usage = " ".join(out.stdout.split())
    assert ",toymatch,twinmatch}" in usage  # after the built-in methods
    assert "--toy-tau FLOAT toymatch: the toy's ceiling of the threshold" in usage
    # its budget-scaled default, as --help says what None means
    assert "toymatch: derived from the iteration budget K, 1 - 1/K" in usage


def test_register_method_after_config_is_refused_naming_the_entry_point():
    def late(num_classes: int, *, late_option: float = 1.0) -> SSLAlgorithm:
        """Too late.

        Args:
            num_classes: number of classes.
            late_option: an option Config can no longer get.
        """
        return SSLAlgorithm(None)

    with pytest.raises(RuntimeError, match="entry-point group 'semimatch.methods'"):
        register_method("late")(late)


class _TwoStrong(SSLAlgorithm):
    """Needs two strong views and the indices; records what the step handed it."""

    def __init__(self) -> None:
        super().__init__(FixedThreshold(0.1), name="two")
        self.seen: list[StepOutputs] = []

    @property
    def needs(self) -> Needs:
        return Needs(strong_views=2, sample_indices=True)

    def loss(self, out: StepOutputs) -> tuple[torch.Tensor, UnlabeledResult]:
        self.seen.append(out)
        probs = torch.softmax(out.logits_weak.float(), dim=1)
        weights, confidence = self.weigh(probs)
        pseudo = probs.argmax(dim=1)
        unsup = sum(F.cross_entropy(s, pseudo) for s in out.logits_student)
        return out.sup_loss + unsup, UnlabeledResult(weights, confidence, pseudo, unsup)


def test_a_method_needing_two_strong_views_and_indices_gets_them_from_the_step():
    torch.manual_seed(0)
    model, method = nn.Linear(5, 3), _TwoStrong()
    x_lb, y_lb = torch.randn(2, 5), torch.tensor([0, 2])
    weak, s1, s2 = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    idx = torch.tensor([7, 1, 3, 0])
    for mode in ("joint", "two-pass", "split"):
        loss, sums = train_step(model, method, x_lb, y_lb, weak, (s1, s2), None, mode,
                                StepInfo(5, idx))  # fmt: skip
        out = method.seen[-1]
        assert out.iteration == 5 and torch.equal(out.u_idx, idx)
        assert len(out.logits_student) == 2
        with torch.no_grad():
            for got, view in zip(out.logits_student, (s1, s2), strict=True):
                torch.testing.assert_close(got, model(view))
        assert sums["n_ulb"].item() == 4 and loss.requires_grad
    with pytest.raises(ValueError, match="needs 2 strong views"):
        train_step(model, method, x_lb, y_lb, weak, s1, info=StepInfo(0, idx))


_API_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from pathlib import Path
    from semimatch.runs import checkpoint as ckpt, engine
    from semimatch.config import Config
    from semimatch.runs.engine import fit
    from semimatch.errors import TrainingInterrupted
    from semimatch.report.lambdas import final_lambda
    from semimatch.report.runs import read_run
    from semimatch.sklearn import SemiSupervisedClassifier

    out = Path(sys.argv[1])
    cfg = Config(dataset="digits", num_labels=20, iterations=6, eval_every=3, batch_size=8,
                 uratio=2, threads=1, algorithm="toymatch", toy_tau=0.5, progress=False)
    fit(cfg, out=out / "ref")
    real = engine._stop_requested
    engine._stop_requested = lambda t, i, done: done == 3 or real(t, i, done)
    try:
        fit(cfg, out=out / "run")
    except TrainingInterrupted:
        pass
    engine._stop_requested = real
    fit(out=out / "run", resume=True)
    a = ckpt.load(ckpt.latest(out / "ref" / "checkpoints"))
    b = ckpt.load(ckpt.latest(out / "run" / "checkpoints"))
    same = all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    same &= all(torch.equal(a["algorithm"][k], b["algorithm"][k]) for k in a["algorithm"])
    curve, note = final_lambda(read_run(out / "ref"))
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype("float32")
    y = y.copy(); y[40:] = -1
    clf = SemiSupervisedClassifier(algorithm="toymatch", max_iter=4, batch_size=8, uratio=2,
                                   random_state=0, config={"toy_tau": 0.5, "threads": 1})
    clf.fit(X[:300], y[:300])
    print(json.dumps({"same": bool(same), "algorithm_keys": sorted(a["algorithm"]),
                      "moved": float(a["algorithm"]["weighting.mean"]),
                      "source": curve.source if curve else None, "note": note,
                      "predicted": int(clf.predict(X[:5]).shape[0]),
                      "iteration": int(b["iteration"])}))
    """
)


@pytest.mark.slow
def test_the_plug_in_trains_through_the_api_and_the_estimator_and_resumes_exactly(
    plugin_env, tmp_path
):
    script = tmp_path / "api.py"
    script.write_text(_API_SCRIPT)
    out = _run(plugin_env, str(script), str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] and result["iteration"] == 6  # interrupted at 3, resumed to 6
    assert result["algorithm_keys"] == ["weighting.mean"] and result["moved"] < 1.0
    assert result["source"] == "formula" and "toy" in result["note"]
    assert result["predicted"] == 5


@pytest.mark.slow
def test_the_plug_ins_train_through_the_cli_and_are_drawn_in_the_report(plugin_env, tmp_path):
    toy, twin = tmp_path / "toy", tmp_path / "twin"
    out = _run(plugin_env, "-m", "semimatch", "train", *SHORT, "--iterations", "6",
               "--algorithm", "toymatch", "--toy-tau", "0.5", "--out", str(toy))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((toy / "config.json").read_text())
    assert config["toy_tau"] == 0.5 and "toy_momentum" in config["auto"]
    out = _run(plugin_env, "-m", "semimatch", "report", str(toy), "-o", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr[-3000:]
    page = " ".join(p.read_text() for p in (tmp_path / "rep").rglob("*.html"))
    assert "rebuilt from the logged toy state" in page
    # two strong views and the pool indices, from the data stream through the step
    out = _run(plugin_env, "-m", "semimatch", "train", *SHORT, "--iterations", "4",
               "--algorithm", "twinmatch", "--tau", "0.3", "--out", str(twin))  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    state = torch.load(sorted((twin / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)
    visits = state["algorithm"]["visits"]
    assert int(visits.sum()) == 4 * 16 and state["num_unlabeled"] == visits.numel()
