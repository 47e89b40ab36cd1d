"""ABML, MAML, first-order MAML and Reptile on few-shot glyph classification, one budget.

5-way 1-shot and 5-shot episodes of the ``glyphs`` source (characters
rendered from fonts; meta-test alphabets never seen in meta-training, see
docs/data.md), the ``conv4`` network (hidden 32). Every method gets the same
outer steps, task batch, network initialisation and training episodes, then
adapts to the same held-out test episodes; the script reports query accuracy
and the pooled expected calibration error (15 equal-width bins over every
query prediction) after 1, 3 and 10 inner steps, with 95% CIs over episodes
(accuracy) and a bootstrap over episodes (ECE)::

    OMP_NUM_THREADS=1 python benchmarks/glyph_methods.py --out docs/results/glyph_methods.json

Settings per method (``SETTINGS`` below; 3 training inner steps for all):

* abml: natural-gradient inner step, α = 0.3, prior scale 0.01, KL weight
  β = 1e-3 (a tempered posterior: at β = 1 the 28k-weight posterior of a
  5-image support set stays at its prior and accuracy stays at chance, see
  docs/results.md), first order: the ``hvi fit --model conv4`` defaults as they
  were before the line search joined them.
* abml_ls: the same with the natural step's line search (chosen by the 5-shot
  screen, docs/results/glyph_abml_screen.json; docs/methods.md says why), run
  with ``--methods abml_ls --shots 5,1 --merge``.
* abml_ls_2nd: abml_ls trained second order (``hvi fit --model conv4``'s
  defaults now), run with ``--methods abml_ls_2nd --shots 5,1 --merge``.
* maml: plain gradient descent on the cross-entropy at α = 0.4 (MAML's
  Omniglot step size), second order, outer Adam 1e-3.
* fomaml: as maml, first order.
* reptile: gradient descent at α = 0.4, outer SGD at ε = 0.5 (constant).

ABML variants (``ABML_VARIANTS``, each a ``--methods`` name) change the abml
row's inner loop one setting at a time, for the screen on 5-shot episodes::

    OMP_NUM_THREADS=1 python benchmarks/glyph_methods.py --methods abml_ls --shots 5 --test-tasks 200 \\
        --merge --out docs/results/glyph_abml_screen.json

``--merge`` keeps the other rows of an existing ``--out`` (same ``--steps``,
``--task-batch``, ``--test-tasks``, ``--samples``) and gives every row its own
command and date. The file is read again before each write, so commands that
merge into one ``--out`` can run side by side. Every command's wall time and
load average are kept under ``"runs"``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

import hvi
import hvi.data
import hvi.models
from provenance import write_result

#: variant → (method, inner update, inner α, first order, outer lr, KL weight β).
SETTINGS = {
    "abml": ("abml", "natural", 0.3, True, 1e-3, 1e-3),
    "maml": ("maml", "gradient", 0.4, False, 1e-3, 0.0),
    "fomaml": ("fomaml", "gradient", 0.4, True, 1e-3, 0.0),
    "reptile": ("reptile", "gradient", 0.4, True, 0.5, 0.0),
}
#: ABML's inner loop (the ``hvi fit --model conv4`` defaults without the line search): α of the mean and, when not None, of the
#: precision (``lr_rho``), KL weight β, first order, learned per-tensor α, line search, draws per step.
ABML = {"lr": 0.3, "lr_rho": None, "kl_weight": 1e-3, "first_order": True, "learn_lr": False, "line_search": False,
        "num_samples": 1}
#: ABML variant → its changes to ``ABML`` (one setting at a time, then combinations).
ABML_VARIANTS: dict[str, dict] = {
    "abml": {},
    "abml_2nd": {"first_order": False},
    "abml_ls": {"line_search": True},
    "abml_ls_a01": {"line_search": True, "lr": 0.1},
    "abml_ls_a1": {"line_search": True, "lr": 1.0},
    "abml_ls_2nd": {"line_search": True, "first_order": False},
    "abml_a01": {"lr": 0.1},
    "abml_learnlr": {"learn_lr": True},
    "abml_b1e-2": {"kl_weight": 1e-2},
    "abml_s2": {"num_samples": 2},
    "abml_rho003": {"lr_rho": 0.03},
}
TRAIN_INNER_STEPS = 3
EVAL_STEPS = (1, 3, 10)


def abml_settings(variant: str) -> dict:
    """ABML's inner-loop settings of ``variant`` (``ABML`` with the variant's changes)."""
    if variant not in ABML_VARIANTS:
        raise ValueError(f"variant={variant!r} is not an ABML variant; use one of {', '.join(ABML_VARIANTS)}.")
    return {**ABML, **ABML_VARIANTS[variant]}


def settings(variant: str) -> dict:
    """The settings row of ``variant`` as the results JSON records it."""
    if variant in ABML_VARIANTS:
        a = abml_settings(variant)
        return {"method": "abml", "inner_update": "natural", "inner_lr": a["lr"], "inner_lr_rho": a["lr_rho"],
                "first_order": a["first_order"], "kl_weight": a["kl_weight"], "learn_lr": a["learn_lr"],
                "line_search": a["line_search"], "inner_samples": a["num_samples"],
                "train_inner_steps": TRAIN_INNER_STEPS, "outer_optimizer": "Adam", "outer_lr": 1e-3}
    if variant not in SETTINGS:
        raise ValueError(f"variant={variant!r} is unknown; use one of {', '.join([*SETTINGS, *ABML_VARIANTS])}.")
    method, update, alpha, first_order, outer_lr, beta = SETTINGS[variant]
    return {"method": method, "inner_update": update, "inner_lr": alpha, "first_order": first_order, "kl_weight": beta,
            "train_inner_steps": TRAIN_INNER_STEPS, "outer_optimizer": "SGD" if method == "reptile" else "Adam",
            "outer_lr": outer_lr}


def build(variant: str) -> hvi.MetaModel:
    """The model of ``variant`` (same network initialisation for every one)."""
    s = settings(variant)
    method = s["method"]
    torch.manual_seed(0)
    net = hvi.models.get_model("conv4", hidden=32)
    if method == "abml":
        a = abml_settings(variant)
        lr = a["lr"] if a["lr_rho"] is None else {"loc": a["lr"], "rho": a["lr_rho"]}
        inner = hvi.InnerConfig(steps=TRAIN_INNER_STEPS, update="natural", lr=lr, first_order=a["first_order"],
                                kl_weight=a["kl_weight"], learn_lr=a["learn_lr"], line_search=a["line_search"],
                                num_samples=a["num_samples"])
    else:
        inner = hvi.InnerConfig(steps=TRAIN_INNER_STEPS, update=s["inner_update"], lr=s["inner_lr"],
                                first_order=s["first_order"])
    return hvi.MetaModel(net, prior=hvi.get_prior("gaussian", init_scale=0.01), likelihood=hvi.Categorical(),
                         inner=inner, method=method)


def evaluate(meta: hvi.MetaModel, test: hvi.TaskBatch, steps: int, chunk: int, samples: int, seed: int) -> dict:
    """Accuracy (mean, 95% CI over episodes) and pooled 15-bin ECE (bootstrap CI) after ``steps``."""
    probs = []
    for lo in range(0, test.batch_size, chunk):
        pred = hvi.predict(meta, test.tasks(slice(lo, lo + chunk)), inner_steps=steps, num_samples=samples)
        probs.append(pred.probs)
    probs = torch.cat(probs)
    acc = (probs.argmax(-1) == test.query_y).double().mean(1)
    mean, lo, hi = hvi.mean_ci(acc)
    ece = hvi.calibration_error(probs, test.query_y, bins=15)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, probs.shape[0], (200, probs.shape[0]), generator=g)
    boot = torch.stack([hvi.calibration_error(probs[i], test.query_y[i], bins=15) for i in idx])
    e_lo, e_hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"accuracy": mean, "accuracy_ci95": [lo, hi], "ece": float(ece), "ece_ci95": [e_lo, e_hi]}


def _merge(earlier: dict, results: dict) -> dict:
    """``earlier``'s rows (each with its own command and date) with ``results``' rows in their place or after them."""
    merged: dict[str, dict] = {}
    for shots, block in earlier["results"].items():
        merged[shots] = {v: {**r, "command": r.get("command", earlier["command"]), "date": r.get("date", earlier["date"])}
                         for v, r in block.items()}
    for shots, block in results.items():
        merged.setdefault(shots, {}).update(block)
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="outer steps for every method (default 300)")
    p.add_argument("--task-batch", type=int, default=4, help="episodes per outer step (default 4)")
    p.add_argument("--shots", default="1,5", help="comma-separated k_shot values (default 1,5)")
    p.add_argument("--methods", default=",".join(SETTINGS),
                   help=f"comma-separated variants (default: all of {','.join(SETTINGS)}; ABML variants: "
                        f"{','.join(ABML_VARIANTS)})")
    p.add_argument("--test-tasks", type=int, default=600, help="held-out episodes (default 600)")
    p.add_argument("--samples", type=int, default=10, help="ABML weight draws per prediction (default 10)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--eval-chunk", type=int, default=5,
                   help="held-out episodes per hvi.predict call (default 5: on a CPU a call's activations then "
                        "stay in cache; 100 episodes of 10 draws take about twice as long)")
    p.add_argument("--out", default="docs/results/glyph_methods.json", help="JSON file to write")
    p.add_argument("--merge", action="store_true",
                   help="keep the other rows of an existing --out (same --steps, --task-batch, --test-tasks, --samples)")
    args = p.parse_args(argv)
    shots = [int(s) for s in args.shots.split(",")]
    methods = args.methods.split(",")
    unknown = [v for v in methods if v not in SETTINGS and v not in ABML_VARIANTS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)}; use some of {', '.join([*SETTINGS, *ABML_VARIANTS])}")
    budget = {k: getattr(args, k) for k in ("steps", "task_batch", "test_tasks", "samples")}

    def read_earlier() -> dict | None:
        if not (args.merge and Path(args.out).exists()):
            return None
        earlier = json.loads(Path(args.out).read_text())
        was = {k: earlier["config"].get(k) for k in budget}
        if was != budget:
            p.error(f"--merge: {args.out} was measured at {was}, not {budget}; use the same --steps, --task-batch, "
                    "--test-tasks and --samples, or drop --merge")
        return earlier

    read_earlier()  # refuses another budget before any work
    start, load_start = time.perf_counter(), round(os.getloadavg()[0], 2)
    command = " ".join(["python", "benchmarks/glyph_methods.py", *(sys.argv[1:] if argv is None else argv)])
    torch.set_num_threads(args.threads)
    hvi.tune_allocator()
    results: dict[str, dict] = {}
    for k_shot in shots:
        source = hvi.data.get_source("glyphs", n_way=5, k_shot=k_shot, k_query=5,
                                      num_tasks=(5000, 500, max(500, args.test_tasks)))
        test = source.get_tasks("test", torch.arange(args.test_tasks))
        for variant in methods:
            row = settings(variant)
            meta = build(variant)
            t0 = time.perf_counter()
            fitted = hvi.fit(meta, source, steps=args.steps, task_batch=args.task_batch, lr=row["outer_lr"], seed=0)
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = {str(m): evaluate(meta, test, m, args.eval_chunk, args.samples, seed=m) for m in EVAL_STEPS}
            eval_seconds = time.perf_counter() - t0
            for m, s in scores.items():
                print(f"{k_shot}-shot {variant:>8} {m:>2} steps: accuracy {s['accuracy']:.3f} "
                      f"[{s['accuracy_ci95'][0]:.3f}, {s['accuracy_ci95'][1]:.3f}] ECE {s['ece']:.3f}", flush=True)
            results.setdefault(f"{k_shot}-shot", {})[variant] = {
                "settings": row,
                **({"command": command, "date": datetime.date.today().isoformat()} if args.merge else {}),
                "fit_seconds": round(seconds, 1),
                "eval_seconds": round(eval_seconds, 1),
                "skipped_steps": len(fitted.skipped),
                "by_inner_steps": scores,
            }
            done = sum(len(v) for v in results.values())
            run = {"date": datetime.date.today().isoformat(), "wall_seconds": round(time.perf_counter() - start, 1),
                   "loadavg_1m_start": load_start, "loadavg_1m_end": round(os.getloadavg()[0], 2),
                   "complete": done == len(shots) * len(methods)}
            payload = {  # after each fit: "complete" at the end
                "config": {k: v for k, v in vars(args).items() if k not in ("out", "merge", "eval_chunk")},
                "protocol": "glyphs, 5-way, k-shot support, 5 query per class, conv4 hidden 32, test alphabets held out",
                "complete": run["complete"],
                "results": results,
                "runs": {command: run},
            }
            earlier = read_earlier()
            if earlier is not None:  # every row carries the command and date that measured it
                payload["results"] = _merge(earlier, results)
                payload["config"]["shots"] = ",".join(k.split("-")[0] for k in payload["results"])
                payload["config"]["methods"] = ",".join(dict.fromkeys(v for b in payload["results"].values() for v in b))
                payload["runs"] = {**{c: r for c, r in earlier.get("runs", {}).items() if c != command}, **payload["runs"]}
                # Each command's own flag: the file may hold this command's earlier, unfinished write.
                payload["complete"] = all(r["complete"] for r in payload["runs"].values()) and (
                    "runs" in earlier or earlier.get("complete", True))
            write_result(args.out, "benchmarks/glyph_methods.py", argv, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
