"""The validation set that chooses ``best.pt``: carved from the labeled samples (``val_size``)
or given (``val_dir``, USB's ``dev.json``, ``SSLDataset.val``).

Without one, ``best.pt`` is chosen on the test set (the papers' protocol): its test error is
then an optimistic estimate, and the front doors load the last checkpoint by default
(``run.load_run``).  With one, the test set is never read to choose it.
"""

from __future__ import annotations

from semimatch.config import Config, ConfigError
from semimatch.data import Split, SSLDataset
from semimatch.data.splits import carve_validation

__all__ = ["carve", "check_validation"]


def check_validation(cfg: Config, data: SSLDataset) -> None:
    """One validation set at most, and ``val_seed`` only with the draw it seeds."""
    if cfg.val_size is not None and (cfg.val_dir is not None or data.val is not None):
        given = "--val-dir" if cfg.val_dir is not None else "the data's own validation set"
        raise ConfigError(
            f"--val-size carves a validation set but {given} is one already; pass only one"
        )
    if cfg.val_size is not None and cfg.val_size < 1:
        raise ConfigError(f"--val-size must be a positive number of samples; got {cfg.val_size}")
    if cfg.val_size is None and cfg.val_seed != Config().val_seed:
        raise ConfigError("--val-seed seeds the validation set of --val-size; pass both or neither")


def carve(cfg: Config, data: SSLDataset, split: Split) -> Split:
    """``split`` with ``cfg.val_size`` of its labeled samples moved to ``split.val``."""
    if cfg.val_size is None:
        return split
    try:
        return carve_validation(
            split, data.train.labels, data.info.num_classes, cfg.val_size, cfg.val_seed
        )
    except ValueError as e:
        raise ConfigError(str(e).replace("val_size:", "--val-size:", 1)) from None
