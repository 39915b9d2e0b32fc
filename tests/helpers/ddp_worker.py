"""Train tiny runs with the public ``semimatch.runs.engine.fit`` and dump per-step state (test
helper).

Launched by ``helpers.ddp.torchrun`` (tests/test_torchrun*.py) under torchrun (one copy per
rank), or imported and called in-process for the single-process reference.  The backbone is
wrapped in ``Recorder``, whose training forward first snapshots the state the previous step left
behind: parameters, buffers (BatchNorm running statistics) and the algorithm's running state
(SoftMatch mean/var, Uniform Alignment ``p_model``).  Nothing in the product code knows about
this file.

    PYTHONPATH=tests python tests/helpers/ddp_worker.py OUT CASE \
        [--fail-at K --fail-rank R] [--resume-auto]

writes ``OUT/<CASE>-rank<r>.pt``.  ``--fail-at`` raises in the forward of step K on rank R, but
only in torchrun's first attempt (``TORCHELASTIC_RESTART_COUNT=0``), to test what a failing
rank does to the job and what a restart does with ``resume="auto"``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from semimatch.config import Config
from semimatch.data import SSLDataset, load_dataset
from semimatch.distributed import get_rank
from semimatch.methods.consistency import SSLAlgorithm
from semimatch.methods.registry import build_algorithm
from semimatch.models import build_model
from semimatch.runs.engine import fit

# Global batch: 8 labeled + 2 x 16 unlabeled images per step, whatever the number of processes.
# stat_momentum 0.5 makes the SoftMatch statistics follow the batches closely (a sharp test).
BASE = dict(
    dataset="digits",
    num_labels=20,
    batch_size=8,
    uratio=2,
    seed=5,
    iterations=6,
    eval_every=3,
    log_every=3,
    algorithm="softmatch",
    stat_momentum=0.5,
    lr=0.1,
    augment="pil",
    num_workers=0,
    precision="fp32",
    deterministic=True,
    threads=1,
    tensorboard=False,
    progress=False,
)


#: ``CASE`` may name another algorithm after a colon (``nobn:dash``): these options replace
#: SoftMatch's (each makes that algorithm's state move within the six steps).
FAMILY = {
    "freematch": dict(algorithm="freematch", stat_momentum=0.5, lambda_e=0.5),
    "adamatch": dict(algorithm="adamatch", stat_momentum=0.5, tau=0.5),
    "flexmatch": dict(algorithm="flexmatch", stat_momentum=None, tau=0.5),
    "dash": dict(
        algorithm="dash", stat_momentum=None, dash_warmup=2, rho_period=1, dash_gamma=2.0,
        rho_min=0.2,
    ),
    # The classic baselines, unramped so their unlabeled term acts from the first step.
    "pimodel": dict(algorithm="pimodel", stat_momentum=None, unsup_warmup=0.0),
    "meanteacher": dict(
        algorithm="meanteacher", stat_momentum=None, unsup_warmup=0.0, ema_decay=0.9
    ),
    "vat": dict(algorithm="vat", stat_momentum=None, unsup_warmup=0.0),
    "mixmatch": dict(algorithm="mixmatch", stat_momentum=None, unsup_warmup=0.0),
    "comatch": dict(algorithm="comatch", stat_momentum=None, tau=0.5, queue_batch=1, da_len=2),
    "remixmatch": dict(
        algorithm="remixmatch", stat_momentum=None, unsup_warmup=0.0, strong_views=2, da_window=4
    ),
    # SimMatch's bank from the student (momentum 0.7) or from the EMA teacher's own forward.
    "simmatch": dict(
        algorithm="simmatch", stat_momentum=None, tau=0.5, bank_teacher="student",
        bank_momentum=0.7,
    ),
    "simmatch_ema": dict(algorithm="simmatch", stat_momentum=None, tau=0.5, ema_decay=0.9),
    # uratio 1: the B rotated rows are every weak row, on one process as on two.
    "crmatch": dict(algorithm="crmatch", stat_momentum=None, tau=0.5, uratio=1),
}  # fmt: skip


#: The ``text`` case: 4 classes, 8 labels; the text views are per-sample (augment="pil").
TEXT = dict(num_labels=8, optimizer="adamw", lr=1e-3, backbone="custom:Recorder")


def text_data(out: Path) -> SSLDataset:
    """``text``: 160 texts of 4 classes tokenized by the tiny BERT the test wrote to
    ``out/bert`` (no dropout, so one process on the global batch is the reference)."""
    from helpers.text_fixtures import text_corpus
    from semimatch.data import from_texts
    from semimatch.models.hf import load_tokenizer

    texts, names = text_corpus(160, seed=4)
    return from_texts(texts, names, tokenizer=load_tokenizer(str(out / "bert")), max_length=24)


def backbone(case: str, out: Path | None = None) -> nn.Module:
    """``bn``: the SmallCNN (per-process BatchNorm); ``nobn``: a small CNN without BatchNorm;
    ``text``: the tiny BERT of ``out/bert`` (LayerNorm only), without dropout."""
    torch.manual_seed(0)
    if case == "text":
        from semimatch.models.hf import build_hf

        return build_hf(str(out / "bert"), 4, dropout=0.0)
    if case == "bn":
        return build_model("cnn", 10, in_channels=1, image_size=(8, 8), width=8)
    if case == "nobn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.LeakyReLU(0.1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 10),
        )
    raise ValueError(f"case must be 'bn' or 'nobn'; got {case!r}")


class Recorder(nn.Module):
    """Wraps a backbone; the first training forward of each step records the state left by the
    previous step, and ``rows`` counts the images of all training forwards of a step (the
    default joint forward, or the two passes of ``forward_mode="two-pass"``).
    An optimiser step-post hook marks where a step ends."""

    def __init__(self, net: nn.Module, algorithm: SSLAlgorithm, fail_at: int | None) -> None:
        super().__init__()
        self.net = net
        self._algorithm = [algorithm]  # a list, so it is not a submodule of the model
        self.fail_at = fail_at
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.rows: list[int] = []
        self.new_step = True
        self.hook = register_optimizer_step_post_hook(self._end_step)

    def _end_step(self, *args: Any) -> None:
        self.new_step = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            if self.new_step:
                if self.fail_at is not None and len(self.snapshots) == self.fail_at:
                    raise RuntimeError(
                        f"injected failure at step {self.fail_at} on rank {get_rank()}"
                    )
                self.snapshots.append(state_of(self.net, self._algorithm[0]))
                self.rows.append(0)
                self.new_step = False
            self.rows[-1] += int(x.shape[0])
        return self.net(x)


def state_of(net: nn.Module, algorithm: SSLAlgorithm) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    state.update({f"algorithm.{k}": v.clone() for k, v in algorithm.state_dict().items()})
    return state


def run_case(
    case: str, out: Path, fail_at: int | None = None, resume_auto: bool = False
) -> dict[str, Any]:
    """Train ``case`` with ``fit`` (DDP under torchrun); return the recorded per-rank result."""
    net_case, _, algo = case.partition(":")
    text = net_case == "text"
    cfg = Config(**{**BASE, **FAMILY.get(algo, {}), **(TEXT if text else {})})
    # FlexMatch's memory: one entry per unlabeled sample (digits: the whole training set, the
    # labeled samples included); the engine refuses a memory of another size.
    pool = None if text else len(load_dataset("digits").train)
    algorithm = build_algorithm(
        cfg.algorithm, 4 if text else 10, num_unlabeled=pool, num_labeled=cfg.num_labels,
        **cfg.algorithm_options(),
    )  # fmt: skip
    recorder = Recorder(backbone(net_case, out), algorithm, fail_at)
    try:
        run = fit(
            cfg,
            out=out / case.replace(":", "-"),
            data=text_data(out) if text else None,
            model=recorder,
            algorithm=algorithm,
            resume="auto" if resume_auto else False,
        )
    finally:
        recorder.hook.remove()
    return {
        "snapshots": recorder.snapshots,
        "rows": recorder.rows,
        "final": state_of(recorder.net, algorithm),
        "ema": {k: v.clone() for k, v in run.ema_model.state_dict().items()},
        "history": run.history,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("cases", nargs="+")
    p.add_argument("--fail-at", type=int)
    p.add_argument("--fail-rank", type=int, default=1)
    p.add_argument("--resume-auto", action="store_true")
    args = p.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    fail_at = args.fail_at if (rank == args.fail_rank and first_attempt) else None
    for case in args.cases:
        result = run_case(case, args.out, fail_at, args.resume_auto)
        torch.save(result, args.out / f"{case.replace(':', '-')}-rank{rank}.pt")


if __name__ == "__main__":
    main()
