"""The validation set that chooses ``best.pt``: carved from the labeled samples (``val_size``)
or given (``val_dir``, USB's ``dev.json``, ``SSLDataset.val``).

Without one, ``best.pt`` is chosen on the test set (the papers' protocol): its test error is
then an optimistic estimate, and the front doors load the last checkpoint by default
(``run.load_run``).  With one, the test set is never read to choose it.  Data that leaves a run
nothing to measure (no test set) or nothing to pseudo-label (every sample labeled) trains, with
a line that says so (``say_what_is_measured``).
"""

from __future__ import annotations

import dataclasses
import os

from semimatch.config import Config, ConfigError
from semimatch.data import Split, SSLDataset
from semimatch.data.splits import carve_validation
from semimatch.log import logger
from semimatch.methods.registry import methods

__all__ = ["carve", "check_validation", "say_what_is_measured", "with_validation"]


def with_validation(cfg: Config, data: SSLDataset) -> SSLDataset:
    """``data`` with its validation set: ``val_dir`` (an image folder ``root/<class>/<image>``
    or a labeled text file/folder, read as the test set is), else - for a USB NLP folder, as
    USB does - its ``dev.json``, unless ``val_size`` carves one."""
    path = cfg.val_dir
    usb_dev = os.path.join(os.path.expanduser(cfg.data_root or ""), "dev.json")
    folder = os.path.dirname(usb_dev)
    usb = os.path.isfile(os.path.join(folder, "train.json")) and os.path.isfile(usb_dev)
    if path is None and cfg.val_size is None and cfg.dataset == "text" and usb:
        path = usb_dev
        logger.info(f"validation set: {usb_dev} chooses best.pt (USB's dev split)")
    if path is None:
        return data
    info = data.info
    if cfg.dataset == "imagefolder":
        from semimatch.data.folders import labeled_folder

        try:  # its messages name test_dir, the option it usually reads
            val = labeled_folder(
                path, info.class_names, info.spec.image_size, info.spec.channels, cfg.skip_corrupt
            )
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e).replace("test_dir", "--val-dir")) from None
    elif cfg.dataset == "text":
        from semimatch.data.text_datasets import load_text

        val = load_text(
            path,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            class_names=info.class_names,
        ).train
        if (val.labels < 0).any():
            raise ConfigError(f"--val-dir {path}: every validation text needs a label")
    else:
        raise ConfigError(
            f"--val-dir applies to --dataset imagefolder and text, not {cfg.dataset!r}; "
            "carve a validation set with --val-size instead"
        )
    return dataclasses.replace(data, val=val)


def check_validation(cfg: Config, data: SSLDataset) -> None:
    """One validation set at most, and ``val_seed`` only with the draw it seeds."""
    if cfg.val_size is not None and (cfg.val_dir is not None or data.val is not None):
        given = "--val-dir" if cfg.val_dir is not None else "the data's own validation set"
        raise ConfigError(
            f"--val-size carves a validation set but {given} is one already; pass only one"
        )
    if cfg.val_size is not None and cfg.val_size < 1:
        raise ConfigError(f"--val-size must be a positive number of samples; got {cfg.val_size}")
    if cfg.val_dir is not None and data.val is None:
        raise ConfigError(
            "--val-dir is read when semimatch loads the data (--dataset imagefolder or text); "
            "with data passed in, set its val (SSLDataset.val) instead"
        )
    if cfg.val_size is None and cfg.val_seed != Config().val_seed:
        raise ConfigError("--val-seed seeds the validation set of --val-size; pass both or neither")


def carve(cfg: Config, data: SSLDataset, split: Split) -> Split:
    """``split`` with ``cfg.val_size`` of its labeled samples moved to ``split.val``."""
    if cfg.val_size is None:
        return split
    try:
        return carve_validation(
            split,
            data.train.labels,
            data.info.num_classes,
            cfg.val_size,
            cfg.val_seed,
            data.info.class_names,
        )
    except ValueError as e:
        raise ConfigError(str(e).replace("val_size:", "--val-size:", 1)) from None


def say_what_is_measured(cfg: Config, data: SSLDataset, split: Split | None) -> None:
    """One warning line each when the run measures nothing (a data folder or file without a test
    or validation set) or pseudo-labels nothing new (without ``num_labels`` every sample is
    labeled and none is unlabeled: the unlabeled stream repeats the labeled samples).
    ``split``: a new run's split, None where the caller chose the data (``fit(data=)``)."""
    fix = {
        "imagefolder": "set test_dir; --test-dir on the command line",
        "text": "--test-size N carves one, --test-dir FILE names one",
    }.get(cfg.dataset)
    if fix and data.test is None and data.val is None and cfg.val_size is None:
        logger.warning(
            f"no test set ({fix}): the run measures no test error and best.pt is simply the "
            "latest evaluated checkpoint"
        )
    labeled_only = cfg.algorithm == "supervised" or getattr(
        methods().get(cfg.algorithm), "all_labels", False
    )
    if split is None or cfg.num_labels is not None or labeled_only:
        return
    no_unlabeled = data.extra_unlabeled is None or len(data.extra_unlabeled) == 0
    if no_unlabeled and len(split.labeled) == len(data.train):
        logger.warning(
            f"every one of the {len(data.train):,} training samples is labeled and none is "
            "unlabeled: the unlabeled stream repeats the labeled samples; pass num_labels "
            "(--num-labels on the command line) to hold labels out"
        )
