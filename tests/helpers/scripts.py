"""Scripts of the repository (benchmarks, docs hooks) loaded as modules; committed results.

The benchmarks are scripts, not a package: a test loads one from its file to call its functions
in-process (``load_script``) instead of copying the loading lines into every test.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

#: The repository's root folder.
ROOT = Path(__file__).resolve().parents[2]
#: The committed runs of ``benchmarks/reproduce.py`` (one folder per setting and method).
RESULTS = ROOT / "benchmarks" / "results" / "reproduce"


def load_script(path: str, *, folder_on_path: bool = False) -> ModuleType:
    """The script at ``path`` (relative to the repository root) as a module named after its file.

    ``folder_on_path``: put the script's folder first on ``sys.path``, for scripts that import
    their neighbours as a script run from that folder would.
    """
    file = ROOT / path
    if folder_on_path:
        sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(file.stem, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def committed_mean_std(setting: str, algorithm: str, key: str = "best_error") -> str:
    """``mean ± std`` (in %, one decimal, as the docs write it) of ``key`` over the 3 committed
    seeds of a cell."""
    paths = sorted((RESULTS / setting / algorithm).glob("seed*/summary.json"))
    values = [100 * json.loads(p.read_text())[key] for p in paths]
    assert len(values) == 3, (setting, algorithm)
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
