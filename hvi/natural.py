"""The Bayesian learning rule for the diagonal Normal family: one natural-gradient step.

For q(φ) = N(m, diag(1/s)) and the inner objective E_q[ℓ(φ)] − β·KL(q ‖ p(φ | θ)),
with ℓ the support set's log-likelihood, the natural-gradient step of size α
in q's natural parameters (Khan & Rue 2023, "The Bayesian learning rule") is::

    s' = (1 − α)·s + α·(c_p + h/β)
    m' = m + α·(g/β + g_p) / s'

with g = E_q[∇ℓ], h = E_q[−∇²ℓ] (diagonal), g_p = ∇_m E_q[log p(φ | θ)] and
c_p = E_q[−∇² log p(φ | θ)]; for a Normal prior N(μ_p, 1/s_p), g_p = −s_p·(m − μ_p)
and c_p = s_p. The mean moves by the posterior covariance times the gradient
and the precision moves toward prior precision plus likelihood curvature, so
α is a dimensionless fraction of a full step: at α = 1, on a likelihood that is
quadratic with a diagonal Hessian (the conjugate Normal–Normal model), one
step lands on the exact posterior whatever the prior's scale. Plain gradient
ascent needs α below 2/curvature, and the curvature 1/σ_p² is learned.

The step is diagonal, like q. Where many weights feed the same output (every
layer of a network), each weight's step corrects the whole residual as if it
were alone, so a full step overshoots by about the number of coupled weights
(α = 1 diverges on the sinusoid MLP). :func:`line_scale` takes the mean's step
back to the optimum of the objective's quadratic model along it, from the
curvature measured along the step (ℓ at m and m ± d: one forward of three
points, no backward); where the curvature is diagonal it keeps t = 1, so the
conjugate one-step property stands.

**Estimates** (:func:`moments`), from the gradients of the one backward pass
the step needs anyway, at antithetic pairs φ = m ± σ·r with r a random sign
vector (r_d = ±1, drawn from the inner loop's noise; the default,
``InnerConfig(curvature="pair")``)::

    g = mean over points of ∇ℓ(φ)
    h = −mean over points of ∇ℓ(φ)·r / σ

h is Price's theorem, E_q[∇²ℓ] = E[∇ℓ·ε]/σ, evaluated on sign points instead
of Gaussian draws (the points have q's mean and covariance, like a sigma-point
rule). Three properties follow, each checked in the tests:

* on a likelihood that is quadratic with a diagonal Hessian, g = ∇ℓ(m) and
  h = −∇²ℓ exactly, for any signs: the conjugate one-step property holds to
  rounding error, not to Monte Carlo error;
* the pairs cancel the term ∇ℓ(m)·r/σ, which grows as σ shrinks: a one-sided
  estimate is dominated by it under a tight prior;
* with r² = 1 the estimate never divides by a small draw. (Gaussian ε with the
  same exactness would divide by ε², which is heavy-tailed and is 0/0 at ε = 0.)
  Off-diagonal curvature adds zero-mean noise Σ_e H_de σ_e r_e r_d / σ_d, as in
  Hutchinson's diagonal estimator.

**One-sided** (``InnerConfig(curvature="one_sided")``, :func:`probes` with
``antithetic=False``): the same g and h from the S points m + σ·r alone, one
network evaluation per Monte Carlo sample instead of two (about half the
inner loop's cost). What it loses is the pair's cancellation: on a quadratic ℓ,
∇ℓ(m + σr) = ∇ℓ(m) − H·σ·r, so g = ∇ℓ(m) − H·σ·r̄ and

    h = H − mean over points of ∇ℓ(m)·r / σ

carries the zero-mean noise −∇ℓ(m)·r/σ (and g the noise −H·σ·r̄). Both vanish
in expectation, so the conjugate one-step property at α = 1 holds only to
Monte Carlo error: of order |∇ℓ(m)|/(σ·√S) in h, large where the prior is
tight (σ small) or the support set far from the prior mean; and of order
H·σ/(s'·√S) in the mean's step, large where the prior is wide (at the first
step σ is the prior's sd: the mean lands about σ_p/√S from the posterior's,
many posterior sds when the data are informative). The clip h ≥ 0 turns part
of h's noise into a bias toward more precision. Measured in
tests/test_natural.py (``test_one_sided_step_is_the_posterior_to_monte_carlo_error...``).

The points are an estimator of q's expectations for the inner loop only: any
λ it returns gives a valid ELBO, which the guide scores with Gaussian draws.
Expectations are sampled at q's spread rather than taken at the mean (a
Gauss–Newton matrix at m) because they need no per-output Jacobian (a U-Net
has thousands of outputs per task) and cost one backward pass: the same as a
gradient step with twice the draws (one-sided: with as many).

**Positivity**: h is clipped at 0 (negative curvature of a non-convex network is
dropped, as a Gauss–Newton matrix would drop it), so the target precision is at
least c_p > 0 and s' is a convex combination of positive numbers for α ∈ (0, 1].
Lin, Schmidt & Khan (2020) keep s positive with the correction
s + α·G + α²·G²/(2s) instead, which admits negative curvature but is not exact
at α = 1; the clip keeps the one-step property.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["probes", "num_points", "moments", "step", "line_scale"]


def num_points(num_samples: int, antithetic: bool = True) -> int:
    """The points (network evaluations) per task of one curvature-measuring step: 2S for pairs, S one-sided."""
    return 2 * num_samples if antithetic else num_samples


def probes(eps: Tensor, antithetic: bool = True) -> Tensor:
    """Standard-normal draws ``(..., S, D)`` → sign points ``(..., num_points(S, antithetic), D)``.

    r = sign(ε) (0 counts as +1) is a Rademacher vector: r² = 1 exactly.

    Args:
        eps: The inner loop's noise of one step.
        antithetic: Pairs r, then −r (default: ``2S`` points); False gives r
            alone (``S`` points, the one-sided estimate of the module docstring).
    """
    r = (eps >= 0).to(eps.dtype).mul_(2.0).sub_(1.0)
    return torch.cat([r, r.neg()], dim=-2) if antithetic else r


def moments(grad_phi: Tensor, probe: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """g = E_q[∇ℓ] and h = E_q[−∇²ℓ] from the gradients at φ = m + σ·r (module docstring).

    Args:
        grad_phi: ∇ℓ at each point ``(..., S, D)``.
        probe: The points' sign vectors r ``(..., S, D)`` from :func:`probes`.
        sigma: q's standard deviation ``(..., D)``.

    Returns:
        ``(g, h)``, each ``(..., D)``.
    """
    g = grad_phi.mean(-2)
    h = (grad_phi * probe).mean(-2).neg() / sigma
    return g, h


def step(
    m: Tensor,
    s: Tensor,
    g: Tensor,
    h: Tensor,
    prior_grad: Tensor,
    prior_curv: Tensor,
    alpha_m: Tensor | float,
    alpha_s: Tensor | float,
    beta: float,
    scale: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One natural-gradient step of the mean ``m`` and precision ``s``.

    Args:
        m, s: q's mean and precision ``(..., D)``.
        g, h: E_q[∇ℓ] and E_q[−∇²ℓ] (see :func:`moments`).
        prior_grad, prior_curv: g_p and c_p of the prior term.
        alpha_m, alpha_s: Step fractions for the mean and the precision, in (0, 1].
        beta: The KL weight β (> 0).
        scale: Optional ``scale(G, d, s') -> t``, a further factor ``(..., 1)``
            on the mean's full step d = G/s' (e.g. from :func:`line_scale`).

    Returns:
        ``(m', s', dm, ds)`` with m' = m + α_m·dm and s' = s + α_s·ds.
    """
    ds = (prior_curv + h.clamp_min(0.0) / beta) - s
    s_new = s + alpha_s * ds
    grad = g / beta + prior_grad
    dm = grad / s_new
    if scale is not None:
        dm = dm * scale(grad, dm, s_new)
    return m + alpha_m * dm, s_new, dm, ds


def line_scale(grad: Tensor, d: Tensor, prior_curv: Tensor, curv_along: Tensor, beta: float) -> Tensor:
    """The fraction t ∈ (0, 1] of the natural step ``d`` that the curvature along it allows.

    The diagonal step assumes the objective's curvature along d is Σ s'·d²,
    which makes its own gain G·d (G = g/β + g_p) the quadratic optimum at t = 1.
    Where weights are coupled (every layer of a network) the curvature along d
    is larger, and the optimum of the quadratic model along d is

        t* = G·d / (dᵀ·diag(c_p)·d + κ/β),   κ = −dᵀ∇²ℓ·d (measured along d)

    capped at 1: this never extrapolates past the diagonal step, so a model
    whose curvature is diagonal (the conjugate ones) keeps t = 1 exactly.

    Args:
        grad: G = g/β + g_p ``(..., D)``.
        d: The mean's full natural step G/s' ``(..., D)``.
        prior_curv: c_p, broadcasting to ``d``.
        curv_along: κ per task ``(...)`` (from ℓ at m and m ± d).
        beta: The KL weight β.

    Returns:
        t ``(..., 1)``.
    """
    gain = (grad * d).sum(-1)
    quad = (prior_curv * d * d).sum(-1) + curv_along / beta
    return (gain / torch.maximum(gain, quad)).nan_to_num(nan=1.0).unsqueeze(-1)
