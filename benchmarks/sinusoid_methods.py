"""ABML, MAML, first-order MAML and Reptile on sinusoid regression, MAML's protocol, one budget.

Amplitude in [0.1, 5], phase in [0, π], x in [−5, 5], 10-shot support and
10-point query, the `mlp` (1-40-40-1). Every method gets the same number of
outer steps on the same task batch size, the same network initialisation and
the same training tasks; each then adapts to held-out tasks with its own inner
step size and is scored by the query MSE of its (predictive-mean) prediction
after 1, 5 and 10 inner steps, with a 95% CI over the held-out tasks::

    OMP_NUM_THREADS=1 python benchmarks/sinusoid_methods.py --out docs/results/sinusoid_methods.json

Settings per method (``SETTINGS`` below):

* abml: natural-gradient inner step (β = 1: the true ELBO), α learned per
  weight tensor and λ key (bounded to (0, 1), starting at 0.1), 5 inner steps
  when training, Gaussian noise of fixed σ = 0.1, prior scale starting at
  0.03, outer Adam 3e-3. Chosen by the short-budget screen of
  benchmarks/sinusoid_abml_screen.py (docs/results/sinusoid_abml_screen.json):
  the earlier `mlp` defaults of ``hvi fit`` (α = 0.1 fixed, K = 10, learned σ from 0.3,
  prior scale 0.1) lost to MAML by 2-2.5x here, and a learned σ from 0.1
  degraded with longer training.

``--merge --methods abml`` reruns one method and keeps the other rows of
``--out`` as measured (same budget); each row then carries its own command.
* maml: 1 inner step of plain gradient descent on the MSE at α = 0.01 when
  training (MAML's own sinusoid settings), second order, outer Adam 3e-3.
* fomaml: as maml, first order.
* reptile: 5 inner steps at α = 0.01 on the MSE, outer SGD at ε = 0.1 (the
  initial outer step size of the Reptile paper's sinusoid demo, here constant;
  the demo's inner α = 0.02 diverged after ~6900 steps here).

The deterministic methods use a Gaussian likelihood with fixed σ² = 1/2, so
their inner and outer loss is exactly the MSE (+ a constant) and α is MAML's.
"""

from __future__ import annotations

import argparse
import datetime
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

#: variant → (method, inner update, inner α, training inner steps, outer lr, KL weight β).
SETTINGS = {
    "maml": ("maml", "gradient", 0.01, 1, 3e-3, 0.0),
    "fomaml": ("fomaml", "gradient", 0.01, 1, 3e-3, 0.0),
    "reptile": ("reptile", "gradient", 0.01, 5, 0.1, 0.0),
    "abml": ("abml", "natural", 0.1, 5, 3e-3, 1.0),
    # The training K, swapped: is ABML's lead after 5 steps its K = 5 in training, and its
    # loss after 1 step MAML's K = 1? (Each scored after 1, 5 and 10 steps like the rest.)
    "maml_k5": ("maml", "gradient", 0.01, 5, 3e-3, 0.0),
    "abml_k1": ("abml", "natural", 0.1, 1, 3e-3, 1.0),
}
#: ABML's likelihood noise σ (fixed), its prior's initial scale σ_p, and whether it learns one
#: inner α per weight tensor and λ key (bounded to (0, 1), starting at SETTINGS' α).
ABML_MODEL = {"noise": 0.1, "prior_scale": 0.03, "learn_lr": True}


def build(variant: str) -> hvi.MetaModel:
    """The model of ``variant`` (same network initialisation for every one)."""
    method, update, alpha, k, _, beta = SETTINGS[variant]
    torch.manual_seed(0)
    net = hvi.models.get_model("mlp")
    bayes = method == "abml"
    likelihood = hvi.Gaussian(noise=ABML_MODEL["noise"] if bayes else math.sqrt(0.5))
    inner = hvi.InnerConfig(steps=k, update=update, lr=alpha,
                            **({"kl_weight": beta, "learn_lr": ABML_MODEL["learn_lr"]} if bayes else {}))
    return hvi.MetaModel(net, prior=hvi.get_prior("gaussian", init_scale=ABML_MODEL["prior_scale"] if bayes else 0.1),
                         likelihood=likelihood, inner=inner, method=method)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8000, help="outer steps for every method (default 8000)")
    p.add_argument("--task-batch", type=int, default=8, help="tasks per outer step (default 8)")
    p.add_argument("--methods", default=",".join(SETTINGS), help="comma-separated variants (default: all)")
    p.add_argument("--test-tasks", type=int, default=600, help="held-out tasks (default 600)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default="docs/results/sinusoid_methods.json", help="JSON file to write")
    p.add_argument("--merge", action="store_true",
                   help="keep the other methods' rows of an existing --out (same --steps, --task-batch, --test-tasks)")
    args = p.parse_args(argv)
    budget = {k: getattr(args, k) for k in ("steps", "task_batch", "test_tasks")}
    kept, earlier = {}, None
    if args.merge and Path(args.out).exists():
        earlier = json.loads(Path(args.out).read_text())
        if {k: earlier["config"][k] for k in budget} != budget:
            p.error(f"--merge: {args.out} was measured at {({k: earlier['config'][k] for k in budget})}, not {budget}; "
                    "use the same --steps, --task-batch and --test-tasks, or drop --merge")
        kept = {k: {**v, "command": v.get("command", earlier["command"]), "date": v.get("date", earlier["date"])}
                for k, v in earlier["methods"].items() if k not in args.methods.split(",")}
    torch.set_num_threads(args.threads)
    hvi.tune_allocator()
    source = hvi.data.get_source("sinusoid", k_shot=10, k_query=10)
    test = source.get_tasks("test", torch.arange(args.test_tasks))
    results = {}
    for variant in args.methods.split(","):
        method, update, alpha, k, outer_lr, beta = SETTINGS[variant]
        meta = build(variant)
        t0 = time.perf_counter()
        fitted = hvi.fit(meta, source, steps=args.steps, task_batch=args.task_batch, lr=outer_lr, seed=0)
        seconds = time.perf_counter() - t0
        scores = {}
        for m in (0, 1, 5, 10):
            pred = hvi.predict(meta, test, inner_steps=m, num_samples=100)
            err = (pred.mean - test.query_y).pow(2).mean(dim=(1, 2))  # per-task MSE of the (mean) prediction
            mse, lo, hi = hvi.mean_ci(err)
            scores[str(m)] = {"mse": mse, "mse_ci95": hi - mse}
            if pred.std is not None:
                other = hvi.regression_metrics(pred, test.query_y)
                scores[str(m)].update({n: hvi.mean_ci(other[n])[0] for n in ("nll", "crps", "coverage_90")})
            print(f"{variant:>10} {m:>2} steps: query MSE {mse:.3f} ± {hi - mse:.3f}", flush=True)
        bayes = method == "abml"
        results[variant] = {
            "settings": {"method": method, "kl_weight": beta, "inner_update": update, "inner_lr": alpha, "train_inner_steps": k,
                         "outer_optimizer": "SGD" if method == "reptile" else "Adam", "outer_lr": outer_lr,
                         "likelihood": (f"gaussian, fixed sigma = {ABML_MODEL['noise']:g}" if bayes
                                        else "gaussian, fixed sigma^2 = 1/2 (MSE)"),
                         **({"prior_init_scale": ABML_MODEL["prior_scale"], "learn_lr": ABML_MODEL["learn_lr"]}
                            if bayes else {})},
            **({"command": " ".join(["python", "benchmarks/sinusoid_methods.py", *(sys.argv[1:] if argv is None else argv)]),
                "date": datetime.date.today().isoformat()} if args.merge else {}),
            "fit_seconds": round(seconds, 1),
            "skipped_steps": len(fitted.skipped),
            "by_inner_steps": scores,
        }
        print(f"{variant}: trained {args.steps} steps in {seconds:.0f} s", flush=True)
        payload = {  # after each variant: "complete" at the end
            "config": {k: v for k, v in vars(args).items() if k not in ("out", "merge")},
            "protocol": "sinusoid, amplitude [0.1, 5], phase [0, pi], x in [-5, 5], 10-shot support, 10 query, mlp 1-40-40-1",
            "complete": len(results) == len(args.methods.split(",")),
            "methods": {**kept, **results},
        }
        if earlier is not None:  # every row carries the command and date that measured it
            payload["config"]["methods"] = ",".join(payload["methods"])
            payload["complete"] = payload["complete"] and earlier.get("complete", True)
        write_result(args.out, "benchmarks/sinusoid_methods.py", argv, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
