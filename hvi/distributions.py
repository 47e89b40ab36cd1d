"""Normal densities that keep little for the backward pass.

Every step scores each weight tensor's φ under p(φ | θ) and q(φ; λ), and every
observation under the likelihood, all with Normal densities of φ's (or the
data's) size. ``torch.distributions.Normal.log_prob`` builds
−(x − μ)²/(2σ²) − log σ − log √(2π) from plain ops, and autograd keeps three
tensors of that size per density (x − μ, its square, 2σ²) until the loss is
differentiated. These classes give the same values and gradients and keep
nothing new:

* :class:`Normal` computes the density in one autograd node that saves only
  its inputs (which the caller holds anyway) and recomputes z = (x − μ)/σ in
  the backward pass. Its backward is differentiable again, so it serves
  second-order inner loops.
* :class:`ReparamNormal` also remembers the standard-normal noise of its own
  ``rsample``: at φ = μ + σε the density is −ε²/2 − log σ − log √(2π) exactly,
  for every λ, so its gradients are those of the generic formula too.

Use :class:`Normal` in a custom prior (``HierarchicalPrior.local``) to get the
same savings; ``pyro.distributions.Normal`` works as well, at the generic cost.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = ["Normal", "ReparamNormal"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _NormalLogProb(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(value: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        # The division is out of place: under vmap, ``value - loc`` may lack a batch dim that ``scale`` has.
        z = torch.div(value - loc, scale)
        return z.mul_(z).mul_(-0.5).sub_(scale.log().add_(_LOG_SQRT_2PI))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        value, loc, scale = ctx.saved_tensors
        # Out of place, so that a create_graph backward (second order) can be differentiated.
        z = (value - loc) / scale
        g = grad / scale
        g_value = -z * g if ctx.needs_input_grad[0] or ctx.needs_input_grad[1] else None
        g_scale = (z * z - 1) * g if ctx.needs_input_grad[2] else None
        return (
            _reduce(g_value, value) if ctx.needs_input_grad[0] else None,
            _reduce(-g_value, loc) if ctx.needs_input_grad[1] else None,
            _reduce(g_scale, scale),
        )


def _reduce(g: Tensor | None, like: Tensor) -> Tensor | None:
    """``g`` summed down to the shape of the input it belongs to (undoes broadcasting)."""
    if g is None or g.shape == like.shape:
        return g
    return g.sum_to_size(like.shape)


class Normal(dist.Normal):
    """``pyro.distributions.Normal`` whose ``log_prob`` keeps only its inputs for backward.

    Same parameters, values and gradients (first and second order) as
    :class:`pyro.distributions.Normal`; see the module docstring for why.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _NormalLogProb.apply(value, self.loc, self.scale)


class ReparamNormal(Normal):
    """A :class:`Normal` that scores its own reparameterized sample from the noise.

    ``log_prob(φ)`` for the tensor ``φ`` that this distribution's last
    ``rsample`` returned is −ε²/2 − log σ − log √(2π) (no tensor of φ's size
    kept for backward: σ and ε are held by φ's own graph); any other value is
    scored as by :class:`Normal`. The guide's q(φ; λ) is one: Trace_ELBO
    scores every φ site at its own sample on every step.
    """

    _sample: Tensor | None = None
    _eps: Tensor | None = None

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        value = self.loc + eps * self.scale
        self._sample, self._eps = value, eps
        return value

    def log_prob(self, value: Tensor) -> Tensor:
        if value is not self._sample:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        return self._eps.square().mul_(-0.5).sub_(_LOG_SQRT_2PI) - self.scale.log()
