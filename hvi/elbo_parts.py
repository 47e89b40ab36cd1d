"""The ELBO's parts, read off the traces of the training step that computed it.

:func:`hvi.make_elbo` returns :class:`PartsTraceELBO` or
:class:`PartsMeanFieldELBO`: Pyro's ``Trace_ELBO`` / ``TraceMeanField_ELBO``
that also keep, after every ``loss_and_grads`` call (every SVI step), the
three parts of that call's ELBO estimate in :attr:`~PartsTraceELBO.last_parts`::

    ELBO = ell − local_kl − global_kl

* ``ell``: E_q[log p(D | φ)], the log-likelihood of the observed sites
  (the query targets; support ∪ query with ``objective="support+query"``),
  scaled by M/B as in the ELBO;
* ``local_kl``: β · (M/B) · Σ_i KL(q(φ_i) ‖ p(φ_i | θ)), the ``phi.*`` sites;
* ``global_kl``: KL(q(θ) ‖ p(θ)) of the latent global sites (θ's and the
  likelihood's hyperpriors). For ``q_theta="delta"`` q is a point mass, whose
  log density is 0 in Pyro's Delta, so this is −log p(θ̂): the MAP penalty.

No extra network evaluation: the parts are sums of the per-site log densities
(or, for the mean-field ELBO, analytic KLs) the ELBO itself is built from, so
they add up to the ELBO estimate exactly (up to float64 rounding of the sum),
with the same Monte Carlo draws. ``Trace_ELBO``'s KLs are therefore one-draw
Monte Carlo estimates (``log q − log p`` at the sampled φ), like its ELBO;
``TraceMeanField_ELBO``'s are analytic where Pyro has a formula. With several
particles each part is their mean, as the loss is. A call that raises (a
diverged inner loop) leaves ``last_parts`` None.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from torch.distributions import kl_divergence

__all__ = ["PARTS", "PartsMeanFieldELBO", "PartsTraceELBO", "trace_parts"]

#: The names of the parts, in the order ELBO = ell − local_kl − global_kl.
PARTS = ("ell", "local_kl", "global_kl")


def _sum(terms: list[torch.Tensor | float]) -> float:
    """Σ terms in float64 with one host sync."""
    tensors = [t.detach().double().reshape(()) for t in terms if isinstance(t, torch.Tensor)]
    floats = sum(float(t) for t in terms if not isinstance(t, torch.Tensor))
    return (float(torch.stack(tensors).sum()) if tensors else 0.0) + floats


def trace_parts(model_trace, guide_trace, analytic_kl: bool = False) -> dict[str, float]:
    """``{"ell", "local_kl", "global_kl"}`` of one particle's traces (their ``log_prob_sum`` computed).

    Args:
        model_trace: The model's trace (replayed against the guide).
        guide_trace: The guide's trace.
        analytic_kl: Take KL(q ‖ p) per latent site in closed form where
            ``torch.distributions.kl_divergence`` has it (``TraceMeanField_ELBO``),
            else ``log q − log p`` at the guide's draw (``Trace_ELBO``).
    """
    ell: list = []
    local: list = []
    glob: list = []
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            ell.append(site["log_prob_sum"])
            continue
        into = local if name.startswith("phi.") else glob
        g = guide_trace.nodes.get(name)
        if analytic_kl and g is not None:
            try:
                kl = scale_and_mask(kl_divergence(g["fn"], site["fn"]), scale=g["scale"], mask=g["mask"])
                into.append(kl.sum() if torch.is_tensor(kl) else kl * torch.Size(g["fn"].batch_shape).numel())
                continue
            except NotImplementedError:  # as Pyro: log q (the score parts' "entropy term") − log p
                log_q = g["score_parts"].entropy_term
                into.append(log_q.sum() if torch.is_tensor(log_q) else log_q)
                into.append(-site["log_prob_sum"])
                continue
        into.append(-site["log_prob_sum"])
        if g is not None:
            into.append(g["log_prob_sum"])
    # A guide site the model does not have (auxiliary) counts against the global part.
    for name, g in guide_trace.nodes.items():
        if g["type"] == "sample" and name not in model_trace.nodes:
            if analytic_kl:
                log_q = g["score_parts"].entropy_term
                glob.append(log_q.sum() if torch.is_tensor(log_q) else log_q)
            else:
                glob.append(g["log_prob_sum"])
    return {"ell": _sum(ell), "local_kl": _sum(local), "global_kl": _sum(glob)}


class _Parts:
    """Mixin: sums :func:`trace_parts` over the particles of one ELBO call."""

    _analytic_kl = False
    #: The parts of the last call's estimate (mean over particles), or None.
    last_parts: dict[str, float] | None = None

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        out = super()._differentiable_loss_particle(model_trace, guide_trace)
        parts = trace_parts(model_trace, guide_trace, self._analytic_kl)
        for k, v in parts.items():
            self._acc[k] += v / self.num_particles
        return out

    def _record(self, fn, *args, **kwargs):
        self.last_parts = None
        self._acc = dict.fromkeys(PARTS, 0.0)
        out = fn(*args, **kwargs)
        self.last_parts = dict(self._acc)
        return out

    def loss_and_grads(self, model, guide, *args, **kwargs):
        return self._record(super().loss_and_grads, model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        return self._record(super().differentiable_loss, model, guide, *args, **kwargs)


class PartsTraceELBO(_Parts, Trace_ELBO):
    """``pyro.infer.Trace_ELBO`` that keeps the parts of its last estimate in ``last_parts``."""


class PartsMeanFieldELBO(_Parts, TraceMeanField_ELBO):
    """``pyro.infer.TraceMeanField_ELBO`` that keeps the parts of its last estimate in ``last_parts``."""

    _analytic_kl = True
