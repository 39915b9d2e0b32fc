"""Draw docs/images/lambda.png: the sample weighting function lambda(p) of FixMatch, SoftMatch
(its truncated Gaussian and the linear/quadratic ablation shapes), computed by the
library's own weighting modules.

    python docs/make_lambda_figure.py        # rewrites docs/images/lambda.png

SoftMatch's statistics are set to an illustrative state (mean 0.85, std 0.10 of the batch
confidence, n_sigma = 2, USB's default), the kind of state a run reaches after a few hundred
iterations; the README's demo logs its real values in its report.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from semimatch.methods.fixmatch import FixedThreshold  # noqa: E402
from semimatch.methods.softmatch import SoftMatchWeighting  # noqa: E402

C = 10
OUT = Path(__file__).parent / "images" / "lambda.png"


def probs_with_max(q: torch.Tensor) -> torch.Tensor:
    """Rows of C-class probabilities whose maximum is q (the rest spread evenly)."""
    rest = ((1 - q) / (C - 1)).unsqueeze(1).expand(-1, C - 1)
    return torch.cat([q.unsqueeze(1), rest], dim=1)


def main() -> None:
    q = torch.linspace(1 / C, 1.0, 901)
    p = probs_with_max(q)
    curves = {"FixMatch: a step at τ = 0.95": FixedThreshold(tau=0.95)(p)}
    for shape, style in (("gaussian", "-"), ("linear", ":"), ("quadratic", "--")):
        w = SoftMatchWeighting(C, n_sigma=2.0, shape=shape)
        w.mean.fill_(0.85)
        w.var.fill_(0.10**2)
        name = "SoftMatch: truncated Gaussian" if shape == "gaussian" else f"SoftMatch, {shape}"
        curves[name] = (w(p), style)

    fig, ax = plt.subplots(figsize=(6.4, 3.4), dpi=150)
    for name, value in curves.items():
        w, style = value if isinstance(value, tuple) else (value, "-")
        ax.plot(q.numpy(), w.numpy(), style, label=name, linewidth=2 if style == "-" else 1.4)
    ax.axvline(0.85, color="grey", linewidth=0.8, linestyle="-.")
    ax.annotate(
        "SoftMatch's mean μ_t", (0.85, 0.5), xytext=(0.58, 0.55), arrowprops={"arrowstyle": "->"}
    )
    ax.set_xlabel("confidence max p of the weak view")
    ax.set_ylabel("weight λ(p)")
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(-0.03, 1.05)
    ax.set_title("Pseudo-labelling as a sample weighting function λ(p)")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT)
    print(OUT)


if __name__ == "__main__":
    main()
