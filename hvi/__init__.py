"""hvi: Bayesian meta-learning by hierarchical variational inference on Pyro and PyTorch.

The model θ → φ_i → D_i: a global latent θ (a prior over network weights)
generates per-task weights φ_i, which generate each task's data. The guide
computes q(φ_i; λ_i) by a few differentiable gradient steps on the support
set starting from θ (:mod:`hvi.adapt`); ``pyro.infer.SVI`` trains everything.
"""

from hvi.adapt import InnerConfig, InnerLoop
from hvi.allocator import tune_allocator
from hvi.families import GuideFamily, NormalFamily
from hvi.fit import FitResult, fit
from hvi.functional import FunctionalNet
from hvi.likelihoods import Categorical, Gaussian, Likelihood, get_likelihood, list_likelihoods, register_likelihood
from hvi.meta import MetaModel
from hvi.metrics import classification_metrics, mean_ci, regression_metrics
from hvi.predict import Prediction, predict
from hvi.priors import HierarchicalPrior, get_prior, list_priors, register_prior
from hvi.sites import GlobalSite
from hvi.svi import SVI
from hvi.tasks import TaskBatch
from hvi.validation import validate_batch

__version__ = "0.1.0"

__all__ = [
    "Categorical",
    "FitResult",
    "FunctionalNet",
    "Gaussian",
    "GlobalSite",
    "GuideFamily",
    "HierarchicalPrior",
    "InnerConfig",
    "InnerLoop",
    "Likelihood",
    "MetaModel",
    "NormalFamily",
    "Prediction",
    "SVI",
    "TaskBatch",
    "classification_metrics",
    "fit",
    "get_likelihood",
    "get_prior",
    "list_likelihoods",
    "list_priors",
    "mean_ci",
    "predict",
    "register_likelihood",
    "register_prior",
    "regression_metrics",
    "tune_allocator",
    "validate_batch",
]
