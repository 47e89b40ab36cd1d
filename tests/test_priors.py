"""Tests for the hierarchical priors: built-ins, registry, user-defined priors, errors.

Every fit here is a few steps of a tiny model; numbers are checked in float64.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from scipy import integrate, stats
from torch import Tensor, nn
from torch.distributions import kl_divergence

import hvi
from hvi import names as names_mod
from hvi.data.sinusoid import SinusoidSource
from hvi.models import get_model
from hvi.priors import (
    GaussianLayerPrior,
    GaussianPrior,
    HierarchicalPrior,
    HorseshoePrior,
    LaplacePrior,
    NormalGammaPrior,
    describe_prior,
    get_prior,
    list_priors,
    register_prior,
)
from hvi.priors import base as prior_base

ROOT = Path(__file__).resolve().parents[1]

BUILTINS = {
    "gaussian": GaussianPrior,
    "gaussian-layer": GaussianLayerPrior,
    "normal-gamma": NormalGammaPrior,
    "laplace": LaplacePrior,
    "horseshoe": HorseshoePrior,
}

#: Stable small-scale settings: prior scale 0.1, a small inner step (see the inner loop's curvature).
STABLE_INNER = hvi.InnerConfig(steps=3, lr=1e-3)


def builtin(name: str, **cfg) -> HierarchicalPrior:
    prior = get_prior(name, **cfg)
    assert prior.init_scale == cfg.get("init_scale", 0.1)  # every built-in starts at prior std ~0.1
    return prior


# -- helpers: tiny models and data ------------------------------------------------
class Effects(nn.Module):
    """A "network" that is a parameter vector: it returns its weights for every input."""

    def __init__(self, size: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(size))

    def forward(self, x: Tensor) -> Tensor:
        return self.w.expand(x.shape[0], self.w.shape[0])


def conjugate_data(tasks: int = 16, n: int = 4, d: int = 2, mu: float = 1.0, tau: float = 0.8, seed: int = 0):
    """y_ij ~ N(φ_i, σ_ij²) with known σ_ij, φ_i ~ N(mu, tau²); everything in the support set."""
    g = torch.Generator().manual_seed(seed)
    phi = mu + tau * torch.randn(tasks, 1, d, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(tasks, n, d, generator=g, dtype=torch.float64)
    y = phi + sigma * torch.randn(tasks, n, d, generator=g, dtype=torch.float64)
    x = torch.zeros(tasks, n, 1, dtype=torch.float64)
    return hvi.TaskBatch(x, y, x[:, :0], y[:, :0], support_noise=sigma, query_noise=sigma[:, :0])


def closed_form_mu(batch: hvi.TaskBatch, tau: float) -> Tensor:
    """argmax_μ p(y | μ, τ) per coordinate: Σ ȳ_i/(se_i²+τ²) / Σ 1/(se_i²+τ²)."""
    prec = batch.support_noise.pow(-2)
    se2 = 1.0 / prec.sum(1)
    ybar = (batch.support_y * prec).sum(1) * se2
    w = 1.0 / (se2 + tau**2)
    return (w * ybar).sum(0) / w.sum(0)


def conjugate_meta(prior: HierarchicalPrior, q_theta: str = "delta", inner: hvi.InnerConfig | None = None):
    return hvi.MetaModel(
        Effects(2).double(),
        prior,
        hvi.Gaussian(noise="known"),
        q_theta=q_theta,
        objective="support+query",
        inner=inner or hvi.InnerConfig(steps=3, lr=0.3),
    )


@pytest.fixture(scope="module")
def sinusoid():
    return SinusoidSource(k_shot=5, k_query=5, num_tasks=(64, 8, 8))


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return get_model("mlp", hidden=(8,))


def expected_param_names(meta: hvi.MetaModel) -> set[str]:
    """Param-store names of the model's global sites: θ, q(θ) and the likelihood's."""
    names = set()
    for name, site in meta.sites.items():
        if not site.latent:
            names.add(name)
        elif meta.q_theta == "delta":
            names.add(names_mod.q_theta_point(name))
        else:
            names.update(names_mod.q_theta_normal(name))
    return names


def initial_param_values(meta: hvi.MetaModel) -> dict[str, Tensor]:
    """Copies of the initial value of every param (pyro.param may train a site's init in place)."""
    out = {}
    for name, site in meta.sites.items():
        init = site.init.detach().clone()
        if not site.latent:
            out[name] = init
        elif meta.q_theta == "delta":
            out[names_mod.q_theta_point(name)] = init
        else:
            loc, scale = names_mod.q_theta_normal(name)
            out[loc] = torch.distributions.biject_to(site.constraint).inv(init)
            out[scale] = torch.full_like(init, meta.q_theta_init_scale)
    return out


@pytest.fixture
def registry_cleanup():
    """Removes priors a test registers, so the registry is the same before and after."""
    before = set(prior_base.PRIORS.names())
    yield
    for name in set(prior_base.PRIORS.names()) - before:
        prior_base.PRIORS.unregister(name)


# -- registry -----------------------------------------------------------------------
def test_builtins_are_registered_with_one_line_descriptions():
    names = list_priors()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)
    for name, cls in BUILTINS.items():
        assert isinstance(get_prior(name), cls)
        line = describe_prior(name)
        assert line and "\n" not in line and len(line) <= 110, (name, line)
        assert "p(φ" in line, line


def test_builtins_are_exported():
    import hvi.priors as priors

    for cls in BUILTINS.values():
        assert cls.__name__ in priors.__all__
        assert getattr(priors, cls.__name__) is cls


def test_registry_errors(registry_cleanup):
    with pytest.raises(ValueError, match="unknown prior 'nope'.*gaussian"):
        get_prior("nope")
    with pytest.raises(ValueError, match="'gaussian' is already registered"):
        register_prior("gaussian")(GaussianPrior)
    prior = LaplacePrior()
    assert get_prior(prior) is prior


# -- every built-in through the same API ---------------------------------------------
SINUSOID_CASES = [(name, "delta") for name in BUILTINS] + [
    ("normal-gamma", "normal"),
    ("horseshoe", "normal"),
]


@pytest.mark.parametrize("name,q_theta", SINUSOID_CASES)
def test_builtin_fits_sinusoid_and_optimizes_its_own_sites(sinusoid, name, q_theta):
    meta = hvi.MetaModel(tiny_mlp(), name, hvi.Gaussian(init_scale=1.0), q_theta=q_theta, inner=STABLE_INNER)
    init = initial_param_values(meta)
    result = hvi.fit(meta, sinusoid, steps=3, task_batch=4, lr=1e-2)
    assert len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)

    # The param store holds exactly the prior's sites (or q(θ)'s parameters for the
    # latent ones) plus the likelihood's, and every one of them was optimized.
    assert set(result.params) == expected_param_names(meta) == set(init)
    assert {n for n in meta.sites if n.startswith("theta.")} == set(meta.prior.sites())
    store = pyro.get_param_store()
    for key, value in result.params.items():
        start = init[key]
        if q_theta == "normal" and key in {names_mod.q_theta_normal(n)[0] for n in meta.sites}:
            value = store.get_param(key).unconstrained().detach()  # q(θ)'s loc lives unconstrained
        assert value.shape == start.shape, key
        assert not torch.allclose(value, start), f"{key} did not change"

    batch = sinusoid.sample("test", 3, torch.Generator().manual_seed(1))
    pred = hvi.predict(meta, batch, num_samples=4)
    assert pred.mean.shape == batch.query_y.shape
    assert torch.isfinite(pred.mean).all() and torch.isfinite(pred.std).all()


@pytest.mark.parametrize("name,q_theta", SINUSOID_CASES)
def test_builtin_fits_the_conjugate_model(name, q_theta):
    batch = conjugate_data()
    meta = conjugate_meta(builtin(name, init_scale=0.5), q_theta=q_theta)
    result = hvi.fit(meta, batch, steps=3, lr=0.05)
    assert all(math.isfinite(v) for v in result.losses)
    assert set(result.params) == expected_param_names(meta)
    # No learned noise: known per-observation noise comes with the data.
    assert not any(k.startswith("likelihood.") for k in result.params)


def test_gaussian_prior_mean_matches_the_closed_form_on_the_conjugate_model():
    """With τ fixed, the ELBO's optimum in μ is the marginal-likelihood optimum (coarse check)."""
    tau = 0.8
    batch = conjugate_data(tau=tau)
    meta = conjugate_meta(
        GaussianPrior(init_scale=tau, learn_scale=False), inner=hvi.InnerConfig(steps=5, lr=0.5)
    )
    trace = []
    cb = lambda step, loss, b: trace.append(pyro.param("theta.w.loc").detach().clone())  # noqa: E731
    hvi.fit(meta, batch, steps=120, lr=0.05, num_particles=4, callback=cb)
    mu_fit = torch.stack(trace[60:]).mean(0)  # Polyak average over the second half
    mu_exact = closed_form_mu(batch, tau)
    # The posterior std of μ is about 0.23 here; the SVI noise after averaging ~0.02.
    assert torch.allclose(mu_fit, mu_exact, atol=0.06), (mu_fit, mu_exact)


# -- densities ----------------------------------------------------------------------------
def random_site_values(bound, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, site in bound.sites().items():
        z = torch.randn(site.shape, generator=g, dtype=torch.float64)
        out[name] = z if site.constraint is constraints.real else 0.3 + z.abs()
    return out


SCIPY_LOCAL = {
    # name -> logpdf(x, θ) by scipy, θ keyed like the prior's sites
    "gaussian": lambda x, t: stats.norm.logpdf(x, t["loc"], t["scale"]),
    "gaussian-layer": lambda x, t: stats.norm.logpdf(x, t["loc"], t["scale"]),
    "normal-gamma": lambda x, t: stats.norm.logpdf(x, t["loc"], 1.0 / np.sqrt(t["precision"])),
    "laplace": lambda x, t: stats.laplace.logpdf(x, t["loc"], t["scale"]),
    "horseshoe": lambda x, t: stats.norm.logpdf(x, t["loc"], t["global_scale"] * t["local_scale"]),
}


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_local_log_prob_matches_scipy(name):
    weights = {"a.weight": torch.zeros(3, 2, dtype=torch.float64), "a.bias": torch.zeros(3, dtype=torch.float64)}
    bound = builtin(name).bind(weights)
    values = random_site_values(bound)
    g = torch.Generator().manual_seed(1)
    for wname, w in weights.items():
        x = torch.randn(w.shape, generator=g, dtype=torch.float64)
        got = bound.local(wname, values).log_prob(x)
        assert got.shape == w.shape
        theta = {k: v.numpy() for k, v in bound.theta_for(wname, values).items()}
        np.testing.assert_allclose(got.numpy(), SCIPY_LOCAL[name](x.numpy(), theta), rtol=1e-10, atol=1e-12)


def test_per_weight_and_per_tensor_scales():
    w = {"l.weight": torch.zeros(4, 3), "l.bias": torch.zeros(4)}
    sizes = {}
    for label, prior in [
        ("gaussian", GaussianPrior()),
        ("gaussian-layer", GaussianLayerPrior()),
        ("laplace", LaplacePrior()),
        ("laplace-per-weight", LaplacePrior(per_weight=True)),
    ]:
        sites = prior.bind(w).sites()
        sizes[label] = sum(s.init.numel() for s in sites.values())
        assert not any(s.latent for s in sites.values())
    assert GaussianLayerPrior().bind(w).sites()["theta.l.weight.scale"].shape == ()
    assert sizes == {"gaussian": 32, "gaussian-layer": 18, "laplace": 18, "laplace-per-weight": 32}


@pytest.mark.parametrize("prior", [GaussianPrior(), LaplacePrior(per_weight=True), NormalGammaPrior(), HorseshoePrior()])
def test_site_inits_hold_no_per_weight_copies(prior):
    """θ's initial values view the network's snapshot or are expanded scalars (memory)."""
    w = {"l.weight": torch.randn(4, 3), "l.bias": torch.randn(4)}
    sites = prior.bind(w).sites()
    for n, weight in w.items():
        loc = sites[f"theta.{n}.loc"]
        assert loc.init.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr()
        others = [s for k, s in sites.items() if k.startswith(f"theta.{n}.") and not k.endswith(".loc")]
        assert others and all(s.init.untyped_storage().nbytes() == weight.element_size() for s in others)
        # the param store's copy is its own, contiguous tensor
        fresh = loc.fresh_init()
        assert fresh.is_contiguous() and fresh.untyped_storage().data_ptr() != weight.untyped_storage().data_ptr()
        assert all(s.fresh_init().is_contiguous() for s in others)


def test_positive_sites_use_exp_alone():
    """constraints.positive is stored as hvi.sites.positive: exp without torch's identity affine."""
    from torch.distributions import biject_to, transform_to
    from torch.distributions.transforms import ExpTransform

    site = hvi.GlobalSite(torch.ones(3), constraints.positive)
    assert site.constraint is hvi.sites.positive
    assert isinstance(site.constraint, constraints.greater_than) and site.constraint.lower_bound == 0.0
    assert type(biject_to(site.constraint)) is ExpTransform and type(transform_to(site.constraint)) is ExpTransform
    x = torch.linspace(-40.0, 40.0, 17, dtype=torch.float64)
    assert torch.equal(biject_to(site.constraint)(x), biject_to(constraints.positive)(x))
    assert site.constraint.check(torch.tensor([-1.0, 0.0, 2.0])).tolist() == [False, False, True]
    sites = GaussianPrior().bind({"w": torch.zeros(2)}).sites()
    assert sites["theta.w.scale"].constraint is hvi.sites.positive


def test_normal_gamma_sites_and_hyperprior_density():
    w = {"l.weight": torch.zeros(2, 3, dtype=torch.float64)}
    prior = NormalGammaPrior(init_scale=0.1, loc_scale=2.0, concentration=1.5, rate=0.02)
    sites = prior.bind(w).sites()
    assert set(sites) == {"theta.l.weight.loc", "theta.l.weight.precision"}
    prec = sites["theta.l.weight.precision"]
    assert prec.latent and prec.constraint is hvi.sites.positive and prec.shape == (2, 3)
    assert torch.allclose(prec.init, torch.full((2, 3), 100.0, dtype=torch.float64))
    assert sites["theta.l.weight.loc"].latent
    value = torch.rand(2, 3, dtype=torch.float64) * 200 + 1
    got = prec.hyperprior_dist().log_prob(value)
    want = stats.gamma.logpdf(value.numpy(), 1.5, scale=1 / 0.02).sum()
    assert got.item() == pytest.approx(want, rel=1e-10)
    loc = torch.randn(2, 3, dtype=torch.float64)
    got = sites["theta.l.weight.loc"].hyperprior_dist().log_prob(loc)
    assert got.item() == pytest.approx(stats.norm.logpdf(loc.numpy(), 0, 2.0).sum(), rel=1e-10)
    # Defaults follow ABML's public code: μ ~ N(0, 1), τ ~ Gamma(1, 0.01).
    default = NormalGammaPrior()
    assert (default.loc_scale, default.concentration, default.rate) == (1.0, 1.0, 0.01)


def test_horseshoe_sites_and_hyperprior_density():
    w = {"l.weight": torch.zeros(2, 3, dtype=torch.float64), "l.bias": torch.zeros(2, dtype=torch.float64)}
    sites = HorseshoePrior(init_scale=0.1, global_prior_scale=0.5).bind(w).sites()
    assert set(sites) == {
        "theta.global_scale",
        "theta.l.weight.loc",
        "theta.l.weight.local_scale",
        "theta.l.bias.loc",
        "theta.l.bias.local_scale",
    }
    tau = sites["theta.global_scale"]
    assert tau.latent and tau.shape == () and tau.init.item() == pytest.approx(0.1)
    lam = sites["theta.l.weight.local_scale"]
    assert lam.latent and lam.shape == (2, 3)
    assert not sites["theta.l.weight.loc"].latent
    v = torch.tensor(0.7, dtype=torch.float64)
    assert tau.hyperprior_dist().log_prob(v).item() == pytest.approx(stats.halfcauchy.logpdf(0.7, scale=0.5))
    v = torch.rand(2, 3, dtype=torch.float64) * 3
    assert lam.hyperprior_dist().log_prob(v).item() == pytest.approx(stats.halfcauchy.logpdf(v.numpy()).sum())
    assert HorseshoePrior(loc_scale=1.0).bind(w).sites()["theta.l.weight.loc"].latent


# -- KL divergences -----------------------------------------------------------------------
def quad_kl(q: dist.Distribution, p: dist.Distribution) -> float:
    """∫ q log(q/p) by quadrature for scalar q, p."""
    m, s = q.loc.item(), q.scale.item()

    def f(x):
        t = torch.tensor(x, dtype=torch.float64)
        lq = q.log_prob(t)
        return (lq.exp() * (lq - p.log_prob(t))).item()

    kinks = [p.loc.item()] if isinstance(p, torch.distributions.Laplace) else []
    val, _ = integrate.quad(f, m - 14 * s, m + 14 * s, points=kinks or None, limit=200)
    return val


@pytest.mark.parametrize(
    "m,s,mu,b", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.2, -0.1, 0.05), (-2.0, 0.5, 1.0, 3.0), (1e-3, 0.05, 0.0, 0.1)]
)
def test_laplace_kl_is_analytic_and_correct(m, s, mu, b):
    q = dist.Normal(torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64))
    p = dist.Laplace(torch.tensor(mu, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))
    analytic = kl_divergence(q, p).item()
    assert analytic == pytest.approx(quad_kl(q, p), rel=1e-7, abs=1e-9)
    # The Monte Carlo estimator the inner loop would use otherwise, with many draws.
    g = torch.Generator().manual_seed(0)
    phi = m + s * torch.randn(200_000, generator=g, dtype=torch.float64)
    terms = q.log_prob(phi) - p.log_prob(phi)
    se = terms.std().item() / math.sqrt(phi.numel())
    assert abs(terms.mean().item() - analytic) < 5 * se + 1e-12


def test_kl_paths_chosen_at_bind_time():
    weights = {"l.weight": torch.zeros(3, 2, dtype=torch.float64)}
    for name in BUILTINS:  # all Normal q against Normal or Laplace p: analytic
        assert builtin(name).bind(weights).analytic_kl == {"l.weight": True}, name
    assert StudentTPrior().bind(weights).analytic_kl == {"l.weight": False}


def test_monte_carlo_kl_matches_direct_computation():
    weights = {"l.weight": torch.zeros(3, 2, dtype=torch.float64)}
    bound = StudentTPrior(init_df=4.0).bind(weights)
    values = {k: s.init for k, s in bound.sites().items()}
    p = bound.local("l.weight", values)
    q = dist.Normal(torch.full((3, 2), 0.05, dtype=torch.float64), torch.full((3, 2), 0.08, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    phi = q.loc + q.scale * torch.randn((100_000, 3, 2), generator=g, dtype=torch.float64)
    got = bound.kl(q, p, phi)
    direct = (q.log_prob(phi) - p.log_prob(phi)).sum() / phi.shape[0]
    assert got.item() == pytest.approx(direct.item(), rel=1e-12)
    q1 = dist.Normal(q.loc[0, 0], q.scale[0, 0])
    p1 = dist.StudentT(p.df[0, 0], p.loc[0, 0], p.scale[0, 0])
    assert got.item() == pytest.approx(6 * quad_kl(q1, p1), rel=2e-2)


# -- user-defined priors ------------------------------------------------------------------
class StudentTPrior(HierarchicalPrior):
    """Student-t p(φ|θ) with a learned mean per weight, a scale per tensor and a shared ν > 2."""

    def __init__(self, init_df: float = 5.0) -> None:
        self.init_df = init_df

    def shared_sites(self, weights):
        ref = next(iter(weights.values()))
        return {"df": hvi.GlobalSite(ref.new_tensor(self.init_df), constraints.greater_than(2.0))}

    def weight_sites(self, name, weight):
        return {
            "loc": hvi.GlobalSite(weight.detach().clone()),
            "scale": hvi.GlobalSite(weight.new_tensor(0.1), constraints.positive),
        }

    def local(self, name, theta):
        return dist.StudentT(theta["df"], theta["loc"], theta["scale"])


class UnitScalePrior(HierarchicalPrior):
    """Normal p(φ|θ) sharing one learned scale per output unit (row) of every weight tensor."""

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, hvi.GlobalSite]:
        unit_shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
        return {
            "loc": hvi.GlobalSite(weight.detach().clone()),
            "unit_scale": hvi.GlobalSite(torch.full(unit_shape, 0.1, dtype=weight.dtype), constraints.positive),
        }

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return dist.Normal(theta["loc"], theta["unit_scale"])


def test_user_defined_prior_end_to_end(sinusoid, registry_cleanup):
    register_prior("test-unit-scale")(UnitScalePrior)
    assert "test-unit-scale" in list_priors()
    assert describe_prior("test-unit-scale").startswith("Normal p(φ|θ) sharing one learned scale")
    net = tiny_mlp()
    meta = hvi.MetaModel(net, "test-unit-scale", hvi.Gaussian(init_scale=1.0), inner=STABLE_INNER)
    assert meta.prior.sites()["theta.layers.0.weight.unit_scale"].shape == (8, 1)
    assert meta.prior.sites()["theta.layers.0.bias.unit_scale"].shape == (8,)
    init = {k: s.init.clone() for k, s in meta.prior.sites().items()}
    result = hvi.fit(meta, sinusoid, steps=3, task_batch=4, lr=1e-2)
    assert all(math.isfinite(v) for v in result.losses)
    assert set(result.params) == set(meta.prior.sites()) | {"likelihood.noise"}
    for key, value in init.items():
        assert not torch.allclose(result.params[key], value), key
    # The inner loop adapted λ away from λ^(0) = θ without any user gradient code.
    batch = sinusoid.sample("val", 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lam = meta.guide(batch)["lambda"]
    assert not torch.allclose(lam["layers.0.weight"]["loc"], pyro.param("theta.layers.0.weight.loc").expand(2, 8, 1))
    pred = hvi.predict(meta, batch, num_samples=3)
    assert torch.isfinite(pred.mean).all()


def test_user_defined_monte_carlo_kl_prior_fits(sinusoid):
    meta = hvi.MetaModel(tiny_mlp(), StudentTPrior(), hvi.Gaussian(init_scale=1.0), inner=STABLE_INNER)
    assert not any(meta.prior.analytic_kl.values())
    result = hvi.fit(meta, sinusoid, steps=3, task_batch=4, lr=1e-2)
    assert all(math.isfinite(v) for v in result.losses)
    assert result.params["theta.df"].item() != pytest.approx(5.0, abs=1e-6)


class LogScaleNormal(hvi.GuideFamily):
    """q(φ; λ) = N(loc, exp(log_scale)²): another reparameterizable family."""

    param_names = ("loc", "log_scale")

    def init(self, prior):
        return {"loc": prior.mean, "log_scale": prior.stddev.log()}

    def dist(self, lam):
        return dist.Normal(lam["loc"], lam["log_scale"].exp())

    def sample(self, lam, eps):
        return lam["loc"] + lam["log_scale"].exp() * eps


class LaplaceWithLogScaleQ(LaplacePrior):
    family = LogScaleNormal()


def test_natural_update_refuses_a_family_without_one(sinusoid):
    with pytest.raises(ValueError, match=r"update='natural' needs the diagonal Normal family, but the prior uses LogScaleNormal; use InnerConfig\(update='gradient'\)"):
        hvi.MetaModel(tiny_mlp(), LaplaceWithLogScaleQ(), inner=hvi.InnerConfig(steps=1)).guide(
            sinusoid.sample("val", 1, torch.Generator().manual_seed(0)))


def test_prior_with_its_own_guide_family(sinusoid):
    meta = hvi.MetaModel(
        tiny_mlp(), LaplaceWithLogScaleQ(), hvi.Gaussian(init_scale=1.0),
        inner=hvi.InnerConfig(steps=2, lr=1e-3, learn_lr=True, update="gradient"),
    )
    result = hvi.fit(meta, sinusoid, steps=2, task_batch=4, lr=1e-2)
    assert all(math.isfinite(v) for v in result.losses)
    assert names_mod.inner_lr("layers.0.weight", "log_scale") in result.params
    batch = sinusoid.sample("val", 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lam = meta.guide(batch)["lambda"]["layers.0.weight"]
    assert set(lam) == {"loc", "log_scale"}
    # λ^(0) is the prior's std: √2·b for a Laplace.
    with torch.no_grad():
        lam0 = meta.guide(batch, inner_steps=0)["lambda"]["layers.0.weight"]
    b = pyro.param("theta.layers.0.weight.scale")
    assert torch.allclose(lam0["log_scale"], (math.sqrt(2) * b).log().expand_as(lam0["log_scale"]))


# -- bad definitions fail at construction, naming the weight and the problem -------------
class BadShapePrior(HierarchicalPrior):
    """A per-weight mean of the wrong shape."""

    def weight_sites(self, name, weight):
        return {"loc": hvi.GlobalSite(torch.zeros(3)), "scale": hvi.GlobalSite(torch.tensor(0.1), constraints.positive)}

    def local(self, name, theta):
        return dist.Normal(theta["loc"], theta["scale"])


class NoRsamplePrior(HierarchicalPrior):
    """A distribution without rsample."""

    def weight_sites(self, name, weight):
        return {"loc": hvi.GlobalSite(torch.zeros_like(weight))}

    def local(self, name, theta):
        return dist.VonMises(theta["loc"], torch.ones_like(theta["loc"]))


class RealScalePrior(HierarchicalPrior):
    """A scale declared unconstrained but used as a Normal scale."""

    def weight_sites(self, name, weight):
        return {
            "loc": hvi.GlobalSite(torch.zeros_like(weight)),
            "scale": hvi.GlobalSite(torch.full_like(weight, 0.1), constraints.real),
        }

    def local(self, name, theta):
        return dist.Normal(theta["loc"], theta["scale"])


class EventPrior(HierarchicalPrior):
    """Returns p(φ | θ) with .to_event()."""

    def weight_sites(self, name, weight):
        return {"loc": hvi.GlobalSite(torch.zeros_like(weight))}

    def local(self, name, theta):
        return dist.Normal(theta["loc"], 1.0).to_event(1)


class HeavyTailPrior(HierarchicalPrior):
    """A Student-t with ν ≤ 2: infinite variance, so the Normal family cannot start from it."""

    def weight_sites(self, name, weight):
        return {"loc": hvi.GlobalSite(torch.zeros_like(weight))}

    def local(self, name, theta):
        return dist.StudentT(1.5, theta["loc"], 0.1)


class BadHyperpriorPrior(HierarchicalPrior):
    """A hyperprior whose shape does not fit its site."""

    def weight_sites(self, name, weight):
        return {"loc": hvi.GlobalSite(torch.zeros_like(weight), constraints.real, dist.Normal(torch.zeros(5), 1.0))}

    def local(self, name, theta):
        return dist.Normal(theta["loc"], 0.1)


class BadInitPrior(HierarchicalPrior):
    """A positive site initialized at a negative value."""

    def weight_sites(self, name, weight):
        return {"scale": hvi.GlobalSite(torch.full_like(weight, -0.1), constraints.positive)}

    def local(self, name, theta):
        return dist.Normal(0.0, theta["scale"])


BAD_PRIORS = [
    (BadShapePrior, r"weight 'layers\.0\.weight' site 'loc' has shape \(3,\).*does not broadcast.*\(8, 1\)"),
    (NoRsamplePrior, r"weight 'layers\.0\.weight': p\(φ \| θ\) is VonMises, which has no rsample"),
    (
        RealScalePrior,
        r"weight 'layers\.0\.weight': site 'theta\.layers\.0\.weight\.scale' is declared unconstrained "
        r"\(constraints\.real\).*constraints\.positive",
    ),
    (EventPrior, r"weight 'layers\.0\.weight': p\(φ \| θ\) has event shape \(1,\).*without \.to_event\(\)"),
    (HeavyTailPrior, r"weight 'layers\.0\.weight': λ\^\(0\) \['rho'\].*StudentT is not finite"),
    (BadHyperpriorPrior, r"weight 'layers\.0\.weight' site 'loc': hyperprior has shape \(5,\)"),
    (BadInitPrior, r"weight 'layers\.0\.weight' site 'scale': initial value lies outside its constraint"),
]


@pytest.mark.parametrize("cls,message", BAD_PRIORS, ids=[c.__name__ for c, _ in BAD_PRIORS])
def test_bad_prior_fails_at_construction(cls, message):
    net = tiny_mlp()
    with pytest.raises(ValueError, match=message):
        hvi.MetaModel(net, cls(), inner=STABLE_INNER)
    with pytest.raises(ValueError, match=message):
        cls().bind(dict(net.named_parameters()))


# -- examples -----------------------------------------------------------------------------
def load_example(name: str):
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


@pytest.mark.parametrize("data", ["eight-schools", "radon"])
def test_hierarchical_regression_example_runs(data, capsys):
    example = load_example("hierarchical_regression")
    out = example.main(["--data", data, "--steps", "3"])
    assert math.isfinite(out["mu"]) and math.isfinite(out["max_gap"])
    text = capsys.readouterr().out
    assert "exact" in text and f"hvi fit on {data}" in text


def test_custom_prior_example_runs(registry_cleanup, capsys):
    example = load_example("custom_prior")
    assert "student-t" in list_priors()
    out = example.main(["--steps", "2", "--hidden", "8", "--test-tasks", "4"])
    assert math.isfinite(out["student-t"]["mse"])
    text = capsys.readouterr().out
    assert "learned ν" in text and "Monte Carlo" in text


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: hvi.priors.GaussianPrior(init_scale=0.0), "init_scale=0.0 must be a positive standard deviation."),
        (lambda: hvi.priors.GaussianLayerPrior(loc_scale=-1.0), "loc_scale=-1.0 must be a positive standard deviation."),
        (lambda: hvi.priors.LaplacePrior(init_scale=float("nan")), "init_scale=nan must be a positive scale."),
        (lambda: hvi.priors.NormalGammaPrior(rate=0), "rate=0 must be positive."),
        (lambda: hvi.priors.HorseshoePrior(global_prior_scale=-0.5), "global_prior_scale=-0.5 must be positive."),
        (lambda: hvi.priors.HorseshoePrior(loc_scale=0.0), "loc_scale=0.0 must be positive (or None for a point estimate)."),
    ],
)
def test_prior_hyperparameters_are_checked_by_one_function(make, message):
    """hvi.priors.base.check_hyperparameter: every built-in prior's scales and rates, one line each."""
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value) == message
    assert hvi.priors.HorseshoePrior(loc_scale=None).loc_scale is None
    assert isinstance(hvi.priors.NormalGammaPrior(rate=np.float32(0.5)).rate, float)
