"""A run: its directory (``RunDir``) and its result (``Run``, ``load_run``).

``RunDir`` is the only place the files of a run directory are named (how a run starts in it is
``start.RunStart``'s).  ``Run`` is what ``fit`` returns and what ``load_run`` rebuilds from a
directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch.config import Config
from semimatch.data import DATASETS, DatasetInfo, Split, SSLDataset, to_model_input
from semimatch.data.modalities import modality
from semimatch.data.splits import save_split
from semimatch.errors import TrainingError
from semimatch.log import logger
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.hardware import select_device
from semimatch.runs.resolve import load_data
from semimatch.runs.state import TrainState, read_checkpoint
from semimatch.training.evaluation import evaluate_model, pad_rows
from semimatch.training.metrics import JsonlWriter, median_of_last, read_jsonl
from semimatch.training.recipe import build_parts

__all__ = ["Run", "RunDir", "load_dataset_info", "load_run", "make_summary", "save_dataset_info"]


# --- The directory --------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunDir:
    """The files of a run directory (the only place their names are written).

    ``config.json`` (the resolved config), ``split.json`` (labeled/unlabeled indices),
    ``dataset.json`` (what prediction needs without the data), ``metrics.jsonl`` (one record
    per log/eval), ``summary.json`` (written when the run finishes), ``checkpoints/`` (the last
    ``keep_checkpoints`` and ``best.pt``, a hard link to the best of them or its weights only),
    ``tb/`` (TensorBoard), ``report/`` and, for text runs, ``hf/`` (the tokenizer and the
    encoder's ``config.json``: prediction needs neither the data nor the model folder the run
    started from).
    """

    path: Path

    config = property(lambda self: self.path / "config.json")
    split = property(lambda self: self.path / "split.json")
    dataset = property(lambda self: self.path / "dataset.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    summary = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    tensorboard = property(lambda self: self.path / "tb")
    report = property(lambda self: self.path / "report")
    hf = property(lambda self: self.path / "hf")

    def holds_run(self) -> bool:
        return self.config.exists() or self.metrics.exists()

    def latest_checkpoint(self) -> Path | None:
        return ckpt.latest(self.checkpoints)

    def write_start(self, cfg: Config, split: Split, info: DatasetInfo) -> None:
        """The files a new run writes before its first iteration."""
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.config)
        save_split(split, self.split)
        save_dataset_info(info, self.dataset)

    def rewrite_config(self, cfg: Config) -> None:
        """Replace ``config.json`` atomically (an extended budget): a crash leaves the old or
        the new file, and a resume reads the one it finds."""
        tmp = self.path / f".config.json.tmp-{os.getpid()}"
        cfg.save(tmp)
        os.replace(tmp, self.config)

    def write_summary(self, summary: dict[str, Any]) -> None:
        try:
            self.summary.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:
            raise TrainingError(
                f"training finished and its last checkpoint is saved, but "
                f"{ckpt.describe_write_failure(self.summary, e)}"
            ) from e

    def clear(self) -> None:
        """Delete a previous run's files (``overwrite``); other files stay."""
        self.remove_stale_temporaries()  # counted and reported before the folder goes
        for folder in (self.checkpoints, self.tensorboard, self.report, self.hf):
            shutil.rmtree(folder, ignore_errors=True)
        for file in (self.metrics, self.summary, self.config, self.split, self.dataset):
            file.unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> None:
        """Delete the half-written files a killed run left (checkpoint copies, the metrics log's
        rewrite): they are never read, but can be large."""
        removed = ckpt.remove_stale_temporaries(self.checkpoints)
        removed += JsonlWriter(self.metrics).remove_temporary()
        for tmp in self.path.glob(".config.json.tmp-*"):  # a killed rewrite_config
            tmp.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info(
                f"removed {removed} temporary file(s) left in {self.path} by an interrupted run"
            )

    def resume_hint(self) -> str:
        """Where a run that stopped on a failed write can continue from, once the cause is fixed."""
        found = ckpt.list_checkpoints(self.checkpoints)
        if not found:
            return f"no checkpoint was saved yet: fix the cause, then {self.restart()}"
        iteration, path = found[-1]
        return (
            f"fix the cause, then `semimatch train --resume {self.path}` continues from "
            f"{path.name} (iteration {iteration})"
        )

    def no_checkpoint(self) -> TrainingError:
        return TrainingError(
            f"--resume {self.path}: the run has no checkpoint yet (checkpoints are written every "
            f"eval_every iterations); {self.restart()}"
        )

    def restart(self) -> str:
        """Start again a run stopped before its first checkpoint: its saved config, in place."""
        q = shlex.quote  # derived values included: this machine derives the same ones again
        again = f"--config {q(str(self.config))} --overwrite --out {q(str(self.path))}"
        return f"`semimatch train {again}` starts it again"


def save_dataset_info(info: DatasetInfo, path: Path) -> None:
    path.write_text(json.dumps(info.to_dict(), indent=2) + "\n")


def load_dataset_info(path: Path) -> DatasetInfo:
    d = json.loads(path.read_text())
    return DatasetInfo.from_dict(d)


# --- The result -----------------------------------------------------------------------------------
@dataclass
class Run:
    """A trained (or loaded) run: models, config, metrics; ``evaluate``/``predict`` on it."""

    config: Config
    model: nn.Module
    ema_model: nn.Module | None
    algorithm: SSLAlgorithm | None  # None: reloaded, trained with a custom weighting
    data: SSLDataset | None
    run_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # What prediction needs (classes, size, channels, normalisation) without the images; a
    # reloaded run has it from dataset.json and loads the dataset only to evaluate.
    info: DatasetInfo | None = None
    #: A reloaded run: the checkpoint file loaded, and what chose it - "val" (best.pt chosen on
    #: a validation set), "test" (best.pt chosen on the test set), "last" (the latest
    #: checkpoint) or None (a path given, or a run in memory).
    checkpoint: Path | None = None
    selected_on: str | None = None

    def __post_init__(self) -> None:
        if self.info is None and self.data is not None:
            self.info = self.data.info

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return self.history

    @property
    def class_names(self) -> tuple[str, ...]:
        assert self.info is not None
        return self.info.class_names

    def eval_model(self, which: str = "ema") -> nn.Module:
        if which not in ("ema", "raw"):
            raise ValueError(f"model must be 'ema' or 'raw'; got {which!r}")
        return self.ema_model if which == "ema" and self.ema_model is not None else self.model

    def evaluate(self, source: Any = None, model: str = "ema") -> dict[str, Any]:
        """Top-1/error on ``source`` (default: the dataset's test set); ``result["model"]``
        says which model answered ("raw" when the run has no EMA)."""
        if source is None and self.data is None:  # a reloaded run: load its dataset now
            if self.config.dataset not in DATASETS:
                raise ValueError(
                    f"this run trained on data passed to fit (dataset {self.config.dataset!r}), "
                    "which semimatch cannot load by name; score labeled test data with "
                    "`semimatch eval RUN --test-dir DIR` or semimatch.evaluate(run, "
                    "test_dir=DIR), or pass it: run.evaluate(source), load_run(run_dir, data=...)"
                )
            self.data = load_data(self.config)
        source = source if source is not None else (self.data.test if self.data else None)
        if source is None:
            data = modality(self.info)
            if not data.reads_labeled_files:  # feature vectors: no files to read labels from
                raise ValueError(
                    f"this run's dataset has no test set; pass labeled {data.noun} to "
                    "run.evaluate(source)"
                )
            raise ValueError(
                "this run's dataset has no test set; score labeled images DIR/<class>/<image> "
                "with `semimatch eval RUN --test-dir DIR` or semimatch.evaluate(run, "
                "test_dir=DIR), or pass images to run.evaluate(source)"
            )
        net = self.eval_model(model)
        # The precision and layout the training log's evaluations used (fp16 needs CUDA).
        same = not (self.config.precision == "fp16" and self.device.type != "cuda")
        result = evaluate_model(
            net,
            source,
            self.algorithm_classes,
            self.device,
            self.config.eval_batch_size,
            cfg=self.config if same else None,
        )
        result["model"] = "ema" if net is self.ema_model else "raw"
        return result

    @property
    def algorithm_classes(self) -> int:
        assert self.info is not None
        return self.info.num_classes

    @torch.no_grad()
    def predict_proba(self, images: np.ndarray, model: str = "ema") -> np.ndarray:
        """Class probabilities for raw inputs: uint8 images (N, H, W[, C]) of the training size,
        or (N, D) feature vectors for a run on features (``semimatch.data.to_model_input``)."""
        net = self.eval_model(model).eval()
        assert self.info is not None
        x = to_model_input(images, self.info)
        out = []
        rows = self.config.eval_batch_size
        for i in range(0, len(x), rows):  # fixed-size forwards: see pad_rows
            xb = x[i : i + rows]
            logits = net(pad_rows(xb, rows).to(self.device))[: len(xb)]
            out.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.algorithm_classes))

    def predict(self, images: np.ndarray, model: str = "ema") -> np.ndarray:
        return self.predict_proba(images, model).argmax(axis=1)


def make_summary(
    cfg: Config,
    state: TrainState,
    info: DatasetInfo,
    *,
    num_labels: int,
    status: str,
    done: int,
    wall: float,
) -> dict[str, Any]:
    """``summary.json``: the run's outcome in one small file (the report's table reads it).

    ``num_labels``: labeled samples of the split that trained (also for LT, fold, given splits).
    """
    history, class_names = state.history, info.class_names
    errors = history["errors"]
    window = history.get("last_window") or {}
    on_val = history.get("selected_on") == "val"
    return {
        "algorithm": state.algorithm_name,
        "dataset": cfg.dataset,
        "num_labels": num_labels,
        "num_classes": len(class_names),
        "iterations": cfg.iterations,
        "iterations_done": done,
        # The test error of best.pt.  Which set chose it: "val" (best_error is then an honest
        # estimate, = selected_test_error), "test" (best_error is optimistic: chosen on the data
        # it is measured on, = lowest_test_error) or "latest" (no test set).
        "best_error": history.get("selected_test_error") if on_val else history["best_error"],
        "lowest_test_error": history["best_error"],
        "selected_on": history.get("selected_on"),
        "best_val_error": history.get("best_val_error"),
        "selected_test_error": history.get("selected_test_error"),
        "median20_error": median_of_last(errors, 20),
        "final_error": errors[-1] if errors else None,
        "final_quantity": window.get("quantity"),
        "final_quality": window.get("quality"),
        "sec_per_iter": wall / max(done, 1),
        "wall_time_s": wall,
        "status": status,
        "seed": cfg.seed,
        "backbone": cfg.backbone,
        "class_names": list(class_names),
    }


def load_run(
    run_dir: str | os.PathLike,
    checkpoint: str = "auto",
    device: str = "auto",
    data: SSLDataset | None = None,
    model: nn.Module | None = None,
) -> Run:
    """Load a run directory for evaluation/prediction.

    Args:
        checkpoint: ``"auto"`` (default: a checkpoint the test set did not choose - ``best.pt``
            when a validation set chose it, else the last one), ``"best"`` (``best.pt``
            whatever chose it: without a validation set the lowest test error, which papers
            report but which is an optimistic estimate), ``"last"``, or a checkpoint path.
            ``Run.checkpoint`` says which file was loaded and ``Run.selected_on`` what chose it.
        data: the dataset, if it is not one semimatch can load by name (Python-API runs).
        model: for runs trained with your own backbone (``train(model=...)``): a fresh
            instance of that architecture; the checkpoint's weights are loaded into it.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(
            f"load_run(model=...) takes a fresh instance of your own backbone (an nn.Module), "
            f"got {model!r}; to use the raw model instead of the EMA, pass model={model!r} to "
            "run.evaluate / run.predict"
        )
    layout = RunDir(Path(run_dir))
    if not layout.config.exists():
        raise FileNotFoundError(f"{run_dir} is not a semimatch run directory (no config.json)")
    cfg = Config.load(layout.config)
    history = read_jsonl(layout.metrics) if layout.metrics.exists() else []
    path, selected_on = _chosen_checkpoint(layout, history, checkpoint)
    dev = select_device(device)
    saved = read_checkpoint(path, dev)
    info, data = _reload_info(layout, cfg, data)
    if model is None and str(cfg.backbone).startswith("custom:"):
        raise ValueError(
            f"{run_dir} was trained with your own backbone ({cfg.backbone}); "
            "pass model= a fresh instance of it"
        )
    # what the run folder kept to rebuild the model (text: the tokenizer and encoder config)
    info, build_cfg = modality(info).reload(layout.hf, info, cfg)
    # A run trained with a custom weighting reloads without it: prediction does not need it.
    parts = build_parts(
        build_cfg,
        info,
        dev,
        model=model,
        training=False,
        with_algorithm=saved.algorithm_name(cfg.algorithm) == cfg.algorithm,
        num_unlabeled=saved.num_unlabeled,
    )
    has_ema = parts.ema is not None and bool(saved.state.get("ema"))
    algorithm = parts.algorithm if saved.state.get("algorithm") else None
    weights = {"model": parts.net, "ema": parts.ema if has_ema else None, "algorithm": algorithm}
    saved.load_into(weights, f"{run_dir}/config.json")
    summary = json.loads(layout.summary.read_text()) if layout.summary.exists() else {}
    ema = parts.ema.module.eval() if has_ema else None
    run = Run(
        cfg, parts.net.eval(), ema, parts.algorithm, data, layout.path, history, summary, dev, info
    )
    run.checkpoint, run.selected_on = Path(path), selected_on
    return run


def _chosen_checkpoint(
    layout: RunDir, history: list[dict[str, Any]], checkpoint: str
) -> tuple[Path, str | None]:
    """``load_run``'s checkpoint file, and what chose it ("val", "test", "last"; None: a path
    given, whatever chose it is not known here)."""
    evals = [r for r in history if r.get("kind") == "eval"]
    selected_on = evals[-1].get("selected_on", "test") if evals else None
    if checkpoint == "auto":  # best.pt only when the test set did not choose it
        checkpoint = "best" if selected_on == "val" else "last"
    path: Path | None
    if checkpoint == "best":
        path = layout.checkpoints / ckpt.BEST
        if not path.exists():
            path, selected_on = layout.latest_checkpoint(), "last"  # no best.pt yet
    elif checkpoint == "last":
        path, selected_on = layout.latest_checkpoint(), "last"
    else:
        path, selected_on = Path(checkpoint), None
    if path is None or not Path(path).exists():
        raise FileNotFoundError(
            f"{layout.path} has no checkpoint yet ({checkpoint!r}); "
            "checkpoints are written at every evaluation"
        )
    return Path(path), selected_on


def _reload_info(
    layout: RunDir, cfg: Config, data: SSLDataset | None
) -> tuple[DatasetInfo, SSLDataset | None]:
    """What prediction needs of the data: the data passed, else ``dataset.json`` (no need to
    load the images to predict), else the dataset loaded again."""
    if data is not None:
        return data.info, data
    if layout.dataset.exists():
        return load_dataset_info(layout.dataset), None
    try:
        data = load_data(cfg)
    except (FileNotFoundError, ValueError) as e:
        raise FileNotFoundError(
            f"cannot reload dataset {cfg.dataset!r} for {layout.path} ({e}); pass data="
        ) from None
    return data.info, data
