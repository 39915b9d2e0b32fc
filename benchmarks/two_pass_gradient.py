"""How far the two-pass forward's gradient is from the joint forward's (the papers' gradient).

The two-pass forward (``semimatch.training.two_pass``) gives the joint forward's values exactly,
but its backward replaces the weak unlabeled rows' path through the BatchNorm statistics by a scaled
copy of the weak *labeled* rows' path.  This script measures the error of that estimate on a
FixMatch-style loss (cross-entropy on the labeled rows + confidence-weighted cross-entropy on
the strong rows), in float64 so that nothing but the estimate differs, for the data cases the
estimate's assumption (labeled and unlabeled weak rows alike) holds or breaks:

    same        labeled, weak and strong rows from one distribution
    copies      the labeled rows are copies of 10 images (the 40-label regime)
    shifted     the labeled inputs are shifted by one standard deviation
    small-B     same distribution, 4 labeled (stand-in) rows: B = 16 over 4 processes

For each case it reports the relative L2 error ||g - g_joint|| / ||g_joint|| and the cosine of
the whole-model gradient, for the two-pass forward and for dropping the weak rows' path
(``stand_in=None``), median over seeds.  Usage::

    python benchmarks/two_pass_gradient.py [--seeds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics

import torch
import torch.nn.functional as F

from semimatch.models.wrn import WideResNet
from semimatch.training.two_pass import two_pass_forward

CASES = ("same", "copies", "shifted", "small-B")


def make_batch(case: str, seed: int, B: int, mu: int, size: int) -> tuple[torch.Tensor, ...]:
    """(x_lb, y_lb, u_weak, u_strong) in float64 for one case."""
    g = torch.Generator().manual_seed(seed)
    if case == "small-B":
        B = 4  # a labeled batch of 16 over 4 processes: 4 stand-in rows per process
    x_lb = torch.randn(B, 3, size, size, generator=g, dtype=torch.float64)
    if case == "copies":
        base = torch.randn(10, 3, size, size, generator=g, dtype=torch.float64)
        x_lb = base[torch.randint(0, 10, (B,), generator=g)]
    if case == "shifted":
        x_lb = x_lb + 1.0
    u_weak = torch.randn(mu * B, 3, size, size, generator=g, dtype=torch.float64)
    u_strong = u_weak + 0.5 * torch.randn(u_weak.shape, generator=g, dtype=torch.float64)
    y_lb = torch.randint(0, 10, (B,), generator=g)
    return x_lb, y_lb, u_weak, u_strong


def gradient(model, x_lb, y_lb, u_weak, u_strong, mode: str) -> torch.Tensor:
    """The whole-model gradient of a FixMatch-style loss (tau 0.5 so some rows are kept)."""
    model = copy.deepcopy(model)
    x = torch.cat([x_lb, u_weak, u_strong])
    n_lb, n_u = x_lb.shape[0], u_weak.shape[0]
    if mode == "joint":
        logits = model(x)
    else:
        stand_in = slice(0, n_lb) if mode == "two-pass" else None
        logits = two_pass_forward(model, x, slice(n_lb, n_lb + n_u), stand_in)
    probs = logits[n_lb : n_lb + n_u].detach().softmax(dim=1)
    conf, pseudo = probs.max(dim=1)
    mask = (conf >= conf.median()).double()  # half the rows pass, as a mid-training step
    unsup = (mask * F.cross_entropy(logits[n_lb + n_u :], pseudo, reduction="none")).mean()
    loss = F.cross_entropy(logits[:n_lb], y_lb) + unsup
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def measure(case: str, seed: int, B: int, mu: int, size: int) -> dict[str, float]:
    torch.manual_seed(seed)
    model = WideResNet(10, widen_factor=1, blocks_per_group=1).double().train()
    batch = make_batch(case, seed, B, mu, size)
    g_joint = gradient(model, *batch, "joint")
    out = {}
    for mode in ("two-pass", "drop"):
        g = gradient(model, *batch, mode)
        out[f"{mode}_rel_l2"] = float((g - g_joint).norm() / g_joint.norm())
        out[f"{mode}_cosine"] = float(F.cosine_similarity(g, g_joint, dim=0))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=16, help="labeled rows B (mu = 7)")
    p.add_argument("--size", type=int, default=16, help="image side in pixels")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    results = {}
    print(f"WRN-10-1, float64, B={args.batch}, mu=7, {args.size}px, median of {args.seeds} seeds")
    print(f"{'case':<9} {'two-pass rel L2':>16} {'cosine':>7} {'drop rel L2':>12} {'cosine':>7}")
    for case in CASES:
        runs = [measure(case, s, args.batch, 7, args.size) for s in range(args.seeds)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        errors = [r["two-pass_rel_l2"] for r in runs]
        results[case] = med | {"two-pass_rel_l2_range": [min(errors), max(errors)]}
        print(
            f"{case:<9} {med['two-pass_rel_l2']:>16.3f} {med['two-pass_cosine']:>7.3f} "
            f"{med['drop_rel_l2']:>12.3f} {med['drop_cosine']:>7.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
