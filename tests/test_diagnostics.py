"""Posterior predictive through pyro.infer.Predictive, and the ArviZ diagnostics (hvi.diagnostics)."""

from __future__ import annotations

import dataclasses
import math

import pyro
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

import hvi
from hvi.priors import GaussianPrior

DT = torch.float64
D, SIGMA, TAU = 2, 1.0, 1.0


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(n)


class VectorNet(nn.Module):
    """f_φ(x) = φ for every example: a conjugate Normal–Normal model per coordinate."""

    def __init__(self, d: int = D) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], self.w.shape[0])


def conjugate_batch(M: int = 8, Ns: int = 20, Nq: int = 4, d: int = D, seed: int = 1) -> hvi.TaskBatch:
    """φ_i ~ N(μ, τ²), y_ij ~ N(φ_i, σ²); Ns support and Nq query points per task."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.linspace(2.0, -1.5, d, dtype=DT)
    phi = mu + TAU * torch.randn(M, d, generator=g, dtype=DT)
    y = phi[:, None, :] + SIGMA * torch.randn(M, Ns + Nq, d, generator=g, dtype=DT)
    x = torch.zeros(M, Ns + Nq, 1, dtype=DT)
    return hvi.TaskBatch(x[:, :Ns], y[:, :Ns], x[:, Ns:], y[:, Ns:])


def conjugate_meta(q_theta: str = "delta", steps: int = 1, lr: float = 1.0) -> hvi.MetaModel:
    """The natural inner step at α = 1 is the exact conditional p(φ_i | θ, D_i^S) here."""
    prior = GaussianPrior(init_scale=TAU, learn_scale=False, hyperprior=q_theta == "normal", loc_scale=10.0)
    return hvi.MetaModel(
        VectorNet(), prior, hvi.Gaussian(noise=SIGMA), q_theta=q_theta,
        inner=hvi.InnerConfig(steps=steps, lr=lr), q_theta_init_scale=0.3,
    )


def sine_meta(classes: int = 0) -> hvi.MetaModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, classes or 1)).to(DT)
    lik = hvi.Categorical() if classes else hvi.Gaussian(noise="learned", init_scale=0.5)
    return hvi.MetaModel(net, GaussianPrior(init_scale=0.1), lik, inner=hvi.InnerConfig(steps=2))


def sine_batch(B: int = 3, Ns: int = 4, Nq: int = 5, classes: int = 0) -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(B, Ns, 1, generator=g, dtype=DT) * 4 - 2
    xq = torch.rand(B, Nq, 1, generator=g, dtype=DT) * 4 - 2
    if classes:
        return hvi.TaskBatch(xs, (xs[..., 0] > 0).long(), xq, (xq[..., 0] > 0).long())
    a = torch.rand(B, 1, 1, generator=g, dtype=DT) + 0.5
    return hvi.TaskBatch(xs, a * torch.sin(xs), xq, a * torch.sin(xq))


# --------------------------------------------------------------------------- pyro.infer.Predictive


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("classes", [0, 3])
def test_predictive_returns_replicated_y_next_to_f_and_phi(parallel, classes):
    meta, batch = sine_meta(classes), sine_batch(classes=classes)
    S = 6
    sites = ["y", "f", "phi.0.weight", "phi.2.bias"]
    with torch.no_grad():
        out = Predictive(meta.model, guide=meta.guide, num_samples=S, return_sites=sites, parallel=parallel)(
            batch, predict=True
        )
    assert set(out) == set(sites)
    assert out["y"].shape == (S, 3, 5) + ((1,) if not classes else ())
    assert out["f"].shape == (S, 3, 5, classes or 1)
    # φ_i carries the data plate's dim after the task's: (S, B, 1, *w).
    assert out["phi.0.weight"].shape == (S, 3, 1, 6, 1) and out["phi.2.bias"].shape == (S, 3, 1, classes or 1)
    if classes:
        assert out["y"].dtype == torch.int64 and set(out["y"].unique().tolist()) <= {0, 1, 2}
    else:
        assert out["y"].dtype == DT and not torch.equal(out["y"], out["f"])


def test_query_targets_none_is_the_predictive_path():
    meta, batch = sine_meta(), sine_batch()
    unknown = dataclasses.replace(batch, query_y=None)
    with torch.no_grad():
        out = Predictive(meta.model, guide=meta.guide, num_samples=4, return_sites=["y"], parallel=True)(unknown)
    assert out["y"].shape == (4, 3, 5, 1) and torch.isfinite(out["y"]).all()


@pytest.mark.parametrize("q_theta", ["delta", "normal"])
def test_replicated_y_matches_predict_within_monte_carlo_error(q_theta):
    """Predictive's y has hvi.predict's mean and std (f's spread plus σ², and θ's with a Normal q(θ))."""
    meta, batch = conjugate_meta(q_theta), conjugate_batch(Ns=5)
    S = 4000
    pyro.set_rng_seed(0)
    with torch.no_grad():
        y = Predictive(meta.model, guide=meta.guide, num_samples=S, return_sites=["y"], parallel=True)(
            batch, predict=True
        )["y"]
    pred = hvi.predict(meta, batch, num_samples=S)
    # Both sides are S-draw estimates: mean error sd·√(2/S), std error ≈ sd/√S.
    z_mean = (y.mean(0) - pred.mean) / (pred.std * math.sqrt(2 / S))
    ratio = y.std(0) / pred.std
    assert float(z_mean.abs().max()) < 4.5, float(z_mean.abs().max())
    assert float((ratio - 1).abs().max()) < 4.5 / math.sqrt(S), ratio
    # The predictive sd exceeds σ: the weights' (and θ's) uncertainty is in it.
    assert bool((pred.std > SIGMA).all())


def test_predict_does_not_draw_the_replicated_targets():
    """hvi.predict skips the model's y draw: its random stream is that of the weight draws alone."""
    meta, batch = sine_meta(), sine_batch()
    pyro.set_rng_seed(0)
    hvi.predict(meta, batch, num_samples=7)
    after_predict = torch.rand(3)
    pyro.set_rng_seed(0)
    with torch.no_grad(), pyro.plate("predictive_samples", 7, dim=-3):
        pyro.poutine.trace(meta.guide).get_trace(batch, predict=True)
    assert torch.equal(after_predict, torch.rand(3))
