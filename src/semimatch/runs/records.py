"""A run's records and where they go: ``metrics.jsonl``, TensorBoard, the progress bar, the console.

``train_record`` and ``eval_record`` make the two kinds of record (the log window's averages;
test accuracy with the live weighting state); a ``Recorder`` sends each record to every sink of
the run, on rank 0 only.  A run without a folder keeps its records in memory (``Run.metrics``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import torch

from semimatch.config import Config
from semimatch.data import SampleSource, SSLDataset
from semimatch.errors import TrainingError
from semimatch.log import logger
from semimatch.runs import checkpoint as ckpt
from semimatch.runs.run import RunDir
from semimatch.runs.state import TrainState
from semimatch.training.diagnostics import Diagnostics
from semimatch.training.evaluation import evaluate_model, lambda_curve
from semimatch.training.metrics import JsonlWriter, median_of_last, read_jsonl, summarize
from semimatch.training.step import CONF_BINS

__all__ = ["Recorder", "WriteFailed", "eval_record", "summary_line", "train_record"]


class WriteFailed(TrainingError):
    """The metrics log could not be written (the message says where, why and what next)."""


class Recorder:
    """Every sink of one run's records; all of them are rank 0's (other ranks record nothing)."""

    def __init__(
        self, run_dir: RunDir | None, cfg: Config, start: int, resumed: bool, is_main: bool
    ) -> None:
        self.run_dir, self.cfg, self.is_main = run_dir, cfg, is_main
        self.writer = JsonlWriter(run_dir.metrics) if (run_dir and is_main) else None
        if self.writer is not None and resumed:
            self.writer.truncate_after(start)  # records past the checkpoint are redone
        self.records: list[dict[str, Any]] = []  # Run.metrics of a run without a folder
        self.tb = _tensorboard(run_dir, cfg) if is_main else None
        self.bar = _progress(cfg, start, is_main)

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the log (``WriteFailed`` if the folder refuses it)."""
        if self.writer is not None:
            try:
                self.writer.write(record)
            except OSError as e:
                assert self.run_dir is not None
                raise WriteFailed(
                    f"{ckpt.describe_write_failure(self.writer.path, e)}. Training stopped at "
                    f"iteration {record['iteration']}; {self.run_dir.resume_hint()}"
                ) from e
        elif self.is_main:
            self.records.append(record)

    def resumed(self, first: int, extended_from: int | None, lrs: tuple[float, float]) -> None:
        """Say on stderr where a resumed run continues; for an extended budget (from
        ``extended_from``, the learning rate ``lrs`` = before, after), record it: config.json
        (``auto["iterations"]``), an ``extended`` record, and no summary.json (the run is no
        longer finished)."""
        cfg, planned = self.cfg, self.cfg.iterations
        path = self.run_dir.path if self.run_dir else None
        self.note(f"resuming from iteration {first} of {planned} ({path})")
        if extended_from is None:
            if first >= planned:
                self.note(
                    f"{path} has finished its {planned} iterations: nothing to train (to extend "
                    f"it: `semimatch train --resume {path} --iterations N`, N > {planned})"
                )
            return
        kept = sorted(k for k, why in cfg.auto.items() if why.startswith("budget of"))
        note = f"extended from {extended_from} to {planned} iterations at iteration {first}"
        self.note(
            f"{note}: the learning rate follows the schedule planned for {planned} from here "
            f"({lrs[0]:.6g} -> {lrs[1]:.6g}), as do the ramp-ups set as a share of the budget "
            "(--unsup-warmup, --in-warmup); the values derived from the budget keep those "
            f"in config.json ({', '.join(kept) or 'none'}), so the run differs from one "
            f"planned for {planned} from the start"
        )
        if self.run_dir is None or not self.is_main:
            return
        history = cfg.auto.get("iterations")
        cfg.auto["iterations"] = f"{history}; {note}" if history else note
        # The saved config with the new budget (this launch's runtime options stay its own).
        saved = Config.load(self.run_dir.config)
        self.run_dir.rewrite_config(saved.replace(iterations=planned, auto=dict(cfg.auto)))
        self.run_dir.summary.unlink(missing_ok=True)
        self.write(
            {
                "kind": "extended",
                "iteration": first,
                "time": time.time(),
                "from_iterations": extended_from,
                "to_iterations": planned,
                "lr_before": lrs[0],
                "lr_after": lrs[1],
                "kept": {k: getattr(cfg, k) for k in kept},
            }
        )

    def note(self, text: str) -> None:
        """A line on stderr (rank 0), above the progress bar: how the run starts."""
        if self.is_main:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
            sys.stderr.flush()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def train(self, record: dict[str, Any]) -> None:
        self.write(record)
        _tb_scalars(self.tb, "train", record, record["iteration"])
        if self.bar is not None:
            shown = ("sup_loss", "unsup_loss", "quantity", "quality")
            self.bar.set_postfix(
                {k: f"{record[k]:.3f}" for k in shown if record.get(k) is not None},
                refresh=False,
            )

    def eval(self, record: dict[str, Any]) -> None:
        self.write(record)
        _tb_scalars(self.tb, "eval", record, record["iteration"])
        self.say(_eval_line(record, self.cfg))

    def end(self, iteration: int, status: str, message: str) -> None:
        """The last record; when the run failed, the folder may be full or read-only, and the
        failure's own message matters more than this record."""
        end = {
            "kind": "end",
            "iteration": iteration,
            "time": time.time(),
            "status": status,
            "message": message,
        }
        try:
            self.write(end)
        except WriteFailed:
            if status != "failed":
                raise

    def say(self, text: str) -> None:
        if self.is_main:
            logger.info(text)

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_progress()
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def history(self) -> list[dict[str, Any]]:
        """Every record of the run, including what ran before a resume."""
        if self.writer is not None:
            return read_jsonl(self.writer.path)
        return self.records


def train_record(state: TrainState, done: int, sec_per_iter: float) -> dict[str, Any]:
    """The "train" record of metrics.jsonl: the log window's averages (one sync)."""
    s = summarize(state.log_window.reduce())
    algorithm = state.algorithm
    loss = (s["sup_loss"] or 0.0) + algorithm.lambda_u * (s["unsup_loss"] or 0.0)
    keys: tuple[str, ...] = (
        "sup_loss", "unsup_loss", "quantity", "quality", "pl_acc", "full_weight_frac"
    )  # fmt: skip
    if "extra_loss" in s:  # an extra loss term (FreeMatch's fairness loss), weighted
        loss += getattr(algorithm, "extra_loss_weight", 0.0) * (s["extra_loss"] or 0.0)
        keys = (*keys, "extra_loss")
    return {
        "kind": "train",
        "iteration": done,
        "time": time.time(),
        "lr": state.optimizer.param_groups[0]["lr"],
        "loss": loss,
        **{key: s[key] for key in keys},
        "sec_per_iter": sec_per_iter,
    }


def eval_record(
    state: TrainState,
    data: SSLDataset,
    cfg: Config,
    device: torch.device,
    done: int,
    val: SampleSource | None = None,
    diagnostics: Diagnostics | None = None,
) -> dict[str, Any]:
    """The "eval" record: test (and validation) accuracy of the evaluated model, whether its
    checkpoint is the best yet (``best``, chosen on ``val`` when given - the test error is then
    never read to choose it - else on the test error: ``selected_on``), the eval window's
    pseudo-label statistics, the weighting's state and its λ(p) curve, and the ``diagnostics``'
    checks (``semimatch.training.diagnostics``); updates ``state.history``."""
    net, ema, algorithm, history = state.net, state.ema, state.algorithm, state.history
    C = data.info.num_classes
    model = ema.module if (cfg.eval_model == "ema" and ema is not None) else net
    record: dict[str, Any] = {
        "kind": "eval",
        "iteration": done,
        "time": time.time(),
        "lr": state.optimizer.param_groups[0]["lr"],
        "model": "ema" if model is not net else "raw",
    }
    record.update(_test_fields(model, data, cfg, device, done, history))
    _choose_best(record, model, val, data, cfg, device, history)
    history["selected_on"] = record["selected_on"]
    if diagnostics is not None:  # after the errors: the swing compares the last two
        record.update(diagnostics.measure(model, history))
        n_sel = len(val) if val is not None else len(data.test) if data.test is not None else 0
        diagnostics.warn(record, history, done, n_sel)
    window = state.eval_window
    s = summarize(window.reduce()) if window.steps else {}
    s["sec_per_iter"] = None
    record["window"] = s
    record.update(
        algorithm.describe()
        if hasattr(algorithm, "describe")
        else {"weighting": {"type": "custom"}, "p_model": None}
    )
    record["lambda_curve"] = lambda_curve(algorithm, C, device)
    return record


def _test_fields(
    model: torch.nn.Module,
    data: SSLDataset,
    cfg: Config,
    device: torch.device,
    done: int,
    history: dict[str, Any],
) -> dict[str, Any]:
    """The test set's fields of the eval record (None without a test set); appends the error
    to ``history``."""
    if data.test is None:
        return dict(top1=None, error=None, best_error=None, median20_error=None)
    C = data.info.num_classes
    result = evaluate_model(model, data.test, C, device, cfg.eval_batch_size, cfg)
    history["errors"].append(result["error"])
    best = history["best_error"]
    history["best_error"] = result["error"] if best is None else min(best, result["error"])
    fields = dict(
        top1=result["top1"],
        error=result["error"],
        best_error=history["best_error"],
        median20_error=median_of_last(history["errors"], 20),
        per_class_acc=result["per_class_acc"],
    )
    if C <= 20 or done == cfg.iterations:
        fields["confusion"] = result["confusion"]
    return fields


def _choose_best(
    record: dict[str, Any],
    model: torch.nn.Module,
    val: SampleSource | None,
    data: SSLDataset,
    cfg: Config,
    device: torch.device,
    history: dict[str, Any],
) -> None:
    """Whether this checkpoint is the best yet (``record["best"]``) and what chose it
    (``selected_on``): the validation error when there is a validation set (the test error is
    then reported, never compared), else the test error (the papers' protocol), else the latest."""
    if val is None:
        record["best"] = record["error"] == history["best_error"]
        record["selected_on"] = "test" if data.test is not None else "latest"
        return
    vres = evaluate_model(model, val, data.info.num_classes, device, cfg.eval_batch_size, cfg)
    history.setdefault("val_errors", []).append(vres["error"])
    best_val = history.get("best_val_error")
    record["best"] = best_val is None or vres["error"] <= best_val  # ties: the later one
    if record["best"]:
        history["best_val_error"] = vres["error"]
        history["selected_test_error"] = record["error"]  # reported, never compared
    record.update(
        val_error=vres["error"],
        best_val_error=history["best_val_error"],
        selected_on="val",
    )


def summary_line(s: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    on = s.get("selected_on")
    if on == "val":
        lowest = s.get("lowest_test_error", s["best_error"])  # older summaries: best_error
        best = (
            f"best.pt chosen on validation: error {pct(s.get('selected_test_error'))}, "
            f"val {pct(s.get('best_val_error'))}; lowest test error {pct(lowest)}"
        )
    elif on == "test":
        best = f"best {pct(s['best_error'])}, chosen on the test set"
    else:
        best = f"best {pct(s['best_error'])}"
    return (
        f"done: {s['algorithm']} on {s['dataset']} | {s['iterations_done']} it | "
        f"error {pct(s['final_error'])} ({best}, median last 20 "
        f"{pct(s['median20_error'])}) | quantity "
        f"{'n/a' if s['final_quantity'] is None else format(s['final_quantity'], '.3f')} | "
        f"{s['sec_per_iter']:.3f} s/it"
    )


def _progress(cfg: Config, start: int, is_main: bool):
    if not (cfg.progress and is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=cfg.iterations, initial=start, desc=f"{cfg.algorithm}", unit="it", dynamic_ncols=True
    )


def _eval_line(record: dict[str, Any], cfg: Config) -> str:
    w = record.get("window") or {}
    parts = [f"[{record['iteration']:>{len(str(cfg.iterations))}}/{cfg.iterations}]"]
    if record.get("top1") is not None:
        parts.append(
            f"top1 {100 * record['top1']:.2f}% (best err {100 * record['best_error']:.2f}%)"
        )
    if record.get("val_error") is not None:
        parts.append(f"val err {100 * record['val_error']:.2f}%")
    for key in ("quantity", "quality"):
        if w.get(key) is not None:
            parts.append(f"{key} {w[key]:.3f}")
    return "  ".join(parts)


def _tensorboard(run_dir: RunDir | None, cfg: Config):  # noqa: ANN202 - optional package
    """A SummaryWriter on RUN_DIR/tb, or None (no folder, turned off, or auto and missing)."""
    if run_dir is None or cfg.tensorboard is False:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None  # auto on a light install (resolve refused an explicit True)
    return SummaryWriter(str(run_dir.tensorboard))


def _tb_scalars(tb: Any, prefix: str, record: dict[str, Any], step: int) -> None:
    if tb is None:
        return
    flat = dict(record)
    flat.update({f"window/{k}": v for k, v in (record.get("window") or {}).items()})
    for key, value in flat.items():
        if (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and key not in ("iteration", "time")
        ):
            tb.add_scalar(f"{prefix}/{key}", value, step)
    if prefix == "eval" and record.get("window", {}).get("conf_hist"):
        hist = record["window"]["conf_hist"]
        edges = np.linspace(0, 1, CONF_BINS + 1)
        centers = (edges[:-1] + edges[1:]) / 2
        values = np.repeat(centers, hist)
        if len(values):
            tb.add_histogram("eval/confidence", values, step)
