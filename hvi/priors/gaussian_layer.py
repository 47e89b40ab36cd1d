"""``gaussian-layer``: a Normal with a learned mean per weight and one learned scale per tensor."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
from torch import Tensor

from hvi.distributions import Normal
from hvi.priors.base import HierarchicalPrior, check_hyperparameter, loc_scale_sites, register_prior
from hvi.sites import GlobalSite

__all__ = ["GaussianLayerPrior"]


@register_prior("gaussian-layer")
class GaussianLayerPrior(HierarchicalPrior):
    """Normal p(φ|θ) = N(μ, σ²) with a learned μ per weight and one learned σ per weight tensor.

    Roughly half the global parameters of ``gaussian``: every weight tensor
    (a layer's weight matrix, its bias) shares one prior scale.

    θ per weight tensor ``w``:

    * ``theta.<w>.loc``: shape ``w.shape``, initialized from the network;
    * ``theta.<w>.scale``: shape ``()``, positive, initialized to ``init_scale``.

    Both are point estimates (``pyro.param``, empirical Bayes) unless
    ``hyperprior=True``. q(φ) is the default diagonal Normal and
    KL(q ‖ p) is analytic (Normal ‖ Normal).

    Args:
        init_scale: Initial σ of every tensor (default 0.1).
        hyperprior: If True, μ ~ N(0, loc_scale²) and σ ~ LogNormal(log init_scale, 1)
            make θ latent (covered by q(θ), needed for ``q_theta="normal"``).
            Default False.
        loc_scale: Scale of the hyperprior on μ (default 1.0).
    """

    def __init__(self, init_scale: float = 0.1, hyperprior: bool = False, loc_scale: float = 1.0) -> None:
        self.init_scale = check_hyperparameter("init_scale", init_scale, "a positive standard deviation")
        self.hyperprior = bool(hyperprior)
        self.loc_scale = check_hyperparameter("loc_scale", loc_scale, "a positive standard deviation")

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        scale0 = weight.new_tensor(self.init_scale)
        return loc_scale_sites(weight, scale0, hyperprior=self.hyperprior, loc_scale=self.loc_scale)

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return Normal(theta["loc"], theta["scale"])

    def __repr__(self) -> str:
        return (
            f"GaussianLayerPrior(init_scale={self.init_scale}, hyperprior={self.hyperprior}, "
            f"loc_scale={self.loc_scale})"
        )


