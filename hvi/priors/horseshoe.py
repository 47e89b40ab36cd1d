"""``horseshoe``: a global-local scale mixture of Normals for shrinkage."""

from __future__ import annotations

from collections.abc import Mapping

import pyro.distributions as dist
from pyro.distributions import constraints
from torch import Tensor

from hvi.distributions import Normal
from hvi.priors.base import HierarchicalPrior, check_hyperparameter, constant_like, register_prior
from hvi.sites import GlobalSite

__all__ = ["HorseshoePrior"]


@register_prior("horseshoe")
class HorseshoePrior(HierarchicalPrior):
    """Horseshoe shrinkage: p(φ_j|θ) = N(μ_j, (τ λ_j)²), λ_j ~ HalfCauchy(1), τ ~ HalfCauchy(τ0).

    A heavy-tailed scale mixture (Carvalho, Polson & Scott, 2010): one global
    scale τ shrinks every weight's task-to-task variation towards μ, and a
    local scale λ_j per weight lets individual weights escape. Marginally
    over λ_j, φ_j − μ_j has the horseshoe density (a Cauchy-like tail and an
    infinite spike at zero).

    Global sites:

    * ``theta.global_scale`` τ: shape ``()``, shared by all weight tensors,
      **latent** with hyperprior HalfCauchy(``global_prior_scale``),
      initialized to ``init_scale``;
    * ``theta.<w>.local_scale`` λ: shape ``w.shape``, **latent** with
      hyperprior HalfCauchy(1), initialized to 1;
    * ``theta.<w>.loc`` μ: shape ``w.shape``, initialized from the network; a
      point estimate (empirical Bayes) unless ``loc_scale`` is given, then
      latent with hyperprior N(0, loc_scale²).

    q(θ) covers the latent sites: ``q_theta="delta"`` gives a MAP estimate of
    (τ, λ) and ``q_theta="normal"`` a diagonal Normal on (log τ, log λ): the
    product form τ·λ_j keeps the global and local scales a priori independent
    (the non-centered scale-mixture parameterization), and the log transform
    makes them unconstrained. Given θ, φ is centered at μ with std τ·λ_j and
    q(φ) is the default diagonal Normal, so KL(q ‖ p) is analytic.

    Shrinkage makes the inner loop stiff: the KL's curvature in φ_j is
    1/(τλ_j)², so the inner step α (per support example) must stay below
    about 2(τλ_j)²·Ns. Lower ``InnerConfig.lr`` if fitting reports a NaN loss.

    Args:
        init_scale: Initial τ (default 0.1), so the initial prior std is 0.1.
        global_prior_scale: τ0, the scale of τ's HalfCauchy hyperprior
            (default 0.1).
        loc_scale: If given, μ becomes latent with a N(0, loc_scale²)
            hyperprior. Default None (μ is a point estimate).
    """

    def __init__(
        self,
        init_scale: float = 0.1,
        global_prior_scale: float = 0.1,
        loc_scale: float | None = None,
    ) -> None:
        self.init_scale = check_hyperparameter("init_scale", init_scale)
        self.global_prior_scale = check_hyperparameter("global_prior_scale", global_prior_scale)
        self.loc_scale = None if loc_scale is None else check_hyperparameter(
            "loc_scale", loc_scale, "positive (or None for a point estimate)")

    def shared_sites(self, weights: Mapping[str, Tensor]) -> dict[str, GlobalSite]:
        ref = next(iter(weights.values()))
        return {
            "global_scale": GlobalSite(
                ref.new_tensor(self.init_scale),
                constraints.positive,
                dist.HalfCauchy(ref.new_tensor(self.global_prior_scale)),
            )
        }

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, GlobalSite]:
        one = constant_like(weight, 1.0)
        loc_hp = None if self.loc_scale is None else dist.Normal(constant_like(weight, 0.0), self.loc_scale)
        return {
            # The loc init without a copy, as in loc_scale_sites.
            "loc": GlobalSite(weight.detach(), constraints.real, loc_hp),
            "local_scale": GlobalSite(one, constraints.positive, dist.HalfCauchy(one)),
        }

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return Normal(theta["loc"], theta["global_scale"] * theta["local_scale"])

    def __repr__(self) -> str:
        return (
            f"HorseshoePrior(init_scale={self.init_scale}, "
            f"global_prior_scale={self.global_prior_scale}, loc_scale={self.loc_scale})"
        )
