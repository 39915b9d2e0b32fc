"""The Python front door: ``train``, ``load_run``, ``evaluate``, ``predict``.

Same engine as the command line: ``train`` builds a ``Config`` (from a preset, a dict or keyword
overrides) and calls ``semimatch.engine.fit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch.algorithms import SSLAlgorithm, Weighting
from semimatch.config import Config, ConfigError, load_preset
from semimatch.data import SSLDataset
from semimatch.engine import fit
from semimatch.log import logger
from semimatch.run import Run, load_run

__all__ = ["train", "make_config", "evaluate", "predict", "load_images", "Augmentation"]

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
    weak_augment: Augmentation | None = None,
    strong_augment: Augmentation | str | None = None,
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
        weak_augment: your own weak augmentation, a callable
            ``(img: uint8 (H, W, C) array, rng: numpy.random.Generator) -> uint8 (H, W, C)``
            replacing the weak PIL pipeline (it forces ``augment="pil"``; draw all
            randomness from ``rng`` to keep runs reproducible).
        strong_augment: your own strong augmentation (the same kind of callable, replacing the
            strong PIL pipeline). A *string* ``strong_augment`` is
            the config field of that name (the RandAugment variant, ``"fixmatch"`` or ``"usb"``).
        **overrides: any ``Config`` field, applied over ``config`` or ``preset``.
    """
    if isinstance(strong_augment, str):  # the config's RandAugment variant, not a callable
        overrides["strong_augment"] = strong_augment
        strong_augment = None
    for arg, fn in (("weak_augment", weak_augment), ("strong_augment", strong_augment)):
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
        weak_augment=weak_augment,
        strong_augment=strong_augment,
    )


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
    from semimatch.data.folders import labeled_folder

    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    if test_dir is None:
        return run.evaluate(model=model)
    info = run.info
    if info.kind == "text":
        from semimatch.data.text import tokenize_dataset, tokenizer_named
        from semimatch.data.text_datasets import load_text

        cfg = run.config

        def given(value: Any, default: Any) -> Any:
            return default if value is None else value

        texts = load_text(
            test_dir,
            text_column=given(text_column, cfg.text_column),
            label_column=given(label_column, cfg.label_column),
            header=given(header, cfg.header),
            skip_corrupt=given(skip_corrupt, cfg.skip_corrupt),
            class_names=info.class_names,
        )
        tok = tokenizer_named(info.tokenizer)
        return run.evaluate(tokenize_dataset(texts, tok, info.max_length).train, model=model)
    if (text_column, label_column, header) != (None, None, None):
        raise ValueError(
            "text_column, label_column and header read text files; this run classifies images"
        )
    source = labeled_folder(
        test_dir,
        info.class_names,
        info.image_size,
        info.channels,
        run.config.skip_corrupt if skip_corrupt is None else skip_corrupt,
    )
    return run.evaluate(source, model=model)


# Prediction fits every image to the model's input as training did (cover, centre-crop); past
# these limits that changes the picture enough to be worth a warning.
MAX_CROPPED_AREA = 0.25  # a centre crop that drops more than a quarter of the image
MAX_UPSCALE = 4.0  # an image enlarged more than 4x per side is mostly interpolation


def load_images(paths: list[str | os.PathLike], size: tuple[int, int], channels: int) -> np.ndarray:
    """Read image files into a uint8 (N, H, W, C) array at the model's size and channels.

    Decoded exactly as an image folder is for training (scale to cover ``size``, centre-crop,
    bicubic): a model must see at prediction the pixels it would have seen in training.  One
    warning per call names the images this changes a lot (a crop losing more than 25% of the
    area, or an upscale of more than 4x).
    """
    from PIL import Image, UnidentifiedImageError

    from semimatch.data.folders import fit_image  # decode_image's fitting, original size

    size = (int(size[0]), int(size[1]))
    out, shapes = [], []
    for p in paths:
        try:
            with Image.open(os.path.expanduser(os.fspath(p))) as im:
                shapes.append((im.size[1], im.size[0]))  # before the JPEG draft shrinks it
                arr = fit_image(im, size, channels)
        except FileNotFoundError:
            raise FileNotFoundError(f"image {p} does not exist") from None
        except IsADirectoryError:
            raise ValueError(f"{p} is a folder; pass image files") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
        out.append(arr)
    _warn_about_fitting([os.fspath(p) for p in paths], shapes, size)
    return np.stack(out) if out else np.zeros((0, size[0], size[1], channels), np.uint8)


def _were(n: int) -> str:
    return f"{n} {'was' if n == 1 else 'were'}"


def _warn_about_fitting(
    paths: list[str], shapes: list[tuple[int, int]], size: tuple[int, int]
) -> None:
    """One warning for the images that fitting to ``size`` = (H, W) crops or enlarges a lot."""
    H, W = size
    cropped: list[tuple[float, str, int, int]] = []
    upscaled: list[tuple[float, str, int, int]] = []
    for path, (h, w) in zip(paths, shapes):
        aspect, target = w / h, W / H
        lost = 1 - min(aspect, target) / max(aspect, target)  # area the centre crop drops
        if lost > MAX_CROPPED_AREA:
            cropped.append((lost, path, h, w))
        scale = max(H / h, W / w)  # the cover scale fit_image applies
        if scale > MAX_UPSCALE:
            upscaled.append((scale, path, h, w))
    if not cropped and not upscaled:
        return
    parts = []
    if cropped:
        lost, path, h, w = max(cropped)
        parts.append(
            f"{_were(len(cropped))} centre-cropped to its aspect ratio, losing more than "
            f"{MAX_CROPPED_AREA:.0%} of their area (up to {lost:.0%}: {path} is {h}x{w})"
        )
    if upscaled:
        scale, path, h, w = max(upscaled)
        parts.append(
            f"{_were(len(upscaled))} enlarged more than {MAX_UPSCALE:g}x (up to {scale:.3g}x: "
            f"{path} is {h}x{w})"
        )
    logger.warning(
        f"predict: the model takes {H}x{W} images (height x width, the size it was trained "
        f"at); of the {len(paths)} image(s), {' and '.join(parts)}. Predictions on them may be "
        f"poor; crop or resize the images to {H}x{W} yourself to choose what the model sees"
    )


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
    from semimatch.data.folders import image_files

    if not isinstance(run, Run):
        run = load_run(run, checkpoint=checkpoint, device=device)
    info = run.info
    paths: list[str] | None = None
    if info.kind != "image":  # texts or feature vectors: the inputs themselves
        pass
    elif isinstance(images, (list, tuple, str, os.PathLike)):
        paths = []
        for given in [images] if isinstance(images, (str, os.PathLike)) else images:
            given = os.path.expanduser(os.fspath(given))
            found = image_files(given) if os.path.isdir(given) else [given]
            if not found:
                raise ValueError(f"no image files under {given}")
            paths += found
        images = load_images(paths, info.image_size, info.channels)
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
