"""Why a run swings: three checks at every evaluation, logged and warned about once per run.

* ``lb_weak_acc`` / ``lb_strong_acc``: the evaluated model's accuracy on the weak and on the
  strong view of a fixed, seeded subset of the *labeled* samples (up to ``LABELED_PROBE``),
  made by the very views the training stream uses.  The model fits these labels, so a strong
  view that keeps the label should score close to the weak one; a large gap says the strong
  view destroys the class cue, and consistency training then teaches the model wrong classes.
* ``pl_flip``: the share of a fixed, seeded subset of the unlabeled pool (up to
  ``UNLABELED_PROBE``) whose pseudo-label - the argmax on the un-augmented sample, so that only
  the model changes between two evaluations, not a view's draw - changed class since the last
  evaluation.  A run whose pseudo-labels keep flipping late in training trains on moving
  targets.
* ``error_swing``: ``|error - previous error|`` of the set that chooses ``best.pt`` (validation
  if the run has one, else test).

The thresholds (``STRONG_KEEP``, ``FLIP_SHARE``, ``SWING``) and why they are where they are is in
their comments.  Under torchrun each rank measures a disjoint share of the subsets and the sums
(fixed-size tensors) are all-reduced, as ``evaluation.evaluate_model`` does; every rank then
holds the same numbers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from semimatch import distributed as dist
from semimatch.config import Config
from semimatch.data import TrainStream
from semimatch.data.modalities import modality
from semimatch.log import logger
from semimatch.methods.registry import methods
from semimatch.training.evaluation import pad_rows
from semimatch.training.recipe import autocast

__all__ = ["FLIP_SHARE", "LABELED_PROBE", "STRONG_KEEP", "SWING", "UNLABELED_PROBE", "Diagnostics"]

#: Labeled samples whose weak and strong views are scored at each evaluation.
LABELED_PROBE = 256
#: Unlabeled samples whose pseudo-labels are compared between evaluations.
UNLABELED_PROBE = 1024
#: Warn when the strong view keeps less than this share of the weak view's above-chance
#: accuracy on the labeled probe, ``strong - 1/C < STRONG_KEEP * (weak - 1/C)``, in the second
#: half of training and once the weak view is right on at least ``MIN_WEAK_ACC`` of them
#: (the model fits its labels; before, a 12-iteration digits run had 60% weak, 10% strong:
#: not yet invariant, not a destroyed label).  Measured on the digits demo
#: (RandAugment on 8x8 digits, a harsh but useful view): the strong view kept 61-83% of the
#: above-chance accuracy (65-85% right against 100% weak) over the whole run, with and without
#: training on it (FixMatch, SoftMatch; supervised); a view that replaces the class cue keeps
#: ~0% (chance), one that maps classes onto others goes below chance.  Half sits between.
STRONG_KEEP = 0.5
MIN_WEAK_ACC = 0.8
#: Warn when more than this share of the probed pseudo-labels changed class between two
#: evaluations in the second half of training (the model has fitted what it will; a stable
#: run's pseudo-labels have mostly settled, only samples on a class boundary still move).
#: Early flips are learning, not instability, and are not warned about.  Measured on digits
#: (300 and 200 iterations, the second half): 0.01-0.10 on the demo's runs, 0.12-0.16 with
#: batch 16 + 32; the unstable short-text runs these checks were made for swung by 7-23 points
#: of error, which takes at least that share of flips.
FLIP_SHARE = 0.2
#: Warn when the selection error moves by more than this between two evaluations in the second
#: half of training, and by more than ``SWING_SE`` binomial standard errors of an error on a set
#: of that size (a 40-sample validation set moves by 2.5 points per sample: noise, not a swing).
#: In those short-text runs supervised training moved by <= 3 points after the first
#: evaluations, the unstable SSL runs by 7-23.
SWING = 0.05
SWING_SE = 3.0


class Diagnostics:
    """The three checks of one run (module docstring), on its training stream's data and views.

    The probes are drawn once from ``cfg.seed`` (the same subsets on resume); the previous
    pseudo-labels, the warnings already given and the errors live in ``history`` (the checkpoint
    saves it), so a resumed run continues the comparisons and does not warn twice.
    """

    def __init__(self, stream: TrainStream, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        split, data = stream.split, stream.dataset
        #: The modality's advice for a strong view that changes the class too often.
        self.milder = modality(data.info).milder_strong_view
        self.chance = 1.0 / data.info.num_classes
        stack = modality(data.info).stack
        rng = np.random.default_rng([cfg.seed, 28])
        lb = split.labeled
        lb_probe = np.sort(rng.permutation(lb)[:LABELED_PROBE])
        self.lb_labels = torch.from_numpy(data.train.labels[lb_probe].copy())
        # The views are made once, of the whole probe on every rank (the draws are then those
        # of one process, whatever the world size); each rank scores its share, rows r, r+W, ...
        # The same draws at every evaluation: only the model changes between two of them.
        mine = np.arange(self.rank, len(lb_probe), self.world)
        self.lb_mine = torch.from_numpy(mine)
        # The strong view as training uses it: an algorithm without one (supervised) may leave
        # it unfitted (UDA's TF-IDF view learns from the unlabeled pool it does not read).
        self.uses_strong = stream.use_strong and stream.use_unlabeled
        # A threshold to raise only for the methods that have one (Pi-Model, MixMatch: none).
        spec = methods().get(cfg.algorithm)
        self.tau_hint = "a higher --tau, " if spec is not None and "tau" in spec.options else ""
        weak, strong = stream.probe_views(lb_probe, stream_id=2, strong=self.uses_strong)
        self.lb_weak = weak[mine]
        self.lb_strong = strong[mine] if strong is not None else None
        n_pool = stream.num_unlabeled if stream.use_unlabeled else 0
        u_probe = np.sort(rng.permutation(n_pool)[:UNLABELED_PROBE])
        self.n_u = len(u_probe)
        u_mine = u_probe[self.rank :: self.world]
        self.u_rows = torch.from_numpy(np.arange(self.rank, self.n_u, self.world))
        # The un-augmented samples, as evaluation stacks them (the pool: split.unlabeled, then
        # the extra unlabeled data).
        steps = stream._steps
        if modality(data.info).ragged:  # texts differ in length: a list, stacked padded
            samples = [steps._pool_sample(int(p)) for p in u_mine]
        else:
            samples = steps._pool_gather(u_mine)
        self.u_x = stack(samples, data.train.encoding) if len(u_mine) else None

    # -- measuring -----------------------------------------------------------------------------
    @torch.no_grad()
    def _argmax(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rows = self.cfg.eval_batch_size
        amp = autocast(self.cfg, self.device)
        out = []
        for i in range(0, len(x), rows):
            xb = x[i : i + rows]
            with amp:
                logits = model(pad_rows(xb.to(self.device), rows))[: len(xb)]
            out.append(logits.argmax(dim=1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=self.device)

    def measure(self, model: nn.Module, history: dict[str, Any]) -> dict[str, Any]:
        """The three checks for ``model`` now (``None`` where undefined); updates ``history``."""
        was_training = model.training
        model.eval()
        y = self.lb_labels[self.lb_mine].to(self.device)
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if len(y):
            sums[0] = (self._argmax(model, self.lb_weak) == y).sum()
            if self.lb_strong is not None:
                sums[1] = (self._argmax(model, self.lb_strong) == y).sum()
            sums[2] = len(y)
        # Pseudo-labels as a fixed-size sum: each rank writes label + 1 into its own rows.
        labels = torch.zeros(self.n_u, dtype=torch.float64, device=self.device)
        if self.u_x is not None:
            labels[self.u_rows.to(self.device)] = self._argmax(model, self.u_x).double() + 1
        sums, labels = dist.all_reduce_sums(sums, labels)
        model.train(was_training)
        n = sums[2].item()
        out: dict[str, Any] = {
            "lb_weak_acc": sums[0].item() / n if n else None,
            "lb_strong_acc": sums[1].item() / n if n and self.lb_strong is not None else None,
            "pl_flip": None,
            "error_swing": None,
        }
        now = [int(v) - 1 for v in labels.tolist()]
        prev = history.get("probe_pl")
        if prev is not None and len(prev) == len(now) and now:
            out["pl_flip"] = sum(a != b for a, b in zip(prev, now)) / len(now)
        history["probe_pl"] = now
        errors = history.get("val_errors") or history["errors"]
        if len(errors) >= 2 and errors[-1] is not None and errors[-2] is not None:
            out["error_swing"] = abs(errors[-1] - errors[-2])
        return out

    # -- warning -------------------------------------------------------------------------------
    def warn(self, diag: dict[str, Any], history: dict[str, Any], done: int, n_sel: int) -> None:
        """One line per kind of trouble, once per run (``history["warned"]``); ``n_sel``: the
        size of the set whose error swings."""
        warned: list[str] = history.setdefault("warned", [])
        late = done > self.cfg.iterations // 2
        # Flips and swings compare two evaluations: both must be late, or a short run's first
        # comparison (its fast early learning) would read as instability.
        both_late = done - self.cfg.eval_every > self.cfg.iterations / 2
        # Only a rise is trouble: a late drop of the error is a run still learning.
        errors = history.get("val_errors") or history.get("errors") or []
        rose = len(errors) >= 2 and None not in errors[-2:] and errors[-1] > errors[-2]
        for key, message in self._troubles(diag, late, both_late, rose, n_sel):
            if key not in warned:
                warned.append(key)
                if self.rank == 0:
                    logger.warning(message)

    def _troubles(
        self, d: dict[str, Any], late: bool, both_late: bool, rose: bool, n_sel: int
    ) -> list[tuple[str, str]]:
        found = []
        weak, strong = d["lb_weak_acc"], d["lb_strong_acc"]
        if (
            self.uses_strong
            and weak is not None
            and strong is not None
            and late
            and weak >= MIN_WEAK_ACC
            and strong - self.chance < STRONG_KEEP * (weak - self.chance)
        ):
            found.append(
                (
                    "strong_view",
                    f"the strong view may destroy the label: the model is right on {weak:.0%} "
                    f"of the weak views of labeled samples but {strong:.0%} of their strong "
                    f"views (lb_weak_acc/lb_strong_acc in metrics.jsonl); {self.milder}",
                )
            )
        flip = d["pl_flip"]
        if both_late and flip is not None and flip > FLIP_SHARE:
            found.append(
                (
                    "pl_flip",
                    f"{flip:.0%} of the unlabeled samples' pseudo-labels changed class since the "
                    "last evaluation, late in training (pl_flip in metrics.jsonl): the model "
                    f"trains on moving targets; try {self.tau_hint}a lower --lr or a longer "
                    "--warmup-iterations, or compare with --algorithm supervised",
                )
            )
        swing = d["error_swing"]
        if both_late and rose and swing is not None and n_sel > 0:
            errors_se = math.sqrt(0.25 / n_sel)  # the largest binomial standard error
            if swing > SWING and swing > SWING_SE * errors_se:
                found.append(
                    (
                        "swing",
                        f"the error rose by {swing:.1%} between two evaluations late in "
                        "training (error_swing in metrics.jsonl): prefer a checkpoint chosen "
                        "on a validation set (--val-size) over the last one"
                        + (
                            ", and see lb_strong_acc and pl_flip for why"
                            if self.uses_strong
                            else ""
                        ),
                    )
                )
        return found
