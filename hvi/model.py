"""The generative model θ → φ_i → D_i as a Pyro program.

::

    θ      global sites: pyro.param (empirical Bayes) or pyro.sample from p(θ)
    plate tasks (M, subsample = the batch's task_index, dim -2):
        φ_i    one site per weight tensor, "phi.<name>" ~ p(φ | θ), scaled by β
        plate data (N, dim -1):
            y_ij ~ p(y | f_{φ_i}(x_ij))   on the query set (or support ∪ query)

The task plate scales every local term by M/B; ``poutine.scale(β)`` scales
log p(φ_i | θ) here and log q(φ_i) in the guide, so the ELBO is::

    Σ_{i∈batch} (M/B) · ( E_q[log p(D_i | φ_i)] − β · KL(q(φ_i) ‖ p(φ_i | θ)) ) − KL(q(θ) ‖ p(θ))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from hvi.priors.base import pad_site
from hvi.tasks import TaskBatch

if TYPE_CHECKING:
    from hvi.meta import MetaModel

__all__ = ["model", "forward"]


def sample_globals(meta: "MetaModel") -> dict[str, Tensor]:
    """θ in the model: params for point estimates, sample sites for latent ones."""
    values = {}
    for name, site in meta.sites.items():
        if site.latent:
            values[name] = pyro.sample(name, site.hyperprior_dist())
        else:
            values[name] = pyro.param(name, site.fresh_init, constraint=site.constraint)
    return values


def forward(meta: "MetaModel", phi: Mapping[str, Tensor], x: Tensor) -> tuple[Tensor, int]:
    """f_φ(x) for local-site values ``(*lead, B, 1, *w)`` on inputs ``(B, N, ...)``.

    Returns the outputs ``(*lead, B, N, *out)`` and ``len(lead)`` (the Monte
    Carlo particle dims).
    """
    shapes = meta.net.shapes
    leads = [v.shape[: v.dim() - len(shapes[n]) - 2] for n, v in phi.items()]
    lead = torch.broadcast_shapes(*leads)
    B = x.shape[0]
    flat = {
        n: v.expand(lead + (B, 1) + shapes[n]).reshape((-1, B) + shapes[n])
        for n, v in phi.items()
    }
    if not lead:
        return meta.net.batched({n: v[0] for n, v in flat.items()}, x), 0
    out = meta.net.batched(flat, x, weight_batch_dims=2)
    return out.reshape(lead + out.shape[1:]), len(lead)


def model(
    meta: "MetaModel",
    batch: TaskBatch,
    *,
    inner_steps: int | None = None,
    predict: bool = False,
) -> Tensor | None:
    """The Pyro model. ``inner_steps`` is the guide's; accepted here so both share a signature.

    With ``predict=True``, or a batch whose ``query_y`` is None, the query
    targets are not scored: the network outputs on the query inputs are
    recorded as the deterministic site ``"f"`` (and the observation variance
    as ``"obs_var"`` for regression), and replicated targets are drawn at the
    sample site ``"y"`` ~ p(y | f_φ(x^Q)). So the posterior predictive is
    ``pyro.infer.Predictive(meta.model, guide=meta.guide, num_samples=S,
    return_sites=["y", "f", ...])(batch, predict=True)``.
    """
    predictive = predict or batch.query_y is None
    theta = sample_globals(meta)
    with pyro.plate("tasks", batch.num_tasks, subsample=batch.task_index, dim=-2):
        phi = {}
        with poutine.scale(scale=meta.kl_weight):
            for name, shape in meta.net.shapes.items():
                p = meta.prior.local(name, theta, event_ndim=len(shape))
                p = p.expand(torch.broadcast_shapes(p.batch_shape, shape)).to_event(len(shape))
                phi[name] = pyro.sample(f"phi.{name}", p)
        if predictive:
            x, y, noise, mask = batch.query_x, None, batch.query_noise, None
        elif meta.objective == "query":
            x, y, noise, mask = batch.query_x, batch.query_y, batch.query_noise, batch.query_mask
        else:
            (x, y, noise), mask = batch.joined(), batch.joined_mask()
        out, lead_ndim = forward(meta, phi, x)
        # One host sync per call: weights from a diverged inner loop can be finite
        # while the network's outputs overflow; name it (hvi.SVI skips such a step).
        if not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                "the network's outputs are not finite (a diverged inner loop or prior); lower the "
                "inner lr (InnerConfig.lr / --inner-lr) or use more, smaller inner steps."
            )
        event_dim = batch.support_y.dim() - 2
        lik = {
            k: pad_site(theta[f"likelihood.{k}"], s.shape, event_dim)
            for k, s in meta.likelihood.global_sites().items()
        }
        likelihood = meta.likelihood.observe(out, lik, noise, event_dim, mask)
        with pyro.plate("data", x.shape[1], dim=-1):
            if predictive:
                f = pyro.deterministic("f", out, event_dim=out.dim() - lead_ndim - 2)
                if not meta.likelihood.is_classification:
                    var = likelihood.variance.expand(likelihood.batch_shape + likelihood.event_shape)
                    pyro.deterministic("obs_var", var, event_dim=event_dim)
                pyro.sample("y", likelihood)  # replicated query targets
                return f
            pyro.sample("y", likelihood, obs=y)
    return None
