"""Amortized adaptation: λ_i from θ by K gradient steps on the support-set ELBO.

For one task with support set (x, y) of ``Ns`` examples, starting from
λ^(0) = family.init(p(φ | θ)) (= θ for a Normal prior)::

    L_S(λ) = ( E_q(φ;λ)[log p(y | f_φ(x))] − β · KL(q(φ; λ) ‖ p(φ | θ)) ) / Ns
    λ^(m+1) = λ^(m) + α ⊙ ∇_λ L_S(λ^(m))

The expectation uses ``num_samples`` reparameterized draws per step from
noise fixed *before* the loop (``eps``: a tensor, or seeded per-task streams,
see :mod:`hvi.noise`), so the loop is a pure, deterministic function of its
inputs: it runs wherever the tensors live and has no host syncs.
Dividing by ``Ns`` makes α a per-example step size, so the same α serves
5-shot and 50-shot tasks.

How it is batched, and why:

* λ is *flat*: one ``(*lead, B, D)`` tensor per λ key (``loc``, ``rho``) over
  all D weights of the network, viewed per weight tensor only where the
  network is called. The elementwise work of a step (sampling, KL, update)
  is then a handful of kernels instead of a handful per weight tensor.
* Tasks are independent, so the gradient of Σ_i L_S,i with respect to the
  stacked λ is every task's own gradient: one forward of the network over
  all tasks (``torch.func.vmap`` of ``functional_call``), one
  ``torch.autograd.grad``. Monte Carlo particles of θ and the inner samples
  are folded into the same batch, so there is never a nested vmap.
* For a Normal family and a Normal p(φ | θ) the KL's gradient is taken in
  closed form, ∂KL/∂μ = (μ − μ_p)/σ_p², ∂KL/∂ρ = (σ/σ_p² − 1/σ)·sigmoid(ρ),
  so autograd (and, second order, double backward) only sees the likelihood.
  Other pairs differentiate the analytic or Monte Carlo KL by autograd.

Second order differentiates the outer objective through every step (the
gradient graph is kept); first order treats each step's gradient as a
constant (``stop_gradient``), which keeps λ's dependence on θ through
λ^(0) and on α, and costs no second derivatives. First order records no
step at all: λ moves in place in detached buffers, and the two derivatives
are attached once at the end. For a Normal family, autograd runs only from the
objective to φ, and the chain rule to (μ, ρ) is written out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

import pyro
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Normal

from hvi import choices, natural
from hvi.families import GuideFamily, inv_softplus
from hvi.functional import FunctionalNet
from hvi.likelihoods import Likelihood
from hvi.noise import TaskNoise
from hvi.recompute import Redraw, checkpointed, checkpointed_loop, recompute_steps
from hvi.parallel import map_task_chunks, num_task_chunks
from hvi.priors.base import BoundPrior, pad_site
from hvi.settings import check_inner

__all__ = ["InnerConfig", "InnerLoop", "Lambda", "UPDATES"]

# p(φ | θ) classes whose KL to the Normal family has the closed-form gradient below.

#: λ for every weight tensor: ``{weight_name: {"loc": ..., "rho": ...}}``.
Lambda = dict[str, dict[str, Tensor]]


#: The inner updates :class:`InnerConfig` accepts, and the default α of each.
#: The default inner step size α of each update (hvi.choices.INNER_UPDATES).
UPDATES = dict(zip(choices.INNER_UPDATES, (0.1, 0.01)))


@dataclass(frozen=True)
class InnerConfig:
    """Settings of the inner loop.

    Args:
        steps: Number K of inner steps (default 5). 0 means q(φ_i) = prior.
        update: ``"natural"`` (default) or ``"gradient"``.

            * ``"natural"``: the Bayesian learning rule, a natural-gradient step
              in q's mean and precision (see :mod:`hvi.natural`). α is a
              dimensionless fraction of a full step in (0, 1]. α = 1 is exact
              in one step when the likelihood's curvature is diagonal in the
              weights (conjugate group effects, e.g. eight schools), whatever
              the prior's scale. In a network many weights feed each output, a
              diagonal step ignores that coupling, and a full step overshoots
              by about the number of coupled weights: use α ≈ 0.1 (the
              default). Each of the ``num_samples`` draws is an antithetic pair
              of points m ± σ·r (r a random sign vector): two network
              evaluations (one with ``curvature="one_sided"``).
            * ``"gradient"``: plain gradient ascent on (μ, ρ) with σ = softplus(ρ),
              the ABML paper's update. α is a step size per support example,
              stable only below ~2/curvature; the KL term alone has curvature
              β/(Ns·σ0²) per weight (σ0 the prior scale), so keep α < 2·Ns·σ0²/β.
        lr: Step size α (default 0.1 for ``"natural"``, 0.01 for ``"gradient"``);
            the initial value when ``learn_lr`` is set. A mapping gives one α per
            λ key, e.g. ``{"loc": 1e-3, "rho": 1e-1}``: under ``"natural"``,
            ``loc`` moves the mean and ``rho`` the precision.
        learn_lr: Learn one α per λ tensor (Meta-SGD style, default False):
            positive under ``"gradient"``, in (0, 1) under ``"natural"``, so a
            learned natural step can never leave the stable range.
        num_samples: Monte Carlo draws of φ per inner step (default 1).
        kl_weight: β, the weight of KL(q ‖ p) in the inner *and* outer
            objective (default 1.0: the true ELBO).
        first_order: Do not differentiate through the inner gradients (default False).
        line_search: Natural update only (default False): scale each task's
            mean step by the fraction t ∈ (0, 1] that the objective's local
            curvature along the step allows (ℓ at m and m ± δ·step: one batched
            forward of three points, no backward). t = 1 exactly where the
            curvature is diagonal. Measured worse than a fixed α = 0.1 on the
            sinusoid MLP and the solar U-Net, better on 5-shot glyphs with
            conv4, where the diagonal step overshoots (docs/inner_loop.md,
            docs/methods.md); off by default (``hvi fit --inner-line-search``).
        parallel_tasks: On CPU, split the task batch into one chunk per intra-op
            thread and adapt the chunks in parallel worker threads with
            single-threaded kernels (default True; see :mod:`hvi.parallel`).
            Same results; no effect on other devices.
        memory: ``"none"`` (default) keeps every inner step's graph for the
            second-order backward; ``"checkpoint"`` keeps only each step's
            input λ and recomputes the step's forward (and its inner gradient)
            in the backward pass: the same gradients, activation memory of one
            step instead of K, about one more forward and inner backward per
            step. With a Normal p(φ | θ) the K steps are one autograd node
            that keeps λ^(m) in one buffer and each step's noise as its
            generators' states (2·D floats a step; ``"natural"``: m and s, and
            the kept curvature h when ``curvature_every > 1``, 3·D); otherwise
            each step is a ``torch.utils.checkpoint`` (non-reentrant). First order
            keeps no step graph either way. ``"implicit"`` (iMAML/iBaML, see
            :mod:`hvi.implicit`) runs the steps without a graph and
            differentiates the converged λ* through the implicit function
            theorem at the inner objective's stationary point: memory of one
            step whatever K, a backward of ``implicit_cg_steps`` Hessian-vector
            products, and gradients that are **approximate** (exact only at a
            stationary point; use enough steps for the loop to converge, e.g.
            K·α ≳ 3 under ``"natural"``). Normal family and Normal p(φ | θ)
            only; α gets no gradient, so not with ``learn_lr``, and not with
            ``first_order``.
        implicit_cg_steps: Conjugate-gradient iterations of the implicit
            backward solve (default 10; ``memory="implicit"`` only).
        curvature_every: Natural update only: measure the curvature h every
            n-th step, starting with the first (default 1: every step). The
            steps in between keep the last h and take the gradient at q's mean
            m: one network evaluation instead of ``2·num_samples``, so a loop
            of K steps costs about (K/n)·2S + (K − K/n) evaluations. The mean
            step stays exact on a quadratic likelihood (the conjugate models
            keep their one-step property at α = 1); the precision moves toward
            c_p + h/β with the last measured h.
        curvature: Natural update only: where a step measures g and h.
            ``"pair"`` (default): antithetic sign pairs m ± σ·r, 2 network
            evaluations per sample, exact on a quadratic likelihood.
            ``"one_sided"``: the points m + σ·r alone, 1 evaluation per sample
            (about half the cost); h then carries the zero-mean noise
            −∇ℓ(m)·r/σ, so the conjugate one-step property holds only to Monte
            Carlo error (see :mod:`hvi.natural`).
        implicit_damping: δ ≥ 0 of the implicit solve (−∇²F + δ·M) v = λ̄, M
            the diagonal curvature preconditioner (default 0.0). δ > 0 steadies
            an indefinite Hessian (a non-convex network far from convergence) at
            the price of shrinking the gradient by about 1/(1 + δ).
    """

    steps: int = 5
    lr: float | Mapping[str, float] | None = None
    learn_lr: bool = False
    num_samples: int = 1
    kl_weight: float = 1.0
    first_order: bool = False
    parallel_tasks: bool = True
    update: str = "natural"
    line_search: bool = False
    memory: str = "none"
    implicit_cg_steps: int = 10
    implicit_damping: float = 0.0
    curvature_every: int = 1
    curvature: str = "pair"

    def __post_init__(self) -> None:
        # The checks (and their messages) are hvi.settings.check_inner's, shared with the run config.
        values = check_inner({f.name: getattr(self, f.name) for f in fields(self)})
        if values["lr"] is None:
            values["lr"] = UPDATES[values["update"]]
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def lr_for(self, key: str) -> float:
        """α for λ tensor ``key`` (e.g. ``"loc"``)."""
        if not isinstance(self.lr, Mapping):
            return float(self.lr)
        if key not in self.lr:
            raise ValueError(f"inner lr mapping {dict(self.lr)} has no entry for λ key {key!r}.")
        return float(self.lr[key])


class _LastNoise(TaskNoise):
    """Per-task noise streams that keep the last draw they gave (``.last``)."""

    def next(self, generators: list[torch.Generator]) -> Tensor:
        out = super().next(generators)
        object.__setattr__(self, "last", out)
        return out


def _ascend(lam: Tensor, alpha: Tensor | float, grad: Tensor) -> Tensor:
    """λ + α·∇ in one kernel (α a float, or a per-weight tensor when learned)."""
    if isinstance(alpha, Tensor):
        return torch.addcmul(lam, alpha, grad)
    return torch.add(lam, grad, alpha=alpha)


def _normal_ascent(loc, rho, sigma, g_loc, g_sigma, kl, c, alpha_loc, alpha_rho):
    """One gradient step of a diagonal Normal q(loc, ρ), σ = softplus(ρ), under the closed-form KL.

    ``g_loc``, ``g_sigma``: the likelihood term's gradient in ``loc`` and in σ
    (not ρ); ``kl``: ``(μ_p, s_p⁻²)`` or None (β = 0); ``c``: the KL's weight β/N.
    The same values and derivatives as ascending ``∇_loc − c·s_p⁻²(loc − μ_p)``
    and ``sigmoid(ρ)·(∇_σ − c(σ s_p⁻² − 1/σ))`` (the ρ-gradient of autograd
    through softplus plus the KL's), in fewer kernels of λ's size: ``sigmoid(ρ)``
    is taken once and multiplies both terms, and the update is fused into it.
    """
    s = torch.sigmoid(rho)
    if kl is not None:
        prior_loc, prior_prec = kl
        cp = prior_prec * c  # (…, 1, D): a task-shared, smaller tensor
        g_loc = torch.addcmul(g_loc, loc - prior_loc, cp, value=-1.0)
        g_sigma = torch.add(torch.addcmul(g_sigma, sigma, cp, value=-1.0), sigma.reciprocal(), alpha=c)
    new_loc = _ascend(loc, alpha_loc, g_loc)
    if isinstance(alpha_rho, Tensor):
        return new_loc, torch.addcmul(rho, alpha_rho * s, g_sigma)
    return new_loc, torch.addcmul(rho, s, g_sigma, value=alpha_rho)


def _learned(alpha: Tensor | float) -> bool:
    return isinstance(alpha, Tensor) and alpha.requires_grad


def _ascend_(lam: Tensor, alpha: Tensor | float, grad: Tensor) -> None:
    """λ += α·∇ in place (α a constant here: its derivative is attached separately)."""
    if isinstance(alpha, Tensor):
        lam.addcmul_(alpha.detach(), grad)
    else:
        lam.add_(grad, alpha=alpha)


class InnerLoop:
    """The inner loop for one network, prior and likelihood.

    Holds only static structure (names, shapes, the flat layout of the
    weights); every method is a pure function of the tensors passed in.

    Args:
        net: The functional network.
        prior: The prior bound to ``net``'s weights.
        likelihood: The likelihood.
        config: Inner-loop settings.
        y_event_dim: Number of per-example target dims (``len(y_shape)``).
        family: q(φ)'s family (default: the prior's), e.g.
            :class:`~hvi.families.PointMassFamily` for MAML-style methods.
    """

    def __init__(
        self,
        net: FunctionalNet,
        prior: BoundPrior,
        likelihood: Likelihood,
        config: InnerConfig,
        y_event_dim: int,
        family: GuideFamily | None = None,
    ) -> None:
        self.net = net
        self.prior = prior
        self.family = prior.family if family is None else family
        if config.memory == "implicit" and not self.family.diagonal_normal:
            raise ValueError(
                f"memory='implicit' needs the diagonal Normal family, but q(φ) uses "
                f"{type(self.family).__name__}; use InnerConfig(memory='checkpoint')."
            )
        if config.update == "natural" and not self.family.diagonal_normal:
            raise ValueError(
                f"update='natural' needs the diagonal Normal family, but the prior uses "
                f"{type(self.family).__name__}; use InnerConfig(update='gradient')."
            )
        self.likelihood = likelihood
        self.config = config
        self.y_event_dim = y_event_dim
        self.lik_sites = likelihood.global_sites()
        self.shapes = dict(net.shapes)
        self.numels = [math.prod(s) for s in self.shapes.values()]
        #: Total number of weights D (the length of a flat λ tensor).
        self.size = sum(self.numels)

    # -- the flat layout -----------------------------------------------------
    def split(self, flat: Tensor) -> dict[str, Tensor]:
        """Views ``(*lead, *w)`` per weight of a flat ``(*lead, D)`` tensor (no copy)."""
        parts = flat.split(self.numels, dim=-1)
        return {n: p.unflatten(-1, s) if s else p.squeeze(-1) for (n, s), p in zip(self.shapes.items(), parts)}

    def unflatten(self, flat: Mapping[str, Tensor]) -> Lambda:
        """Per-weight λ ``{weight: {key: (*lead, *w)}}`` from flat λ ``{key: (*lead, D)}``."""
        views = {k: self.split(v) for k, v in flat.items()}
        return {n: {k: views[k][n] for k in flat} for n in self.shapes}

    def flatten(self, per_weight: Mapping[str, Tensor], lead: tuple[int, ...]) -> Tensor:
        """``(*lead, D)`` from tensors that broadcast to ``(*lead, *w)`` per weight."""
        return torch.cat(
            [per_weight[n].expand(lead + s).reshape(lead + (-1,)) for n, s in self.shapes.items()], dim=-1
        )

    def draw_noise(
        self, lead: tuple[int, ...], steps: int, device: torch.device, dtype: torch.dtype
    ) -> TaskNoise:
        """Standard-normal inner-loop noise ``(*lead, steps, S, D)`` as per-task streams.

        ``lead`` ends with the number of tasks. ``.materialize()`` gives the
        tensor, and :meth:`split` views it per weight.
        """
        return TaskNoise.draw_seed(
            lead=tuple(lead[:-1]), num_tasks=lead[-1], steps=steps,
            shape=(self.config.num_samples, self.size), device=device, dtype=dtype,
        )

    # -- the loop ------------------------------------------------------------
    def adapt(
        self,
        theta: Mapping[str, Tensor],
        lik: Mapping[str, Tensor],
        lr: Mapping[str, Mapping[str, Tensor | float]],
        x: Tensor,
        y: Tensor,
        noise: Tensor | None,
        eps: Tensor | TaskNoise,
        steps: int,
        particle_dims: Mapping[str, int | None] | None = None,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Flat λ for a batch of tasks (and θ particles).

        Args:
            theta: Prior site values by Pyro name; ``(P, *site)`` where
                ``particle_dims[name] == 0`` else ``(*site)``.
            lik: Likelihood site values by key, same convention (under
                ``particle_dims[key]``).
            lr: Step sizes per weight and λ key (floats or scalar tensors).
            x, y, noise: Support data ``(B, Ns, ...)``; ``noise`` may be None.
            eps: Flat noise ``(B, steps, S, D)``, or ``(P, B, steps, S, D)``
                with particles: a tensor, or per-task streams from
                :meth:`draw_noise` that each step draws from as it runs.
            steps: Number of inner steps.
            particle_dims: Which sites carry a leading particle dim (0) and
                which do not (None). None: no particles.
            mask: Which support targets are observed, bool shaped like ``y``;
                None: all. Unobserved targets add nothing to the objective.

        Returns:
            λ as ``{key: (B, D)}``, or ``(P, B, D)`` with particles; per-weight
            views with :meth:`unflatten`.
        """
        dims = dict(particle_dims or {})
        P = [v.shape[0] for n, v in theta.items() if dims.get(n) == 0]
        P += [v.shape[0] for k, v in lik.items() if dims.get(k) == 0]
        lead = (P[0],) if P else ()
        lik = {k: self._pad_lik(v, k, particle=dims.get(k) == 0) for k, v in lik.items()}
        # Adapting is differentiable even under torch.no_grad() (meta-testing); the
        # graph through the steps is only kept when an outer gradient will need it.
        needs_graph = torch.is_grad_enabled() and any(
            isinstance(t, Tensor) and t.requires_grad
            for t in [*theta.values(), *lik.values(), *(a for d in lr.values() for a in d.values())]
        )
        # Argument validation is a data-dependent host sync; the data were validated
        # at the API boundary and θ is kept feasible by its constraints.
        names = list(theta)
        lr_keys = [(n, k) for n, d in lr.items() for k, a in d.items() if isinstance(a, Tensor)]
        shared = [*theta.values(), *lik.values(), *(lr[n][k] for n, k in lr_keys)]
        keys = self.family.param_names
        task_dim = len(lead)

        def chunk(inputs: list[Tensor], c: slice) -> tuple[Tensor, ...]:
            it = iter(inputs)
            th = {n: next(it) for n in names}
            lk = {k: next(it) for k in lik}
            lrs = {n: dict(d) for n, d in lr.items()}
            for n, k in lr_keys:
                lrs[n][k] = next(it)
            at = (slice(None),) * task_dim + (c,)
            e = eps.chunk(c) if isinstance(eps, TaskNoise) else eps[at]
            lam = self._run(th, lk, lrs, x[c], y[c], None if noise is None else noise[c],
                            None if mask is None else mask[c], e, steps, lead, needs_graph)
            return tuple(lam[k] for k in keys)

        chunks = num_task_chunks(x.shape[0], x.device, self.config.parallel_tasks)
        with torch.enable_grad(), pyro.validation_enabled(False):
            return dict(zip(keys, map_task_chunks(chunk, shared, x.shape[0], chunks, task_dim)))

    def _pad_lik(self, value: Tensor, key: str, particle: bool) -> Tensor:
        """A likelihood site value right-aligned to ``(*lead, B, S, N, *y)`` outputs."""
        value = pad_site(value, self.lik_sites[key].shape, self.y_event_dim)
        if particle:  # (P, *site) → (P, 1, 1, 1, *site): past the task, sample and data dims
            value = value.reshape(value.shape[:1] + (1, 1, 1) + value.shape[1:])
        return value

    def _flat_lr(self, lr: Mapping[str, Mapping[str, Tensor | float]], key: str, ref: Tensor) -> Tensor | float:
        vals = [lr[n][key] for n in self.shapes]
        if all(not isinstance(a, Tensor) for a in vals) and len(set(vals)) == 1:
            return float(vals[0])
        return torch.cat(
            [torch.as_tensor(a, dtype=ref.dtype, device=ref.device).reshape(1).expand(k) for a, k in zip(vals, self.numels)]
        )

    def _start(self, theta, lr, lead, B, second_order):
        """λ^(0) ``{key: (*lead, B, D)}``, α per key, and the KL's gradient terms.

        The KL terms are ``(prior_loc, prior_prec)`` flat, for the closed-form
        gradient (Normal family, Normal priors), else the per-weight priors for
        :meth:`_kl`. A method of its own so that its temporaries are freed
        before the first step (they would otherwise be live through the loop).
        """
        task_lead = lead + (1,)  # broadcasts over the task dim
        priors = {n: self.prior.local(n, theta, event_ndim=len(s) + 1) for n, s in self.shapes.items()}
        # By capability, not exact type: a Normal family (or a subclass that keeps its
        # (loc, rho) meaning) and Normal priors have the closed-form KL gradient.
        closed_form = self.family.diagonal_normal and all(isinstance(p, Normal) for p in priors.values())
        # λ^(0) per weight, then flat: the init's backward keeps the (per-weight) θ it read.
        inits = {n: self.family.init(p) for n, p in priors.items()}
        lam = {k: self.flatten({n: inits[n][k] for n in self.shapes}, task_lead) for k in self.family.param_names}
        if closed_form:
            # A Normal family starts at the prior mean, so the KL gradient shares λ^(0).loc.
            kl_terms = None
            if self.config.kl_weight > 0:
                loc = lam["loc"]
                scale = self.flatten({n: p.scale for n, p in priors.items()}, task_lead)
                if not second_order:  # θ enters the steps only through λ^(0) (and α)
                    loc, scale = loc.detach(), scale.detach()
                kl_terms = (loc, scale.pow(-2))
        else:
            if not second_order:
                theta = {n: v.detach() for n, v in theta.items()}
                priors = {n: self.prior.local(n, theta, event_ndim=len(s) + 1) for n, s in self.shapes.items()}
            kl_terms = priors
        ref = lam[self.family.param_names[0]]
        alpha = {k: self._flat_lr(lr, k, ref) for k in lam}
        return {k: v.expand(lead + (B, self.size)) for k, v in lam.items()}, alpha, closed_form, kl_terms

    def _support_loglik(self, lik, x, y, noise, mask, lead, S, per_point=False, twice=False):
        """ℓ as a function of weights ``phi`` (*lead, B, S, D): Σ over tasks, draws and examples.

        With ``per_point`` the sum is over examples only: ``(*lead, B, S)``.
        ``twice``: ℓ's gradient will itself be differentiated (second order),
        so the network runs without worker-thread chunks: their backward
        pass is not differentiable, and a batch the loop did not split (one
        task, its Monte Carlo draws folded in) would lose the second-order
        terms. The loop's own task chunks run in workers already.
        """
        B, D = x.shape[0], self.size

        # x, y, noise as (*lead, B, S, Ns, ...) → (T·S, Ns, ...) for one vmapped forward.
        def fold(t: Tensor) -> Tensor:
            return t.unsqueeze(1).expand(lead + (B, S) + t.shape[1:]).reshape((-1,) + t.shape[1:])

        x_all = fold(x)
        y_b = y.unsqueeze(1)
        noise_b = None if noise is None else noise.unsqueeze(1)
        mask_b = None if mask is None else mask.unsqueeze(1)

        def loglik(phi: Tensor) -> Tensor:
            out = self.net.batched(self.split(phi.reshape(-1, D)), x_all, parallel=not twice)
            out = out.reshape(lead + (B, S) + out.shape[1:])
            lp = self.likelihood.observe(out, lik, noise_b, self.y_event_dim, mask_b).log_prob(y_b)
            return lp.sum(-1) if per_point else lp.sum()

        return loglik

    @staticmethod
    def _noise_reader(eps, replay: bool = False):
        """Step m's noise ``(*lead, B, S, D)``, from a tensor or drawn from per-task streams in order.

        ``replay``: per-task streams give a :class:`Redraw` (call it for the tensor),
        which a checkpointed step can redraw in the backward pass.
        """
        streams = eps.generators() if isinstance(eps, TaskNoise) else None

        def noise_at(m: int) -> Tensor | Redraw:
            if streams is None:
                return eps[..., m, :, :]
            return Redraw(eps, streams) if replay else eps.next(streams)

        return noise_at

    def _run(self, theta, lik, lr, x, y, noise, mask, eps, steps, lead, needs_graph) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.memory == "implicit" and needs_graph and steps > 0:
            return self._run_implicit(theta, lik, lr, x, y, noise, mask, eps, steps, lead)
        if cfg.update == "natural":
            return self._run_natural(theta, lik, lr, x, y, noise, mask, eps, steps, lead, needs_graph)
        B, Ns = x.shape[0], x.shape[1]
        S, beta = cfg.num_samples, cfg.kl_weight
        second_order = needs_graph and not cfg.first_order
        lam, alpha, closed_form, kl_terms = self._start(theta, lr, lead, B, second_order)
        if not second_order:
            lik = {k: v.detach() for k, v in lik.items()}
        c = beta / Ns  # weight of the closed-form KL gradient
        closed_kl = closed_form and beta > 0
        loglik = self._support_loglik(lik, x, y, noise, mask, lead, S, twice=second_order)

        def objective(phi: Tensor, src: Mapping[str, Tensor], loglik=loglik) -> Tensor:
            """The support objective at weights ``phi`` (*lead, B, S, D) drawn from q(λ = ``src``)."""
            if beta > 0 and not closed_form:
                return loglik(phi) / (S * Ns) - beta * self._kl(src, kl_terms, phi) / Ns
            return loglik(phi) / (S * Ns)

        checkpointed = second_order and cfg.memory == "checkpoint"
        noise_at = self._noise_reader(eps, replay=checkpointed)

        if not second_order:
            start = {k: v.detach() for k, v in lam.items()}
            if closed_form:  # kl_terms is None when β = 0
                final = self._first_order_normal(start, alpha, kl_terms, c, objective, noise_at, steps)
            else:
                final = self._first_order(start, alpha, objective, noise_at, steps)
            return self._attach_first_order(final, lam, alpha, needs_graph)

        # One step as a function: its temporaries (φ, gradients, σ) die when it
        # returns instead of staying bound through the next step's forward.
        def step(lam: dict[str, Tensor], e: Tensor | Redraw, parts=None, create_graph: bool = True) -> dict[str, Tensor]:
            """λ after one step from ``lam``; ``parts``: (ℓ, KL terms, α) in place of the loop's own."""
            loglik_, kl_terms_, alpha_ = (loglik, kl_terms, alpha) if parts is None else parts
            e = e() if isinstance(e, Redraw) else e
            src = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in lam.items()}
            if closed_form:
                sigma = F.softplus(src["rho"])
                # A mul and an add, not addcmul: addcmul's derivatives scale ε by its `value`
                # (a kernel of φ's size) in the inner gradient and again in the outer pass.
                phi = src["loc"].unsqueeze(-2) + sigma.unsqueeze(-2) * e
                # ℓ's gradient in σ, not ρ: sigmoid(ρ) then multiplies it and the KL's term once.
                g_loc, g_sigma = torch.autograd.grad(objective(phi, src, loglik_), [src["loc"], sigma],
                                                     create_graph=create_graph)
                new = _normal_ascent(lam["loc"], lam["rho"], sigma, g_loc, g_sigma, kl_terms_ if closed_kl else None,
                                     c, alpha_["loc"], alpha_["rho"])
                return dict(zip(("loc", "rho"), new))
            phi = self.family.sample({k: v.unsqueeze(-2) for k, v in src.items()}, e)
            grads = torch.autograd.grad(objective(phi, src, loglik_), list(src.values()), create_graph=create_graph)
            g = dict(zip(src, grads))
            return {k: _ascend(lam[k], alpha_[k], g[k]) for k in lam}

        if checkpointed and closed_form:
            return self._recomputed(step, lam, lik, kl_terms if closed_kl else None, alpha, noise_at, steps,
                                    lambda lk: self._support_loglik(lk, x, y, noise, mask, lead, S, twice=True))
        if checkpointed:
            return checkpointed_loop(step, lam, noise_at, steps)
        for m in range(steps):
            lam = step(lam, noise_at(m))
        return lam

    @staticmethod
    def _recomputed(step, lam, lik, kl_terms, alpha, noise_at, steps, make_loglik) -> dict[str, Tensor]:
        """λ^(K) through one :class:`RecomputedSteps` node (memory="checkpoint", closed-form KL gradient).

        The step's tensors of θ (likelihood sites, the prior's (μ_p, s_p), learned
        or per-weight α) become the node's inputs, so that its backward can
        differentiate a recomputed step with respect to them.
        """

        def spec_step(t, lam_, e, inputs, create_graph):
            lk, kl, al = inputs
            return step(lam_, e, (make_loglik(lk), kl, al), create_graph)

        return recompute_steps(spec_step, lam, (lik, kl_terms, alpha), noise_at, steps)

    # -- memory="implicit": no graph through the steps (hvi.implicit) ---------------
    def _run_implicit(self, theta, lik, lr, x, y, noise, mask, eps, steps, lead) -> dict[str, Tensor]:
        """λ^(K) from graph-free steps, with the implicit derivative at the stationary point attached."""
        from hvi import implicit

        cfg = self.config
        B = x.shape[0]
        _, _, closed_form, kl_terms = self._start(theta, lr, lead, B, second_order=True)
        if not closed_form:
            kinds = sorted({type(p).__name__ for p in kl_terms.values()})
            raise ValueError(
                f"memory='implicit' needs a Normal p(φ | θ) (e.g. GaussianPrior), but the prior gives "
                f"{', '.join(kinds)}; use InnerConfig(memory='checkpoint')."
            )
        # F's fixed draws are the last step's noise; per-task streams record it as they run.
        record = _LastNoise(**{f.name: getattr(eps, f.name) for f in fields(eps)}) if isinstance(eps, TaskNoise) else eps
        lam = self._run(theta, lik, lr, x, y, noise, mask, record, steps, lead, needs_graph=False)
        last = record.last if isinstance(eps, TaskNoise) else eps[..., steps - 1, :, :]
        points = natural.probes(last, cfg.curvature == "pair") if cfg.update == "natural" else last
        J = points.shape[-2]
        keys = tuple(lik)

        def loglik_for(values):
            loglik = self._support_loglik(values, x, y, noise, mask, lead, J, twice=True)

            def quiet(phi):
                # Called in the outer backward pass, outside adapt()'s validation_enabled(False):
                # argument checks there would be host syncs.
                with pyro.validation_enabled(False):
                    return loglik(phi)

            return quiet

        system = implicit.NormalStationarity(loglik_for, keys, points, cfg.kl_weight, clip=cfg.update == "natural")
        return implicit.attach(system, lam, kl_terms, [lik[k] for k in keys],
                               cfg.implicit_cg_steps, float(cfg.implicit_damping))

    # -- the natural-gradient update (hvi.natural) -------------------------------
    def _prior_terms(self, kl_terms, closed_form, lead, B):
        """Flat (μ_p, s_p) when every p(φ | θ) is Normal, else None (generic priors)."""
        if closed_form:
            return kl_terms
        if all(isinstance(p, Normal) for p in kl_terms.values()):
            task_lead = lead + (1,)
            loc = self.flatten({n: p.loc for n, p in kl_terms.items()}, task_lead)
            scale = self.flatten({n: p.scale for n, p in kl_terms.items()}, task_lead)
            return loc, scale.pow(-2)
        return None

    def _generic_prior_moments(self, m, sigma, e, priors, create_graph):
        """g_p = −∂KL/∂m and c_p = (∂KL/∂σ)/σ + 1/σ² for any p(φ | θ), by autograd of the KL.

        KL(q ‖ p) = −E_q[log p] − H(q) and ∂H/∂σ = 1/σ, so c_p is −(1/σ)·∂E_q[log p]/∂σ,
        which Price's theorem makes E_q[−∇² log p]. Floored at 1e-4·s: a prior that
        gives no curvature (or a noisy negative estimate) may widen q at most 100× per full step.
        """
        if not create_graph:
            m, sigma = m.detach().requires_grad_(), sigma.detach().requires_grad_()
        phi = torch.addcmul(m.unsqueeze(-2), sigma.unsqueeze(-2), e)
        kl = self._kl({"loc": m, "rho": inv_softplus(sigma)}, priors, phi)
        d_m, d_sigma = torch.autograd.grad(kl, [m, sigma], create_graph=create_graph)
        curv = d_sigma / sigma + sigma.pow(-2)
        return d_m.neg(), torch.maximum(curv, 1e-4 * sigma.pow(-2))

    @staticmethod
    def _curvature_along(line, m, d, s, create_graph):
        """κ = −dᵀ∇²ℓ·d per task at m, by central differences at m ± δ·d.

        δ ≤ 1 makes the probe move q's own scale (rms of δ·d/σ is 1): the
        curvature is local, not a secant over a step that may overshoot far.
        """
        with torch.set_grad_enabled(create_graph):
            z = (d * d * s).mean(-1, keepdim=True)  # rms² of d/σ
            delta = z.clamp_min(1.0).rsqrt()
            pts = torch.stack([m, m + delta * d, m - delta * d], dim=-2)
            ll = line(pts)
            return (2 * ll[..., 0] - ll[..., 1] - ll[..., 2]) / delta.squeeze(-1).square()

    def _run_natural(self, theta, lik, lr, x, y, noise, mask, eps, steps, lead, needs_graph) -> dict[str, Tensor]:
        """λ^(K) by natural-gradient steps in q's mean m and precision s (see :mod:`hvi.natural`).

        Second order differentiates through every step. First order treats each
        step's increments (dm, ds) as constants: λ^(K)'s derivatives are 1 with
        respect to (m, s)^(0) and Σ dm, Σ ds with respect to a learned α.
        """
        cfg = self.config
        B, beta = x.shape[0], cfg.kl_weight
        second_order = needs_graph and not cfg.first_order
        lam0, alpha, closed_form, kl_terms = self._start(theta, lr, lead, B, second_order)
        if not second_order:
            lik = {k: v.detach() for k, v in lik.items()}
        prior = self._prior_terms(kl_terms, closed_form, lead, B)
        pairs = cfg.curvature == "pair"
        loglik = self._support_loglik(lik, x, y, noise, mask, lead, natural.num_points(cfg.num_samples, pairs),
                                      twice=second_order)
        line = (self._support_loglik(lik, x, y, noise, mask, lead, 3, per_point=True, twice=second_order)
                if cfg.line_search else None)
        every = cfg.curvature_every
        at_mean = (self._support_loglik(lik, x, y, noise, mask, lead, 1, twice=second_order)
                   if every > 1 and steps > 1 else None)
        # memory="checkpoint" with a Normal prior: one RecomputedSteps node; others checkpoint each step.
        recomputed = second_order and cfg.memory == "checkpoint" and prior is not None
        noise_at = self._noise_reader(eps, replay=recomputed)
        m0, s0 = lam0["loc"], F.softplus(lam0["rho"]).pow(-2)
        m, s = (m0, s0) if second_order else (m0.detach(), s0.detach())
        a_m, a_s = alpha["loc"], alpha["rho"]
        if not second_order:
            a_m, a_s = (a.detach() if isinstance(a, Tensor) else a for a in (a_m, a_s))
        total_m = total_s = 0.0

        def nat_step(m, s, raw, h_last=None, parts=None, create_graph=second_order):
            """(m', s', dm, ds, h); ``parts``: (ℓ, line ℓ, ℓ at the mean, prior terms, α_m, α_s) in place of the loop's own."""
            loglik_, line_, at_mean_, prior_, a_m_, a_s_ = (
                (loglik, line, at_mean, prior, a_m, a_s) if parts is None else parts)
            sigma = s.rsqrt()
            if h_last is None:  # measure g and h at the sign points (antithetic pairs, or one-sided)
                e = natural.probes(raw() if isinstance(raw, Redraw) else raw, pairs)
                phi = torch.addcmul(m.unsqueeze(-2), sigma.unsqueeze(-2), e)
                if not create_graph:
                    phi.requires_grad_()
                (g_phi,) = torch.autograd.grad(loglik_(phi), [phi], create_graph=create_graph)
                g, h = natural.moments(g_phi, e, sigma)
            else:  # keep h; g at the mean, which a quadratic ℓ's antithetic pair would also give
                e = raw  # read by a generic prior only (never a Redraw: those come with a Normal prior)
                phi = m.unsqueeze(-2) if create_graph else m.detach().unsqueeze(-2).requires_grad_()
                (g_phi,) = torch.autograd.grad(at_mean_(phi), [phi], create_graph=create_graph)
                g, h = g_phi.squeeze(-2), h_last
            del phi, g_phi
            if prior_ is not None:
                prior_loc, prior_prec = prior_
                prior_grad, prior_curv = (m - prior_loc).mul(prior_prec).neg(), prior_prec
            else:
                prior_grad, prior_curv = self._generic_prior_moments(m, sigma, e, kl_terms, create_graph)
            scale = None
            if line_ is not None:  # the curvature along the step, measured from the current m

                def scale(grad, d, s_new, m=m, prior_curv=prior_curv):
                    kappa = self._curvature_along(line_, m, d, s_new, create_graph)
                    return natural.line_scale(grad, d, prior_curv, kappa, beta)

            return (*natural.step(m, s, g, h, prior_grad, prior_curv, a_m_, a_s_, beta, scale), h)

        if recomputed:
            m, s = self._recomputed_natural(nat_step, m, s, lik, prior, a_m, a_s, noise_at, steps, every, x, y,
                                            noise, mask, lead, natural.num_points(cfg.num_samples, pairs))
            return {"loc": m.expand(lead + (B, self.size)), "rho": inv_softplus(s.rsqrt()).expand(lead + (B, self.size))}
        run_step = checkpointed(nat_step) if second_order and cfg.memory == "checkpoint" else nat_step
        h = None
        for t in range(steps):
            m, s, dm, ds, h = run_step(m, s, noise_at(t), None if t % every == 0 else h)
            if not second_order:
                m, s = m.detach(), s.detach()
                total_m, total_s = total_m + dm.detach(), total_s + ds.detach()
        if not second_order:
            totals = {k: v for k, v, a in (("loc", total_m, alpha["loc"]), ("rho", total_s, alpha["rho"]))
                      if _learned(a) and isinstance(v, Tensor)}
            attached = self._attach_first_order(({"loc": m, "rho": s}, totals), {"loc": m0, "rho": s0}, alpha, needs_graph)
            m, s = attached["loc"], attached["rho"]
        return {"loc": m.expand(lead + (B, self.size)), "rho": inv_softplus(s.rsqrt()).expand(lead + (B, self.size))}

    def _recomputed_natural(self, nat_step, m, s, lik, prior, a_m, a_s, noise_at, steps, every, x, y, noise,
                            mask, lead, points) -> tuple[Tensor, Tensor]:
        """(m, s)^(K) through one :class:`RecomputedSteps` node (memory="checkpoint", Normal prior).

        The state is (m, s), and the kept curvature h when ``curvature_every > 1``
        (a step that measures h afresh ignores the h it is given; the first is
        given zeros). The node's other inputs are the tensors of θ the step
        reads: likelihood sites, the prior's (μ_p, s_p), and α_m, α_s when tensors.
        ``points``: the evaluations of a measuring step (:func:`hvi.natural.num_points`).
        """
        keep_h = every > 1 and steps > 1
        has_line, has_mean = self.config.line_search, keep_h

        def make(lk, n, per_point=False):
            return self._support_loglik(lk, x, y, noise, mask, lead, n, per_point=per_point, twice=True)

        def spec_step(t, state, e, inputs, create_graph):
            lk, pr, (am, as_) = inputs
            parts = (make(lk, points), make(lk, 3, per_point=True) if has_line else None,
                     make(lk, 1) if has_mean else None, pr, am, as_)
            h_last = None if t % every == 0 else state["h"]
            m_, s_, _, _, h = nat_step(state["m"], state["s"], e, h_last, parts, create_graph)
            return {"m": m_, "s": s_, "h": h} if keep_h else {"m": m_, "s": s_}

        state = {"m": m, "s": s, **({"h": m.new_zeros(m.shape)} if keep_h else {})}
        out = recompute_steps(spec_step, state, (lik, tuple(prior), (a_m, a_s)), noise_at, steps)
        return out["m"], out["s"]

    # -- first order: λ moves in place, no step is recorded ---------------------
    # Every step's gradient g_m is a constant, so λ^(K) = λ^(0) + Σ_m α ⊙ g_m, whose
    # only derivatives are ∂/∂λ^(0) = 1 and ∂/∂α = Σ_m g_m. The loop updates
    # detached buffers in place and _attach_first_order adds the derivatives once.
    # Few λ-sized allocations per step also keep the C allocator from fragmenting
    # the heap (peak memory at task batch 1).

    @staticmethod
    def _buffers(lam, alpha):
        """λ^(0) as buffers to update in place, and zeroed Σ_m g_m for every learned α."""
        buf = {k: v.clone(memory_format=torch.contiguous_format) for k, v in lam.items()}
        return buf, {k: torch.zeros_like(v) for k, v in buf.items() if _learned(alpha[k])}

    @staticmethod
    def _ascend_all_(buf, alpha, grads, total) -> None:
        for k, g in grads.items():
            _ascend_(buf[k], alpha[k], g)
            if k in total:
                total[k].add_(g)

    def _first_order(self, lam, alpha, objective, noise_at, steps):
        """Any family and prior: ∇_λ by autograd through the family's sampler."""
        buf, total = self._buffers(lam, alpha)
        for m in range(steps):
            src = {k: v.detach().requires_grad_() for k, v in buf.items()}
            phi = self.family.sample({k: v.unsqueeze(-2) for k, v in src.items()}, noise_at(m))
            g = dict(zip(src, torch.autograd.grad(objective(phi, src), list(src.values()))))
            del src, phi  # the graph is gone: λ may change in place
            self._ascend_all_(buf, alpha, g, total)
        return buf, total

    def _first_order_normal(self, lam, alpha, kl_terms, c, objective, noise_at, steps):
        """Normal family, φ = μ + σ(ρ)·ε: autograd differentiates only with respect to φ.

        With g_φ = ∂L/∂φ per sample, ∂L/∂μ = Σ_s g_φ and ∂L/∂ρ = Σ_s g_φ·ε · sigmoid(ρ);
        ``kl_terms`` (closed form) adds −c·(μ − μ_p)/σ_p² and −c·(σ/σ_p² − 1/σ)·sigmoid(ρ).
        While the network runs only λ and φ are held (σ is recomputed after),
        and the gradient's temporaries are made after its activations are freed.
        """
        buf, total = self._buffers(lam, alpha)
        loc, rho = buf["loc"], buf["rho"]
        S = self.config.num_samples
        phi = loc.new_empty(loc.shape[:-1] + (S, self.size))
        for m in range(steps):
            e = noise_at(m)
            torch.addcmul(loc.unsqueeze(-2), F.softplus(rho).unsqueeze(-2), e, out=phi)
            leaf = phi.detach().requires_grad_()
            (g_phi,) = torch.autograd.grad(objective(leaf, {"loc": loc, "rho": rho}), [leaf])
            del leaf
            if S == 1:  # ∂L/∂σ into φ's buffer, which is free now
                grad_loc, grad_rho = g_phi.squeeze(-2), torch.mul(g_phi, e, out=phi).squeeze(-2)
            else:
                grad_loc, grad_rho = g_phi.sum(-2), (g_phi * e).sum(-2)
            del g_phi
            sigma = F.softplus(rho)
            if kl_terms is not None:
                prior_loc, prior_prec = kl_terms
                dkl = torch.sub(loc, prior_loc).mul_(prior_prec)
                grad_loc = torch.sub(grad_loc, dkl, alpha=c, out=dkl)  # ∂/∂μ of L − c·KL
                dkl = torch.mul(sigma, prior_prec).sub_(sigma.reciprocal_())
                grad_rho = torch.sub(grad_rho, dkl, alpha=c, out=dkl)  # ∂/∂σ of L − c·KL
            grad_rho.mul_(torch.sigmoid(rho, out=sigma))  # dσ/dρ
            del sigma
            self._ascend_all_(buf, alpha, {"loc": grad_loc, "rho": grad_rho}, total)
        return buf, total

    @staticmethod
    def _attach_first_order(final, lam0, alpha, needs_graph) -> dict[str, Tensor]:
        """λ^(K) with its derivatives: 1 with respect to λ^(0), Σ_m g_m with respect to α."""
        buf, total = final
        if not needs_graph:
            return buf
        out = {}
        for k, v in buf.items():
            if lam0[k].requires_grad:  # adds exact zeros: the value stays λ^(K) bit for bit
                v = v + (lam0[k] - lam0[k].detach())
            if k in total:
                step = alpha[k] * total[k]
                v = v + (step - step.detach())
            out[k] = v
        return out

    def _kl(self, lam: Mapping[str, Tensor], priors: Mapping[str, torch.distributions.Distribution], phi: Tensor) -> Tensor:
        """Σ over tasks and weights of KL(q ‖ p): analytic where known, else MC at ``phi``."""
        q_views = self.unflatten(lam)
        draws = self.split(phi)  # (*lead, B, S, *w)
        kl = phi.new_zeros(())
        for n, s in self.shapes.items():
            q = self.family.dist(q_views[n])
            kl = kl + self.prior.kl(q, priors[n], draws[n].movedim(-len(s) - 1, 0))
        return kl
