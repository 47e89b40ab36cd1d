"""Implicit meta-gradients (``InnerConfig(memory="implicit")``): iMAML / iBaML for the Normal family.

The inner loop runs its K steps without a graph (as first order does) and
returns λ* = (μ*, ρ*) of q(φ_i) = N(μ*, diag σ*²), σ = softplus(ρ). λ* is taken
to be a stationary point of the task's inner objective with the noise held fixed::

    F(λ; θ) = (1/J) Σ_j ℓ(μ + σ ⊙ e_j) − β · KL(N(μ, σ²) ‖ N(μ_p, 1/s_p))

with ℓ the support log-likelihood (it reads the likelihood's global sites) and
e_j the last inner step's noise directions: the antithetic sign points
m ± σ·r of the natural update (:func:`hvi.natural.probes`; m + σ·r alone under
``InnerConfig(curvature="one_sided")``, whose fixed point is F's too), or the Gaussian
draws of the gradient update. θ enters F through the prior's (μ_p, s_p) and the
likelihood's sites. Where ∇_λ F(λ*; θ) = 0, the implicit function theorem gives::

    dλ*/dθ = (−∇²_λλ F)⁻¹ ∇²_λθ F,   so   θ̄ = ∂/∂θ ⟨v, ∇_λ F(λ*; θ)⟩,   v = (−∇²_λλ F)⁻¹ λ̄

for the outer gradient λ̄. The natural update clips negative curvature
(h_d < 0, a non-convex network): there its fixed point is s_d = s_p,d, not
∂F/∂σ_d = 0. Those precisions are pinned to the prior's, ρ_d = ρ_p,d(θ)
(which entries: from h at λ* with the last step's points). The rest is the
stationary point of F in the free coordinates u (the means and the unclipped
ρ) given them, so the system is solved on u only, and the pinned ρ_d pass
their λ̄ straight to ρ_p,d(θ).

v is found by a fixed number of preconditioned conjugate-gradient steps (:func:`cg_solve`, batched: every task and θ particle
solves its own D-dimensional system), each one Hessian-vector product by
double backward through one evaluation of F. Memory is that of one inner
step's second-order graph whatever K is; the cost of the backward pass is
one forward, one backward and ``cg_steps`` double-backward passes.

Both updates' fixed points are stationary points of F: gradient ascent stops
where ∇F = 0, and the natural step's fixed point s = s_p + h/β, g/β + g_p = 0
is ∂F/∂m = 0, ∂F/∂σ = 0 (h = E[−∇²ℓ] by Price's theorem, as estimated with the
same points). The gradient is **approximate** where

* the loop has not converged (λ_K is not stationary; the error shrinks with
  the distance to the stationary point, at the loop's linear rate);
* the noise changed from step to step: λ_K is then a noisy iterate, and F is
  the objective of the last step's draws only (Monte Carlo error of order
  σ/√J in the gradient update; none for the natural update on a likelihood
  whose curvature is diagonal, where the sign points are exact);
* under the natural update, an h_d near 0 is clipped in some steps and not in
  others (which ρ_d are pinned is decided at the last step's points);
* CG stops before convergence, or ``damping`` > 0 (v solves (−∇²F + δ·M) v = λ̄,
  M the diagonal preconditioner below: a bias toward zero of order δ).

The preconditioner is the diagonal curvature of F at a stationary point,
M_μ = β·s_p + h⁺ and M_ρ = sigmoid(ρ)²·(M_μ + β/σ²) (h from the same points by
Price's theorem): exact on the conjugate Normal–Normal model, where PCG then
converges in one step. A task whose system shows non-positive curvature along
a search direction stops there (its v keeps the steps taken so far).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from hvi.families import inv_softplus

__all__ = ["NormalStationarity", "cg_solve", "attach"]

Pair = tuple[Tensor, Tensor]


def _dot(u: Sequence[Tensor], v: Sequence[Tensor]) -> Tensor:
    """Per-system inner product over the last dim, summed over the blocks: ``(..., 1)``."""
    return sum((a * b).sum(-1, keepdim=True) for a, b in zip(u, v))


def cg_solve(
    matvec: Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]],
    b: Sequence[Tensor],
    precond: Sequence[Tensor],
    steps: int,
) -> tuple[Tensor, ...]:
    """x ≈ A⁻¹ b by ``steps`` preconditioned CG iterations, for a batch of independent systems.

    Each vector is a tuple of blocks ``(..., D_k)``; every leading index is its
    own system (A must not mix them), with its own step sizes. No host syncs:
    a system whose curvature along its search direction is not positive (or
    that has converged to zero residual) keeps its current x from then on.

    Args:
        matvec: ``p ↦ A p`` on tuples of blocks.
        b: The right-hand side.
        precond: The diagonal of the preconditioner M (positive), one per block.
        steps: Number of CG iterations (≥ 1).

    Returns:
        x, shaped like ``b``.
    """
    x = tuple(torch.zeros_like(t) for t in b)
    r = tuple(b)
    z = tuple(ri / mi for ri, mi in zip(r, precond))
    p = z
    rz = _dot(r, z)
    active = rz > 0
    for _ in range(steps):
        ap = matvec(p)
        pap = _dot(p, ap)
        active = active & (pap > 0)
        a = torch.where(active, rz / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = tuple(xi + a * pi for xi, pi in zip(x, p))
        r = tuple(ri - a * api for ri, api in zip(r, ap))
        z = tuple(ri / mi for ri, mi in zip(r, precond))
        rz_new = _dot(r, z)
        active = active & (rz_new > 0)
        beta = torch.where(active, rz_new / torch.where(rz > 0, rz, torch.ones_like(rz)), torch.zeros_like(rz))
        p = tuple(zi + beta * pi for zi, pi in zip(z, p))
        rz = torch.where(active, rz_new, rz)
    return x


@dataclass(frozen=True)
class NormalStationarity:
    """∇_λ F of the fixed-noise inner objective (module docstring) for the Normal family.

    Args:
        loglik_for: ``lik ↦ ℓ``, where ``ℓ(phi)`` sums the support
            log-likelihood over tasks, points and examples for weights
            ``phi`` ``(*lead, B, J, D)`` and likelihood site values ``lik``.
        lik_keys: The likelihood sites, in the order they are passed.
        points: The directions e_j ``(*lead, B, J, D)``.
        beta: The KL weight β (> 0).
        clip: Pin the precisions whose curvature estimate h is negative to the
            prior's, as the natural update's fixed point does (True for it).
    """

    loglik_for: Callable[[Mapping[str, Tensor]], Callable[[Tensor], Tensor]]
    lik_keys: tuple[str, ...]
    points: Tensor
    beta: float
    clip: bool = False

    def __call__(self, loc: Tensor, rho: Tensor, prior_loc: Tensor, prior_prec: Tensor,
                 *lik: Tensor) -> tuple[Pair, Pair, Tensor | None, Tensor]:
        """``((∂F/∂μ, ∂F/∂ρ), (M_μ, M_ρ), free, ρ)``.

        The gradient comes with its graph, the preconditioner without; ``free``
        marks the unpinned ρ (None: all), and ``ρ`` is ``rho`` in value with
        the pinned entries' derivative rerouted to ρ_p(θ).
        """
        e, beta = self.points, self.beta
        free = None
        if self.clip:
            with torch.no_grad():
                sigma = F.softplus(rho)
                phi = torch.addcmul(loc.unsqueeze(-2), sigma.unsqueeze(-2), e)
            with torch.enable_grad():
                phi.requires_grad_()
                ll = self.loglik_for({k: v.detach() for k, v in zip(self.lik_keys, lik)})(phi)
                (g_phi,) = torch.autograd.grad(ll, [phi])
            free = (g_phi * e).sum(-2) <= 0  # h ≥ 0: not clipped
            del phi, g_phi
            pinned = inv_softplus(prior_prec.rsqrt()).expand_as(rho)
            rho = torch.where(free, rho, rho.detach() + (pinned - pinned.detach()))
        sigma = F.softplus(rho)
        phi = torch.addcmul(loc.unsqueeze(-2), sigma.unsqueeze(-2), e)
        ll = self.loglik_for(dict(zip(self.lik_keys, lik)))(phi) / e.shape[-2]
        (g_phi,) = torch.autograd.grad(ll, [phi], create_graph=True)
        g_sigma_lik = (g_phi * e).sum(-2)
        g_loc = g_phi.sum(-2) - beta * (loc - prior_loc) * prior_prec
        g_rho = (g_sigma_lik - beta * (sigma * prior_prec - sigma.reciprocal())) * torch.sigmoid(rho)
        with torch.no_grad():
            h = (g_sigma_lik / sigma).neg().clamp_min(0.0)  # E[−∇²ℓ] by Price's theorem
            m_loc = (beta * prior_prec + h).expand_as(loc)
            m_rho = torch.sigmoid(rho).square() * (m_loc + beta * sigma.pow(-2))
        return (g_loc, g_rho), (m_loc, m_rho), free, rho


class _Implicit(torch.autograd.Function):
    """λ* forward; θ̄ = ∂/∂θ ⟨v, ∇_λ F(λ*; θ)⟩ with v = (−∇²F + δM)⁻¹ λ̄ backward."""

    @staticmethod
    def forward(ctx, system, cg_steps, damping, loc, rho, *inputs):
        ctx.system, ctx.cg_steps, ctx.damping = system, cg_steps, damping
        ctx.save_for_backward(loc, rho, *inputs)
        return loc.clone(), rho.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, bar_loc, bar_rho):
        loc, rho, *inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[5:]
        if bar_loc is None:
            bar_loc = torch.zeros_like(loc)
        if bar_rho is None:
            bar_rho = torch.zeros_like(rho)
        with torch.enable_grad():
            loc, rho = loc.detach().requires_grad_(), rho.detach().requires_grad_()
            leaves = [t.detach().requires_grad_(n) for t, n in zip(inputs, needs)]
            grads, precond, free, rho_eff = ctx.system(loc, rho, *leaves)
            damping = ctx.damping
            keep = (None, None) if free is None else (None, free)

            def restrict(t: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                return tuple(x if k is None else torch.where(k, x, torch.zeros_like(x)) for x, k in zip(t, keep))

            def matvec(p: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
                hp = torch.autograd.grad(grads, (loc, rho), p, retain_graph=True, allow_unused=True)
                return restrict(tuple((torch.zeros_like(q) if h is None else -h) + damping * m * q
                                      for h, m, q in zip(hp, precond, p)))

            v = cg_solve(matvec, restrict((bar_loc, bar_rho)), precond, ctx.cg_steps)
            outs, grad_outs = list(grads), list(v)
            if free is not None:  # the pinned ρ pass their λ̄ straight to ρ_p(θ)
                outs.append(rho_eff)
                grad_outs.append(torch.where(free, torch.zeros_like(bar_rho), bar_rho))
            wanted = [leaf for leaf in leaves if leaf.requires_grad]
            out = iter(torch.autograd.grad(outs, wanted, grad_outs, allow_unused=True) if wanted else ())
        ctx.system = None
        result = []
        for leaf in leaves:
            g = next(out) if leaf.requires_grad else None
            result.append(torch.zeros_like(leaf) if g is None and leaf.requires_grad else g)
        return (None, None, None, None, None, *result)


def attach(
    system: NormalStationarity,
    lam: Mapping[str, Tensor],
    prior: Pair,
    lik: Sequence[Tensor],
    cg_steps: int,
    damping: float,
) -> dict[str, Tensor]:
    """λ* ``{"loc", "rho"}`` (detached values) with its implicit derivative attached.

    Args:
        system: ∇_λ F as a function of (μ, ρ, μ_p, s_p, *lik).
        lam: The converged λ*, without a graph.
        prior: (μ_p, s_p), flat and broadcasting to λ, with their graphs to θ.
        lik: The likelihood site values in ``system.lik_keys`` order, with their graphs.
        cg_steps: CG iterations of the backward solve.
        damping: δ ≥ 0.

    Returns:
        ``{"loc", "rho"}``: the same values, differentiable with respect to ``prior`` and ``lik``.
    """
    loc, rho = _Implicit.apply(system, cg_steps, damping, lam["loc"].detach(), lam["rho"].detach(),
                               *prior, *lik)
    return {"loc": loc, "rho": rho}
