"""``gaussian``: a diagonal Normal with a learned mean and scale per weight."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
from torch import Tensor

from hvi.distributions import Normal
from hvi.priors.base import HierarchicalPrior, check_hyperparameter, constant_like, loc_scale_sites, register_prior
from hvi.sites import GlobalSite

__all__ = ["GaussianPrior"]


@register_prior("gaussian")
class GaussianPrior(HierarchicalPrior):
    """Diagonal Normal p(φ|θ) = N(μ, σ²) with a learned μ and σ per weight (the default prior).

    θ per weight tensor: ``loc`` (initialized from the network) and ``scale``.

    Args:
        init_scale: Initial σ of every weight (default 0.1).
        hyperprior: If True, θ gets the hyperprior μ ~ N(0, loc_scale²) and
            σ ~ LogNormal(log init_scale, 1), making θ latent (needed for
            ``q_theta="normal"``). Default False: empirical Bayes.
        loc_scale: Scale of the hyperprior on μ (default 1.0).
        learn_scale: If False, σ stays at ``init_scale`` (a fixed-variance prior).
    """

    def __init__(
        self,
        init_scale: float = 0.1,
        hyperprior: bool = False,
        loc_scale: float = 1.0,
        learn_scale: bool = True,
    ) -> None:
        self.init_scale = check_hyperparameter("init_scale", init_scale, "a positive standard deviation")
        self.hyperprior = bool(hyperprior)
        self.loc_scale = check_hyperparameter("loc_scale", loc_scale, "a positive standard deviation")
        self.learn_scale = bool(learn_scale)

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        sites = loc_scale_sites(
            weight, constant_like(weight, self.init_scale), hyperprior=self.hyperprior, loc_scale=self.loc_scale
        )
        if not self.learn_scale:
            del sites["scale"]
        return sites

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        scale = theta["scale"] if self.learn_scale else self.init_scale
        return Normal(theta["loc"], scale)
