"""Sinusoid regression with the `mlp` (the classic meta-learning benchmark).

Each task is y = A sin(x - φ) with its own amplitude and phase; the model sees
10 points and predicts the curve with uncertainty.

    python examples/sinusoid_mlp.py --steps 3000
"""

from __future__ import annotations

import argparse

import torch

import hvi
import hvi.data
import hvi.models


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3000, help="SVI steps (default 3000)")
    p.add_argument("--task-batch", type=int, default=8, help="tasks per step (default 8)")
    p.add_argument("--inner-steps", type=int, default=5, help="adaptation steps K (default 5)")
    p.add_argument("--eval-tasks", type=int, default=200, help="held-out test tasks (default 200)")
    args = p.parse_args(argv)

    source = hvi.data.get_source("sinusoid", k_shot=10, k_query=10)
    torch.manual_seed(0)  # the network's init; hvi.fit seeds the rest
    meta = hvi.MetaModel(
        hvi.models.get_model("mlp"),
        hvi.get_prior("gaussian", init_scale=0.03),
        # The sinusoid is noiseless: a fixed σ (a learned one shrinks and over-adapts).
        hvi.Gaussian(noise=0.1),
        # Natural-gradient steps, each a learned fraction α of a full step per tensor (docs/inner_loop.md).
        inner=hvi.InnerConfig(steps=args.inner_steps, learn_lr=True),
    )
    result = hvi.fit(meta, source, steps=args.steps, task_batch=args.task_batch, lr=3e-3, progress=True)
    test = source.get_tasks("test", torch.arange(args.eval_tasks))
    out = {}
    for label, steps in (("adapted", None), ("prior (no adaptation)", 0)):
        pred = hvi.predict(meta, test, inner_steps=steps, num_samples=100)
        metrics = {k: hvi.mean_ci(v)[0] for k, v in hvi.regression_metrics(pred, test.query_y).items()}
        print(f"{label:>22}: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        out[label] = metrics["rmse"]
    print(f"final ELBO estimate {result.elbo[-1]:.4g}")
    return out


if __name__ == "__main__":
    main()
