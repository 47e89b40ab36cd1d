"""Hierarchical priors p(θ) and p(φ_i | θ): the interface, the registry, the built-ins."""

from hvi.priors.base import HierarchicalPrior, get_prior, list_priors, register_prior
from hvi.priors.gaussian import GaussianPrior

__all__ = ["HierarchicalPrior", "GaussianPrior", "get_prior", "list_priors", "register_prior"]
