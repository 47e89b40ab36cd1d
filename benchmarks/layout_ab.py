#!/usr/bin/env python3
"""CPU seconds of a meta-step with the channels-last max-pool and head gradient against PyTorch's own.

Two operators of ``models/task_ops.py`` keep the gradients of a second-order
meta-step in channels-last memory (same values, ``tests/test_unet_ops.py``):

``max_pool``
    ``task_max_pool``, whose double backward gives the pooled input no
    gradient and gathers along contiguous channels (plain: ``F.max_pool2d``,
    whose double backward adds an NCHW zero tensor into that input's
    channels-last gradient, so the ReLU and convolution before it get NCHW
    gradients and run strided or converting kernels);
``head_grad``
    ``grad_channels_last`` on the U-Net head's input, which copies the
    head's ``einsum`` gradient (a batched matmul's, in ``(B*C, N, H, W)``
    order) to channels-last once (plain: the identity).

One process, one thread, paired steps (``paired_steps.py``: the order
reversed every other round, the module's operators swapped between steps).
``bayes_unet``: ``meta_step.py``'s engine (base 16, 32×32, 5-shot, K = 5,
task batch 8). ``conv4``: the glyph study's SVI step (``conv4_batched_ab.py``'s
``train_second`` / ``train_first``), which uses ``max_pool`` only. Reported:
each variant's median CPU seconds and the median over rounds of plain / new.

    python benchmarks/layout_ab.py --rounds 12 --out docs/results/layout_ab.json
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


def plain_ops() -> dict[str, tuple[str, Any]]:
    """PyTorch's own forms of the two operators, by the global name each model module uses."""
    import torch.nn.functional as F

    return {"max_pool": ("_max_pool", lambda x: F.max_pool2d(x, kernel_size=2)),
            "head_grad": ("_grad_channels_last", lambda x: x)}


def _swap(module: Any, names: dict[str, str], step: Any, rounds: int) -> dict[str, list[float]]:
    """Paired CPU seconds of ``step()`` with ``module``'s operators new and plain (``names``: op -> global name)."""
    plain = plain_ops()
    new = {op: getattr(module, name) for op, name in names.items()}

    def use(which: str):
        def install() -> None:
            for op, name in names.items():
                setattr(module, name, plain[op][1] if which == "plain" else new[op])
        return install

    return paired_cpu(step, {"plain": use("plain"), "new": use("new")}, rounds, use("new"))


def measure(model: str, first_order: bool, rounds: int) -> dict[str, Any]:
    if model == "bayes_unet":
        from hvi.models import unet

        _meta, step = engine(8, first_order)
        cpu = _swap(unet, {op: name for op, (name, _f) in plain_ops().items()}, step, rounds)
    else:
        import importlib

        import conv4_batched_ab

        conv4 = importlib.import_module("hvi.models.conv4")  # the module; hvi.models.conv4 is the builder

        step = conv4_batched_ab.operations(5, 20, 5)["train_first" if first_order else "train_second"]
        cpu = _swap(conv4, {"max_pool": "task_max_pool"}, step, rounds)
    return {"model": model, "order": "first" if first_order else "second", **medians(cpu),
            "speedup_vs_plain": speedup(cpu["plain"], cpu["new"]), "rounds": rounds,
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--models", default="bayes_unet,conv4", help="comma list of bayes_unet, conv4")
    p.add_argument("--orders", default="second,first", help="comma list of second, first")
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_start = round(os.getloadavg()[0], 2)
    rows = []
    for model in args.models.split(","):
        for order in args.orders.split(","):
            rows.append(measure(model, order == "first", args.rounds))
            r = rows[-1]
            print(f"{model}, {r['order']} order: CPU s {r['cpu_s_median']}; plain / new {r['speedup_vs_plain']} "
                  f"(load {r['loadavg_1m']})", flush=True)
    if args.out:
        from provenance import write_result

        write_result(args.out, "benchmarks/layout_ab.py", argv, {"loadavg_1m_start": load_start, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
