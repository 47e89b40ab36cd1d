#!/usr/bin/env python3
"""CPU seconds of conv4's many-task forward (``Conv4.batched_forward``) against vmap of its forward.

``hvi.functional.FunctionalNet`` runs a module's own ``batched_forward``
when it has one, else ``torch.func.vmap`` of ``forward``; this script swaps
``Conv4.batched_forward`` in and out between paired operations in one
process (one thread, the order reversed every other round; see
``paired_steps.py``), on the glyph study's setup (``glyph_methods.py``:
``conv4`` hidden 32, 5-way episodes, ABML with the line search):

* ``train_second`` / ``train_first``: one SVI step on 4 training episodes,
  3 inner steps, exact second order / first order;
* ``predict``: ``hvi.predict`` of ``--episodes`` held-out episodes at 3 inner
  steps with 10 weight draws, in calls of ``--chunk`` episodes.

Reported per operation: each variant's median CPU seconds, the median over
rounds of vmap / batched, and the rounds in which batched was faster.

    python benchmarks/conv4_batched_ab.py --rounds 6 --out docs/results/conv4_batched_ab.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from paired_steps import medians, paired_cpu, speedup  # noqa: E402


def operations(k_shot: int, episodes: int, chunk: int) -> dict[str, Any]:
    """The timed operations, each a no-argument callable, on one glyph setup."""
    import pyro
    import torch

    import hvi
    from hvi.fit import make_elbo

    torch.set_num_threads(1)
    hvi.tune_allocator()
    source = hvi.data.get_source("glyphs", n_way=5, k_shot=k_shot, k_query=5, num_tasks=(5000, 500, 500))
    train = source.get_tasks("train", torch.arange(4))
    test = source.get_tasks("test", torch.arange(episodes))
    ops = {}
    for order in ("second", "first"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        net = hvi.models.get_model("conv4", hidden=32)
        inner = hvi.InnerConfig(steps=3, update="natural", lr=0.3, kl_weight=1e-3, line_search=True,
                                first_order=order == "first")
        meta = hvi.MetaModel(net, prior=hvi.get_prior("gaussian", init_scale=0.01), likelihood=hvi.Categorical(),
                             inner=inner)
        svi = hvi.SVI(meta.model, meta.guide, pyro.optim.Adam({"lr": 1e-3}), loss=make_elbo())
        svi.step(train)  # the params exist before any timing
        ops[f"train_{order}"] = (lambda s=svi: s.step(train))
        if order == "second":
            ops["predict"] = (lambda m=meta: [hvi.predict(m, test.tasks(slice(lo, lo + chunk)), inner_steps=3,
                                                          num_samples=10) for lo in range(0, episodes, chunk)])
    return ops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6, help="paired rounds per operation (default 6)")
    p.add_argument("--shots", type=int, default=5, help="k_shot of the episodes (default 5)")
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes per predict (default 20)")
    p.add_argument("--chunk", type=int, default=5, help="episodes per predict call (default 5)")
    p.add_argument("--out", default=None, help="JSON file to write (benchmarks/provenance.py)")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from hvi.models.conv4 import Conv4

    own = Conv4.batched_forward

    def use(f):
        return lambda: setattr(Conv4, "batched_forward", f)

    # None: FunctionalNet finds no callable batched_forward and runs vmap of forward.
    variants = {"vmap": use(None), "batched": use(own)}
    load_start = round(os.getloadavg()[0], 2)
    rows = []
    for name, op in operations(args.shots, args.episodes, args.chunk).items():
        cpu = paired_cpu(op, variants, args.rounds, use(own))
        rows.append({"operation": name, **medians(cpu),
                     "speedup": {**speedup(cpu["vmap"], cpu["batched"]), "rounds": args.rounds},
                     "loadavg_1m": round(os.getloadavg()[0], 2)})
        r = rows[-1]
        print(f"{name}: CPU s {r['cpu_s_median']}; vmap / batched {r['speedup']['median']} "
              f"({r['speedup']['faster_rounds']}/{args.rounds} rounds faster; load {r['loadavg_1m']})", flush=True)
    if args.out:
        from provenance import write_result

        write_result(args.out, "benchmarks/conv4_batched_ab.py", argv, {
            "config": f"glyphs 5-way {args.shots}-shot, 5 query, conv4 hidden 32, ABML natural α 0.3 with the line "
                      f"search, β 1e-3, 3 inner steps; train: 4 episodes per step; predict: {args.episodes} episodes "
                      f"in calls of {args.chunk}, 10 draws; 1 thread",
            "loadavg_1m_start": load_start, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
