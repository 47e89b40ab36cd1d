"""``laplace``: a sparsity-inducing Laplace prior with a learned location and scale."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
from torch import Tensor

from hvi.priors.base import HierarchicalPrior, check_hyperparameter, constant_like, loc_scale_sites, register_prior
from hvi.sites import GlobalSite

__all__ = ["LaplacePrior"]


@register_prior("laplace")
class LaplacePrior(HierarchicalPrior):
    """Laplace p(φ|θ) = Laplace(μ, b) for sparsity: μ per weight, b learned per tensor or per weight.

    θ per weight tensor ``w``:

    * ``theta.<w>.loc`` μ: shape ``w.shape``, initialized from the network;
    * ``theta.<w>.scale`` b: shape ``()`` (one per tensor, default) or
      ``w.shape`` (``per_weight=True``), positive, initialized to ``init_scale``.

    Both are point estimates (empirical Bayes) unless ``hyperprior=True``.
    q(φ) is the default diagonal Normal, started at the prior's mean and std
    (μ, √2·b). KL(Normal ‖ Laplace) is analytic: PyTorch registers the closed form

        KL = log(b/s) + (s√(2/π) e^{-d²/2s²} + d·erf(d/(s√2))) / b − (1 + log(π/2))/2,

    with d = m − μ, for q = N(m, s²).

    Args:
        init_scale: Initial b (default 0.1; the prior std is √2·b).
        per_weight: Learn one b per weight instead of one per tensor (default False).
        hyperprior: If True, μ ~ N(0, loc_scale²) and b ~ LogNormal(log init_scale, 1)
            make θ latent (needed for ``q_theta="normal"``). Default False.
        loc_scale: Scale of the hyperprior on μ (default 1.0).
    """

    def __init__(
        self,
        init_scale: float = 0.1,
        per_weight: bool = False,
        hyperprior: bool = False,
        loc_scale: float = 1.0,
    ) -> None:
        self.init_scale = check_hyperparameter("init_scale", init_scale, "a positive scale")
        self.per_weight = bool(per_weight)
        self.hyperprior = bool(hyperprior)
        self.loc_scale = check_hyperparameter("loc_scale", loc_scale, "a positive standard deviation")

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        if self.per_weight:
            scale0 = constant_like(weight, self.init_scale)
        else:
            scale0 = weight.new_tensor(self.init_scale)
        return loc_scale_sites(weight, scale0, hyperprior=self.hyperprior, loc_scale=self.loc_scale)

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return dist.Laplace(theta["loc"], theta["scale"])

    def __repr__(self) -> str:
        return (
            f"LaplacePrior(init_scale={self.init_scale}, per_weight={self.per_weight}, "
            f"hyperprior={self.hyperprior}, loc_scale={self.loc_scale})"
        )
