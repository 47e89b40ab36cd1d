"""Variational families q(φ; λ) for the per-task weights.

A family says what λ is (a dict of unconstrained tensors shaped like the
weight), how to start it from the prior p(φ | θ) (λ^(0)), and how to draw
φ from q(φ; λ) given standard-normal noise (the reparameterization). The
inner loop adapts λ by gradient ascent; nothing else is needed.

Families are fully factorized: ``sample`` and ``dist`` act elementwise, so the
inner loop runs them once on all weights concatenated (a flat λ of length D)
rather than once per weight tensor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor

from hvi.distributions import ReparamNormal

__all__ = ["GuideFamily", "NormalFamily", "PointMassFamily", "inv_softplus"]


class _InvSoftplus(torch.autograd.Function):
    # As plain ops, x + log(-expm1(-x)) keeps two tensors of x's size for its
    # backward until the outer backward pass has run (λ^(0) of every weight
    # lives that long); this keeps only x, which its caller holds anyway.
    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return x + torch.log(-torch.expm1(-x))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        # d/dx [x + log(1 − e^{−x})] = 1/(1 − e^{−x}); differentiable again (double backward).
        return grad / -torch.expm1(-x)


def inv_softplus(x: Tensor) -> Tensor:
    """The inverse of ``softplus``: ``x + log(-expm1(-x))``, stable for small and large x."""
    return _InvSoftplus.apply(x)


class GuideFamily(ABC):
    """A reparameterizable family q(φ; λ) over one weight tensor."""

    #: Names of the λ tensors, e.g. ``("loc", "rho")``.
    param_names: tuple[str, ...] = ()
    #: Whether λ = (loc, rho) means N(loc, softplus(rho)²) (see :class:`NormalFamily`).
    diagonal_normal: bool = False

    @abstractmethod
    def init(self, prior: dist.Distribution) -> dict[str, Tensor]:
        """λ^(0) from p(φ | θ): the member of the family closest to the prior."""

    @abstractmethod
    def dist(self, lam: Mapping[str, Tensor]) -> dist.Distribution:
        """q(φ; λ) with batch shape = the weight's shape (no ``to_event``)."""

    @abstractmethod
    def sample(self, lam: Mapping[str, Tensor], eps: Tensor) -> Tensor:
        """A draw of φ from standard-normal noise ``eps`` (differentiable in λ)."""

    def is_valid(self, lam: Mapping[str, Tensor]) -> Tensor:
        """A 0-dim bool tensor: whether λ gives a proper q (default: every entry finite).

        The guide reads it once per call, after the inner loop, so a diverged
        loop is reported (and skipped by :class:`hvi.SVI`) instead of failing
        distribution validation.
        """
        return torch.stack([torch.isfinite(v).all() for v in lam.values()]).all()


class NormalFamily(GuideFamily):
    """Diagonal Normal: λ = (loc, rho), σ = softplus(rho).

    Starts at the prior's mean and standard deviation (exactly θ for a Normal
    prior), so λ^(0) = θ as in the design brief.
    """

    param_names = ("loc", "rho")
    #: λ = (loc, rho) means N(loc, softplus(rho)²): the inner loop may use the closed-form
    #: KL gradient and the natural step. A subclass that changes that meaning sets False.
    diagonal_normal = True

    def init(self, prior: dist.Distribution) -> dict[str, Tensor]:
        return {"loc": prior.mean, "rho": inv_softplus(prior.stddev)}

    def dist(self, lam: Mapping[str, Tensor]) -> dist.Distribution:
        return ReparamNormal(lam["loc"], F.softplus(lam["rho"]))

    def sample(self, lam: Mapping[str, Tensor], eps: Tensor) -> Tensor:
        return lam["loc"] + F.softplus(lam["rho"]) * eps

    def is_valid(self, lam: Mapping[str, Tensor]) -> Tensor:
        # A very negative ρ is finite, but softplus(ρ) underflows to a zero scale.
        return super().is_valid(lam) & (F.softplus(lam["rho"]) > 0).all()


class PointMassFamily(GuideFamily):
    """A point mass q(φ; λ) = δ(φ − loc): the deterministic family of MAML-style methods.

    Starts at the prior's mean (θ for a Normal prior); a draw is ``loc`` itself
    whatever the noise, so the inner loop's steps are plain gradient steps on
    the support log-likelihood. Used by ``MetaModel(method="maml" | "fomaml" |
    "reptile")`` (see :mod:`hvi.methods`).
    """

    param_names = ("loc",)

    def init(self, prior: dist.Distribution) -> dict[str, Tensor]:
        return {"loc": prior.mean}

    def dist(self, lam: Mapping[str, Tensor]) -> dist.Distribution:
        return dist.Delta(lam["loc"])

    def sample(self, lam: Mapping[str, Tensor], eps: Tensor) -> Tensor:
        loc = lam["loc"]
        return loc.expand(torch.broadcast_shapes(loc.shape, eps.shape))
