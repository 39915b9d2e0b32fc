"""Sample weighting functions lambda(p) over the weak-view confidence (SoftMatch, section 3).

A weighting function is a small ``nn.Module`` with the protocol

    weighting.update(probs)      # update running statistics from a batch (N, C) of probabilities
    weights = weighting(probs)   # (N,) weights in [0, lambda_max]

Running state lives in registered buffers, so ``state_dict``, ``.to(device)``, checkpoints and
DDP need no special code.  Any object with this protocol can be passed to the training step
(see ``semimatch.algorithms``); ``describe()`` is optional and feeds the logs and reports.

Members of the family that need more than ``probs`` say so in their signature (keywords, so the
protocol call still type-checks) and fail loudly without it:

- ``FlexMatchThreshold.update(probs, indices)``: dataset indices of the unlabeled rows;
- ``AdaMatchThreshold.update(probs, probs_lb=...)``: the weak labeled batch's probabilities;
- ``UDAWeighting.target(probs)``, ``DashThreshold.target(probs)``: soft targets for the loss;
- ``freematch_fairness_loss`` / ``FreeMatchThreshold.fairness_loss``: an extra loss term;
- ``DashThreshold.set_rho_init(loss)``: once, after the supervised warm-up.

Modules: ``base`` (checks, ``sharpen``), ``softmatch`` (SoftMatch and its ablation shapes),
``thresholds`` (FixMatch, FlexMatch, FreeMatch, AdaMatch, Dash), ``uda``.
"""

from semimatch.weighting.base import (
    NonFiniteError,
    check_lambda_max,
    check_momentum,
    check_num_classes,
    check_probs,
    check_tau,
    sharpen,
)
from semimatch.weighting.softmatch import SHAPES, SoftMatchWeighting
from semimatch.weighting.thresholds import (
    AdaMatchThreshold,
    DashThreshold,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    freematch_fairness_loss,
)
from semimatch.weighting.uda import UDAWeighting, tsa_threshold

__all__ = [
    "FixedThreshold",
    "SoftMatchWeighting",
    "SHAPES",
    "FlexMatchThreshold",
    "FreeMatchThreshold",
    "freematch_fairness_loss",
    "AdaMatchThreshold",
    "DashThreshold",
    "UDAWeighting",
    "sharpen",
    "tsa_threshold",
    "NonFiniteError",
    "check_probs",
    "check_momentum",
    "check_num_classes",
    "check_tau",
    "check_lambda_max",
]
