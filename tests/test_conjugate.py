"""The fitted posterior of a conjugate Normal–Normal hierarchy matches the exact one.

Model (known σ, τ; d-dim φ_i; the "network" returns its weight vector):

    μ ~ N(0, s0²)  [only with q_theta="normal"; empirical Bayes otherwise]
    φ_i | μ ~ N(μ, τ²)        y_ij | φ_i ~ N(φ_i, σ²),  j = 1..n

With the inner loop converged, q(φ_i | θ) is the exact conditional
p(φ_i | θ, D_i), so the guide family holds the exact posterior and SVI must
find it: the empirical-Bayes μ̂ and p(φ_i | μ̂, D_i) for a point mass, and
p(μ | D) with the marginals p(φ_i | D) for a Normal q(θ).
"""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

import hvi
from hvi.names import q_theta_normal
from hvi.priors import GaussianPrior

D, M, N = 2, 10, 5
SIGMA, TAU, S0 = 1.0, 1.0, 10.0


class VectorNet(nn.Module):
    """f_φ(x) = φ for every example: φ_i are plain group-level effects."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], D)


def make_data() -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(1)
    mu = torch.tensor([2.0, -1.5], dtype=torch.float64)
    phi = mu + TAU * torch.randn(M, D, generator=g, dtype=torch.float64)
    y = phi[:, None, :] + SIGMA * torch.randn(M, N, D, generator=g, dtype=torch.float64)
    x = torch.zeros(M, N, 1, dtype=torch.float64)
    empty_x, empty_y = x[:, :0], y[:, :0]
    return hvi.TaskBatch(x, y, empty_x, empty_y)


def exact(batch: hvi.TaskBatch) -> dict[str, torch.Tensor]:
    ybar = batch.support_y.mean(1)  # (M, D)
    v = TAU**2 + SIGMA**2 / N  # Var(ȳ_i | μ)
    post_prec_mu = 1 / S0**2 + M / v
    mu_mean = (ybar.sum(0) / v) / post_prec_mu
    mu_sd = math.sqrt(1 / post_prec_mu)
    prec_c = 1 / TAU**2 + N / SIGMA**2  # precision of p(φ_i | μ, D_i)
    shrink = (1 / TAU**2) / prec_c
    mu_eb = ybar.mean(0)
    return {
        "mu_eb": mu_eb,
        "phi_eb_mean": (mu_eb / TAU**2 + N * ybar / SIGMA**2) / prec_c,
        "phi_cond_sd": torch.full((M, D), math.sqrt(1 / prec_c), dtype=torch.float64),
        "mu_mean": mu_mean,
        "mu_sd": torch.full((D,), mu_sd, dtype=torch.float64),
        "phi_mean": (mu_mean / TAU**2 + N * ybar / SIGMA**2) / prec_c,
        "phi_sd": torch.full((M, D), math.sqrt(1 / prec_c + shrink**2 * mu_sd**2), dtype=torch.float64),
    }


def guide_samples(meta: hvi.MetaModel, batch: hvi.TaskBatch, n: int, calls: int = 40) -> torch.Tensor:
    """Draws from the guide's marginal q(φ_i), averaging over the inner loop's own noise.

    Each guide call adapts once (per θ particle) with fresh inner-loop noise.
    """
    draws = []
    for _ in range(calls):
        with torch.no_grad(), pyro.plate("draws", n // calls, dim=-3):
            tr = poutine.trace(meta.guide).get_trace(batch)
        draws.append(tr.nodes["phi.w"]["value"].reshape(-1, M, D))
    return torch.cat(draws)


def build(q_theta: str) -> hvi.MetaModel:
    prior = GaussianPrior(init_scale=TAU, learn_scale=False, hyperprior=q_theta == "normal", loc_scale=S0)
    return hvi.MetaModel(
        VectorNet(),
        prior,
        hvi.Gaussian(noise=SIGMA),
        q_theta=q_theta,
        inner=hvi.InnerConfig(steps=12, lr=1.0, num_samples=32),
        objective="support+query",
        q_theta_init_scale=0.1,
    )


def close(actual, expected, rel, floor=0.02):
    err = (actual - expected).abs()
    bound = rel * expected.abs() + floor
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max()):.4f}\n{actual}\n{expected}"


def at_exact_theta(q_theta: str, ref: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets θ (or q(θ)) to the exact answer in a fresh param store; returns the exact marginal mean and sd of φ_i."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    if q_theta == "delta":
        pyro.param("theta.w.loc", ref["mu_eb"].clone())
        return ref["phi_eb_mean"], ref["phi_cond_sd"]
    q_loc, q_scale = q_theta_normal("theta.w.loc")
    pyro.param(q_loc, ref["mu_mean"].clone())
    pyro.param(q_scale, ref["mu_sd"].clone(), constraint=torch.distributions.constraints.positive)
    return ref["phi_mean"], ref["phi_sd"]


def test_point_mass_matches_empirical_bayes_posterior():
    batch = make_data()
    ref = exact(batch)
    meta = build("delta")
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / 400)})
    hvi.fit(meta, batch, steps=400, optimizer=optim, num_particles=8, seed=0)
    mu_hat = pyro.param("theta.w.loc").detach()
    close(mu_hat, ref["mu_eb"], rel=0.03)
    phi = guide_samples(meta, batch, 4000)
    close(phi.mean(0), ref["phi_eb_mean"], rel=0.03)
    close(phi.std(0), ref["phi_cond_sd"], rel=0.10, floor=0.0)


def test_normal_q_theta_matches_exact_posterior():
    batch = make_data()
    ref = exact(batch)
    meta = build("normal")
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / 300)})
    hvi.fit(meta, batch, steps=300, optimizer=optim, num_particles=4, seed=0)
    q_loc, q_scale = (pyro.param(p).detach() for p in q_theta_normal("theta.w.loc"))
    close(q_loc, ref["mu_mean"], rel=0.03)
    close(q_scale, ref["mu_sd"], rel=0.10, floor=0.0)
    # Each draw samples θ and adapts to it: 500 draws per call, vmapped.
    phi = guide_samples(meta, batch, 2000, calls=4)
    close(phi.mean(0), ref["phi_mean"], rel=0.03)
    close(phi.std(0), ref["phi_sd"], rel=0.10, floor=0.0)


@pytest.mark.parametrize("q_theta", ["delta", "normal"])
def test_exact_posterior_is_a_fixed_point(q_theta):
    """Started at the exact answer, the converged inner loop reproduces the exact q(φ_i)."""
    batch = make_data()
    ref = exact(batch)
    meta = build(q_theta)
    mean, sd = at_exact_theta(q_theta, ref)
    phi = guide_samples(meta, batch, 20000) if q_theta == "delta" else guide_samples(meta, batch, 4000, calls=8)
    # K=12 inner steps leave σ_q ~1% above its optimum and the inner MC noise
    # widens the mixture by ~1%; anything beyond 6% is a real error.
    close(phi.mean(0), mean, rel=0.02, floor=0.02)
    close(phi.std(0), sd, rel=0.06, floor=0.0)


@pytest.mark.parametrize("q_theta", ["delta", "normal"])
def test_predictive_is_the_exact_posterior_predictive(q_theta):
    """At the exact θ, hvi.predict's mean and sd for a new y of task i are the closed form
    N(E[φ_i | D], Var(φ_i | D) + σ²): an independent number, not predict's own formula."""
    batch = make_data()
    ref = exact(batch)
    meta = build(q_theta)
    mean, sd = at_exact_theta(q_theta, ref)
    nq = 3
    query = hvi.TaskBatch(batch.support_x, batch.support_y, torch.zeros(M, nq, 1, dtype=torch.float64),
                          torch.zeros(M, nq, D, dtype=torch.float64))
    # Each draw of a Normal q(θ) adapts on its own θ: fewer draws (6 s).
    pred = hvi.predict(meta, query, num_samples=4000 if q_theta == "delta" else 500)
    want_sd = (sd**2 + SIGMA**2).sqrt()[:, None, :].expand(M, nq, D)
    # Within 2.5% (500 draws: ~0.6% sd error per entry; q(φ) ~1% wide of its optimum): σ alone
    # (no weight uncertainty) would be 7% low, the draws' spread alone 60% low.
    close(pred.mean, mean[:, None, :].expand(M, nq, D), rel=0.02, floor=0.04)
    close(pred.std, want_sd, rel=0.025, floor=0.0)
    assert float((pred.std - SIGMA).min()) > 0.05


def test_flow_q_theta_matches_exact_posterior(seed=0):
    # Passes for seeds 0-4 at these settings (200 steps with 4 particles failed 1 of 5 on sd).
    """A spline flow over μ holds the (Gaussian) exact p(μ | D) too, and its draws find it."""
    batch = make_data()
    ref = exact(batch)
    prior = GaussianPrior(init_scale=TAU, learn_scale=False, hyperprior=True, loc_scale=S0)
    torch.manual_seed(seed)  # the flow's spline layers start from random weights, like nn.Linear
    meta = hvi.MetaModel(VectorNet(), prior, hvi.Gaussian(noise=SIGMA), q_theta="flow",
                         inner=hvi.InnerConfig(steps=1, lr=1.0), objective="support+query", q_theta_init_scale=0.1)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.02 ** (1 / 300)})
    hvi.fit(meta, batch, steps=300, optimizer=optim, num_particles=8, seed=seed)
    with torch.no_grad(), pyro.plate("draws", 8000, dim=-3):
        tr = poutine.trace(meta.guide).get_trace(batch)
    mu = tr.nodes["theta.w.loc"]["value"].reshape(-1, D)
    close(mu.mean(0), ref["mu_mean"], rel=0.03)
    close(mu.std(0), ref["mu_sd"], rel=0.10, floor=0.0)
