"""Why ABML's natural inner step adapts worse with 25 support images than with 5 (issue #15).

The natural step moves q's mean by α·(g/β + g_p)/s' with s' = (1 − α)·s + α·(c_p + h/β)
(hvi/natural.py). Where the likelihood term α·h/β outweighs the prior
precision c_p (and q starts at the prior, s = c_p), s' ≈ α·h/β and the mean's
step is g/h: the full diagonal Newton step, **whatever α**. A diagonal step
ignores that many weights feed each logit, so it overshoots. h is summed over
the support set, so 5-shot episodes (25 images) put about five times more
curvature into each weight than 1-shot ones (5 images): more weights take the
α-independent Newton step.

This script measures it at the shared ``conv4`` initialisation of
benchmarks/glyph_methods.py (the conv4 defaults' α = 0.3, β = 1e-3, prior scale
0.01; the step without the line search), on held-out 5-way episodes, for the first inner step:

* the fraction of weights with α·h/β > c_p (their mean step is ≥ half the
  diagonal Newton step g/h whatever α), averaged over episodes;
* the line search's t per episode, the fraction of the natural step the curvature along it
  allows (1: no overshoot; :func:`hvi.natural.line_scale`);
* the support set's cross-entropy after 0, 1 and 3 inner steps of the
  ``abml`` variant, and of ``abml_ls`` (the same with the line search)::

    OMP_NUM_THREADS=1 python benchmarks/glyph_abml_step.py --out docs/results/glyph_abml_step.json
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import pyro
import torch

import hvi
import hvi.data
import hvi.natural
from glyph_methods import abml_settings, build
from provenance import write_result


def support_as_query(batch: hvi.TaskBatch) -> hvi.TaskBatch:
    """``batch`` with its support set also as the query set (to score the fit to the support)."""
    return dataclasses.replace(batch, query_x=batch.support_x, query_y=batch.support_y)


def measure(k_shot: int, tasks: int, samples: int) -> dict:
    """The first step's statistics and the support cross-entropy after 0, 1, 3 steps, for ``k_shot``."""
    source = hvi.data.get_source("glyphs", n_way=5, k_shot=k_shot, k_query=5, num_tasks=(5000, 500, 500))
    batch = support_as_query(source.get_tasks("test", torch.arange(tasks)))
    a = abml_settings("abml")
    first: dict = {"newton": [], "t": [], "on": None}  # recorded while "on" names the variant doing one step
    step, line_scale = hvi.natural.step, hvi.natural.line_scale

    def recording_step(m, s, g, h, prior_grad, prior_curv, alpha_m, alpha_s, beta, scale=None):
        if first["on"] == "abml":
            first["newton"].append((alpha_s * h.clamp_min(0.0) / beta > prior_curv).double().mean(-1).flatten())
        return step(m, s, g, h, prior_grad, prior_curv, alpha_m, alpha_s, beta, scale)

    def recording_line_scale(*args, **kwargs):
        t = line_scale(*args, **kwargs)
        if first["on"] == "abml_ls":
            first["t"].append(t.detach().double().flatten())
        return t

    out: dict = {"support_cross_entropy": {}}
    hvi.natural.step, hvi.natural.line_scale = recording_step, recording_line_scale
    try:
        for variant in ("abml", "abml_ls"):
            pyro.clear_param_store()
            meta = build(variant)
            out["support_cross_entropy"][variant] = {}
            for steps in (0, 1, 3):
                torch.manual_seed(0)
                first["on"] = variant if steps == 1 else None
                probs = torch.cat([hvi.predict(meta, batch.tasks(slice(lo, lo + 10)), inner_steps=steps,
                                               num_samples=samples).probs for lo in range(0, tasks, 10)])
                nll = -probs.clamp_min(1e-12).log().gather(-1, batch.query_y.unsqueeze(-1)).squeeze(-1).mean(1)
                mean, lo, hi = hvi.mean_ci(nll)
                out["support_cross_entropy"][variant][str(steps)] = {"mean": mean, "ci95": [lo, hi]}
    finally:
        hvi.natural.step, hvi.natural.line_scale = step, line_scale
    t = torch.cat(first["t"])
    out["newton_fraction"] = float(torch.cat(first["newton"]).mean())
    out["line_t"] = {"median": float(t.median()), "min": float(t.min()), "max": float(t.max())}
    out["settings"] = {"alpha": a["lr"], "kl_weight": a["kl_weight"], "prior_scale": 0.01}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=50, help="held-out episodes (default 50)")
    p.add_argument("--samples", type=int, default=10, help="weight draws per prediction (default 10)")
    p.add_argument("--out", default="docs/results/glyph_abml_step.json", help="JSON file to write")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for k_shot in (1, 5):
        r = results[f"{k_shot}-shot"] = measure(k_shot, args.tasks, args.samples)
        ce = r["support_cross_entropy"]
        print(f"{k_shot}-shot: α·h/β > c_p for {r['newton_fraction']:.3f} of the weights; line search t median "
              f"{r['line_t']['median']:.3f}; support cross-entropy 0/1/3 steps: "
              + "; ".join(f"{v} " + "/".join(f"{ce[v][s]['mean']:.3f}" for s in ("0", "1", "3")) for v in ce), flush=True)
    write_result(args.out, "benchmarks/glyph_abml_step.py", argv, {
        "protocol": "glyphs, 5-way, held-out test episodes, conv4 hidden 32 at the shared initialisation (untrained)",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
