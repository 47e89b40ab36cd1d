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
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _pytorch_task_conv(h, weight, bias, padding: int):
    """The task convolution as one plain grouped ``F.conv2d`` (PyTorch's own double backward)."""
    import torch.nn.functional as F

    tasks, c_out = weight.shape[:2]
    return F.conv2d(h, weight.reshape((tasks * c_out,) + weight.shape[2:]), bias.reshape(tasks * c_out),
                    padding=padding, groups=tasks)


def measure(first_order: bool, task_batch: int, rounds: int) -> dict[str, Any]:
    """Paired CPU seconds per meta-step of both variants, for one order."""
    import pyro
    import torch

    import hvi
    import hvi.models.unet as unet
    import meta_step as ms

    torch.set_num_threads(1)
    hvi.tune_allocator()
    args = ms.parse_args(["--impl", "engine", "--threads", "1"])
    cfg = dict(vars(args))
    cfg.update(impl="engine", task_batch=task_batch, inner_steps=5, first_order=first_order)
    pyro.set_rng_seed(0)
    batch = ms.make_batch(cfg)
    _meta, svi = ms.make_engine(cfg)
    variants = {"task_conv": unet._task_conv, "pytorch": _pytorch_task_conv}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for f in variants.values():  # warm-up
            unet._task_conv = f
            svi.step(batch)
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            for name in order:
                unet._task_conv = variants[name]
                c0 = time.process_time()
                svi.step(batch)
                cpu[name].append(time.process_time() - c0)
    finally:
        unet._task_conv = variants["task_conv"]
    ratios = [p / t for p, t in zip(cpu["pytorch"], cpu["task_conv"])]
    return {
        "order": "first" if first_order else "second",
        "task_batch": task_batch,
        "cpu_s": {k: [round(v, 4) for v in vs] for k, vs in cpu.items()},
        "cpu_s_median": {k: round(statistics.median(vs), 4) for k, vs in cpu.items()},
        "speedup_per_round": [round(v, 3) for v in ratios],
        "speedup_median": round(statistics.median(ratios), 3),
        "faster_rounds": sum(v > 1 for v in ratios),
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
