"""``normal-gamma``: Normal means and Gamma precisions with a hyperprior (as in ABML)."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
from pyro.distributions import constraints
from torch import Tensor

from hvi.distributions import Normal
from hvi.priors.base import HierarchicalPrior, check_hyperparameter, constant_like, register_prior
from hvi.sites import GlobalSite

__all__ = ["NormalGammaPrior"]


@register_prior("normal-gamma")
class NormalGammaPrior(HierarchicalPrior):
    """Normal-Gamma: p(φ|θ) = N(μ, 1/τ) with hyperprior μ ~ N(0, s²), τ ~ Gamma(a, b) per weight.

    The meta-prior of Amortized Bayesian Meta-Learning (Ravi & Beatson,
    2019). The defaults s = 1, a = 1, b = 0.01 (Gamma rate) follow public
    ABML implementations: a Gamma(1, 0.01) precision is an Exponential with
    mean 100, i.e. a prior std around 0.1, and weak enough that the tasks
    determine τ.

    θ per weight tensor ``w``, both **latent** (they have a hyperprior, so the
    guide's q(θ) covers them: a point mass for ``q_theta="delta"`` = MAP, a
    diagonal Normal on (μ, log τ) for ``q_theta="normal"``):

    * ``theta.<w>.loc`` μ: shape ``w.shape``, initialized from the network;
    * ``theta.<w>.precision`` τ: shape ``w.shape``, positive, initialized
      to ``1 / init_scale²``.

    q(φ) is the default diagonal Normal; KL(q ‖ p) is analytic.

    Args:
        init_scale: Initial prior std 1/√τ of every weight (default 0.1).
        loc_scale: s, the std of the hyperprior on μ (default 1.0).
        concentration: a, the Gamma shape of the hyperprior on τ (default 1.0).
        rate: b, the Gamma rate of the hyperprior on τ (default 0.01).
    """

    def __init__(
        self,
        init_scale: float = 0.1,
        loc_scale: float = 1.0,
        concentration: float = 1.0,
        rate: float = 0.01,
    ) -> None:
        self.init_scale = check_hyperparameter("init_scale", init_scale)
        self.loc_scale = check_hyperparameter("loc_scale", loc_scale)
        self.concentration = check_hyperparameter("concentration", concentration)
        self.rate = check_hyperparameter("rate", rate)

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        # The loc init without a copy, as in loc_scale_sites.
        return {
            "loc": GlobalSite(weight.detach(), constraints.real, dist.Normal(constant_like(weight, 0.0), self.loc_scale)),
            "precision": GlobalSite(
                constant_like(weight, self.init_scale**-2),
                constraints.positive,
                dist.Gamma(constant_like(weight, self.concentration), constant_like(weight, self.rate)),
            ),
        }

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return Normal(theta["loc"], theta["precision"].rsqrt())

    def __repr__(self) -> str:
        return (
            f"NormalGammaPrior(init_scale={self.init_scale}, loc_scale={self.loc_scale}, "
            f"concentration={self.concentration}, rate={self.rate})"
        )
