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
