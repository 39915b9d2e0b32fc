"""semimatch: semi-supervised classification of images, feature vectors and texts.

The methods: FixMatch, SoftMatch and their family, FlexMatch, FreeMatch, AdaMatch, Dash and UDA
(``methods()``, the registry; ``register_method`` adds one, from a package's ``semimatch.methods``
entry point).  This module is the public API, gathered from the modules that define it (a
package's ``__init__`` is the only kind of module that passes on names it does not define):
``train``, ``evaluate``, ``predict``, ``load_run``, ``Config``, ``PRESETS``, the building blocks
(``FixedThreshold``, ``SoftMatchWeighting``, ``UniformAlignment``, ``SSLAlgorithm``,
``build_algorithm``, ``train_step``), ``Run`` and the exceptions (``ConfigError``,
``TrainingError``, ``TrainingInterrupted``).

Importing semimatch before torch sets ``OMP_WAIT_POLICY=PASSIVE`` (unless it is set already):
torch's OpenMP threads then sleep instead of spinning while they wait, so a run that shares the
CPU with another job does not collapse (the demo's recipe: 1.09 s/iteration with spinning
threads, 0.10 s passive, 0.15 s with one thread; on a quiet machine 0.053 s spinning, 0.065 s
passive; BENCHMARKS.md section 7).  Set ``OMP_WAIT_POLICY`` yourself to choose otherwise.
"""

import os as _os
import sys as _sys

if "torch" not in _sys.modules:  # OpenMP reads its wait policy once, when torch loads it
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from semimatch.api import evaluate, make_config, predict, train
from semimatch.config import Config, ConfigError
from semimatch.errors import TrainingError, TrainingInterrupted
from semimatch.methods.alignment import UniformAlignment
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.fixmatch import FixedThreshold
from semimatch.methods.registry import build_algorithm, methods, register_method
from semimatch.methods.softmatch import SoftMatchWeighting
from semimatch.presets import PRESETS
from semimatch.runs import run as _run_module
from semimatch.runs.run import Run, load_run
from semimatch.training.step import train_step

__version__ = "0.1.0"

# Estimators pickled before run.py moved into runs/ name their ``run_`` as ``semimatch.run.Run``:
# that one old module name stays an alias of ``semimatch.runs.run`` so such pickles still load
# (tests/test_sklearn.py). Pickles written now name ``semimatch.runs.run``.
_sys.modules.setdefault("semimatch.run", _run_module)

__all__ = [
    "PRESETS",
    "Config",
    "ConfigError",
    "FixedThreshold",
    "Run",
    "SSLAlgorithm",
    "SoftMatchWeighting",
    "TrainingError",
    "TrainingInterrupted",
    "UniformAlignment",
    "build_algorithm",
    "methods",
    "register_method",
    "evaluate",
    "load_run",
    "make_config",
    "predict",
    "train",
    "train_step",
    "__version__",
]
