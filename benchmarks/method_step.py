"""Each method's step cost relative to FixMatch's, on the standard step, in one process.

The iteration the engine runs (``semimatch.training.step.train_step``, backward, SGD step, weight
EMA update) of WRN-28-2 on CIFAR-sized random images with pre-made weak/strong views (no data
loading: the methods differ in the step, not in the data), interleaved round-robin over the
methods so that a loaded machine slows every method alike; the median time per method and its
ratio to FixMatch's.  Mean Teacher's teacher is the EMA (forwarded in train mode).  A method
with heads on the features (SimMatch's projection) gets them before the EMA copies the model;
SimMatch's bank holds ``--num-labeled`` samples and runs with its default EMA-teacher bank.

    python benchmarks/method_step.py --batch 16 --uratio 2 --rounds 7 --threads 1
    python benchmarks/method_step.py --methods fixmatch,pimodel,meanteacher,vat  # B 64, mu 7
    python benchmarks/method_step.py --methods fixmatch,crmatch --batch 16 --uratio 2 --threads 1
    python benchmarks/method_step.py --methods fixmatch,remixmatch --strong-views 2 --uratio 1
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default="fixmatch,pimodel,meanteacher,vat")
    p.add_argument("--batch", type=int, default=64, help="labeled rows B")
    p.add_argument("--uratio", type=int, default=7, help="unlabeled rows per labeled row mu")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (one step per method)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backbone", default="wrn_28_2")
    p.add_argument("--strong-views", type=int, default=0, help="remixmatch's K (0: its default, 8)")
    p.add_argument("--num-labeled", type=int, default=250, help="labeled set (SimMatch's bank)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from semimatch.methods.heads import attach_heads, feature_layer, num_features
    from semimatch.methods.registry import build_algorithm
    from semimatch.models import InputNormalizer, build_model
    from semimatch.training.ema import ModelEMA
    from semimatch.training.step import StepInfo, train_step

    names = args.methods.split(",")
    options = {"remixmatch": {"strong_views": args.strong_views}} if args.strong_views else {}
    torch.manual_seed(0)
    base = InputNormalizer(build_model(args.backbone, 10), (0.5,) * 3, (0.25,) * 3)
    runs = {}
    for name in names:
        net = copy.deepcopy(base)
        algo = build_algorithm(name, 10, num_labeled=args.num_labeled, **options.get(name, {}))
        if algo.needs.features:  # the method's heads (CoMatch's and SimMatch's projections,
            width = num_features(feature_layer(net, 10))  # ReMixMatch's rotation), as build_parts
            attach_heads(net, algo.make_heads(width), 10)
        opt = torch.optim.SGD(net.parameters(), lr=0.03, momentum=0.9, nesterov=True)
        runs[name] = (net, ModelEMA(net, 0.999), algo, opt)
    n_lb, n_ulb = args.batch, args.batch * args.uratio
    x_lb = torch.randint(0, 256, (n_lb, 3, 32, 32), dtype=torch.uint8)
    y_lb = torch.randint(0, 10, (n_lb,))
    lb_idx = torch.randperm(max(args.num_labeled, n_lb))[:n_lb] % args.num_labeled
    u_weak = torch.randint(0, 256, (n_ulb, 3, 32, 32), dtype=torch.uint8)
    views = max(runs[name][2].needs.strong_views for name in names)
    u_strong = [torch.randint(0, 256, (n_ulb, 3, 32, 32), dtype=torch.uint8) for _ in range(views)]
    times: dict[str, list[float]] = {name: [] for name in names}
    total = 2**20
    for r in range(args.warmup + args.rounds):
        for name in names:
            net, ema, algo, opt = runs[name]
            k = algo.needs.strong_views
            strong = None if k == 0 else u_strong[0] if k == 1 else tuple(u_strong[:k])
            # An iteration inside the ramp-up, so the unlabeled term is computed in full.
            info = StepInfo(total // 2, iterations=total, teacher=ema.module, lb_idx=lb_idx)
            t = time.perf_counter()
            loss, _ = train_step(net, algo, x_lb, y_lb, u_weak, strong, info=info)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net, r)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t)
    ref = statistics.median(times[names[0]])
    print(
        f"{args.backbone}, B={n_lb} + mu*B={n_ulb}, fp32, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds; {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}"
    )
    print(f"{'method':<12} {'median s/it':>12} {'vs ' + names[0]:>14}  (min..max s)")
    for name in names:
        med = statistics.median(times[name])
        lo, hi = min(times[name]), max(times[name])
        print(f"{name:<12} {med:12.3f} {med / ref:13.2f}x  ({lo:.3f}..{hi:.3f})")


if __name__ == "__main__":
    main()
