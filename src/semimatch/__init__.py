"""semimatch: semi-supervised image classification with FixMatch and SoftMatch.

Public names: ``train``, ``evaluate``, ``predict``, ``load_run``, ``Config``, ``PRESETS``, the
building blocks (``FixedThreshold``, ``SoftMatchWeighting``, ``UniformAlignment``,
``SSLAlgorithm``, ``build_algorithm``, ``train_step``), ``Run`` and the exceptions
(``ConfigError``, ``TrainingError``, ``TrainingInterrupted``).
"""

from semimatch.algorithms import ALGORITHMS, SSLAlgorithm, build_algorithm
from semimatch.alignment import UniformAlignment
from semimatch.api import evaluate, load_run, make_config, predict, train
from semimatch.config import PRESETS, Config, ConfigError
from semimatch.engine import Run, TrainingError, TrainingInterrupted
from semimatch.step import train_step
from semimatch.weighting import FixedThreshold, SoftMatchWeighting

__version__ = "0.1.0"

__all__ = [
    "ALGORITHMS",
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
    "evaluate",
    "load_run",
    "make_config",
    "predict",
    "train",
    "train_step",
    "__version__",
]
