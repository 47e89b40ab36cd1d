"""The meta-learning methods on one engine: ABML, MAML, first-order MAML and Reptile.

``MetaModel(..., method=...)`` picks one; :func:`hvi.fit` trains it with the
same loop (task sampling, skipped steps, callbacks, checkpoints) and
:func:`hvi.predict` / ``hvi evaluate`` score it. Every method adapts with the
same functional inner loop (:class:`hvi.adapt.InnerLoop`); they differ in q(φ)
and in the outer update:

========  ==========================  ==========================================
method    inner loop (per task)       outer update of θ
========  ==========================  ==========================================
abml      K steps on the support      SVI on the ELBO (query log-likelihood
          ELBO of a Normal q(φ)       − β·KL), through the inner steps
maml      K plain gradient steps on   the query negative log-likelihood at φ_K,
          the support log-lik of a    differentiated through the steps
          point mass q(φ) = δ(φ)      (second order)
fomaml    as maml                     as maml, each inner gradient a constant
                                      (dφ_K/dθ = I)
reptile   as maml                     θ ← θ + ε·(mean_i φ_K,i − θ): the
                                      pseudo-gradient θ − φ̄_K, plain SGD at
                                      ε = ``lr`` by default
========  ==========================  ==========================================

The deterministic methods are the special case of the inner loop with the
point-mass family (:class:`~hvi.families.PointMassFamily`), no KL
(``kl_weight=0``) and ``update="gradient"``: one step is
φ ← φ + α·∇_φ (1/Ns) Σ_j log p(y_j | f_φ(x_j)). For a Gaussian likelihood with
fixed σ² = 1/2 that is φ ← φ − α·∇ MSE, MAML's own step with its α; with σ
learned (the CLI's default) α is effectively scaled by 1/(2σ²). The outer loss
is the mean query negative log-likelihood (MSE + const for σ² = 1/2), which
is also what :attr:`hvi.FitResult.losses` holds for these methods.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import pyro.poutine as poutine
import torch
from torch import Tensor

from hvi import choices
from hvi.adapt import InnerConfig
from hvi.settings import check_choice, check_method_inner

if TYPE_CHECKING:
    from hvi.meta import MetaModel
    from hvi.tasks import TaskBatch

__all__ = ["METHODS", "Method", "is_deterministic", "check_method", "method_inner_config", "outer_loss"]

#: A meta-learning method.
Method = Literal["abml", "maml", "fomaml", "reptile"]

#: Every method, the default first.
METHODS: tuple[str, ...] = choices.METHODS


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else a one-line ``ValueError``."""
    return check_choice("method", method, METHODS)


def is_deterministic(method: str) -> bool:
    """Whether ``method`` adapts a point mass (MAML, first-order MAML, Reptile) rather than a Normal q(φ)."""
    return check_method(method) != "abml"


def method_inner_config(method: str, inner: InnerConfig | None) -> InnerConfig:
    """The inner-loop settings ``method`` runs with, from the user's ``inner`` (None: defaults).

    ABML takes ``inner`` as it is. The deterministic methods take plain
    gradient steps (``update="gradient"``, default α = 0.01) without a KL
    term; MAML is second order, first-order MAML and Reptile are first order.

    Raises:
        ValueError: If ``inner`` asks for something the method cannot do
            (:func:`hvi.settings.check_method_inner`: ABML without a KL term;
            for the others a natural-gradient step, several samples,
            ``memory="implicit"``, or a first-order MAML).
    """
    check_method(method)
    if inner is None:
        inner = InnerConfig() if method == "abml" else InnerConfig(update="gradient")
    check_method_inner(method, dataclasses.asdict(inner))
    if method == "abml":
        return inner
    return dataclasses.replace(inner, kl_weight=0.0, first_order=method != "maml")


def _query_nll(model: Callable, guide_trace: poutine.Trace, batch: "TaskBatch") -> Tensor:
    """Mean negative log-likelihood of the model's observed targets with φ replayed from the guide."""
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch)
    site = trace.nodes["y"]
    return -site["fn"].log_prob(site["value"]).mean()  # (B, N): per task and example


def outer_loss(meta: "MetaModel") -> Callable[..., Tensor]:
    """The outer loss of a deterministic method as a Pyro SVI loss ``loss(model, guide, batch)``.

    ``pyro.infer.SVI`` (and :class:`hvi.SVI`) accept it in place of an ELBO:
    its backward pass gives the method's outer gradient for every θ param.

    * maml / fomaml: the mean query negative log-likelihood at φ_K (the inner
      loop's first-order flag decides whether the steps are differentiated).
    * reptile: a surrogate whose gradient with respect to θ is θ − mean_i φ_K,i
      (through λ^(0)'s dependence on θ; the identity for a Normal prior's
      mean), so an SGD step at ε is θ + ε·(φ̄_K − θ). Its value is the mean
      query negative log-likelihood at φ_K, for monitoring only.
    """
    method = check_method(meta.method)
    if method == "abml":
        raise ValueError("method='abml' is trained on the ELBO (hvi.fit.make_elbo), not on an outer_loss.")

    def maml_loss(model: Callable, guide: Callable, batch: "TaskBatch") -> Tensor:
        guide_trace = poutine.trace(guide).get_trace(batch)
        return _query_nll(model, guide_trace, batch)

    def reptile_loss(model: Callable, guide: Callable, batch: "TaskBatch") -> Tensor:
        start = guide(batch, inner_steps=0)["lambda"]  # λ^(0)(θ) per task, differentiable in θ
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(batch)
            nll = _query_nll(model, guide_trace, batch)
        end = guide_trace.nodes["_RETURN"]["value"]["lambda"]
        B = batch.batch_size
        surrogate = sum(
            (start[n]["loc"] * (start[n]["loc"] - end[n]["loc"]).detach()).sum() for n in start
        ) / B
        return surrogate - surrogate.detach() + nll

    return maml_loss if method in ("maml", "fomaml") else reptile_loss
