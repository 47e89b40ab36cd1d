"""Global latent sites: the θ of θ → φ_i → D_i."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from pyro.distributions import Distribution, constraints
from torch import Tensor
from torch.distributions import biject_to, transform_to
from torch.distributions.transforms import ExpTransform

__all__ = ["GlobalSite", "positive"]


class _ExpPositive(type(constraints.positive)):  # torch's class is private: reached through its singleton
    """(0, ∞), reached from the unconstrained space by ``exp`` alone.

    PyTorch maps ``constraints.positive`` to exp followed by an identity
    affine map (x ↦ 0 + 1·x): two extra kernels and one extra tensor of the
    site's size every time the param store reads the value, which the model
    and the guide both do on every step. Same support, same values.
    """

    def __init__(self) -> None:
        super().__init__(0.0)

    def __repr__(self) -> str:
        return "hvi.sites.positive"

    def __reduce__(self) -> str:  # copies and pickles are the module's singleton
        return "positive"


#: ``constraints.positive`` with the bijection ``exp`` alone (see :class:`GlobalSite`).
positive = _ExpPositive()


@biject_to.register(_ExpPositive)
@transform_to.register(_ExpPositive)
def _exp_transform(constraint: constraints.Constraint) -> ExpTransform:
    return ExpTransform()


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
            scale must be declared ``constraints.positive``, which is stored
            as :data:`hvi.sites.positive` (the same support through ``exp``
            alone, without PyTorch's identity affine step).
        hyperprior: Optional distribution p(θ) whose batch shape broadcasts to
            ``init.shape``; it is expanded and ``to_event``-ed for you.
    """

    init: Tensor
    constraint: constraints.Constraint = constraints.real
    hyperprior: Distribution | None = field(default=None)

    def __post_init__(self) -> None:
        if self.constraint is constraints.positive:
            object.__setattr__(self, "constraint", positive)

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
