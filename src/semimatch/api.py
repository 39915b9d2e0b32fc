"""The Python front door: ``train``, ``load_run``, ``evaluate``, ``predict``.

Same engine as the command line: ``train`` builds a ``Config`` (from a preset, a dict or keyword
overrides) and calls ``semimatch.runs.engine.fit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch.config import Config, ConfigError, load_preset
from semimatch.data import SSLDataset
from semimatch.data.modalities import modality
from semimatch.methods.blocks import Weighting
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.runs.engine import fit
from semimatch.runs.run import Run, load_run

__all__ = ["train", "make_config", "evaluate", "predict", "Augmentation"]

#: A custom augmentation: ``(img: uint8 (H, W, C), rng: np.random.Generator) -> uint8 (H, W, C)``.
Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def make_config(
    config: Config | dict[str, Any] | str | None = None,
    *,
    preset: str | None = None,
    **overrides: Any,
) -> Config:
    """A validated ``Config`` from a preset name, a dict, a JSON file or a Config, plus overrides.

    Unknown keys and wrong types raise ``ConfigError`` with a suggestion.
    """
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    elif isinstance(config, (str, os.PathLike)):
        cfg = Config.load(config)
    elif config is None:
        cfg = load_preset(preset) if preset else Config()
    else:
        raise ConfigError(f"config must be a Config, dict or JSON path; got {type(config)}")
    if preset and config is not None:
        raise ConfigError("pass either a config or a preset, not both")
    return cfg.replace(**overrides) if overrides else cfg


def train(
    config: Config | dict[str, Any] | str | None = None,
    *,
    preset: str | None = None,
    out: str | os.PathLike | None = None,
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    data: SSLDataset | None = None,
    model: nn.Module | None = None,
    weighting: Weighting | None = None,
    alignment: Weighting | None = None,
    weak_view: Augmentation | None = None,
    strong_view: Augmentation | None = None,
    **overrides: Any,
) -> Run:
    """Train a model; returns a ``Run`` with ``.model``, ``.ema_model``, ``.metrics``,
    ``.evaluate()`` and ``.predict()``.

    Args:
        config: the configuration (see ``semimatch.Config``): a Config, a dict or a JSON file.
        preset: a paper preset to start from instead of ``config``.
        out: run directory (config, split, metrics, checkpoints); None keeps everything in memory.
        resume: ``True`` continues the run in ``out`` with its saved config: overrides may
            change only speed, display and disk use (``threads``, ``progress``,
            ``keep_checkpoints``, ...) or extend ``iterations``; ``"auto"`` starts it or
            continues it if ``out`` already holds this run (a restartable call, e.g. under
            torchrun restarts).
        data: your own data (``semimatch.data.from_arrays``, or
            ``semimatch.data.adapters.from_torch`` for torch ``Dataset`` s) instead of
            ``config.dataset``.
        model: your own backbone ``nn.Module`` (float NCHW in, logits out); recorded as
            ``backbone="custom:<class name>"`` unless ``backbone`` is set, and reloaded with
            ``load_run(run_dir, model=<fresh instance>)``.
        weighting: your own weighting function (any object with ``update(probs)`` and
            ``__call__(probs) -> weights``); the rest of the recipe
            (student view = strong, loss, schedule) is the config's. The run records
            ``custom:<class name>`` as its algorithm (summary.json, report, checkpoints); resume
            it by passing the same weighting again.
        alignment: an optional alignment to go with ``weighting`` (the same interface).
        weak_view: your own weak view, a callable
            ``(img: uint8 (H, W, C) array, rng: numpy.random.Generator) -> uint8 (H, W, C)``
            replacing the weak PIL pipeline (it forces ``augment="pil"``; draw all
            randomness from ``rng`` to keep runs reproducible).
        strong_view: your own strong view (the same kind of callable, replacing the strong PIL
            pipeline).  Not to be confused with the config field ``strong_augment``, the
            built-in strong view's variant (a string, like every other override).
        **overrides: any ``Config`` field, applied over ``config`` or ``preset``.
    """
    _refuse_callable_variants(overrides)
    for arg, fn in (("weak_view", weak_view), ("strong_view", strong_view)):
        if fn is not None and not callable(fn):
            raise ValueError(
                f"{arg} must be a callable (img_hwc_uint8, rng) -> img_hwc_uint8; "
                f"got {type(fn).__name__}"
            )
    cfg = make_config(config, preset=preset, **overrides)
    if model is not None and cfg.backbone in (None, "auto") and resume is not True:
        # Record what was trained (config.json), so load_run knows to ask for the module.
        cfg = cfg.replace(backbone=f"custom:{type(model).__name__}")
    algorithm = None
    if weighting is not None:
        unused = sorted(k for k in cfg.algorithm_options() if k != "lambda_u")
        if unused:
            raise ConfigError(
                f"{', '.join(unused)} configure the built-in algorithms; weighting= replaces "
                "them, so they would do nothing - drop them (or set them on your weighting)"
            )
        algorithm = SSLAlgorithm(
            weighting,
            alignment,
            lambda_u=1.0 if cfg.lambda_u is None else cfg.lambda_u,
            name=f"custom:{type(weighting).__name__}",
        )
    elif alignment is not None:
        raise ConfigError(
            "alignment= needs weighting= as well (an alignment only changes the "
            "probabilities a weighting function sees)"
        )
    given = {k: getattr(cfg, k) for k in overrides}  # a resume takes exactly these
    plain = resume is True and config is None and preset is None
    return fit(
        given if plain else cfg,
        out=out,
        resume=resume,
        overwrite=overwrite,
        data=data,
        model=model,
        algorithm=algorithm,
        weak_view=weak_view,
        strong_view=strong_view,
    )


def _refuse_callable_variants(overrides: dict[str, Any]) -> None:
    """A callable under ``strong_augment`` (the config's variant name) or ``weak_augment`` (no
    config field) is a custom view: it belongs in ``strong_view=``/``weak_view=``."""
    for arg, view in (("strong_augment", "strong_view"), ("weak_augment", "weak_view")):
        if callable(overrides.get(arg)):
            what = (
                "strong_augment names the strong view's variant ('fixmatch', 'usb' or 'ctaugment')"
                if arg == "strong_augment"
                else "weak_augment is not a train() keyword"
            )
            raise ConfigError(f"{what}; pass your own callable as {view}=")


def evaluate(
    run: Run | str | os.PathLike,
    model: str = "ema",
    checkpoint: str = "auto",
    device: str = "auto",
    test_dir: str | os.PathLike | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    header: bool | None = None,
    skip_corrupt: bool | None = None,
) -> dict[str, Any]:
    """Test-set accuracy of a run (EMA model by default).

    ``checkpoint`` (a run folder): as ``load_run`` - "auto" loads ``best.pt`` only when a
    validation set chose it, else the last checkpoint; "best" scores ``best.pt`` even when the
    same test set chose it (the papers' protocol: an optimistic number).

    ``test_dir``: score labeled images ``test_dir/<class>/<image>`` instead of the run's test
    set (class folders named like the run's classes; decoded as training decodes images); for
    a text run, a labeled text file or folder (``load_text``), tokenized as training did and
    read with the run's ``text_column``, ``label_column``, ``header`` and ``skip_corrupt``
    unless given here. Its labels must be the run's class names (an integer label is the class
    of that name: indices only for a run whose classes are 0..C-1); others are refused.
    """
    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    if test_dir is None:
        return run.evaluate(model=model)
    reading = dict(
        text_column=text_column, label_column=label_column, header=header,
        skip_corrupt=skip_corrupt,
    )  # fmt: skip
    source = modality(run.info).labeled_files(os.fspath(test_dir), run.config, run.info, reading)
    return run.evaluate(source, model=model)


def predict(
    run: Run | str | os.PathLike,
    images: np.ndarray | list[str | os.PathLike],
    model: str = "ema",
    checkpoint: str = "auto",
    device: str = "auto",
) -> list[dict[str, Any]]:
    """Predict classes for an image array, or for image files and folders (a folder stands
    for the images under it, recursively, sorted); for a text run, ``images`` is a list of
    texts (strings), tokenized as the run's texts were.

    ``checkpoint`` (a run folder): as ``load_run`` (default "auto": never one the test set
    chose).  Returns one dict per image (text): ``{"class": name, "index": i, "confidence": p}``,
    with ``"path"`` as well when files were given.
    """
    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    info = run.info
    given = modality(info).predict_inputs(images, info)  # image runs also read files
    images, paths = given.inputs, given.paths
    with torch.no_grad():
        probs = run.predict_proba(images, model=model)
    idx = probs.argmax(axis=1)
    rows = [
        {"class": info.class_names[i], "index": int(i), "confidence": float(probs[n, i])}
        for n, i in enumerate(idx)
    ]
    if paths is not None:
        for row, path in zip(rows, paths):
            row["path"] = path
    return rows
