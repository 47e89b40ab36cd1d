"""Screening ABML settings against MAML on the sinusoid at a short budget (issue #15).

benchmarks/sinusoid_methods.py compares the methods at the full budget with one
setting each; this script trains several ABML settings (and MAML, the
reference) for a short budget on the same tasks and the same network
initialisation, and scores the query MSE of the predictive mean after 1, 5
and 10 inner steps on held-out tasks. Each variant's result is merged into
``--out`` as it finishes, so variants can be run one at a time::

    OMP_NUM_THREADS=1 python benchmarks/sinusoid_abml_screen.py --variants maml,nat_k10 \\
        --steps 2000 --test-tasks 200 --out docs/results/sinusoid_abml_screen.json

Every ABML variant keeps a real KL term (β > 0) in the inner and outer objective.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

import hvi
import hvi.data
import hvi.models
from provenance import write_result
from sinusoid_methods import build as build_method

MSE_NOISE = math.sqrt(0.5)  # a Gaussian with σ² = 1/2: log-likelihood = −squared error (MAML's loss)

#: variant → settings. Keys: update, lr (α, or a per-λ-key mapping), learn_lr, steps (K in training),
#: noise ("learned" with init noise_init, or a fixed σ), prior_scale, learn_prior_scale, beta, first_order.
BASE = {"update": "natural", "lr": 0.1, "learn_lr": False, "steps": 10, "noise": "learned", "noise_init": 0.3,
        "prior_scale": 0.1, "learn_prior_scale": True, "beta": 1.0, "first_order": False, "outer_lr": 3e-3}
VARIANTS: dict[str, dict] = {
    "maml": {},  # sinusoid_methods.SETTINGS["maml"]
    "nat_k10": {},  # the `mlp` defaults of hvi fit (sinusoid_methods.py's ABML row before this screen)
    "nat_k5": {"steps": 5},
    "nat_k2": {"steps": 2},
    "nat_k10_learnlr": {"learn_lr": True},
    "nat_k5_learnlr": {"steps": 5, "learn_lr": True},
    "nat_k5_learnlr03": {"steps": 5, "learn_lr": True, "lr": 0.3},
    "nat_k5_mse": {"steps": 5, "noise": MSE_NOISE},
    "nat_k5_learnlr_mse": {"steps": 5, "learn_lr": True, "noise": MSE_NOISE},
    "grad_k1_mse": {"update": "gradient", "lr": 0.01, "steps": 1, "noise": MSE_NOISE},
    "grad_k1_learnlr_mse": {"update": "gradient", "lr": 0.01, "steps": 1, "noise": MSE_NOISE, "learn_lr": True},
    "grad_k5_learnlr_mse": {"update": "gradient", "lr": 0.01, "steps": 5, "noise": MSE_NOISE, "learn_lr": True},
    "nat_k10_mse": {"noise": MSE_NOISE},
    "nat_k5_s03": {"steps": 5, "noise": 0.3},
    "nat_k5_s01": {"steps": 5, "noise": 0.1},
    "nat_k10_s03": {"noise": 0.3},
    "nat_k10_learnlr_mse": {"learn_lr": True, "noise": MSE_NOISE},
    "nat_k5_s03_p005": {"steps": 5, "noise": 0.3, "prior_scale": 0.05},
    "nat_k5_s01_p003": {"steps": 5, "noise": 0.1, "prior_scale": 0.03},
    "nat_k5_s003": {"steps": 5, "noise": 0.03},
    "nat_k5_s01_learnlr": {"steps": 5, "noise": 0.1, "learn_lr": True},
    "nat_k5_s03_learnlr": {"steps": 5, "noise": 0.3, "learn_lr": True},
    "nat_k5_s003_p001": {"steps": 5, "noise": 0.03, "prior_scale": 0.01},
    "nat_k5_s01_p002": {"steps": 5, "noise": 0.1, "prior_scale": 0.02},
    "nat_k5_learned01_p003": {"steps": 5, "noise_init": 0.1, "prior_scale": 0.03},
    "nat_k10_s01_p003": {"noise": 0.1, "prior_scale": 0.03},
    "nat_k5_s01_p003_learnlr": {"steps": 5, "noise": 0.1, "prior_scale": 0.03, "learn_lr": True},
    "nat_k2_s01_p003": {"steps": 2, "noise": 0.1, "prior_scale": 0.03},
    "nat_k5_learned03_p003_b01": {"steps": 5, "prior_scale": 0.03, "beta": 0.1},
    "nat_k5_learned003_p001": {"steps": 5, "noise_init": 0.03, "prior_scale": 0.01},
    "nat_k5_learned01_p002": {"steps": 5, "noise_init": 0.1, "prior_scale": 0.02},
    "nat_k5_learned01_p003_learnlr": {"steps": 5, "noise_init": 0.1, "prior_scale": 0.03, "learn_lr": True},
    "nat_k10_learned01_p003": {"noise_init": 0.1, "prior_scale": 0.03},
}


def settings(variant: str) -> dict:
    """The full settings of an ABML ``variant``."""
    if variant not in VARIANTS or variant == "maml":
        raise ValueError(f"variant={variant!r} is not an ABML variant; use one of {', '.join(v for v in VARIANTS if v != 'maml')}.")
    return {**BASE, **VARIANTS[variant]}


def build(variant: str) -> tuple[hvi.MetaModel, float]:
    """The model of ``variant`` (the same network initialisation as sinusoid_methods.py) and its outer lr."""
    if variant == "maml":
        return build_method("maml"), 3e-3
    s = settings(variant)
    torch.manual_seed(0)
    net = hvi.models.get_model("mlp")
    lik = (hvi.Gaussian(noise="learned", init_scale=s["noise_init"]) if s["noise"] == "learned"
           else hvi.Gaussian(noise=float(s["noise"])))
    inner = hvi.InnerConfig(steps=s["steps"], update=s["update"], lr=s["lr"], learn_lr=s["learn_lr"],
                            kl_weight=s["beta"], first_order=s["first_order"])
    prior = hvi.get_prior("gaussian", init_scale=s["prior_scale"], learn_scale=s["learn_prior_scale"])
    return hvi.MetaModel(net, prior=prior, likelihood=lik, inner=inner, method="abml"), s["outer_lr"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="maml,nat_k10", help="comma-separated variants (default: maml,nat_k10)")
    p.add_argument("--steps", type=int, default=2000, help="outer steps (default 2000)")
    p.add_argument("--task-batch", type=int, default=8, help="tasks per outer step (default 8)")
    p.add_argument("--test-tasks", type=int, default=200, help="held-out tasks (default 200)")
    p.add_argument("--out", default="docs/results/sinusoid_abml_screen.json", help="JSON file to merge into")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    hvi.tune_allocator()
    names = args.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)}; use some of {', '.join(VARIANTS)}")
    source = hvi.data.get_source("sinusoid", k_shot=10, k_query=10)
    test = source.get_tasks("test", torch.arange(args.test_tasks))
    out = Path(args.out)
    for variant in names:
        meta, outer_lr = build(variant)
        t0, scores = time.perf_counter(), {}
        try:
            fitted = hvi.fit(meta, source, steps=args.steps, task_batch=args.task_batch, lr=outer_lr, seed=0)
        except FloatingPointError as err:  # recorded as diverged: the screen goes on
            print(f"{variant:>22}: diverged in training ({err})", flush=True)
            fitted = None
        seconds = time.perf_counter() - t0
        for m in (1, 5, 10) if fitted is not None else ():
            pred = hvi.predict(meta, test, inner_steps=m, num_samples=100)
            err = (pred.mean - test.query_y).pow(2).mean(dim=(1, 2))
            mse, lo, hi = hvi.mean_ci(err)
            scores[str(m)] = {"mse": mse, "mse_ci95": hi - mse}
            if pred.std is not None:
                other = hvi.regression_metrics(pred, test.query_y)
                scores[str(m)].update({n: hvi.mean_ci(other[n])[0] for n in ("nll", "coverage_90")})
        finite = fitted is not None and all(math.isfinite(s["mse"]) for s in scores.values())
        if fitted is not None:
            print(f"{variant:>22}: " + " / ".join(f"{scores[k]['mse']:.3f}" for k in ("1", "5", "10"))
                  + f"  ({seconds:.0f} s, {len(fitted.skipped)} skipped)", flush=True)
        old = json.loads(out.read_text()) if out.exists() else {}
        key = f"{args.steps}x{args.task_batch}/{args.test_tasks}"  # budget / held-out tasks
        runs = old.get("runs", {})
        runs.setdefault(key, {})[variant] = {
            "settings": {"method": "maml"} if variant == "maml" else settings(variant),
            "fit_seconds": round(seconds, 1), "skipped_steps": None if fitted is None else len(fitted.skipped),
            "diverged_in_training": fitted is None, "finite": finite,
            "by_inner_steps": scores, "command": " ".join(["python", "benchmarks/sinusoid_abml_screen.py", "--variants", variant,
                                                          "--steps", str(args.steps), "--test-tasks", str(args.test_tasks)]),
        }
        write_result(out, "benchmarks/sinusoid_abml_screen.py", argv, {
            "protocol": "sinusoid, amplitude [0.1, 5], phase [0, pi], x in [-5, 5], 10-shot support, 10 query, mlp 1-40-40-1",
            "runs": runs,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
