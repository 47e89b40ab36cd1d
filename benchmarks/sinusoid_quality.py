"""Sinusoid regression, MAML's protocol: query error after 0, 1, 5 and 10 inner steps.

Amplitude in [0.1, 5], phase in [0, π], x in [−5, 5], 10-shot support and
query, the `mlp` (1-40-40-1). Trains with :func:`hvi.fit` and scores held-out
tasks with :func:`hvi.predict`; writes the numbers, the configuration, the
training time, the command and the date to a JSON file::

    python benchmarks/sinusoid_quality.py --steps 5000 --out docs/results/sinusoid.json
    python benchmarks/sinusoid_quality.py --update gradient --lr-inner 0.01 --out /tmp/gradient.json
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import hvi
import hvi.data
import hvi.models
from provenance import write_result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5000, help="SVI steps (default 5000)")
    p.add_argument("--update", choices=("natural", "gradient"), default="natural", help="inner update")
    p.add_argument("--lr-inner", type=float, default=0.1, help="inner α (default 0.1)")
    p.add_argument("--inner-steps", type=int, default=5, help="inner steps when training (default 5)")
    p.add_argument("--curvature-every", type=int, default=1,
                   help="natural update: measure the curvature every n-th inner step (default 1)")
    p.add_argument("--curvature", choices=("pair", "one_sided"), default="pair",
                   help="natural update: InnerConfig(curvature=...), antithetic pairs or one-sided points (default pair)")
    p.add_argument("--noise", type=float, default=0.3, help="initial likelihood sd (default 0.3)")
    p.add_argument("--fixed-noise", action="store_true", help="keep the likelihood sd at --noise (not learned)")
    p.add_argument("--learn-lr", action="store_true", help="InnerConfig(learn_lr=True): one learned α per λ tensor")
    p.add_argument("--prior-scale", type=float, default=0.1, help="initial prior sd (default 0.1)")
    p.add_argument("--lr", type=float, default=3e-3, help="outer Adam lr (default 3e-3)")
    p.add_argument("--test-tasks", type=int, default=600, help="held-out tasks (default 600)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the network's init and of hvi.fit (default 0)")
    p.add_argument("--out", default="docs/results/sinusoid.json", help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    hvi.tune_allocator()
    source = hvi.data.get_source("sinusoid", k_shot=10, k_query=10)
    torch.manual_seed(args.seed)  # the network's init: torch seeds its default generator at random
    meta = hvi.MetaModel(
        hvi.models.get_model("mlp"),
        prior=hvi.get_prior("gaussian", init_scale=args.prior_scale),
        likelihood=hvi.Gaussian(noise=args.noise) if args.fixed_noise else hvi.Gaussian(noise="learned", init_scale=args.noise),
        inner=hvi.InnerConfig(steps=args.inner_steps, update=args.update, lr=args.lr_inner,
                              curvature_every=args.curvature_every, curvature=args.curvature,
                              learn_lr=args.learn_lr),
    )
    t0 = time.perf_counter()
    result = hvi.fit(meta, source, steps=args.steps, task_batch=8, lr=args.lr, seed=args.seed)
    seconds = time.perf_counter() - t0
    test = source.get_tasks("test", torch.arange(args.test_tasks))
    scores = {}
    for k in (0, 1, 5, 10):
        pred = hvi.predict(meta, test, inner_steps=k, num_samples=100)
        err = (pred.mean - test.query_y).pow(2).mean(dim=(1, 2))  # per-task MSE of the predictive mean
        mse, lo, hi = hvi.mean_ci(err)
        half = hi - mse
        other = {m: hvi.mean_ci(v)[0] for m, v in hvi.regression_metrics(pred, test.query_y).items()}
        scores[str(k)] = {"mse": mse, "mse_ci95": half, **other}
        print(f"{k:>2} inner steps: query MSE {mse:.3f} ± {half:.3f}  " + "  ".join(f"{m} {v:.3f}" for m, v in other.items()))
    write_result(args.out, "benchmarks/sinusoid_quality.py", argv, {
        "config": vars(args),
        "fit_seconds": round(seconds, 1),
        "skipped_steps": len(result.skipped),
        "by_inner_steps": scores,
    })
    print(f"trained {args.steps} steps in {seconds:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
