"""The forward-mode checks that need the built algorithm (``recipe.build_parts`` path, via
``resolve.check_forward_mode``): where the two-pass forward is refused or warned about."""

from __future__ import annotations

from semimatch import distributed as dist
from semimatch.config import Config, ConfigError
from semimatch.log import logger

__all__ = ["check_forward_mode"]


def check_forward_mode(cfg: Config, uses_strong: bool, given_data: bool) -> None:
    """The forward-mode checks that need the built algorithm (``recipe.build_parts`` calls it).

    Only a strong-view student has a weak no-grad half to split off (``step.train_step``), so
    ``forward_mode='two-pass'`` matters only then.
    """
    if not (cfg.forward_mode == "two-pass" and uses_strong):
        return
    ws = dist.get_world_size()
    if cfg.sync_bn and ws > 1:
        raise ConfigError(
            "sync_bn with forward_mode='two-pass': the two-pass forward keeps BatchNorm "
            "statistics per process; pass --forward-mode joint with --sync-bn"
        )
    if cfg.compile:
        raise ConfigError(
            "compile with forward_mode='two-pass': the two-pass forward swaps BatchNorm "
            "behaviour between its passes, which a compiled graph would not see; pass "
            "--forward-mode joint with --compile"
        )
    _check_two_pass_assumption(cfg, given_data, ws)


def _check_two_pass_assumption(cfg: Config, given_data: bool, ws: int) -> None:
    """Refuse or warn (once, here) where the two-pass forward's gradient estimate is poor.

    Its backward estimates the weak unlabeled rows' path through the BatchNorm statistics from
    the weak labeled rows (semimatch.two_pass), which assumes the two are alike.  Measured
    against the joint gradient (benchmarks/two_pass_gradient.py, BENCHMARKS.md 1b): ~12%
    relative L2 error when they are, 23% with 4 labeled rows per process, 60% when the labeled
    inputs are shifted - worse than dropping the path.  A split that makes them differ by
    construction is refused; data whose relation semimatch cannot check gets a warning.
    """
    if cfg.lt_gamma is not None and cfg.lt_reverse:
        raise ConfigError(
            "forward_mode='two-pass' with lt_reverse: the labeled and unlabeled class "
            "distributions are reversed by construction, so the weak labeled rows are a poor "
            "stand-in for the unlabeled rows' BatchNorm gradient (measured 40-60% error when "
            "they differ); use forward_mode='joint' (the default, exact)"
        )
    reasons = []
    if cfg.unlabeled_dir:
        reasons.append("the unlabeled images come from their own folder (unlabeled_dir)")
    if cfg.svhn_extra:
        reasons.append("the unlabeled set includes SVHN's easier 'extra' images")
    if given_data:
        reasons.append(
            "the data was passed in, so semimatch cannot check that its labeled and "
            "unlabeled rows come from one distribution"
        )
    per_process = cfg.batch_size // ws
    if per_process < 16:
        reasons.append(
            f"only {per_process} labeled rows per process stand in for the weak rows "
            f"(measured 23% gradient error with 4)"
        )
    if reasons:
        logger.warning(
            "forward_mode='two-pass' estimates the weak unlabeled rows' BatchNorm gradient from "
            "the weak labeled rows, assuming the two are alike; here "
            + "; ".join(reasons)
            + ". Its gradient error grows when they differ (60% measured for a one-sigma input "
            "shift): prefer forward_mode='joint' (the default, exact)"
        )
