"""The guide q(θ) Π_i q(φ_i; λ_i), with λ_i computed by the inner loop.

q(θ) covers the *latent* global sites (those with a hyperprior):

* ``q_theta="delta"``: a point mass at a learned value (MAP / empirical Bayes);
* ``q_theta="normal"``: a diagonal Normal on the unconstrained space
  (full hierarchical VI; the ELBO then holds −KL(q(θ) ‖ p(θ)));
* ``q_theta="flow"``: a spline flow over all latent sites jointly
  (:mod:`hvi.flows`), for skewed or correlated group-level posteriors.

Global sites without a hyperprior are ``pyro.param``s shared with the model.
Then, inside the same task plate as the model, λ_i = adapt(θ, D_i^S) for the
batch (vmapped over tasks, and over θ's Monte Carlo particles when q(θ) is a
Normal under vectorized particles), and φ_i ~ q(φ_i; λ_i) with ``poutine.scale(β)``.

Parameter names in the param store: :mod:`hvi.names`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from torch import Tensor
from torch.distributions import biject_to

from hvi import names
from hvi.sites import positive
from hvi.tasks import TaskBatch

if TYPE_CHECKING:
    from hvi.meta import MetaModel

__all__ = ["guide"]


def _plate_prefix_to_particles(value: Tensor, site_ndim: int) -> Tensor | None:
    """``(P, 1, 1, *site)`` from a vectorized-particle plate → ``(P, *site)``; None if unbatched."""
    pre = value.shape[: value.dim() - site_ndim]
    if not pre:
        return None
    if len(pre) < 3 or any(d != 1 for d in pre[-2:]):
        raise ValueError(
            f"a global site has batch shape {tuple(pre)}; hvi expects θ outside the task and "
            "data plates, with at most one particle dim in front (vectorized particles)."
        )
    return value.reshape((-1,) + value.shape[len(pre) :])


def guide_globals(meta: "MetaModel") -> tuple[dict[str, Tensor], dict[str, int | None]]:
    """Samples θ from q(θ); returns values for the inner loop and their particle dims."""
    values: dict[str, Tensor] = {}
    particle_dims: dict[str, int | None] = {}
    # update_module_params: values put into the param store (a loaded checkpoint) reach the module.
    flow = None if meta.flow is None else pyro.module(names.FLOW_MODULE, meta.flow, update_module_params=True)
    draws = {} if flow is None else flow.sample_sites(names.FLOW_LATENT)
    for name, site in meta.sites.items():
        k = len(site.shape)
        if not site.latent:
            values[name] = pyro.param(name, site.fresh_init, constraint=site.constraint)
            particle_dims[name] = None
        elif name in draws:
            flat = _plate_prefix_to_particles(draws[name], k)
            values[name] = draws[name] if flat is None else flat
            particle_dims[name] = None if flat is None else 0
        elif meta.q_theta == "delta":
            v = pyro.param(names.q_theta_point(name), site.fresh_init, constraint=site.constraint)
            pyro.sample(name, dist.Delta(v, event_dim=k))
            values[name] = v  # the point mass needs no particle copies
            particle_dims[name] = None
        else:
            transform = biject_to(site.constraint)
            # Lazy inits (callables): the param store builds them once, not every step.
            loc_name, scale_name = names.q_theta_normal(name)
            loc = pyro.param(loc_name, lambda s=site, t=transform: t.inv(s.init).clone())
            scale = pyro.param(
                scale_name,
                lambda s=site: torch.full_like(s.init, meta.q_theta_init_scale),
                constraint=positive,
            )
            q = dist.Normal(loc, scale).to_event(k)
            if site.constraint is not constraints.real:
                q = dist.TransformedDistribution(q, transform)
            v = pyro.sample(name, q)
            flat = _plate_prefix_to_particles(v, k)
            values[name] = v if flat is None else flat
            particle_dims[name] = None if flat is None else 0
    return values, particle_dims


def inner_lrs(meta: "MetaModel") -> dict[str, dict[str, Tensor | float]]:
    """α per weight and λ key: constants, or positive params when learned."""
    cfg = meta.inner
    keys = meta.family.param_names
    init = {k: cfg.lr_for(k) for k in keys}
    if not cfg.learn_lr:
        return {n: dict(init) for n in meta.net.shapes}
    ref = next(iter(meta.net.init_weights.values()))
    # A natural step is a fraction of a full step: bounded to (0, 1) it cannot blow up.
    bound = constraints.unit_interval if cfg.update == "natural" else positive
    return {
        n: {
            k: pyro.param(
                names.inner_lr(n, k),
                lambda a=init[k]: torch.tensor(a, dtype=ref.dtype, device=ref.device),
                constraint=bound,
            )
            for k in keys
        }
        for n in meta.net.shapes
    }


def guide(
    meta: "MetaModel",
    batch: TaskBatch,
    *,
    inner_steps: int | None = None,
    predict: bool = False,
) -> dict[str, Any]:
    """The Pyro guide. Returns ``{"lambda": λ, "inner_noise": ε}`` for inspection.

    ``ε`` is a :class:`~hvi.noise.TaskNoise`; ``ε.materialize()`` redraws the
    inner loop's noise as a flat ``(*lead, B, steps, S, D)`` tensor.

    Args:
        meta: The meta-model.
        batch: The tasks; only the support set is read.
        inner_steps: Overrides the configured number of inner steps (e.g.
            M_eval at test time).
        predict: Unused here; accepted so model and guide share a signature.
    """
    theta, particle_dims = guide_globals(meta)
    steps = meta.inner.steps if inner_steps is None else int(inner_steps)
    lik = {k: theta.pop(f"likelihood.{k}") for k in meta.likelihood.global_sites()}
    lik_dims = {k: particle_dims.pop(f"likelihood.{k}") for k in lik}
    particles = [v.shape[0] for n, v in theta.items() if particle_dims[n] == 0]
    particles += [v.shape[0] for k, v in lik.items() if lik_dims[k] == 0]
    lead = (particles[0],) if particles else ()

    loop = meta.inner_loop(batch.support_y.dim() - 2)
    ref = next(iter(theta.values()))
    eps = loop.draw_noise(lead + (batch.batch_size,), steps, ref.device, ref.dtype)
    dims = {**particle_dims, **lik_dims} if particles else None
    flat = loop.adapt(
        theta,
        lik,
        inner_lrs(meta),
        batch.support_x,
        batch.support_y,
        batch.support_noise,
        eps,
        steps,
        particle_dims=dims,
        mask=batch.support_mask,
    )

    # One device sync per guide call, after the loop (never inside it): a
    # diverged inner loop is reported as such, not as a downstream shape error.
    if not bool(meta.family.is_valid(flat)):
        raise FloatingPointError(
            f"the inner loop diverged (non-finite λ or a zero scale after {steps} steps); lower the inner lr "
            "(InnerConfig.lr / --inner-lr), raise the prior scale, or use fewer inner steps."
        )
    lam = loop.unflatten(flat)
    family = meta.family
    with pyro.plate("tasks", batch.num_tasks, subsample=batch.task_index, dim=-2):
        with poutine.scale(scale=meta.kl_weight):
            for name, shape in meta.net.shapes.items():
                # (*lead, B, *w) → (*lead, B, 1, *w): the data plate's dim sits after the tasks'.
                lam_n = {k: v.unsqueeze(-len(shape) - 1) for k, v in lam[name].items()}
                pyro.sample(f"phi.{name}", family.dist(lam_n).to_event(len(shape)))
    return {"lambda": lam, "inner_noise": eps}
