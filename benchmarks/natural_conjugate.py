"""One inner step against the exact local posterior of a conjugate Normal–Normal model.

For prior scales τ from 1e-3 to 1e3 times the noise σ, one step of the
natural update (α = 1) and of plain gradient ascent (α = 0.01, 0.1) from
λ^(0) = θ, compared with p(φ_i | θ, D_i) (float64). Writes a JSON file with
the command and date beside the numbers::

    python benchmarks/natural_conjugate.py --out docs/results/natural_conjugate.json
"""

from __future__ import annotations

import argparse
import math
import sys

import pyro
import torch
import torch.nn.functional as F
from torch import nn

import hvi
from hvi.priors import GaussianPrior
from provenance import write_result

NOISE, N, M, D = 0.7, 6, 4, 3


class VectorNet(nn.Module):
    """f_φ(x) = φ: each task's effects observed with Gaussian noise."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.5, 0.5, D, dtype=torch.float64))

    def forward(self, x):
        return self.w.expand(x.shape[0], D)


def one_step_error(tau: float, update: str, lr: float) -> dict[str, float]:
    """Largest relative errors of q(φ_i)'s mean and sd after one step."""
    net = VectorNet()
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=tau, learn_scale=False), hvi.Gaussian(noise=NOISE),
                         inner=hvi.InnerConfig(steps=1, update=update, lr=lr))
    g = torch.Generator().manual_seed(0)
    y = 2.0 * torch.randn(M, N, D, generator=g, dtype=torch.float64) + torch.randn(M, 1, D, generator=g, dtype=torch.float64)
    x = torch.zeros(M, N, 1, dtype=torch.float64)
    batch = hvi.TaskBatch(x, y, x[:, :0], y[:, :0])
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        lam = {k: v.detach() for k, v in meta.guide(batch)["lambda"]["w"].items()}
    prec = 1 / tau**2 + N / NOISE**2
    mean = (net.w.detach() / tau**2 + y.sum(1) / NOISE**2) / prec
    sd = math.sqrt(1 / prec)
    with torch.no_grad():
        err_mean = float(((lam["loc"] - mean).abs() / mean.abs()).max())
        err_sd = float(((F.softplus(lam["rho"]) - sd).abs() / sd).max())
    return {"mean_rel_err": err_mean, "sd_rel_err": err_sd}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/results/natural_conjugate.json", help="JSON file to write")
    args = p.parse_args(argv)
    rows = []
    for ratio in (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3):
        row = {"prior_scale_over_noise": ratio, "natural_alpha_1": one_step_error(ratio * NOISE, "natural", 1.0)}
        for lr in (0.01, 0.1):
            row[f"gradient_alpha_{lr}"] = one_step_error(ratio * NOISE, "gradient", lr)
        rows.append(row)
    write_result(args.out, "benchmarks/natural_conjugate.py", argv, {
        "torch": torch.__version__,
        "setup": f"{M} tasks, {N} observations each, {D} effects, noise sd {NOISE}, float64, one inner step",
        "rows": rows,
    })
    for r in rows:
        print(r["prior_scale_over_noise"], {k: v for k, v in r.items() if k != "prior_scale_over_noise"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
