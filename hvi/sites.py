"""Global latent sites: the θ of θ → φ_i → D_i."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.distributions import Distribution, constraints
from torch import Tensor

__all__ = ["GlobalSite"]


@dataclass(frozen=True)
class GlobalSite:
    """One global quantity shared by all tasks.

    Without a ``hyperprior`` the site is a point estimate learned by
    maximizing the ELBO (empirical Bayes, a ``pyro.param``). With one it is a
    latent variable ``pyro.sample``-d from ``hyperprior`` and the guide's q(θ)
    (point mass or diagonal Normal, see ``MetaModel(q_theta=...)``) covers it.

    Args:
        init: Initial value; its shape is the site's shape.
        constraint: Support of the value (default ``constraints.real``); a
            scale must be declared ``constraints.positive``.
        hyperprior: Optional distribution p(θ) whose batch shape broadcasts to
            ``init.shape``; it is expanded and ``to_event``-ed for you.
    """

    init: Tensor
    constraint: constraints.Constraint = constraints.real
    hyperprior: Distribution | None = field(default=None)

    @property
    def shape(self) -> torch.Size:
        return self.init.shape

    def fresh_init(self) -> Tensor:
        """A copy of ``init``, for ``pyro.param``'s lazy init.

        The param store keeps the tensor it is given and the optimizer updates
        it in place, which would rewrite ``init``; passed as a callable, the
        copy is made once, when the param is created, not on every step.
        """
        return self.init.clone()

    @property
    def latent(self) -> bool:
        return self.hyperprior is not None

    def hyperprior_dist(self) -> Distribution:
        """The hyperprior expanded to the site's shape with every dim as event."""
        assert self.hyperprior is not None
        d = self.hyperprior
        if d.event_shape:
            return d
        return d.expand(self.shape).to_event(len(self.shape))
