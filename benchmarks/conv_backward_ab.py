#!/usr/bin/env python3
"""CPU seconds of a meta-step with ``bayes_unet``'s ``_TaskConv`` against PyTorch's own grouped convolution.

``models/unet.py`` runs every task convolution through ``_TaskConv``, whose
backward is differentiable by grouped convolutions; the alternative is a plain
``F.conv2d(..., groups=B)``, whose double backward PyTorch computes partly one
group at a time. Both give the same values (``tests/test_unet_conv_grad.py``).

One process, one thread, ``benchmarks/meta_step.py``'s engine configuration
(``bayes_unet`` base 16, 32×32, 5-shot, K = 5, the gradient update), one warm-up
step per variant, then ``--rounds`` rounds that time one meta-step of each
variant (the order alternating between rounds, A B then B A), swapping the
module's ``_task_conv`` between steps. On a shared machine, paired steps
seconds apart see the same load; the result is the median over rounds of each
variant's CPU seconds and of their per-round ratio.

    python benchmarks/conv_backward_ab.py --rounds 8 --out docs/results/conv_backward_ab.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from paired_steps import engine, medians, paired_cpu, speedup  # noqa: E402


def _pytorch_task_conv(h, weight, bias, padding: int):
    """The task convolution as one plain grouped ``F.conv2d`` (PyTorch's own double backward)."""
    import torch.nn.functional as F

    tasks, c_out = weight.shape[:2]
    return F.conv2d(h, weight.reshape((tasks * c_out,) + weight.shape[2:]), bias.reshape(tasks * c_out),
                    padding=padding, groups=tasks)


def measure(first_order: bool, task_batch: int, rounds: int) -> dict[str, Any]:
    """Paired CPU seconds per meta-step of both variants, for one order."""
    import hvi.models.unet as unet

    _meta, step = engine(task_batch, first_order)
    variants = {"task_conv": unet._task_conv, "pytorch": _pytorch_task_conv}

    def use(f):
        return lambda: setattr(unet, "_task_conv", f)

    cpu = paired_cpu(step, {k: use(f) for k, f in variants.items()}, rounds, use(variants["task_conv"]))
    s = speedup(cpu["pytorch"], cpu["task_conv"])
    return {
        "order": "first" if first_order else "second",
        "task_batch": task_batch,
        **medians(cpu),
        "speedup_per_round": s["per_round"],
        "speedup_median": s["median"],
        "faster_rounds": s["faster_rounds"],
        "rounds": rounds,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--task-batch", type=int, default=8)
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    for first_order in (False, True):
        rows.append(measure(first_order, args.task_batch, args.rounds))
        r = rows[-1]
        print(f"{r['order']} order: CPU s per meta-step {r['cpu_s_median']}, PyTorch's / _TaskConv per round "
              f"{r['speedup_per_round']} (median {r['speedup_median']})", flush=True)
    if args.out:
        from provenance import write_result

        write_result(args.out, "benchmarks/conv_backward_ab.py", argv, {
            "config": "engine, bayes_unet base 16, 32x32, 5-shot, 5 query, K=5, gradient update, 1 thread",
            "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
