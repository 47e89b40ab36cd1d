"""Amortized adaptation: λ_i from θ by K gradient steps on the support-set ELBO.

For one task with support set (x, y) of ``Ns`` examples, starting from
λ^(0) = family.init(p(φ | θ)) (= θ for a Normal prior)::

    L_S(λ) = ( E_q(φ;λ)[log p(y | f_φ(x))] − β · KL(q(φ; λ) ‖ p(φ | θ)) ) / Ns
    λ^(m+1) = λ^(m) + α ⊙ ∇_λ L_S(λ^(m))

The expectation uses ``num_samples`` reparameterized draws per step from
noise drawn *before* the loop (``eps``), so the loop is a pure, deterministic
function of tensors: it runs wherever the tensors live, has no host syncs and
is batched over tasks (and Monte Carlo particles of θ) with
:func:`torch.func.vmap`. Dividing by ``Ns`` makes α a per-example step size,
so the same α serves 5-shot and 50-shot tasks.

Second order differentiates the outer objective through every step (the
gradient graph is kept); first order treats each step's gradient as a
constant (``stop_gradient``), which keeps λ's dependence on θ through
λ^(0) and on α, and costs no second derivatives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pyro
import torch
from torch import Tensor
from torch.func import grad, vmap

from hvi.functional import FunctionalNet
from hvi.likelihoods import Likelihood
from hvi.priors.base import BoundPrior, pad_site

__all__ = ["InnerConfig", "InnerLoop", "Lambda"]

#: λ for every weight tensor: ``{weight_name: {"loc": ..., "rho": ...}}``.
Lambda = dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class InnerConfig:
    """Settings of the inner loop.

    Args:
        steps: Number K of gradient steps (default 5). 0 means q(φ_i) = prior.
        lr: Step size α per support example (default 0.01); the initial value
            when ``learn_lr`` is set. A mapping gives one α per λ key, e.g.
            ``{"loc": 1e-3, "rho": 1e-1}``: with σ = softplus(ρ), small scales
            move little under the α that suits the means. Plain gradient ascent
            is stable only below ~2/curvature; the KL term alone has curvature
            β/(Ns·σ0²) per weight (σ0 the prior scale), so keep α < 2·Ns·σ0²/β.
        learn_lr: Learn one positive α per λ tensor (Meta-SGD style, default False).
        num_samples: Monte Carlo draws of φ per inner step (default 1).
        kl_weight: β, the weight of KL(q ‖ p) in the inner *and* outer
            objective (default 1.0: the true ELBO).
        first_order: Do not differentiate through the inner gradients (default False).
    """

    steps: int = 5
    lr: float | Mapping[str, float] = 0.01
    learn_lr: bool = False
    num_samples: int = 1
    kl_weight: float = 1.0
    first_order: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"inner steps={self.steps!r} must be a non-negative integer.")
        lrs = self.lr.values() if isinstance(self.lr, Mapping) else [self.lr]
        if not all(float(a) > 0 for a in lrs):
            raise ValueError(f"inner lr={self.lr} must be positive.")

    def lr_for(self, key: str) -> float:
        """α for λ tensor ``key`` (e.g. ``"loc"``)."""
        if not isinstance(self.lr, Mapping):
            return float(self.lr)
        if key not in self.lr:
            raise ValueError(f"inner lr mapping {dict(self.lr)} has no entry for λ key {key!r}.")
        return float(self.lr[key])
        if not (isinstance(self.num_samples, int) and self.num_samples >= 1):
            raise ValueError(f"inner num_samples={self.num_samples!r} must be an integer >= 1.")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight={self.kl_weight} must be >= 0.")


def _detach(tree):
    if isinstance(tree, Mapping):
        return {k: _detach(v) for k, v in tree.items()}
    return tree.detach() if isinstance(tree, Tensor) else tree


class InnerLoop:
    """The inner loop for one network, prior and likelihood.

    Holds only static structure; every method is a pure function of the
    tensors passed in.

    Args:
        net: The functional network.
        prior: The prior bound to ``net``'s weights.
        likelihood: The likelihood.
        config: Inner-loop settings.
        y_event_dim: Number of per-example target dims (``len(y_shape)``).
    """

    def __init__(
        self,
        net: FunctionalNet,
        prior: BoundPrior,
        likelihood: Likelihood,
        config: InnerConfig,
        y_event_dim: int,
    ) -> None:
        self.net = net
        self.prior = prior
        self.family = prior.family
        self.likelihood = likelihood
        self.config = config
        self.y_event_dim = y_event_dim
        self.lik_sites = likelihood.global_sites()

    # -- single task ---------------------------------------------------------
    def init_lambda(self, theta: Mapping[str, Tensor]) -> Lambda:
        """λ^(0) for every weight from θ (unbatched site values)."""
        lam = {}
        for name, shape in self.net.shapes.items():
            init = self.family.init(self.prior.local(name, theta))
            lam[name] = {k: v.expand(shape) for k, v in init.items()}
        return lam

    def log_likelihood(
        self,
        phi: Mapping[str, Tensor],
        lik: Mapping[str, Tensor],
        x: Tensor,
        y: Tensor,
        noise: Tensor | None,
        sample_dims: int,
    ) -> Tensor:
        """Per-example log p(y | f_φ(x)) with ``sample_dims`` leading sample dims on φ."""
        fn = self.net
        for _ in range(sample_dims):
            fn = vmap(fn, in_dims=(0, None))
        out = fn(phi, x)
        params = {k: pad_site(v, self.lik_sites[k].shape, self.y_event_dim) for k, v in lik.items()}
        return self.likelihood.dist(out, params, noise, self.y_event_dim).log_prob(y)

    def support_objective(
        self,
        lam: Lambda,
        theta: Mapping[str, Tensor],
        lik: Mapping[str, Tensor],
        x: Tensor,
        y: Tensor,
        noise: Tensor | None,
        eps: Mapping[str, Tensor],
    ) -> Tensor:
        """L_S(λ): the per-example support ELBO of one task at noise ``eps`` (``(S, *w)``)."""
        S = self.config.num_samples
        phi = {n: self.family.sample(lam[n], eps[n]) for n in lam}
        if S == 1:
            loglik = self.log_likelihood({n: v[0] for n, v in phi.items()}, lik, x, y, noise, 0).sum()
        else:
            loglik = self.log_likelihood(phi, lik, x, y, noise, 1).sum() / S
        kl = x.new_zeros(())
        if self.config.kl_weight > 0:
            for n in lam:
                q = self.family.dist(lam[n])
                p = self.prior.local(n, theta)
                if self.prior.analytic_kl[n]:
                    kl = kl + self.prior.kl(q, p, None)
                else:
                    kl = kl + self.prior.kl(q, p, phi[n])
        return (loglik - self.config.kl_weight * kl) / x.shape[0]

    def adapt_one(
        self,
        theta: Mapping[str, Tensor],
        lik: Mapping[str, Tensor],
        lr: Mapping[str, Mapping[str, Tensor | float]],
        x: Tensor,
        y: Tensor,
        noise: Tensor | None,
        eps: Mapping[str, Tensor],
        steps: int,
    ) -> Lambda:
        """Adapts λ for one task; ``eps[n]`` is ``(steps, S, *w)`` standard-normal noise."""
        lam = self.init_lambda(theta)
        objective_grad = grad(self.support_objective)
        for m in range(steps):
            step_eps = {n: e[m] for n, e in eps.items()}
            if self.config.first_order:
                g = objective_grad(_detach(lam), _detach(theta), _detach(lik), x, y, noise, step_eps)
            else:
                g = objective_grad(lam, theta, lik, x, y, noise, step_eps)
            lam = {n: {k: v + lr[n][k] * g[n][k] for k, v in lam[n].items()} for n in lam}
        return lam

    # -- batched -------------------------------------------------------------
    def adapt(
        self,
        theta: Mapping[str, Tensor],
        lik: Mapping[str, Tensor],
        lr: Mapping[str, Mapping[str, Tensor | float]],
        x: Tensor,
        y: Tensor,
        noise: Tensor | None,
        eps: Mapping[str, Tensor],
        steps: int,
        particle_dims: Mapping[str, int | None] | None = None,
    ) -> Lambda:
        """λ for a batch of tasks, vmapped over tasks (and θ particles).

        Args:
            theta: Site values; ``(P, *site)`` where ``particle_dims[name] == 0``
                else ``(*site)``.
            lik: Likelihood site values, same convention.
            lr: Step sizes per weight and λ key (floats or scalar tensors).
            x, y, noise: Support data ``(B, Ns, ...)``; ``noise`` may be None.
            eps: Noise per weight: ``(B, steps, S, *w)``, or ``(P, B, steps, S, *w)``
                with particles.
            steps: Number of inner steps.
            particle_dims: Which θ/likelihood sites carry a leading particle dim
                (0) and which do not (None). None: no particles.

        Returns:
            λ with every tensor ``(B, *w)``, or ``(P, B, *w)`` with particles.
        """

        def one(theta, lik, x, y, noise, eps):
            return self.adapt_one(theta, lik, lr, x, y, noise, eps, steps)

        noise_dim = None if noise is None else 0
        if x.shape[0] == 1:
            # One task: run it unbatched (same math, none of vmap's batching overhead).
            def fn(theta, lik, x, y, noise, eps):
                lam = one(
                    theta, lik, x[0], y[0], None if noise is None else noise[0],
                    {n: e.select(-(len(self.net.shapes[n]) + 3), 0) for n, e in eps.items()},
                )
                return {n: {k: v.unsqueeze(0) for k, v in d.items()} for n, d in lam.items()}
        else:
            fn = vmap(one, in_dims=(None, None, 0, 0, noise_dim, 0))
        if particle_dims is not None and any(d is not None for d in particle_dims.values()):
            theta_dims = {k: particle_dims.get(k) for k in theta}
            lik_dims = {k: particle_dims.get(k) for k in lik}
            fn = vmap(fn, in_dims=(theta_dims, lik_dims, None, None, None, 0))
        # Argument validation is a data-dependent host sync that vmap cannot run;
        # the data were validated at the API boundary and θ is kept feasible by
        # its constraints.
        with pyro.validation_enabled(False):
            return fn(theta, lik, x, y, noise, eps)

    def draw_noise(
        self, lead: tuple[int, ...], steps: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, Tensor]:
        """Standard-normal inner-loop noise ``(*lead, steps, S, *w)`` per weight."""
        S = self.config.num_samples
        return {
            n: torch.randn(lead + (steps, S) + tuple(shape), device=device, dtype=dtype)
            for n, shape in self.net.shapes.items()
        }
