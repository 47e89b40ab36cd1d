#!/usr/bin/env python3
"""CPU seconds of a second-order meta-step with the inner gradient step of ``hvi/adapt.py`` against a baseline's.

The step of ``InnerLoop._run`` (the gradient update, a Normal family under a
Normal prior: the closed-form KL gradient) as committed at ``--baseline``
against the working tree's. The baseline's ``_run`` is compiled from
``git show <baseline>:hvi/adapt.py`` into a module of its own and swapped
into ``InnerLoop`` between steps; everything else is shared.

One process, one thread, ``benchmarks/meta_step.py``'s engine configuration
(``bayes_unet`` base 16, 32×32, 5-shot, K = 5, the gradient update, task
batch 8, exact second order unless ``--first-order``), as in
``benchmarks/unet_ops_ab.py``: one warm-up step per variant, then
``--rounds`` rounds that time one meta-step of each variant (the order
reversed every other round), so that paired steps seconds apart see the same
load on a shared machine. Reported: each variant's median CPU seconds, the
median over rounds of baseline / new and the rounds in which new was faster.
With ``--profile N``, N more alternating rounds run each variant's step under
``torch.profiler`` and add up the self CPU time of the operators with an
input of the flat λ's length D (the (B, D) λ tensors, φ's (B, S, D), the
prior's (1, D)): the elementwise work the step's change is about.

    python benchmarks/inner_step_ab.py --rounds 40 --profile 6 --out docs/results/inner_step_ab.json
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from paired_steps import alternating, engine, medians, paired_cpu, speedup  # noqa: E402

BASELINE = "71c5356"  # hvi/adapt.py before the fused step (#16)


def baseline_run(commit: str):
    """``InnerLoop._run`` of ``hvi/adapt.py`` at ``commit``, compiled into a module of its own."""
    src = subprocess.run(["git", "show", f"{commit}:hvi/adapt.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("hvi._adapt_baseline")
    mod.__file__ = f"<{commit}:hvi/adapt.py>"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    try:
        exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 (the repository's own file at a commit)
    finally:
        del sys.modules[mod.__name__]
    return mod.InnerLoop._run


def lambda_ms(prof, D: int) -> float:
    """Self CPU ms of the profiled operators with an input whose last dimension is D."""
    total = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        if any(isinstance(sh, list) and sh and sh[-1] == D for sh in e.input_shapes):
            total += e.self_cpu_time_total
    return total / 1e3


def measure(first_order: bool, task_batch: int, rounds: int, commit: str, profile: int = 0) -> dict[str, Any]:
    """Paired CPU seconds per meta-step of the baseline and the new step, for one order."""
    import torch

    from hvi import adapt

    meta, step = engine(task_batch, first_order)
    D = sum(math.prod(s) for s in dict(meta.net.shapes).values())
    runs = {"baseline": baseline_run(commit), "new": adapt.InnerLoop._run}

    def use(f):
        return lambda: setattr(adapt.InnerLoop, "_run", f)

    cpu = paired_cpu(step, {k: use(f) for k, f in runs.items()}, rounds, use(runs["new"]))
    lam_ms: dict[str, list[float]] = {k: [] for k in runs}
    try:
        for r in range(profile):
            for name in alternating(list(runs), r):
                adapt.InnerLoop._run = runs[name]
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
                    step()
                lam_ms[name].append(round(lambda_ms(prof, D), 1))
    finally:
        adapt.InnerLoop._run = runs["new"]
    return {
        "order": "first" if first_order else "second",
        "task_batch": task_batch,
        **medians(cpu),
        "speedup_vs_baseline": {**speedup(cpu["baseline"], cpu["new"], digits=4), "rounds": rounds},
        "flat_size_D": D,
        "lambda_op_self_ms": lam_ms,
        "lambda_op_self_ms_median": {k: statistics.median(v) for k, v in lam_ms.items()} if profile else {},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--task-batch", type=int, default=8)
    p.add_argument("--baseline", default=BASELINE, help="commit whose hvi/adapt.py gives the baseline step")
    p.add_argument("--profile", type=int, default=0, help="profiled rounds (λ-sized operators' self CPU time)")
    p.add_argument("--orders", default="second", help="comma list of second, first")
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_start = round(os.getloadavg()[0], 2)
    rows = []
    for order in args.orders.split(","):
        rows.append(measure(order == "first", args.task_batch, args.rounds, args.baseline, args.profile))
        r = rows[-1]
        print(f"{r['order']} order: CPU s per meta-step {r['cpu_s_median']}; baseline / new "
              f"{r['speedup_vs_baseline']['median']} ({r['speedup_vs_baseline']['faster_rounds']}/{args.rounds} "
              f"rounds faster; λ-sized ops' self ms {r['lambda_op_self_ms_median']}; load {r['loadavg_1m']})", flush=True)
    if args.out:
        from provenance import write_result

        write_result(args.out, "benchmarks/inner_step_ab.py", argv, {
            "config": "engine, bayes_unet base 16, 32x32, 5-shot, 5 query, K=5, gradient update, 1 thread",
            "baseline": args.baseline, "loadavg_1m_start": load_start, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
