"""The training loop: ``fit(config) -> Run``.  Read it top to bottom.

Three front doors (CLI, ``semimatch.train``, the scikit-learn estimator) call ``fit`` with their
arguments unchanged.  ``fit`` is three phases:

* set-up (``_set_up``): the data, then the run decided once (``start.RunStart.open``: the
  config, the split, the checkpoint to continue from), the model, algorithm and EMA built from
  it (``recipe.build_parts``), the run directory claimed, the restored state
  (``state.TrainState``), the records' sinks (``records.Recorder``) and the seeded stream of
  batches (``data.TrainStream``);
* the loop (``_train``): take batch k -> ``step.train_step`` -> backward -> optimiser -> EMA;
  every ``log_every`` iterations a train record, every ``eval_every`` an evaluation and a
  checkpoint;
* finish (``_finish``): the end record, ``summary.json``, the ``Run`` - or the exception that
  says why the run stopped and how to continue it.

Everything needed to continue is in the checkpoint; everything needed to audit the run
(resolved config, split indices, metrics) is in the run directory.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch import distributed as dist
from semimatch.config import Config, ConfigError
from semimatch.data import SampleSource, Split, SSLBatch, SSLDataset, TrainStream
from semimatch.data.ctaugment import CTAugment, probe_rates
from semimatch.data.sources import SubsetSource
from semimatch.distributed import DistEnv
from semimatch.errors import TrainingError, TrainingInterrupted
from semimatch.log import logger
from semimatch.methods.blocks import NonFiniteError
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.hardware import select_device
from semimatch.runs.records import Recorder, WriteFailed, eval_record, summary_line, train_record
from semimatch.runs.resolve import load_data, prepare_data
from semimatch.runs.run import Run, RunDir, make_summary
from semimatch.runs.start import Resume, RunStart
from semimatch.runs.state import TrainState
from semimatch.training.diagnostics import Diagnostics
from semimatch.training.memory import is_out_of_memory, preflight
from semimatch.training.recipe import (
    Parts,
    autocast,
    build_parts,
    lr_factor,
    make_optimizer,
    process_state_restored,
    seed_everything,
)
from semimatch.training.step import StepInfo, train_step
from semimatch.training.two_pass import check_forward_mode

__all__ = ["fit"]

#: A per-sample view callable ``(sample, rng) -> sample`` (``fit(weak_view=...)``).
View = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@process_state_restored()  # a ContextDecorator: fresh state saved on every call
def fit(
    cfg: Config | Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: Resume = False,
    overwrite: bool = False,
    data: SSLDataset | None = None,
    model: nn.Module | None = None,
    algorithm: SSLAlgorithm | None = None,
    weak_view: View | None = None,
    strong_view: View | None = None,
) -> Run:
    """Train according to ``cfg``; write the run directory ``out`` (if given); return a ``Run``.

    ``resume=True`` continues the run in ``out`` with its saved config: ``cfg`` (None, a
    ``Config`` or a mapping of the options given) may change only speed, display and disk use
    (``start.RUNTIME_FIELDS``) and extend ``iterations``; ``resume="auto"`` starts it or, if
    ``out`` already holds this run, continues it (a restartable command); ``overwrite`` replaces
    the run in ``out`` (``start.RunStart`` has the rules).  Under torchrun every process calls
    ``fit``; only rank 0 writes ``out``.

    ``data``, ``model`` and ``algorithm`` replace what the config would build (Python API);
    ``weak_view``/``strong_view`` are per-image callables ``(img_hwc_uint8, rng) -> img``
    replacing the PIL pipelines (they run in loader workers, so ``augment`` must be ``pil`` or
    ``auto``).  The config still drives the recipe.

    The process's global random generators, thread count and deterministic mode are as they
    were once ``fit`` returns (or fails).
    """
    start, cfg = RunStart.plan(out, resume, overwrite, cfg)
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be >= 1 (None = torch's default); got {cfg.threads}")
    env, device = dist.setup(str(select_device(cfg.device)))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)  # before the model draws its initial weights
    views = (weak_view, strong_view)
    training = _set_up(start, cfg, env, device, data, model, algorithm, *views)
    return _finish(training, _train(training))


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------
@dataclass
class _Training:
    """Everything the loop and the finish read: one object instead of a dozen arguments."""

    cfg: Config
    env: DistEnv
    device: torch.device
    data: SSLDataset
    split: Split
    run_dir: RunDir | None
    state: TrainState  # what a checkpoint saves: model, EMA, algorithm, optimiser, windows
    train_net: nn.Module  # the model as the step runs it (DDP and/or compiled)
    buffers_to_average: list[torch.Tensor]
    stream: TrainStream
    recorder: Recorder
    first: int  # the first iteration to run (0, or the resumed checkpoint's)
    val: SampleSource | None = None  # chooses best.pt when given (else the test set does)
    diagnostics: Diagnostics | None = None


def _set_up(
    start: RunStart,
    cfg: Config,
    env: DistEnv,
    device: torch.device,
    data: SSLDataset | None,
    model: nn.Module | None,
    algorithm: SSLAlgorithm | None,
    weak_view: View | None,
    strong_view: View | None,
) -> _Training:
    """Everything before the first iteration, built from the run ``start.open`` decides (its
    config, split and checkpoint).  What can refuse the run (resolution, split, model,
    algorithm, memory) runs before the run directory is touched (``Opened.claim``): a mistake
    must not cost the run that ``overwrite`` would replace."""
    given_data = data is not None
    # Texts come tokenized for the config's encoder.
    data = load_data(cfg) if data is None else prepare_data(cfg, data)
    custom_views = weak_view is not None or strong_view is not None
    # Rank 0 alone reads the run directory and decides; every rank builds the run it decided
    # (or stops with the same error).
    run = dist.on_main(
        start.open, cfg, data, device, custom_views=custom_views, given_data=given_data
    )
    cfg, split = run.cfg, run.split
    pool = _pool_size(data, split)
    labels = data.train.labels[split.labeled]  # ReMixMatch's p(y): the labeled class counts
    counts = np.bincount(labels[labels >= 0], minlength=data.info.num_classes)
    parts = build_parts(
        cfg, data.info, device, model=model, algorithm=algorithm, num_unlabeled=pool,
        labeled_counts=counts,
        num_labeled=len(split.labeled),
    )  # fmt: skip
    assert parts.algorithm is not None
    check_forward_mode(cfg, parts.algorithm.uses_strong, given_data)
    if run.run_dir is not None and env.is_main:
        _warn_unsaved_state(parts.algorithm)
    train_net, buffers_to_average = _wrap_for_training(parts.net, cfg, device)
    state = _fresh_state(parts, cfg, device)
    # Will the first step fit in memory?  Refused here, before the directory is touched.
    dist.on_main(
        preflight, cfg, data, parts.net, parts.algorithm, state.optimizer, parts.ema, device,
        env.world_size, run.resumed,
    )  # fmt: skip
    # Rank 0 writes no checkpoint before the first collective of training, so the other ranks
    # read the one to resume from undisturbed.
    dist.on_main(run.claim, data.info, parts.net)
    stream = _stream(data, split, cfg, parts.algorithm, device, env, weak_view, strong_view)
    if isinstance(stream.views.strong, CTAugment):  # state: checkpointed, resumed
        state.augmenter = stream.views.strong
    first, recorder = run.restore(state, device, env)
    if parts.algorithm.num_unlabeled not in (None, stream.num_unlabeled):
        raise TrainingError(
            f"the algorithm's per-sample memory is for {parts.algorithm.num_unlabeled} unlabeled "
            f"samples but the unlabeled pool has {stream.num_unlabeled}; build it with "
            f"num_unlabeled={stream.num_unlabeled}"
        )
    val = data.val if data.val is not None else SubsetSource(data.train, split.val)
    return _Training(
        cfg, env, device, data, split, run.run_dir, state, train_net, buffers_to_average, stream,
        recorder, first, val if len(val) else None, Diagnostics(stream, cfg, device),
    )  # fmt: skip


def _fresh_state(parts: Parts, cfg: Config, device: torch.device) -> TrainState:
    """The model, EMA and algorithm built, with their optimiser, schedule and loss scaler."""
    assert parts.algorithm is not None
    optimizer = make_optimizer(parts.net, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    return TrainState(
        parts.net, parts.ema, parts.algorithm, parts.algorithm_name, optimizer, scheduler, scaler
    )


def _stream(
    data: SSLDataset,
    split: Split,
    cfg: Config,
    algorithm: SSLAlgorithm,
    device: torch.device,
    env: DistEnv,
    weak_view: View | None,
    strong_view: View | None,
) -> TrainStream:
    """The seeded stream of batches: this rank's share of batch k, for every k."""
    return TrainStream(
        data,
        split,
        batch_size=cfg.batch_size,
        uratio=cfg.uratio,
        seed=cfg.seed,
        use_unlabeled=algorithm.uses_unlabeled,
        use_strong=algorithm.needs.strong_views,
        strong_as_weak=algorithm.needs.strong_as_weak,
        strong_variant=cfg.strong_augment,
        augment=cfg.augment,
        device=device,
        augment_device=cfg.augment_device,
        rank=env.rank,
        world_size=env.world_size,
        num_workers=cfg.num_workers,
        weak_view=weak_view,
        strong_view=strong_view,
    )


def _pool_size(data: SSLDataset, split: Split) -> int:
    """The unlabeled pool's size: ``split.unlabeled`` then the extra unlabeled data."""
    extra = data.extra_unlabeled
    return len(split.unlabeled) + (len(extra) if extra is not None else 0)


def _warn_unsaved_state(algorithm: SSLAlgorithm) -> None:
    for part in ("weighting", "alignment"):
        obj = getattr(algorithm, part, None)
        # Attributes on a plain object may be statistics that a resume would silently lose.
        if not isinstance(obj, nn.Module) and bool(getattr(obj, "__dict__", None)):
            logger.warning(
                f"the {part} {type(obj).__name__} is not an nn.Module: checkpoints cannot "
                "save its attributes, so a resumed run starts them afresh; keep its state in "
                "buffers of an nn.Module to resume exactly"
            )


def _wrap_for_training(
    net: nn.Module, cfg: Config, device: torch.device
) -> tuple[nn.Module, list[torch.Tensor]]:
    """The model as the step runs it, and the buffers to average over the ranks after a step.

    Floating-point buffers (BatchNorm running statistics) are averaged over the ranks after
    every step, so all ranks hold the same model for the EMA, evaluation and checkpoints.
    DDP's own buffer sync (rank 0's values, broadcast at the start of each forward) would leave
    them different after the step, so it is turned off.
    """
    train_net, buffers = net, []
    if dist.is_distributed():
        ddp_ids = [device.index] if device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(
            net, device_ids=ddp_ids, **_no_forward_buffer_sync()
        )
        buffers = [b for b in net.buffers() if b.is_floating_point()]
    if cfg.compile:
        train_net = torch.compile(train_net)
    return train_net, buffers


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
@dataclass
class _Outcome:
    """How the loop ended: finished, interrupted (with the signal) or failed (with the cause)."""

    status: str = "finished"
    message: str = ""
    completed: int = 0  # iterations done, counting those before a resume
    failure: Exception | None = None  # a failed write that ended the run
    signum: int = int(signal.SIGINT)
    wall: float = 0.0  # seconds of training, counting those before a resume


class _Clock:
    """Wall-clock marks of the loop: training time excludes evaluation and checkpoints."""

    def __init__(self, before: float) -> None:
        self.window = self.eval = time.perf_counter()  # starts of the log and eval windows
        self.start = self.window - before  # ``before``: seconds trained before a resume

    def wall(self) -> float:
        return time.perf_counter() - self.start


def _train(t: _Training) -> _Outcome:
    """Iterations ``t.first .. cfg.iterations - 1``; a stop request ends it between two
    iterations (with a checkpoint), a failure ends it where it happened."""
    cfg, state = t.cfg, t.state
    outcome = _Outcome(completed=t.first)
    clock = _Clock(state.history["wall_time"])
    interrupted = _InterruptFlag()
    clean_stop = False  # the loop stopped between two iterations: the state is consistent
    k = t.first
    t.train_net.train()
    try:
        with interrupted:
            batches = t.stream.batches(t.first, cfg.iterations)
            for k in range(t.first, cfg.iterations):
                _step(t, next(batches), k)
                done = k + 1
                t.recorder.step()
                if done % cfg.log_every == 0 or done == cfg.iterations:
                    _log(t, done, clock)
                if done % cfg.eval_every == 0 or done == cfg.iterations:
                    _evaluate(t, done, clock)
                outcome.completed = done
                if _stop_requested(t, interrupted, done):
                    clean_stop = True
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        state.history["wall_time"] = clock.wall()  # saved with the checkpoint
        outcome.status, outcome.signum = "interrupted", interrupted.signum
        stopped_by = f"interrupted ({signal.Signals(interrupted.signum).name})"
        where = f"{stopped_by} after iteration {outcome.completed}"
        outcome.message = (
            f"{where}; resume with `semimatch train --resume {t.run_dir.path}`"
            if t.run_dir
            else where
        )
        if clean_stop and outcome.completed > t.first:
            # Stopped between iterations: every piece of state is consistent, save it.
            try:
                _save_checkpoint(t, outcome.completed)
            except ckpt.CheckpointError as e:
                outcome.status, outcome.failure = "failed", e
                outcome.message = f"{where}, then {e}"
    except (ckpt.CheckpointError, WriteFailed) as e:
        # Iteration k trained and was logged; only its record or checkpoint failed to write.
        outcome.status, outcome.failure, outcome.message = "failed", e, str(e)
        outcome.completed = k + 1
    except _NonFinite as e:
        outcome.status, outcome.message = "failed", _non_finite_message(t, e.iteration)
    except RuntimeError as e:  # the allocator's "can't allocate memory" (CPU) or OOM (CUDA)
        if not is_out_of_memory(e):
            raise
        # Nothing of iteration k was saved; the last checkpoint on disk is intact.
        outcome.status, outcome.message = "failed", _out_of_memory_message(t, k)
    finally:
        t.recorder.close_progress()
    outcome.wall = clock.wall()
    return outcome


def _strong_views(batch: SSLBatch, fmt: torch.memory_format) -> tuple[torch.Tensor, ...] | None:
    """The batch's strong views (as many as the method needs) in the step's memory format."""
    if batch.u_strong is None:
        return None
    return tuple(v.contiguous(memory_format=fmt) for v in (batch.u_strong, *batch.u_strong_more))


def _teacher(state: TrainState) -> nn.Module | None:
    """The weight EMA's model, for a method that needs a teacher (Mean Teacher)."""
    needs = state.algorithm.needs
    wanted = needs.teacher or getattr(needs, "teacher_model", False)
    return state.ema.module if state.ema is not None and wanted else None


def _step(t: _Training, batch: SSLBatch, k: int) -> None:
    """One iteration: the loss of batch ``k`` (``step.train_step``), its gradient, the
    optimiser, the schedule, the BatchNorm buffers across ranks, the EMA, the metric windows."""
    cfg, device, state = t.cfg, t.device, t.state
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if state.augmenter is not None:  # CTAugment learns its rates from a probe of the batch
        probe_rates(state.augmenter, state.ema, state.net, batch, cfg.seed, k, t.env.rank)
    try:
        with autocast(cfg, device):
            loss, sums = train_step(
                t.train_net,
                state.algorithm,
                batch.x_lb.contiguous(memory_format=fmt),
                batch.y_lb,
                batch.u_weak.contiguous(memory_format=fmt),
                _strong_views(batch, fmt),
                batch.u_true,
                forward_mode=cfg.forward_mode,
                info=StepInfo(
                    k, batch.u_idx, cfg.iterations, _teacher(state), cfg.seed, batch.lb_idx
                ),
            )
    except NonFiniteError:  # the weak-view probabilities are already NaN
        raise _NonFinite(k) from None
    # Reading the loss is free on CPU but a sync on GPUs, where the log records catch a NaN.
    # any_rank: a NaN on one rank stops every rank at this iteration.
    if device.type == "cpu" and dist.any_rank(not math.isfinite(loss.item()), device):
        raise _NonFinite(k)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.clip_grad_norm:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.net.parameters(), cfg.clip_grad_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    dist.average_(t.buffers_to_average)
    if state.ema is not None:
        state.ema.update(state.net, k)
    state.log_window.add(sums)
    state.eval_window.add(sums)


def _log(t: _Training, done: int, clock: _Clock) -> None:
    """The train record of the iterations since the last one."""
    now = time.perf_counter()
    record = train_record(t.state, done, (now - clock.window) / t.state.log_window.steps)
    if not math.isfinite(record["loss"]):
        raise _NonFinite(done - 1)
    clock.window = now
    t.state.log_window.reset()
    t.recorder.train(record)


def _evaluate(t: _Training, done: int, clock: _Clock) -> None:
    """Evaluate, record and checkpoint (``best.pt`` too when the validation error - without a
    validation set, the test error - is the best yet: ``records.eval_record``)."""
    state = t.state
    now = time.perf_counter()
    state.history["wall_time"] = now - clock.start
    record = eval_record(state, t.data, t.cfg, t.device, done, t.val, t.diagnostics)
    window = record["window"]
    window["sec_per_iter"] = (now - clock.eval) / max(state.eval_window.steps, 1)
    state.history["last_window"] = {k: window.get(k) for k in ("quantity", "quality", "pl_acc")}
    state.eval_window.reset()
    t.recorder.eval(record)
    _save_checkpoint(t, done, best=record["best"])
    # Evaluation and checkpointing are not training time.
    clock.eval = time.perf_counter()
    clock.window += clock.eval - now


def _stop_requested(t: _Training, interrupted: _InterruptFlag, done: int) -> bool:
    """Whether to stop after iteration ``done`` (a signal arrived, on any rank)."""
    if t.env.world_size == 1:
        return interrupted.requested
    # Every rank must stop after the same iteration, or the others wait in the next
    # collective.  The ranks agree where the loop syncs anyway: every step on CPU, every
    # log_every steps on accelerators.
    syncs = t.device.type == "cpu" or done % t.cfg.log_every == 0
    return syncs and dist.any_rank(interrupted.requested, t.device)


def _save_checkpoint(t: _Training, iteration: int, best: bool = False) -> None:
    """Rank 0 writes the checkpoint; a failed write names the cause and how to continue."""
    if t.run_dir is None or not t.env.is_main:
        return
    try:
        t.state.save(t.run_dir.checkpoints, iteration, t.cfg, t.device, best)
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(
            f"{e}. Training stopped at iteration {iteration}; {t.run_dir.resume_hint()}"
        ) from e


def _last_checkpoint(t: _Training) -> str:
    if t.run_dir is None:
        return "the run has no folder (out), so no checkpoint was saved"
    if (path := t.run_dir.latest_checkpoint()) is None:
        return "no checkpoint was saved yet"
    return f"the last good checkpoint is {path}"


def _out_of_memory_message(t: _Training, iteration: int) -> str:
    cfg = t.cfg
    if t.first > 0:  # a resumed run keeps its batch: its checkpoints are the work to keep
        fix = f"free memory and resume it (`semimatch train --resume {t.run_dir.path}`)"
    else:
        fix = f"lower --batch-size (now {cfg.batch_size}) or --uratio (now {cfg.uratio})"
    return (
        f"out of memory at iteration {iteration + 1} (the step's activations, optimiser and "
        f"batch did not fit); {_last_checkpoint(t)}. {fix}"
    )


def _non_finite_message(t: _Training, iteration: int) -> str:
    last = _last_checkpoint(t)
    return (
        f"the loss became NaN/inf at iteration {iteration + 1}; {last}. Lower --lr, set "
        "--clip-grad-norm, or use --precision fp32"
    )


# ----------------------------------------------------------------------------------------------
# Finish
# ----------------------------------------------------------------------------------------------
def _finish(t: _Training, outcome: _Outcome) -> Run:
    """Close the records; return the ``Run``, or raise what stopped it (with how to go on)."""
    state, recorder = t.state, t.recorder
    summary = make_summary(
        t.cfg,
        state,
        t.data.info,
        num_labels=len(t.split.labeled),
        status=outcome.status,
        done=outcome.completed,
        wall=outcome.wall,
    )
    try:
        recorder.end(outcome.completed, outcome.status, outcome.message)
        if outcome.status == "finished" and t.run_dir is not None and t.env.is_main:
            t.run_dir.write_summary(summary)
    finally:
        recorder.close()
    if isinstance(outcome.failure, ckpt.CheckpointError):
        raise ckpt.CheckpointError(outcome.message) from outcome.failure
    if outcome.status == "failed":
        raise TrainingError(outcome.message) from outcome.failure
    if outcome.status == "interrupted":
        # Not logged here: the message travels in the exception, whose owner shows it once
        # (the CLI prints it; a Python caller sees it in the traceback or catches it).
        raise TrainingInterrupted(outcome.message if t.env.is_main else "", outcome.signum)
    recorder.say(summary_line(summary))
    ema = state.ema.module if state.ema is not None else None
    return Run(
        t.cfg,
        state.net,
        ema,
        state.algorithm,
        t.data,
        t.run_dir.path if t.run_dir else None,
        recorder.history(),
        summary,
        t.device,
    )


# ----------------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------------
class _NonFinite(Exception):
    def __init__(self, iteration: int) -> None:
        super().__init__(iteration)
        self.iteration = iteration


class _InterruptFlag:
    """Turn the first SIGINT/SIGTERM into a flag checked after the current iteration, so Ctrl-C
    (or a scheduler's SIGTERM) checkpoints at a clean point; a second Ctrl-C interrupts at once.
    ``signum`` is the last signal received (SIGINT for a KeyboardInterrupt from elsewhere)."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _InterruptFlag:
        with contextlib.suppress(ValueError):  # not in the main thread: leave handlers alone
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _no_forward_buffer_sync() -> dict[str, bool]:
    """The DDP keyword that turns off its per-forward buffer broadcast (renamed in torch 2.13)."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}
