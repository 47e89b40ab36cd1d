"""Tasks ``offset .. offset + local`` of a batch of ``total``, drawing the random numbers they have in the whole batch.

A step over a *shard* of a task batch (a data-parallel rank's share,
:mod:`hvi.distributed`, or a chunk of a chunked step, :meth:`hvi.SVI.step_chunked`)
gives each task exactly the noise it has when the whole batch is processed at
once: the inner loop's per-task streams are keyed by the task's position in
the whole batch (:data:`hvi.noise.TASK_SHARD`), and the q(φ_i) sample inside
the ``tasks`` plate is cut from the whole batch's noise tensor
(:class:`GlobalTaskDraws`). Together with the same global RNG state at the
start of every shard, a shard's terms are the whole batch's terms for its tasks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from pyro.distributions import Independent
from pyro.poutine.messenger import Messenger

from hvi.distributions import ReparamNormal
from hvi.noise import TASK_SHARD

__all__ = ["GlobalTaskDraws", "task_shard"]


class GlobalTaskDraws(Messenger):
    """Draws a q(φ_i) sample (:class:`~hvi.distributions.ReparamNormal`) inside the
    ``tasks`` plate from the global batch's noise tensor, keeping this shard's slice."""

    def __init__(self, offset: int, local: int, total: int) -> None:
        super().__init__()
        self.offset, self.local, self.total = offset, local, total

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["done"]:
            return
        frames = [f for f in msg["cond_indep_stack"] if f.name == "tasks"]
        fn, base = msg["fn"], msg["fn"]
        while isinstance(base, Independent):
            base = base.base_dist
        if not frames or type(base) is not ReparamNormal or msg["kwargs"].get("sample_shape"):
            return
        shape = list(fn.batch_shape + fn.event_shape)
        at = len(fn.batch_shape) + frames[0].dim
        if not 0 <= at < len(shape) or shape[at] != self.local:
            return
        shape[at] = self.total
        eps = torch.randn(shape, dtype=base.loc.dtype, device=base.loc.device).narrow(at, self.offset, self.local)
        value = base.loc + eps * base.scale
        base._sample, base._eps = value, eps
        msg["value"] = value
        msg["done"] = True


@contextlib.contextmanager
def task_shard(offset: int, local: int, total: int) -> Iterator[None]:
    """Within: a batch of ``local`` tasks is tasks ``offset ..`` of a batch of ``total`` (noise and q(φ_i) draws)."""
    token = TASK_SHARD.set((offset, total, local))
    try:
        with GlobalTaskDraws(offset, local, total):
            yield
    finally:
        TASK_SHARD.reset(token)
