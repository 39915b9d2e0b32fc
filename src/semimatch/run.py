"""A run: its directory (``RunDir``), how it starts (``RunStart``), its result (``Run``).

``RunDir`` is the only place the files of a run directory are named.  ``RunStart.plan`` is the
only place that decides how a run starts - new, overwriting, resuming or "auto" - from the
arguments every front door hands ``fit`` unchanged.  ``Run`` is what ``fit`` returns and what
``load_run`` rebuilds from a directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from semimatch import checkpoint as ckpt
from semimatch.algorithms import SSLAlgorithm
from semimatch.config import Config, ConfigError
from semimatch.data import DATASETS, DatasetInfo, Split, SSLDataset, to_model_input
from semimatch.data.splits import save_split
from semimatch.errors import TrainingError
from semimatch.evaluation import evaluate_model, pad_rows
from semimatch.hardware import select_device
from semimatch.log import logger
from semimatch.metrics import JsonlWriter, median_of_last, read_jsonl
from semimatch.recipe import build_parts
from semimatch.resolve import check_runtime, load_data
from semimatch.state import TrainState

__all__ = ["Run", "RunDir", "RunStart", "load_run", "make_summary"]

Resume = bool | Literal["auto"]

#: Fields that may differ between two launches of one run: speed, display and disk use, never
#: what it computes.  A resume takes them from the command (``--resume RUN --threads 1``);
#: ``--resume auto`` leaves them out when it compares the command with the run.
RUNTIME_FIELDS = (
    "threads", "progress", "num_workers", "tensorboard", "log_every", "keep_checkpoints",
    "best_model_only", "memory_check",
)  # fmt: skip
#: Not options of the method: never compared, never taken from a resume's command.
_BOOKKEEPING = ("auto", "preset")


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

    def write_text_model(self, info: DatasetInfo, net: nn.Module) -> None:
        """Text runs: the tokenizer and the encoder's config into ``hf/`` (``load_run``)."""
        from semimatch.data.text import tokenizer_named
        from semimatch.models.hf import save_for_reload

        save_for_reload(self.hf, tokenizer_named(info.tokenizer), net)

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
    path.write_text(json.dumps(dataclasses.asdict(info), indent=2) + "\n")


def load_dataset_info(path: Path) -> DatasetInfo:
    d = json.loads(path.read_text())
    return DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# --- How a run starts -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RunStart:
    """How a run starts, decided once by ``plan`` from ``fit``'s ``out``/``resume``/``overwrite``.

    * new: ``out`` is None or holds no run (``overwrite`` allows replacing one);
    * resume (``resume=True``): continue the run in ``out`` with its saved config; the command
      may change only ``RUNTIME_FIELDS`` and extend ``iterations`` (``extended_from``: the
      budget it had);
    * auto (``resume="auto"``, a restartable command: ``torchrun --max-restarts``, preemptible
      jobs): start the run if ``out`` holds none; if it holds this run (same config), continue
      it from its latest checkpoint, or start it again if it stopped before its first one.
    """

    run_dir: RunDir | None
    resume: Resume
    overwrite: bool
    extended_from: int | None = None

    @classmethod
    def plan(
        cls,
        out: str | os.PathLike | None,
        resume: Resume,
        overwrite: bool,
        cfg: Config | Mapping[str, Any] | None,
    ) -> tuple[RunStart, Config]:
        """Check the arguments before any work; return the plan and the config to train with.

        For ``resume=True`` that is the run's saved config with the command's changes: ``cfg``
        is None, a mapping of exactly the options given (the command line's flags), or a
        ``Config`` whose fields that differ from both the default and the saved value are the
        changes.  Changes of ``RUNTIME_FIELDS`` are taken, a larger ``iterations`` extends the
        run; any other is refused, before any work."""
        if resume not in (True, False, "auto"):
            raise ValueError(f"resume must be True, False or 'auto'; got {resume!r}")
        run_dir = RunDir(Path(out)) if out is not None else None
        if resume == "auto" and run_dir is None:
            raise ConfigError(
                "--resume auto needs --out RUN_DIR (in Python: out=), the run to start or "
                "continue; without it every run gets a new folder, so there is nothing to resume"
            )
        if resume and run_dir is None:
            raise TrainingError("resume=True needs out=, the run directory to continue")
        if resume == "auto" and overwrite:
            raise ConfigError(
                "--resume auto (resume='auto') continues the run in --out; drop --overwrite"
            )
        if isinstance(cfg, Mapping):
            cfg, given = Config().replace(**cfg), set(cfg)
        else:
            given = None
        if resume is not True:
            return cls(run_dir, resume, overwrite), cfg if cfg is not None else Config()
        assert run_dir is not None
        if overwrite:
            raise ConfigError(
                f"--resume {run_dir.path} continues that run in place; drop --overwrite"
            )
        if not run_dir.config.exists():
            raise TrainingError(
                f"--resume {run_dir.path}: no run there (no config.json); start it without --resume"
            )
        saved = Config.load(run_dir.config)
        changes = _changes(saved, cfg, given)
        refused = sorted(k for k in changes if k not in (*RUNTIME_FIELDS, "iterations"))
        if refused:
            raise ConfigError(
                f"--resume {run_dir.path} continues that run with its saved config; drop "
                f"{refused}: they change what it computes (a resume takes only "
                f"{list(RUNTIME_FIELDS)} and a larger iterations=N)"
            )
        found = ckpt.list_checkpoints(run_dir.checkpoints)
        if not found:  # say so before any work
            raise run_dir.no_checkpoint()
        check_runtime(saved.replace(**changes))  # resolve checked the rest when the run began
        extended = None
        if "iterations" in changes:
            extended = saved.iterations
            _check_extension(run_dir, saved.iterations, changes["iterations"], found[-1][0])
        return cls(run_dir, resume, overwrite, extended), saved.replace(**changes)

    def saved_config(self, cfg: Config) -> Config:
        """``resume="auto"`` continuing the run: its saved config, with this command's
        ``RUNTIME_FIELDS`` (``open`` found the rest equal)."""
        assert self.run_dir is not None
        saved = Config.load(self.run_dir.config)
        return saved.replace(**{k: getattr(cfg, k) for k in RUNTIME_FIELDS})

    @property
    def resuming(self) -> bool:
        """Whether the config is the saved one (``resume=True``), known before ``open``."""
        return self.resume is True

    def open(self, cfg: Config) -> Path | None:
        """Rank 0: refuse to mix two runs in one directory, clear it for ``overwrite``; return
        the checkpoint to resume from (None: start afresh).  ``fit`` calls it once the config is
        resolved and everything that can refuse it has run, so a mistake costs nothing.
        """
        if self.run_dir is None:
            return None
        run_dir, resume, overwrite = self.run_dir, self.resume, self.overwrite
        has_run = run_dir.holds_run()
        if resume == "auto":
            if not has_run:
                return None
            _check_same_run(run_dir, cfg)
            latest = run_dir.latest_checkpoint()
            if latest is not None:
                run_dir.remove_stale_temporaries()  # the run is ours to continue from here on
                return latest
            resume, overwrite = False, True  # stopped before its first checkpoint: start again
        if resume:
            latest = run_dir.latest_checkpoint()
            if latest is None:
                raise run_dir.no_checkpoint()
            run_dir.remove_stale_temporaries()  # the run is ours to continue from here on
            return latest
        if has_run:
            if not overwrite:
                raise TrainingError(
                    f"{run_dir.path} already holds a run; pass --resume to continue it or "
                    "--overwrite to replace it (or choose another --out)"
                )
            run_dir.clear()
        return None


def _changes(saved: Config, cfg: Config | None, given: set[str] | None) -> dict[str, Any]:
    """The options a resume's command changes: those ``given`` (a mapping's keys) or, for a
    ``Config``, its non-default fields, where they differ from the saved run's."""
    if cfg is None:
        return {}
    default = Config()
    names = given if given is not None else set(cfg.to_dict())
    return {
        k: getattr(cfg, k)
        for k in sorted(names)
        if k not in _BOOKKEEPING
        and getattr(cfg, k) != getattr(saved, k)
        and (given is not None or getattr(cfg, k) != getattr(default, k))
    }


def _check_extension(run_dir: RunDir, planned: int, iterations: int, done: int) -> None:
    """A resume may extend a run's budget (finished or not), never shorten it."""
    if iterations < planned:
        raise ConfigError(
            f"iterations={iterations}: {run_dir.path} is planned for {planned} iterations "
            f"({done} done); a resume extends a run's budget but never shortens it (its "
            "learning-rate schedule is planned for the budget) - stop it early with Ctrl-C "
            "(best.pt keeps the best evaluated model), or start a new run"
        )


def _check_same_run(run_dir: RunDir, cfg: Config) -> None:
    """``resume="auto"`` continues a run only if this command would start the same run."""
    out = run_dir.path
    try:
        saved = Config.load(run_dir.config).to_dict()
    except (OSError, ConfigError) as e:
        raise TrainingError(
            f"--resume auto: {out} holds a run whose config.json cannot be read "
            f"({e}); choose another --out or pass --overwrite"
        ) from None
    now = cfg.to_dict()
    skip = (*RUNTIME_FIELDS, "auto")
    diff = [k for k in now if k not in skip and saved.get(k) != now[k]]
    if "iterations" in diff:  # the budget first: a larger one is an extension, not a new run
        diff.remove("iterations")
        diff.insert(0, "iterations")
    if diff:
        k = diff[0]
        more = saved.get("iterations", 0) < now["iterations"]
        extend = f" (to extend it: `semimatch train --resume {out} --iterations {now[k]}`)"
        raise TrainingError(
            f"--resume auto: {out} holds a different run ({len(diff)} option(s) differ, e.g. "
            f"{k}: saved {saved.get(k)!r}, this command {now[k]!r}); choose another --out, pass "
            f"--overwrite to replace it, or `--resume {out}` to continue it with its saved config"
            + (extend if k == "iterations" and more else "")
        )


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
    layout = RunDir(Path(run_dir))
    if not layout.config.exists():
        raise FileNotFoundError(f"{run_dir} is not a semimatch run directory (no config.json)")
    cfg = Config.load(layout.config)
    history = read_jsonl(layout.metrics) if layout.metrics.exists() else []
    evals = [r for r in history if r.get("kind") == "eval"]
    selected_on = evals[-1].get("selected_on", "test") if evals else None
    if checkpoint == "auto":  # best.pt only when the test set did not choose it
        checkpoint = "best" if selected_on == "val" else "last"
    if checkpoint not in ("best", "last"):
        selected_on = None  # a path: whatever chose it is not known here
    if checkpoint == "best":
        path = layout.checkpoints / ckpt.BEST
        if not path.exists():
            path, selected_on = layout.latest_checkpoint(), "last"  # no best.pt yet
    elif checkpoint == "last":
        path = layout.latest_checkpoint()
    else:
        path = Path(checkpoint)
    if path is None or not Path(path).exists():
        raise FileNotFoundError(
            f"{run_dir} has no checkpoint yet ({checkpoint!r}); "
            "checkpoints are written at every evaluation"
        )
    dev = select_device(device)
    state = ckpt.load(path, map_location=dev)
    if data is not None:
        info = data.info
    elif layout.dataset.exists():  # no need to load the images to predict
        info = load_dataset_info(layout.dataset)
    else:
        try:
            data = load_data(cfg)
        except (FileNotFoundError, ValueError) as e:
            raise FileNotFoundError(
                f"cannot reload dataset {cfg.dataset!r} for {run_dir} ({e}); pass data="
            ) from None
        info = data.info
    if model is None and str(cfg.backbone).startswith("custom:"):
        raise ValueError(
            f"{run_dir} was trained with your own backbone ({cfg.backbone}); "
            "pass model= a fresh instance of it"
        )
    build_cfg = cfg
    if layout.hf.is_dir():  # a text run: its own tokenizer and encoder config, not the source's
        info = dataclasses.replace(info, tokenizer=str(layout.hf))
        if str(cfg.backbone).startswith("hf:") and (layout.hf / "config.json").exists():
            build_cfg = cfg.replace(backbone=f"hf:{layout.hf}", pretrained=False)
    # A run trained with a custom weighting reloads without it: prediction does not need it.
    same_algorithm = state.get("algorithm_name", cfg.algorithm) == cfg.algorithm
    parts = build_parts(
        build_cfg,
        info,
        dev,
        model=model,
        training=False,
        with_algorithm=same_algorithm,
        num_unlabeled=state.get("num_unlabeled"),
    )
    try:
        parts.net.load_state_dict(state["model"])
        if parts.ema is not None and state.get("ema"):
            parts.ema.load_state_dict(state["ema"])
        if parts.algorithm is not None and state.get("algorithm"):
            parts.algorithm.load_state_dict(state["algorithm"])
    except (RuntimeError, KeyError) as e:
        raise ckpt.CheckpointError(
            f"checkpoint {path} does not match {run_dir}/config.json ({str(e).splitlines()[0]})"
        ) from None
    ema = parts.ema.module.eval() if parts.ema is not None and state.get("ema") else None
    summary = json.loads(layout.summary.read_text()) if layout.summary.exists() else {}
    run = Run(
        cfg, parts.net.eval(), ema, parts.algorithm, data, layout.path, history, summary, dev, info
    )
    run.checkpoint = Path(path)
    run.selected_on = "last" if checkpoint == "last" else selected_on
    return run
