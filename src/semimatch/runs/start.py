"""How a run starts, decided once before anything is built (``RunStart``, ``Opened``).

``RunStart.plan`` checks ``fit``'s ``out``/``resume``/``overwrite`` - the arguments every front
door hands it unchanged - before any work; for a resume it takes the saved config, which chooses
the device and the data.  ``RunStart.open`` then returns the one value the set-up builds from,
``Opened``: the config to train with (resolved for a new run, the saved one for a resumed run),
the split and the checkpoint to continue from (None: a fresh start).  It reads the run
directory and changes nothing in it: ``Opened.claim`` does, once everything that can refuse the
run has run, so a mistake never costs the run that ``overwrite`` would replace.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from semimatch.config import Config, ConfigError
from semimatch.data import DatasetInfo, Split, SSLDataset
from semimatch.data.modalities import modality
from semimatch.data.splits import load_split, split_summary
from semimatch.distributed import DistEnv
from semimatch.errors import TrainingError
from semimatch.log import logger
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.records import Recorder
from semimatch.runs.resolve import check_runtime, given_data_config, make_split, resolve
from semimatch.runs.run import RunDir
from semimatch.runs.state import TrainState
from semimatch.runs.validation import say_what_is_measured

__all__ = ["RUNTIME_FIELDS", "Opened", "Resume", "RunStart"]

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


@dataclass(frozen=True)
class Opened:
    """A run as ``RunStart.open`` decided it: fresh (``checkpoint`` None) or resumed.

    The set-up builds from it and asks no other question about how the run started.
    """

    cfg: Config  # resolved (a new run), or the saved config with the command's changes
    split: Split  # drawn (a new run), or the saved split.json
    run_dir: RunDir | None = None
    checkpoint: Path | None = None  # the checkpoint a resumed run continues from
    extended_from: int | None = None  # a resume that extends the budget: the one it had
    replaces: bool = False  # a new run replacing the run in run_dir (overwrite; auto, see open)

    @property
    def resumed(self) -> bool:
        return self.checkpoint is not None

    def claim(self, info: DatasetInfo, net: nn.Module) -> None:
        """Rank 0, once everything that can refuse the run has run: make the run directory this
        run's - a resumed run's temporaries left by a kill go; a new run clears the run it
        replaces and writes its start files (config, split, dataset, a text run's tokenizer)."""
        run_dir = self.run_dir
        if run_dir is None:
            return
        if self.resumed:
            run_dir.remove_stale_temporaries()  # the run is ours to continue from here on
            return
        if self.replaces:
            run_dir.clear()
        run_dir.write_start(self.cfg, self.split, info)
        # what reloading the model needs besides the checkpoint (text: the tokenizer)
        modality(info).save_for_reload(run_dir.hf, info, net)

    def restore(
        self, state: TrainState, device: torch.device, env: DistEnv
    ) -> tuple[int, Recorder]:
        """Load the checkpoint into ``state`` (a fresh run: nothing to load) and open the run's
        records; return the first iteration to run and the recorder.  An extended budget's
        schedule is planned for it from the restored iteration (``TrainState.replan``)."""
        first, lrs = 0, (0.0, 0.0)
        if self.checkpoint is not None:
            first = state.restore(self.checkpoint, self.cfg, device, env.rank)
            if self.extended_from is not None:
                lrs = state.replan(self.cfg)
        recorder = Recorder(self.run_dir, self.cfg, first, self.resumed, env.is_main)
        if self.checkpoint is not None:
            recorder.resumed(first, self.extended_from, lrs)
        return first, recorder


@dataclass(frozen=True)
class RunStart:
    """How a run starts, from ``fit``'s ``out``/``resume``/``overwrite``: ``plan``, then ``open``.

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
        """Check the arguments before any work; return the plan and the config that chooses
        the device and the data (``open`` decides the config to train with).

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

    def open(
        self,
        cfg: Config,
        data: SSLDataset,
        device: torch.device,
        *,
        custom_views: bool = False,
        given_data: bool = False,
    ) -> Opened:
        """Decide the run (on rank 0, ``fit`` shares it): its config, its split and the
        checkpoint it continues from, before anything is built.  ``cfg``: ``plan``'s config.

        A new run's config is resolved (``resolve``; ``given_data``: ``fit(data=)``, whose
        loader options are refused) and its split drawn; a resumed run has both saved.
        Nothing in the run directory changes here (``Opened.claim``)."""
        if self.resume is True:  # the saved config, resolved when the run began
            assert self.run_dir is not None
            say_what_is_measured(cfg, data, None)
            return self._resumed(cfg, data, self.run_dir.latest_checkpoint(), None)
        if given_data:  # record what trained, refuse the loader's options
            cfg = given_data_config(cfg, data)
        cfg = resolve(cfg, data, device, custom_views=custom_views)
        split = make_split(cfg, data)
        say_what_is_measured(cfg, data, None if given_data else split)
        run_dir = self.run_dir
        has_run = run_dir is not None and run_dir.holds_run()
        if has_run and self.resume == "auto":
            assert run_dir is not None
            _check_same_run(run_dir, cfg)
            latest = run_dir.latest_checkpoint()
            if latest is not None:  # this run: its saved config, this launch's runtime options
                saved = Config.load(run_dir.config)
                runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
                return self._resumed(saved.replace(**runtime), data, latest, split)
            # else it stopped before its first checkpoint: start it again
        elif has_run and not self.overwrite:
            raise TrainingError(
                f"{self.run_dir.path if self.run_dir else ''} already holds a run; pass "
                "--resume to continue it or --overwrite to replace it (or choose another --out)"
            )
        if len(split.val):
            logger.info(split_summary(split, data.train.labels, data.info.num_classes))
        return Opened(cfg, split, run_dir, replaces=has_run)

    def _resumed(
        self, cfg: Config, data: SSLDataset, latest: Path | None, drawn: Split | None
    ) -> Opened:
        """The run in ``run_dir``, continued from ``latest`` on its saved split (a run without
        split.json: the split its config draws, ``drawn`` if drawn already)."""
        run_dir = self.run_dir
        assert run_dir is not None
        if latest is None:
            raise run_dir.no_checkpoint()
        if run_dir.split.exists():
            split = load_split(run_dir.split)
        else:
            split = drawn if drawn is not None else make_split(cfg, data)
        return Opened(cfg, split, run_dir, latest, self.extended_from)


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
