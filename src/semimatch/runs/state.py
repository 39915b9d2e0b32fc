"""``TrainState``: everything a checkpoint saves and a resume restores, in one place.

Saving and restoring are written side by side so they cannot drift apart; a resumed run
continues bit-exactly (the batches are a function of (seed, iteration), everything else is here).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semimatch.config import Config
from semimatch.errors import TrainingError
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.runs import checkpoint as ckpt
from semimatch.training.ema import ModelEMA
from semimatch.training.metrics import WindowSums

__all__ = ["SavedCheckpoint", "TrainState", "read_checkpoint"]


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a checkpoint saves (``TrainState.restore`` sets them back)."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


@dataclass(frozen=True)
class SavedCheckpoint:
    """A checkpoint as read back (``read_checkpoint``): the keys ``TrainState.state_dict``
    writes are read here, for a resume (``TrainState.restore``) and a reload (``run.load_run``)."""

    path: Path
    state: dict[str, Any]

    def algorithm_name(self, default: str) -> str:
        """The method that trained (``custom:<weighting>`` for your own); checkpoints of older
        versions do not say, and ``default`` (the config's algorithm) stands in."""
        return self.state.get("algorithm_name", default)

    @property
    def num_unlabeled(self) -> int | None:
        """The unlabeled pool of the method's per-sample memory (FlexMatch's), else None."""
        return self.state.get("num_unlabeled")

    def load_into(self, parts: dict[str, Any], against: str, hint: str = "") -> None:
        """Load each part (model, EMA, algorithm, optimiser...; None: skipped) from the saved
        state of its name.  A checkpoint that does not fit is a ``CheckpointError`` naming the
        file and what it should match (``against``), not torch's page of missing keys."""
        try:
            for key, part in parts.items():
                if part is not None:
                    part.load_state_dict(self.state[key])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ckpt.CheckpointError(
                f"checkpoint {self.path} does not match {against} ({str(e).splitlines()[0]})"
                + (f"; {hint}" if hint else "")
            ) from None


def read_checkpoint(
    path: str | os.PathLike, device: torch.device | str, *, to_resume: bool = False
) -> SavedCheckpoint:
    """Load checkpoint ``path`` safely (``checkpoint.load``: a ``CheckpointError`` says what is
    wrong with the file).  ``to_resume``: a file of weights only (``best.pt`` slimmed by
    retention) is refused, with where to resume from instead."""
    saved = ckpt.load(path, map_location=device)
    if to_resume and saved.get("model_only"):
        raise ckpt.CheckpointError(
            f"{path} holds only the weights of a checkpoint (model, EMA), not the optimiser "
            "and random state a resume continues from; resume from the run's last ckpt-*.pt"
        )
    return SavedCheckpoint(Path(path), saved)


@dataclass
class TrainState:
    """Everything a checkpoint saves and a resume restores, in one place for both directions."""

    net: nn.Module
    ema: ModelEMA | None
    algorithm: SSLAlgorithm
    algorithm_name: str
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: dict[str, Any] = field(
        default_factory=lambda: {"errors": [], "best_error": None, "wall_time": 0.0}
    )
    log_window: WindowSums = field(default_factory=WindowSums)
    eval_window: WindowSums = field(default_factory=WindowSums)
    #: A strong view with state (CTAugment's rates), saved under "augment"; None: none.
    augmenter: nn.Module | None = None

    def state_dict(self, iteration: int, cfg: Config, device: torch.device) -> dict[str, Any]:
        """The checkpoint after ``iteration`` iterations (tensors and primitives only)."""
        algorithm = self.algorithm
        return {
            "iteration": iteration,
            "config": json.dumps(cfg.to_dict()),
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "algorithm": algorithm.state_dict() if isinstance(algorithm, nn.Module) else {},
            "algorithm_name": self.algorithm_name,
            # The unlabeled pool size of per-sample state (FlexMatch's memory), else None.
            "num_unlabeled": getattr(algorithm, "num_unlabeled", None),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "log_window": dict(self.log_window.state()),
            "eval_window": dict(self.eval_window.state()),
            "rng": _rng_state(device),
        } | ({"augment": self.augmenter.state_dict()} if self.augmenter is not None else {})

    def save(
        self, folder: Path, iteration: int, cfg: Config, device: torch.device, best: bool = False
    ) -> Path:
        """Write ``ckpt-<iteration>.pt`` atomically; with ``best``, point ``best.pt`` at it (a
        hard link: no second copy); keep the last ``cfg.keep_checkpoints`` (``ckpt.prune``
        keeps best.pt's file, its weights only with ``cfg.best_model_only``).  A failure
        raises ``CheckpointError``."""
        state = self.state_dict(iteration, cfg, device)
        path = ckpt.save_atomic(state, folder / ckpt.checkpoint_name(iteration))
        if best:  # before pruning: the best that is replaced needs no slimming
            ckpt.save_best(path, state, cfg.best_model_only)
        ckpt.prune(folder, cfg.keep_checkpoints, cfg.best_model_only)
        return path

    def restore(self, path: str | os.PathLike, cfg: Config, device: torch.device, rank: int) -> int:
        """Load the checkpoint ``path`` into this state; return the iteration to start from."""
        if rank != 0 and not Path(path).is_file():
            raise ckpt.CheckpointError(
                f"rank {rank} cannot see {path}, the checkpoint rank 0 resumes from; "
                "with several nodes, --out must be on a file system that all nodes share"
            )
        saved = read_checkpoint(path, device, to_resume=True)
        self._check_same_method(saved, cfg.algorithm)
        algorithm = self.algorithm if isinstance(self.algorithm, nn.Module) else None
        parts = {"model": self.net, "ema": self.ema, "algorithm": algorithm}
        parts.update(optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler)
        if self.augmenter is not None:
            parts["augment"] = self.augmenter
        saved.load_into(
            parts, "this run's model/config", "it was written by a different configuration"
        )
        state = saved.state
        self.history = state["history"]
        self.log_window.load_state(state["log_window"])
        self.eval_window.load_state(state["eval_window"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
        return int(state["iteration"])

    def _check_same_method(self, saved: SavedCheckpoint, default: str) -> None:
        """A resume continues the method (and the per-sample memory's pool) that trained."""
        saved_name = saved.algorithm_name(default)
        if saved_name != self.algorithm_name:
            weighting = saved_name.removeprefix("custom:")
            how = (
                f"pass the same one again (semimatch.train(..., weighting=<{weighting}>, "
                "resume=True))"
                if weighting != saved_name
                else f"resume it with algorithm {saved_name!r}"
            )
            raise TrainingError(
                f"{saved.path} was trained with algorithm {saved_name!r}; this resume would "
                f"continue it with {self.algorithm_name!r}: {how}"
            )
        pool, saved_pool = getattr(self.algorithm, "num_unlabeled", None), saved.num_unlabeled
        if pool is not None and saved_pool is not None and pool != saved_pool:
            raise ckpt.CheckpointError(
                f"{saved.path} holds the per-sample memory of an unlabeled pool of {saved_pool} "
                f"samples but this run's pool has {pool}: resume with the same data, split and "
                "extra unlabeled data, or start a new run"
            )

    def replan(self, cfg: Config) -> tuple[float, float]:
        """After ``restore``: the learning rate from here on follows ``cfg``'s schedule (an
        extended budget, ``cfg.iterations``) at the restored iteration, as if the run had been
        planned for it; return the learning rate (first group) before and after."""
        scheduler = self.scheduler
        before = self.optimizer.param_groups[0]["lr"]
        k = scheduler.last_epoch
        factors = [f(k) for f in scheduler.lr_lambdas]  # type: ignore[attr-defined]
        for group, base, factor in zip(self.optimizer.param_groups, scheduler.base_lrs, factors):
            group["lr"] = base * factor
        scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # get_last_lr()
        return before, self.optimizer.param_groups[0]["lr"]
