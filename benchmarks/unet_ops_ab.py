#!/usr/bin/env python3
"""CPU seconds of a meta-step with ``bayes_unet``'s task-batched operators against their plain forms.

``BayesUNet.batched_forward`` (``models/unet.py``) runs four operators whose
plain PyTorch forms cost more in a second-order meta-step; each gives the
same values (``tests/test_unet_ops.py``):

``weights``
    ``_task_conv`` copies each task's weights to channels-last memory once
    (plain: ``reshape``, a copy, which the channels-last convolution then
    copies again to channels-last, forward and backward);
``relu``
    ``_relu``, whose double backward gives no zero-filled gradient to the
    ReLU's output (plain: ``F.relu``);
``cat``
    ``_task_cat``, whose backward and double backward are a split and a
    concatenation (plain: ``torch.cat``, whose backward slices and whose
    double backward zero-fills);
``head``
    ``_task_head``, the final 1x1 convolution as one ``einsum`` (plain: a
    grouped 1x1 ``F.conv2d``, which PyTorch runs one group at a time).

One process, one thread, ``benchmarks/meta_step.py``'s engine configuration
(``bayes_unet`` base 16, 32×32, 5-shot, K = 5, the gradient update, task
batch 8, exact second order unless ``--first-order``). Variants: ``plain``
(all four plain), ``new`` (none), and with ``--ablate`` each one plain alone
(``-relu`` etc.: the new operators but that one). One warm-up step per
variant, then ``--rounds`` rounds that time one meta-step of each variant
(the order reversed every other round), swapping the module's operators
between steps, as in ``benchmarks/conv_backward_ab.py``: paired steps
seconds apart see the same load on a shared machine. Reported: each
variant's median CPU seconds and the median over rounds of plain / variant.

    python benchmarks/unet_ops_ab.py --rounds 8 --ablate --out docs/results/unet_ops_ab.json
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

OPS = ("weights", "relu", "cat", "head")


def plain_ops() -> dict[str, Any]:
    """The plain PyTorch forms of the four operators (``models/unet.py`` before them), by global name."""
    import torch
    import torch.nn.functional as F
    from hvi.models import task_ops, unet

    def task_conv(h, weight, bias, padding):
        tasks, c_out = weight.shape[:2]
        return task_ops._TaskConv.apply(h, weight.reshape((tasks * c_out,) + weight.shape[2:]),
                                    bias.reshape(tasks * c_out), padding, tasks)

    def task_cat(a, b, tasks):
        n, _, h, w = a.shape
        parts = [t.permute(0, 2, 3, 1).reshape(n, h, w, tasks, -1) for t in (a, b)]
        return torch.cat(parts, dim=-1).reshape(n, h, w, -1).permute(0, 3, 1, 2)

    def task_head(z, weight, bias, tasks):
        n, _, h, w = z.shape
        out = unet._task_conv(z, weight, bias, 0)  # the weights operator as the variant has it
        return out.reshape(n, tasks, -1, h, w).permute(1, 0, 2, 3, 4)

    return {"weights": ("_task_conv", task_conv), "relu": ("_relu", F.relu), "cat": ("_task_cat", task_cat),
            "head": ("_task_head", task_head)}


def measure(first_order: bool, task_batch: int, rounds: int, ablate: bool | list[str]) -> dict[str, Any]:
    """Paired CPU seconds per meta-step of each variant, for one order."""
    from hvi.models import unet

    _meta, step = engine(task_batch, first_order)
    plain = plain_ops()
    new = {op: (name, getattr(unet, name)) for op, (name, _f) in plain.items()}
    variants = {"plain": set(OPS), "new": set()}
    if ablate:
        variants.update({f"-{op}": {op} for op in (OPS if ablate is True else ablate)})

    def use(plain_set):
        def install():
            for op in OPS:
                name, f = (plain if op in plain_set else new)[op]
                setattr(unet, name, f)
        return install

    cpu = paired_cpu(step, {k: use(v) for k, v in variants.items()}, rounds, use(set()))
    return {
        "order": "first" if first_order else "second",
        "task_batch": task_batch,
        **medians(cpu),
        "speedup_vs_plain": {k: speedup(cpu["plain"], cpu[k]) for k in variants if k != "plain"},
        "rounds": rounds,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--task-batch", type=int, default=8)
    p.add_argument("--ablate", action="store_true", help="also each operator plain alone (-relu, -cat, ...)")
    p.add_argument("--only", default=None, help="comma list of the ablations to run (e.g. relu); implies --ablate")
    p.add_argument("--orders", default="second,first", help="comma list of second, first")
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    load_start = round(os.getloadavg()[0], 2)
    rows = []
    for order in args.orders.split(","):
        ablate = args.only.split(",") if args.only else args.ablate
        rows.append(measure(order == "first", args.task_batch, args.rounds, ablate))
        r = rows[-1]
        print(f"{r['order']} order: CPU s per meta-step {r['cpu_s_median']}; plain / variant "
              f"{ {k: v['median'] for k, v in r['speedup_vs_plain'].items()} } (load {r['loadavg_1m']})", flush=True)
    if args.out:
        from provenance import write_result

        write_result(args.out, "benchmarks/unet_ops_ab.py", argv, {
            "config": "engine, bayes_unet base 16, 32x32, 5-shot, 5 query, K=5, gradient update, 1 thread",
            "loadavg_1m_start": load_start, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
