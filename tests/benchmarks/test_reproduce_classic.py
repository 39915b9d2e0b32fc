"""benchmarks/reproduce.py's classic table: USB's classic-CV baselines as cells of a setting,
FixMatch with CTAugment, and the table next to USB's CIFAR-10-40 column (no training here)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

import pytest
import torch

from helpers.scripts import RESULTS, ROOT, load_script
from semimatch.methods.registry import methods
from semimatch.runs.resolve import load_data, resolve

reproduce = load_script("benchmarks/reproduce.py")

#: USB's published table, where this machine mirrors the repository.
USB = Path("/work/.mirror/microsoft+Semi-supervised-learning/repo")


def _args(tmp_path: Path) -> argparse.Namespace:
    return argparse.Namespace(
        iterations=None, fmnist_root=str(tmp_path), cifar_root=None, agnews=None, threads=1
    )


def test_the_classic_cells_are_the_registered_methods_of_usbs_table() -> None:
    """A method of USB's table is a cell once its file registers it: the script runs before
    and after the remaining methods land."""
    known = methods()
    assert tuple(n for n in reproduce.CLASSIC_METHODS if n in known) == reproduce.CLASSIC
    assert {"fullysupervised", "pimodel", "meanteacher", "vat", "mixmatch"} <= set(
        reproduce.CLASSIC
    )
    assert set(reproduce.CLASSIC_METHODS) <= set(reproduce.USB_CIFAR10_40)
    assert set(reproduce.CLASSIC) | {"fixmatch-ctaugment"} <= set(reproduce.NAMES)


@pytest.mark.parametrize("name", [*reproduce.CLASSIC, *reproduce.CLASSIC_VARIANTS])
def test_a_classic_cell_on_digits_is_a_valid_run(name: str, tmp_path: Path) -> None:
    """Each cell resolves on digits-20 with the setting's recipe: the ceiling on every label,
    Mean Teacher with the derived weight EMA as its teacher, FixMatch with CTAugment."""
    cfg = reproduce.config_for("digits-20", name, 0, _args(tmp_path))
    run = resolve(cfg, load_data(cfg), torch.device("cpu"))
    assert run.iterations == 300 and run.batch_size == 32 and run.seed == 0
    assert run.algorithm == reproduce.VARIANTS.get(name, {}).get("algorithm", name)
    joint = reproduce.needs_joint(run.algorithm)
    assert run.forward_mode == ("joint" if joint else "two-pass")
    variant = reproduce.VARIANTS.get(name, {})
    assert run.num_labels == variant.get("num_labels", 20)
    assert run.strong_augment == variant.get("strong_augment", "fixmatch")
    assert all(getattr(run, key) == value for key, value in variant.items())
    assert run.ema_decay > 0  # Mean Teacher's teacher (0.933 at 300 iterations)


def test_a_method_with_feature_heads_gets_the_joint_forward(tmp_path: Path, monkeypatch) -> None:
    """The one change besides the algorithm: the two-pass settings pin joint for it."""
    monkeypatch.setattr(reproduce, "needs_joint", lambda algorithm: algorithm == "pimodel")
    args = _args(tmp_path)
    assert reproduce.config_for("digits-20", "pimodel", 0, args).forward_mode == "joint"
    assert reproduce.config_for("digits-20", "vat", 0, args).forward_mode == "two-pass"
    assert reproduce.config_for("family-fmnist-40", "pimodel", 0, args).forward_mode == "joint"
    assert not reproduce.needs_joint("fixmatch")


def test_classic_cells_are_refused_on_text(tmp_path: Path) -> None:
    assert not reproduce.applies("agnews-40", "vat")
    assert reproduce.applies("family-fmnist-40", "fixmatch-ctaugment")
    with pytest.raises(SystemExit, match="classic image table"):
        reproduce.config_for("agnews-40", "meanteacher", 0, _args(tmp_path))


def test_the_classic_table_is_the_committed_runs_next_to_usbs_column() -> None:
    lines = reproduce.classic_table(RESULTS).splitlines()
    assert lines[0].startswith("| method | digits-20 best error %")
    for line in lines[2:]:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        name = cells[0]
        for setting, cell in zip(reproduce.CLASSIC_SETTINGS, cells[1:]):
            paths = sorted((RESULTS / setting / name).glob("seed*/summary.json"))
            best = [100 * json.loads(p.read_text())["best_error"] for p in paths]
            if not best:
                assert cell == "–"
                continue
            sd = statistics.stdev(best) if len(best) > 1 else 0.0
            assert cell.startswith(f"{statistics.mean(best):.2f} ± {sd:.2f}"), (name, setting)
        assert cells[-1] == reproduce.USB_CIFAR10_40.get(name, "")
    text = (ROOT / "docs" / "benchmarks" / "accuracy.md").read_text()
    assert reproduce.classic_table(RESULTS).strip() in text


@pytest.mark.skipif(not USB.is_dir(), reason="USB's repository is not mirrored here")
def test_usbs_column_is_its_published_csv() -> None:
    csv = subprocess.run(
        ["git", "-C", str(USB), "show", "HEAD:results/classic_cv.csv"],
        capture_output=True, text=True, check=True,
    ).stdout.lstrip("\ufeff")  # fmt: skip
    rows = [line.split(",") for line in csv.splitlines()]
    column = rows[0].index("cifar10_40")
    published = {row[0]: row[column] for row in rows[1:]}
    assert list(published) == list(reproduce.USB_CIFAR10_40)
    for name, cell in reproduce.USB_CIFAR10_40.items():
        mean, sd = (float(v) for v in published[name].split("±"))
        assert cell == f"{mean:.2f} ± {sd:.2f}", name
