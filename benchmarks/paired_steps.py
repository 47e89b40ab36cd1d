"""Paired CPU seconds of one meta-step under code variants, in one process: the A/B scripts' shared core.

``conv_backward_ab.py``, ``unet_ops_ab.py`` and ``inner_step_ab.py`` each swap
an implementation in and out between steps of the same SVI on the same batch
(the ``meta_step.py`` engine setup, one thread), in alternating order, so that
a shared machine's load hits every variant alike; the per-round ratios are
the comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def engine(task_batch: int, first_order: bool) -> tuple[Any, Callable[[], float]]:
    """``(meta, step)`` of ``meta_step.py``'s engine at its defaults (32×32 U-Net base 16, 5-shot, K = 5)."""
    import meta_step as ms
    import pyro
    import torch

    import hvi

    torch.set_num_threads(1)
    hvi.tune_allocator()
    cfg = dict(vars(ms.parse_args(["--impl", "engine", "--threads", "1"])))
    cfg.update(impl="engine", task_batch=task_batch, inner_steps=5, first_order=first_order)
    pyro.set_rng_seed(0)
    batch = ms.make_batch(cfg)
    meta, svi = ms.make_engine(cfg)
    return meta, lambda: svi.step(batch)


def alternating(names: list[str], r: int) -> list[str]:
    """Round ``r``'s order: as given on even rounds, reversed on odd ones."""
    return list(names) if r % 2 == 0 else list(names)[::-1]


def paired_cpu(step: Callable[[], float], variants: dict[str, Callable[[], None]], rounds: int,
               restore: Callable[[], None]) -> dict[str, list[float]]:
    """CPU seconds of ``step()`` per round for each variant (``variants[name]()`` installs it).

    One untimed step per variant first; ``restore()`` runs at the end, also on an error.
    """
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for use in variants.values():  # warm-up
            use()
            step()
        for r in range(rounds):
            for name in alternating(list(variants), r):
                variants[name]()
                c0 = time.process_time()
                step()
                cpu[name].append(time.process_time() - c0)
    finally:
        restore()
    return cpu


def speedup(base: list[float], new: list[float], digits: int = 3) -> dict[str, Any]:
    """Per-round ratios base/new, their median and how many rounds ``new`` was faster."""
    ratios = [b / n for b, n in zip(base, new)]
    return {"per_round": [round(v, 3) for v in ratios], "median": round(statistics.median(ratios), digits),
            "faster_rounds": sum(v > 1 for v in ratios)}


def medians(cpu: dict[str, list[float]]) -> dict[str, Any]:
    """The per-round CPU seconds and their medians, rounded as the JSON keeps them."""
    return {"cpu_s": {k: [round(v, 4) for v in vs] for k, vs in cpu.items()},
            "cpu_s_median": {k: round(statistics.median(vs), 4) for k, vs in cpu.items()}}
