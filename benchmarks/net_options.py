#!/usr/bin/env python3
"""The network's speed options (``FunctionalNet.configure``): ``torch.compile`` and a bf16 forward.

* Speed: ``benchmarks/meta_step.py`` (one fresh worker per configuration) on
  the U-Net, first and second order, with the forward as it is, compiled
  (``--compile``, inductor) and in bf16 (``--autocast bf16``).
* Accuracy: the relative difference of a second- and a first-order
  meta-gradient in bf16 and fp16 from float32 (tiny U-Net, as in
  ``tests/test_net_options.py``), and whether it is finite.

::

    python benchmarks/net_options.py --out docs/results/net_options.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from provenance import write_result

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def speed(args) -> list[dict]:
    rows = []
    for first in (False, True):
        for extra in ([], ["--autocast", "bf16"], ["--compile"]):
            cmd = [sys.executable, str(HERE / "meta_step.py"), "--impl", "engine", "--json", "--no-matmul",
                   "--no-flops", "--base", str(args.base), "--size", "32", "--inner-steps", "5",
                   "--task-batch", str(args.task_batch), "--threads", "1", "--steps", str(args.steps),
                   "--warmup", "1", *(["--first-order"] if first else []), *extra]
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
            if proc.returncode != 0:
                err = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
                rows.append({"first_order": first, "options": " ".join(extra) or "none", "error": " | ".join(err)})
                print(rows[-1], flush=True)
                continue
            for r in (json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")):
                r["options"] = " ".join(extra) or "none"
                rows.append(r)
                print(f"{'1st' if first else '2nd'} {r['options']:16s} {r['tasks_per_s']:.3f} tasks/s "
                      f"peak {r['peak_rss_mb']:.0f} MB load {r['loadavg_1m']} finite {r['loss_finite']}", flush=True)
    return rows


def accuracy() -> list[dict]:
    import pyro
    import torch
    from pyro.infer import Trace_ELBO

    import hvi
    from hvi.models import get_model
    from hvi.priors import GaussianPrior

    torch.set_num_threads(1)

    def grad(first_order: bool, autocast: str):
        pyro.clear_param_store()
        torch.manual_seed(0)
        net = get_model("bayes_unet", in_channels=3, out_channels=1, base=4, depth=2)
        meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.05), hvi.Gaussian(init_scale=0.5),
                             inner=hvi.InnerConfig(steps=2, update="gradient", lr=1e-3, first_order=first_order))
        meta.net.configure(autocast=autocast)
        g = torch.Generator().manual_seed(1)
        batch = hvi.TaskBatch(*(torch.randn(2, 3, c, 8, 8, generator=g) for c in (3, 1, 3, 1)))
        pyro.set_rng_seed(3)
        loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
        params = dict(pyro.get_param_store().named_parameters())
        return torch.cat([v.reshape(-1) for v in torch.autograd.grad(loss, list(params.values()))])

    out = []
    for first in (False, True):
        ref = grad(first, "none")
        for prec in ("bf16", "fp16"):
            g = grad(first, prec)
            out.append({"first_order": first, "autocast": prec, "finite": bool(torch.isfinite(g).all()),
                        "rel_grad_diff": float((g - ref).norm() / ref.norm()),
                        "max_abs_rel_diff": float(((g - ref).abs().max() / ref.abs().max())),
                        "setup": "bayes_unet base 4 depth 2, 2 tasks, 3-shot 8x8, K = 2 gradient steps"})
            print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(HERE.parent / "docs/results/net_options.json"))
    p.add_argument("--base", type=int, default=8, help="U-Net channels at the first level")
    p.add_argument("--task-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="timed meta-steps (after 1 warm-up, which compiles)")
    args = p.parse_args(argv)
    load_before = [round(v, 2) for v in os.getloadavg()]
    acc = accuracy()
    rows = speed(args)
    write_result(args.out, "benchmarks/net_options.py", argv, {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before,
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                    "note": "a machine shared with other jobs: timings were taken under load"},
        "accuracy": acc, "results": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
