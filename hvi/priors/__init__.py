"""Hierarchical priors p(θ) and p(φ_i | θ): the interface, the registry, the built-ins.

Built-ins (``hvi priors`` lists them with :func:`describe_prior`):

* ``gaussian`` (:class:`GaussianPrior`): N(μ, σ²), μ and σ per weight;
* ``gaussian-layer`` (:class:`GaussianLayerPrior`): N(μ, σ²), μ per weight, σ per tensor;
* ``normal-gamma`` (:class:`NormalGammaPrior`): N(μ, 1/τ) with a Normal-Gamma hyperprior on (μ, τ);
* ``laplace`` (:class:`LaplacePrior`): Laplace(μ, b) for sparsity;
* ``horseshoe`` (:class:`HorseshoePrior`): N(μ, (τλ)²) with HalfCauchy global/local scales.
"""

from hvi.priors.base import (
    BoundPrior,
    HierarchicalPrior,
    describe_prior,
    get_prior,
    list_priors,
    register_prior,
)
from hvi.priors.gaussian import GaussianPrior
from hvi.priors.gaussian_layer import GaussianLayerPrior
from hvi.priors.horseshoe import HorseshoePrior
from hvi.priors.laplace import LaplacePrior
from hvi.priors.normal_gamma import NormalGammaPrior

__all__ = [
    "BoundPrior",
    "GaussianLayerPrior",
    "GaussianPrior",
    "HierarchicalPrior",
    "HorseshoePrior",
    "LaplacePrior",
    "NormalGammaPrior",
    "describe_prior",
    "get_prior",
    "list_priors",
    "register_prior",
]
