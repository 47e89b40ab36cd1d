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
"""

from __future__ import annotations

import pyro.infer
import pyro.poutine as poutine
from pyro.infer.util import torch_item

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

    def step(self, *args, **kwargs) -> float | tuple[float, ...]:
        """One gradient step on the loss; returns the loss estimate (a tuple for tuple losses).

        Arguments are passed to the model and guide.
        """
        with poutine.trace(param_only=True) as capture:
            loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        self.optim(params)
        for p in params:
            p.grad = None
        if isinstance(loss, tuple):  # e.g. ReweightedWakeSleep
            return type(loss)(map(torch_item, loss))
        return torch_item(loss)
