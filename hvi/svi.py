"""``pyro.infer.SVI`` whose step frees the gradients instead of zero-filling them.

Pyro's ``SVI.step`` ends with ``zero_grads``, which gives every parameter a
fresh zero tensor as its gradient. Those tensors stay allocated until the next
backward pass, so the whole next inner loop, the phase with the highest
memory use, runs with 2·D extra floats held for D weights (θ's mean and scale).
:class:`SVI` sets the gradients to ``None`` instead, as ``torch.optim``'s
``zero_grad()`` has done by default since PyTorch 2.0. Autograd then creates
the next gradient and does not add into zeros. The values are the same.

One difference: a parameter that gets no gradient in a step is not stepped
by the optimizer. Pyro's zero gradient would let Adam's momentum move it.

A step whose loss or gradients are not finite is not applied (``skipped``
counts them): one diverged inner loop would otherwise put inf into Adam's
second moment, and every parameter it touched would stay frozen for thousands
of steps. A guide that raises ``FloatingPointError`` (a diverged inner loop)
is skipped the same way; :func:`hvi.fit` stops after too many in a row.

``reduce_grads`` (set by :func:`hvi.fit` in a data-parallel run) combines the
gradients and loss of all ranks after the backward pass and before that check
(:class:`hvi.distributed.GradAllReduce`), so every rank applies or skips the
same step.
"""

from __future__ import annotations

import math

import pyro.infer
import pyro.poutine as poutine
import torch
from pyro.infer.util import torch_item

from hvi.tasks import TaskBatch

__all__ = ["SVI"]


class SVI(pyro.infer.SVI):
    """``pyro.infer.SVI`` with the same constructor. Its ``step`` frees the gradients afterwards.

    Args:
        model: The Pyro model.
        guide: The Pyro guide.
        optim: A Pyro optimizer (e.g. ``pyro.optim.Adam``).
        loss: An ELBO instance (e.g. ``Trace_ELBO()``).
        **kwargs: As for ``pyro.infer.SVI``.
    """

    #: Steps not applied because the loss or a gradient was not finite.
    skipped: int = 0
    #: ``f(params, loss) -> (params, loss)`` run after the backward pass (None: single process).
    reduce_grads = None

    def step(self, *args, **kwargs) -> float | tuple[float, ...]:
        """One gradient step on the loss; returns the loss estimate (a tuple for tuple losses).

        Arguments are passed to the model and guide. A non-finite step is not
        applied and returns ``nan`` (see the module docstring).
        """
        with poutine.trace(param_only=True) as capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except FloatingPointError:
                loss = math.nan
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        return self._apply(params, loss)

    def step_chunked(self, batch: TaskBatch, size: int) -> float:
        """:meth:`step` on ``batch`` in chunks of ``size`` tasks, one backward pass each (gradient accumulation).

        Peak memory is that of a chunk, not of the batch. The step equals the
        unchunked one: every chunk starts from the same RNG state (so a latent
        θ draw is the same), its tasks draw the noise they have in the whole
        batch (:func:`hvi.shards.task_shard`), and its ELBO is scaled by
        ``chunk / B`` (``poutine.scale``), so the tasks' terms add up to the
        batch's M/B-scaled sum and the global terms (KL of q(θ)) to one copy.
        An ELBO's ``last_parts`` (:mod:`hvi.elbo_parts`) are summed the same way.
        """
        from hvi.shards import task_shard

        B = batch.batch_size
        if size >= B:
            return self.step(batch)
        devices = [batch.support_x.device.index or 0] if batch.support_x.is_cuda else []
        cpu_state = torch.get_rng_state()
        cuda_states = [torch.cuda.get_rng_state(d) for d in devices]
        elbo = getattr(self.loss_and_grads, "__self__", None)  # the ELBO instance, if the loss is one
        loss, parts = 0.0, {}
        with poutine.trace(param_only=True) as capture:
            try:
                for start in range(0, B, size):
                    n = min(size, B - start)
                    torch.set_rng_state(cpu_state)
                    for d, st in zip(devices, cuda_states):
                        torch.cuda.set_rng_state(st, d)
                    w = n / B
                    with task_shard(start, n, B):
                        loss_c = self.loss_and_grads(poutine.scale(self.model, scale=w),
                                                     poutine.scale(self.guide, scale=w), batch.tasks(slice(start, start + n)))
                    loss = loss + torch_item(loss_c)
                    for k, v in (getattr(elbo, "last_parts", None) or {}).items():
                        parts[k] = parts.get(k, 0.0) + v
            except FloatingPointError:
                loss = math.nan
        if hasattr(elbo, "last_parts"):
            elbo.last_parts = parts if parts and math.isfinite(loss) else None
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        return self._apply(params, loss)

    def _apply(self, params: set, loss) -> float | tuple[float, ...]:
        """The optimizer step on ``params``' gradients unless loss or a gradient is not finite; frees the gradients."""
        if self.reduce_grads is not None:  # data-parallel: the global gradient and loss
            params, loss = self.reduce_grads(params, loss)
        grads = [p.grad for p in params if p.grad is not None]
        finite = not isinstance(loss, float) or math.isfinite(loss)
        if finite and grads:  # one host sync for all gradients
            finite = bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) and math.isfinite(torch_item(loss))
        if finite:
            self.optim(params)
        else:
            self.skipped += 1
            loss = math.nan
        for p in params:
            p.grad = None
        if isinstance(loss, tuple):  # e.g. ReweightedWakeSleep
            return type(loss)(map(torch_item, loss))
        return torch_item(loss)
