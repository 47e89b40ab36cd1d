"""hvi: Bayesian meta-learning by hierarchical variational inference on Pyro and PyTorch.

The model θ → φ_i → D_i: a global latent θ (a prior over network weights)
generates per-task weights φ_i, which generate each task's data. The guide
computes q(φ_i; λ_i) by a few differentiable gradient steps on the support
set starting from θ (:mod:`hvi.adapt`); ``pyro.infer.SVI`` trains everything.
"""

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hvi.adapt import InnerConfig, InnerLoop
    from hvi.allocator import tune_allocator
    from hvi.diagnostics import pareto_k, to_inference_data
    from hvi.families import GuideFamily, NormalFamily
    from hvi.fit import FitResult, fit
    from hvi.settings import FitSettings
    from hvi.functional import FunctionalNet
    from hvi.likelihoods import Categorical, Gaussian, Likelihood, get_likelihood, list_likelihoods, register_likelihood
    from hvi.meta import MetaModel
    from hvi.metrics import calibration_error, classification_metrics, mean_ci, regression_metrics
    from hvi.predict import Prediction, predict
    from hvi.runs import Run, load_run
    from hvi.priors import HierarchicalPrior, get_prior, list_priors, register_prior
    from hvi.sites import GlobalSite
    from hvi.svi import SVI
    from hvi.tasks import TaskBatch
    from hvi.validation import validate_batch

__version__ = "0.1.0"

#: Public name -> the module that defines it. The names are imported on first
#: use (PEP 562), so that ``import hvi`` and ``hvi --help`` / ``hvi --version``
#: do not import torch; the ``TYPE_CHECKING`` imports above are for tools.
_EXPORTS: dict[str, str] = {
    "Categorical": "hvi.likelihoods",
    "FitResult": "hvi.fit",
    "FitSettings": "hvi.settings",
    "FunctionalNet": "hvi.functional",
    "Gaussian": "hvi.likelihoods",
    "GlobalSite": "hvi.sites",
    "GuideFamily": "hvi.families",
    "HierarchicalPrior": "hvi.priors",
    "InnerConfig": "hvi.adapt",
    "InnerLoop": "hvi.adapt",
    "Likelihood": "hvi.likelihoods",
    "MetaModel": "hvi.meta",
    "NormalFamily": "hvi.families",
    "Prediction": "hvi.predict",
    "SVI": "hvi.svi",
    "TaskBatch": "hvi.tasks",
    "classification_metrics": "hvi.metrics",
    "fit": "hvi.fit",
    "get_likelihood": "hvi.likelihoods",
    "get_prior": "hvi.priors",
    "list_likelihoods": "hvi.likelihoods",
    "list_priors": "hvi.priors",
    "mean_ci": "hvi.metrics",
    "calibration_error": "hvi.metrics",
    "pareto_k": "hvi.diagnostics",
    "predict": "hvi.predict",
    "Run": "hvi.runs",
    "load_run": "hvi.runs",
    "register_likelihood": "hvi.likelihoods",
    "register_prior": "hvi.priors",
    "regression_metrics": "hvi.metrics",
    "to_inference_data": "hvi.diagnostics",
    "tune_allocator": "hvi.allocator",
    "validate_batch": "hvi.validation",
}

#: Functions named like the module that defines them (``hvi.fit.fit``).
_SHADOWED = frozenset(n for n, m in _EXPORTS.items() if m == f"{__name__}.{n}")


def __getattr__(name: str) -> Any:
    """Imports a public name, or a submodule (``hvi.checkpoint``), on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``hvi.fit`` / ``hvi.predict`` the functions when their modules are imported.

    Importing the submodule ``hvi.fit`` binds it as the package attribute
    ``fit``; the public name is the function of the same name, as it was when
    this package imported everything eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "Categorical",
    "FitResult",
    "FitSettings",
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
    "Run",
    "SVI",
    "TaskBatch",
    "calibration_error",
    "classification_metrics",
    "fit",
    "get_likelihood",
    "get_prior",
    "list_likelihoods",
    "list_priors",
    "load_run",
    "mean_ci",
    "pareto_k",
    "predict",
    "register_likelihood",
    "register_prior",
    "regression_metrics",
    "to_inference_data",
    "tune_allocator",
    "validate_batch",
]
