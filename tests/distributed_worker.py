"""Worker for tests/test_distributed.py, launched by torchrun (2 CPU ranks, gloo).

``python -m torch.distributed.run --nproc-per-node 2 tests/distributed_worker.py OUT CASE``

* CASE ``delta`` / ``normal`` / ``maml`` (or ``all``: the three): a few steps of a
  conjugate model like tests/test_conjugate.py's (float64), data-parallel; rank 0
  then refits the same model in one process (``distributed=False``) and saves
  ``{case: {"distributed": params, "single": params}}`` to OUT (with ``"parts"``:
  each step's loss and ELBO parts, which rank 0 reports for the whole batch).
* CASE ``crash``: rank 1 raises in its third step (after writing the time to
  OUT.crash); ``all+crash``: ``all``, then a fit with a different seed per
  rank (its error to OUT.seedRANK), a fit whose step 1 diverges on rank 1
  (the skipped steps to OUT.skippedRANK), then the crash.
"""

from __future__ import annotations

import sys
import time

import pyro
import torch

import hvi
import hvi.distributed
from hvi.fit import make_elbo
from hvi.priors import GaussianPrior
from test_conjugate import D, VectorNet  # this file's folder is on sys.path under torchrun

M, N = 10, 5


def data() -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(1)
    phi = torch.tensor([2.0, -1.5], dtype=torch.float64) + torch.randn(M, D, generator=g, dtype=torch.float64)
    y = phi[:, None, :] + torch.randn(M, 2 * N, D, generator=g, dtype=torch.float64)
    x = torch.zeros(M, 2 * N, 1, dtype=torch.float64)
    return hvi.TaskBatch(x[:, :N], y[:, :N], x[:, N:], y[:, N:])


def build(case: str) -> hvi.MetaModel:
    q_theta = "normal" if case == "normal" else "delta"
    prior = GaussianPrior(init_scale=1.0, learn_scale=True, hyperprior=q_theta == "normal", loc_scale=10.0)
    method = "maml" if case == "maml" else "abml"
    inner = hvi.InnerConfig(steps=3, lr=0.5, num_samples=4) if method == "abml" else None
    return hvi.MetaModel(VectorNet(), prior, hvi.Gaussian(noise=1.0), q_theta=q_theta, inner=inner,
                         q_theta_init_scale=0.1, method=method)


def run(case: str, distributed: bool, callback=None) -> dict[str, torch.Tensor]:
    """The params after 4 steps, and ``"parts"``: each step's loss and ELBO parts (float64 tensor)."""
    meta = build(case)
    elbo = make_elbo(num_particles=2 if case == "normal" else 1)
    parts = []

    def record(step, loss, batch):
        if case != "maml":
            parts.append([loss, *(elbo.last_parts[k] for k in ("ell", "local_kl", "global_kl"))])
        if callback is not None:
            callback(step, loss, batch)

    # 5 of the 10 tasks per step: shards of 3 and 2 (unequal, so the B_r/B weights matter)
    result = hvi.fit(meta, data(), steps=4, task_batch=5, lr=0.05, elbo=elbo, seed=0, distributed=distributed,
                     callback=record)
    out = {k: v.clone() for k, v in result.params.items()}
    out["parts"] = torch.tensor(parts or [list(result.losses)], dtype=torch.float64)
    return out


def main() -> None:
    out, case = sys.argv[1], sys.argv[2]
    world = hvi.distributed.init()
    assert world is not None and world.world_size == 2
    saved = {}
    for c in ("delta", "normal", "maml") if case in ("all", "all+crash") else (case,) if case != "crash" else ():
        params = run(c, True)
        if world.rank == 0:
            pyro.clear_param_store()
            saved[c] = {"distributed": params, "single": run(c, False)}
    if world.rank == 0 and saved:
        torch.save(saved, out)
    if case == "all+crash":  # ranks with different seeds are refused on every rank, without a hang
        try:
            hvi.fit(build("delta"), data(), steps=1, task_batch=4, seed=world.rank)
        except ValueError as e:
            with open(f"{out}.seed{world.rank}", "w") as f:
                f.write(str(e))
    if case == "all+crash":  # rank 1's inner loop diverges in step 1: every rank skips that step
        meta, calls = build("delta"), [0]
        guide = meta.guide

        def diverging(*args, **kwargs):
            calls[0] += 1
            if world.rank == 1 and calls[0] == 2:
                raise FloatingPointError("injected divergence")
            return guide(*args, **kwargs)

        meta.guide = diverging
        result = hvi.fit(meta, data(), steps=3, task_batch=4, seed=0)
        with open(f"{out}.skipped{world.rank}", "w") as f:
            f.write(repr(list(result.skipped)))
    if case.endswith("crash"):

        def crash(step, loss, batch):
            if world.rank == 1 and step == 2:
                with open(out + ".crash", "w") as f:
                    f.write(repr(time.time()))
                raise RuntimeError("injected failure on rank 1")

        run("delta", True, crash)


if __name__ == "__main__":
    main()
