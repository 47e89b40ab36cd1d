"""Posterior predictive through pyro.infer.Predictive, and the ArviZ diagnostics (hvi.diagnostics)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from click.testing import CliRunner
from pyro.distributions import constraints
from pyro.infer import Predictive
from torch import nn

import hvi
from hvi import diagnostics as dg
from hvi.cli.main import cli
from hvi.elbo_parts import trace_parts
from hvi.fit import make_elbo
from hvi.names import q_theta_normal
from hvi.priors import GaussianPrior
from hvi.run_dir import METRICS_FILE

matplotlib.use("Agg")

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


# --------------------------------------------------------------------------- InferenceData


class NormalHalfCauchy(hvi.HierarchicalPrior):
    """φ | μ, τ ~ N(μ, τ²) with latent μ ~ N(0, 5²), τ ~ HalfCauchy(5): the Pyro sites theta.mu, theta.tau."""

    def shared_sites(self, weights):
        ref = next(iter(weights.values()))
        return {
            "mu": hvi.GlobalSite(ref.new_tensor(0.5), constraints.real, dist.Normal(ref.new_tensor(0.0), 5.0)),
            "tau": hvi.GlobalSite(ref.new_tensor(1.0), constraints.positive, dist.HalfCauchy(ref.new_tensor(5.0))),
        }

    def weight_sites(self, name, weight):
        return {}

    def local(self, name, theta):
        return dist.Normal(theta["mu"], theta["tau"])


def hierarchical_meta() -> hvi.MetaModel:
    return hvi.MetaModel(
        VectorNet(), NormalHalfCauchy(), hvi.Gaussian(noise=SIGMA), q_theta="normal",
        inner=hvi.InnerConfig(steps=1, lr=1.0), q_theta_init_scale=0.2,
    )


def test_groups_dims_coords_and_attrs():
    meta = sine_meta()
    batch = dataclasses.replace(sine_batch(B=4, Nq=6), task_index=torch.tensor([3, 0, 7, 5]), num_tasks=9)
    elbo = [-12.0, float("nan"), -9.5]
    idata = dg.to_inference_data(meta, batch, num_samples=30, elbo_trace=elbo, seed=1)
    assert set(idata.groups()) == {
        "posterior", "posterior_predictive", "observed_data", "log_likelihood", "sample_stats", "constant_data",
    }
    post = idata.posterior
    # q_theta="delta": every global site is a point estimate, stored as one draw.
    assert post.sizes["chain"] == 1 and post.sizes["draw"] == 1 and post.attrs["point_estimate"] == 1
    assert list(post["task"].values) == [3, 0, 7, 5]
    assert list(post["layer"].values) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name in dg.PHI_SUMMARIES:
        assert post[name].dims == ("chain", "draw", "task", "layer")
    # A small network (19 weights): the whole θ arrays, named <weight>.<key>; the noise as "noise".
    torch.testing.assert_close(torch.from_numpy(post["0.weight.loc"].values[0, 0]), pyro.param("theta.0.weight.loc").detach())
    assert post["noise"].item() == pytest.approx(float(pyro.param("likelihood.noise").detach()))
    assert json.loads(post.attrs["site_names"])["noise"] == "likelihood.noise"
    # Adaptation moved q(φ_i) away from the prior: positive shift and KL; q's scale is positive.
    assert (post["phi_shift"] > 0).all() and (post["phi_kl"] > 0).all() and (post["phi_scale"] > 0).all()

    pp, ll, obs = idata.posterior_predictive, idata.log_likelihood, idata.observed_data
    assert pp["y"].dims == ("chain", "draw", "task", "point") and pp["y"].shape == (1, 30, 4, 6)
    assert pp["f"].shape == (1, 30, 4, 6) and ll["y"].shape == (1, 30, 4, 6)
    np.testing.assert_array_equal(obs["y"].values, batch.query_y.squeeze(-1).numpy())
    np.testing.assert_array_equal(idata.constant_data["x"].values, batch.query_x.squeeze(-1).numpy())
    np.testing.assert_array_equal(idata.sample_stats["elbo"].values.reshape(-1), np.array(elbo))
    assert list(idata.sample_stats["step"].values) == [1, 2, 3]
    for g in idata.groups():
        attrs = idata[g].attrs
        assert attrs["hvi_version"] == hvi.__version__ and json.loads(attrs["hvi_config"]) == meta.config()
        assert attrs["num_samples"] == 30 and attrs["inner_steps"] == 2 and attrs["seed"] == 1


def test_log_likelihood_is_the_direct_computation():
    meta, batch = sine_meta(), sine_batch(B=3, Nq=5)
    idata = dg.to_inference_data(meta, batch, num_samples=20)
    f = torch.from_numpy(idata.posterior_predictive["f"].values[0])  # (S, B, Nq)
    sigma = pyro.param("likelihood.noise").detach()
    direct = torch.distributions.Normal(f, sigma).log_prob(batch.query_y.squeeze(-1))
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], direct.numpy(), rtol=1e-12)
    # The held-out lppd: log of the mean predictive density over the draws, per query point.
    total, se, point = dg.heldout_lppd(idata)
    expected = torch.logsumexp(direct, 0) - math.log(20)
    np.testing.assert_allclose(point, expected.numpy(), rtol=1e-12)
    assert total == pytest.approx(float(expected.sum())) and se == pytest.approx(float(expected.std(unbiased=False)) * math.sqrt(15))


def test_seed_repeats_and_leaves_the_callers_stream_alone():
    meta, batch = sine_meta(), sine_batch()
    torch.manual_seed(5)
    a = dg.to_inference_data(meta, batch, num_samples=10, seed=3)
    after = torch.rand(2)
    torch.manual_seed(5)
    torch.rand(2)
    b = dg.to_inference_data(meta, batch, num_samples=10, seed=3)
    np.testing.assert_array_equal(a.posterior_predictive["y"].values, b.posterior_predictive["y"].values)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(2))


def test_classification_groups():
    meta, batch = sine_meta(classes=3), sine_batch(B=3, Nq=5, classes=3)
    idata = dg.to_inference_data(meta, batch, num_samples=12)
    assert idata.posterior_predictive["f"].dims == ("chain", "draw", "task", "point", "class")
    assert idata.posterior_predictive["y"].dtype == np.int64 and idata.observed_data["y"].dims == ("task", "point")
    # log p(y | f) of a categorical: the log-softmax of the observed class.
    f = torch.from_numpy(idata.posterior_predictive["f"].values[0])
    direct = torch.log_softmax(f, -1).gather(-1, batch.query_y.expand(12, 3, 5).unsqueeze(-1)).squeeze(-1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], direct.numpy(), rtol=1e-12)
    rel = dg.reliability(idata)
    assert rel.count.sum() == 15 and len(rel.count) == 15 and 0 <= rel.ece <= 1
    with pytest.raises(ValueError, match="for regression"):
        dg.interval_coverage(idata)


def test_network_theta_is_summarised_per_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1)).to(DT)  # 37 weights
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.1), hvi.Gaussian(noise="learned"),
                         inner=hvi.InnerConfig(steps=1))
    idata = dg.to_inference_data(meta, sine_batch(), num_samples=5, max_whole=20)
    post = idata.posterior
    assert {"loc_mean", "loc_rms", "scale_mean", "scale_rms", "noise"} <= set(post.data_vars)
    assert post["loc_rms"].dims == ("chain", "draw", "layer")
    w = pyro.param("theta.2.weight.loc").detach()
    assert post["loc_mean"].sel(layer="2.weight").item() == pytest.approx(float(w.mean()))
    assert post["loc_rms"].sel(layer="2.weight").item() == pytest.approx(float(w.square().mean().sqrt()))
    assert json.loads(post.attrs["site_names"])["scale_rms"] == "theta.*.scale"


def test_hierarchical_prior_reads_mu_and_tau_with_real_draws(tmp_path):
    meta, batch = hierarchical_meta(), conjugate_batch(M=6, Ns=5, Nq=3)
    S = 4000
    idata = dg.to_inference_data(meta, batch, num_samples=S)
    post = idata.posterior
    assert post.attrs["point_estimate"] == 0 and post.sizes["draw"] == S
    assert json.loads(post.attrs["site_names"]) == {"mu": "theta.mu", "tau": "theta.tau"}
    # The draws are q(θ)'s: μ ~ N(loc, scale²), log τ ~ N(loc, scale²).
    for name, values in (("mu", post["mu"].values), ("tau", np.log(post["tau"].values))):
        loc, scale = (float(pyro.param(p).detach()) for p in q_theta_normal(f"theta.{name}"))
        assert abs(values.mean() - loc) < 0.05 * scale and values.std() == pytest.approx(scale, rel=0.05)
    table = az.summary(idata, var_names=["mu", "tau", "phi_scale"])
    assert {"mu", "tau", "phi_scale[0, w]"} <= set(table.index)
    assert table.loc["tau", "mean"] > 0


def test_group_effects_are_drawn_under_each_theta_draw_and_plotted():
    """Conjugate model, one exact step: φ_i's draw s is N(m_i(θ_s), v_i(θ_s)) given that draw's μ and τ."""
    meta, batch = hierarchical_meta(), conjugate_batch(M=5, Ns=6, Nq=2)
    S = 3000
    post = dg.to_inference_data(meta, batch, num_samples=S, inner_draws=0).posterior
    phi = post["phi.w"].values[0]  # (S, task, 2)
    assert post["phi.w"].dims == ("chain", "draw", "task", "phi.w_dim_0") and phi.shape == (S, 5, D)
    mu, tau = post["mu"].values[0][:, None, None], post["tau"].values[0][:, None, None]
    ys = batch.support_y.numpy()  # (task, Ns, D)
    prec = 1 / tau**2 + 6 / SIGMA**2
    mean = (mu / tau**2 + ys.sum(1)[None] / SIGMA**2) / prec
    z = (phi - mean) * np.sqrt(prec)
    assert abs(z.mean()) < 0.03 and z.std() == pytest.approx(1.0, rel=0.02)
    # Not paired with θ's draws, the spread would be wider: the pairing matters.
    assert ((phi - mean[np.random.default_rng(0).permutation(S)]) * np.sqrt(prec)).std() > 1.04

    idata = dg.to_inference_data(meta, batch, num_samples=200, inner_draws=0)
    axes = dg.plot_group_effects(idata)
    labels = [t.get_text() for t in np.ravel(axes)[0].get_yticklabels()]
    # One row per scalar: μ, τ and each task's effects (labelled by their (task, dim) after the first).
    assert labels[-2:] == ["tau", "mu"] and "phi.w[0, 0]" in labels and len(labels) == 2 + 5 * D
    import matplotlib.pyplot as plt

    plt.close("all")
    with pytest.raises(ValueError, match="no group effects"):
        dg.plot_group_effects(dg.to_inference_data(sine_meta(), sine_batch(), num_samples=5, inner_draws=0))


def test_without_query_points_only_the_posterior_is_built():
    """All data in the support set (eight-schools style): no predictive groups, θ and q(φ_i) as usual."""
    meta, batch = hierarchical_meta(), conjugate_batch(M=5, Ns=6, Nq=0)
    idata = dg.to_inference_data(meta, batch, num_samples=40, elbo_trace=[-1.0])
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    assert idata.posterior["phi_kl"].shape == (1, 40, 5, 1) and idata.posterior["tau"].shape == (1, 40)


def test_netcdf_round_trip(tmp_path):
    meta, batch = hierarchical_meta(), conjugate_batch(M=4, Ns=5, Nq=3)
    idata = dg.to_inference_data(meta, batch, num_samples=50, elbo_trace=[-3.0, -2.5])
    path = tmp_path / "idata.nc"
    idata.to_netcdf(str(path))
    back = az.from_netcdf(str(path))
    assert set(back.groups()) == set(idata.groups())
    for g in idata.groups():
        xr_a, xr_b = idata[g], back[g]
        assert set(xr_a.data_vars) == set(xr_b.data_vars)
        for v in xr_a.data_vars:
            assert xr_a[v].dims == xr_b[v].dims
            np.testing.assert_array_equal(xr_a[v].values, xr_b[v].values)
        for c in xr_a.coords:
            np.testing.assert_array_equal(xr_a[c].values, xr_b[c].values)
        assert json.loads(xr_b.attrs["hvi_config"]) == meta.config()
        assert xr_b.attrs["point_estimate"] == 0


def test_arviz_functions_run_on_it(tmp_path):
    import matplotlib.pyplot as plt

    meta, batch = sine_meta(), sine_batch(B=6, Nq=10)
    idata = dg.to_inference_data(meta, batch, num_samples=60)
    # One draw of point estimates: arviz's sd and ESS have no degrees of freedom (numpy warns).
    with pytest.warns(RuntimeWarning) as record:
        table = az.summary(idata, var_names=["noise", "phi_kl"])
    assert all(str(w.message).startswith(("Degrees of freedom", "invalid value encountered")) for w in record)
    assert "noise" in table.index and "phi_kl[0, 0.weight]" in table.index
    with warnings.catch_warnings():
        # Data-dependent advice arviz gives as UserWarnings: high Pareto k of LOO (an untrained
        # model, and query points q was not fitted to) and WAIC's variance check.
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        warnings.filterwarnings("ignore", message="For one or more samples the posterior variance", category=UserWarning)
        loo, waic = az.loo(idata, pointwise=True), az.waic(idata)
    assert loo.loo_i.shape == (6, 10) and np.isfinite(loo.elpd_loo) and np.isfinite(waic.elpd_waic)
    with warnings.catch_warnings():
        # arviz 0.23's KDE plot calls a helper matplotlib 3.11 deprecated (MatplotlibDeprecationWarning).
        warnings.filterwarnings("ignore", message=".*alias_mapping.*")
        az.plot_ppc(idata, num_pp_samples=10, random_seed=0)
    az.plot_loo_pit(idata, y="y")
    plt.close("all")


# --------------------------------------------------------------------------- sample_stats: ELBO parts, inner objective


@pytest.mark.parametrize(("kind", "q_theta", "particles"), [
    ("trace", "delta", 1), ("trace", "normal", 1), ("trace", "normal", 3), ("meanfield", "normal", 2),
])
def test_elbo_parts_add_up_to_the_training_steps_elbo(kind, q_theta, particles):
    meta = hierarchical_meta() if q_theta == "normal" else conjugate_meta()
    batch = conjugate_batch(M=6, Ns=8, Nq=4)
    elbo_fn = make_elbo(kind, particles)
    seen = []
    res = hvi.fit(meta, batch, steps=3, task_batch=3, elbo=elbo_fn, lr=1e-2,
                  callback=lambda step, loss, b: seen.append((loss, dict(elbo_fn.last_parts))))
    assert [loss for loss, _ in seen] == list(res.losses)
    for loss, parts in seen:
        # ELBO = ell − local_kl − global_kl, from the step's own traces: exact up to rounding.
        assert parts["ell"] - parts["local_kl"] - parts["global_kl"] == pytest.approx(-loss, rel=1e-12, abs=1e-9)
        assert parts["ell"] < 0 and parts["local_kl"] > 0
        # A Normal q(θ) over μ and τ has a KL to the hyperprior; conjugate_meta's θ are params (no term).
        assert (parts["global_kl"] != 0) == (q_theta == "normal")


def test_elbo_parts_are_the_traces_log_densities():
    """ell is the observed sites' log-likelihood, local_kl the phi sites' log q − log p (M/B and β applied)."""
    meta, batch = conjugate_meta(), conjugate_batch(M=6, Ns=8, Nq=4)
    elbo_fn = make_elbo()
    pyro.set_rng_seed(3)
    with torch.no_grad():
        guide_tr = pyro.poutine.trace(meta.guide).get_trace(batch)
        model_tr = pyro.poutine.trace(pyro.poutine.replay(meta.model, guide_tr)).get_trace(batch)
    model_tr.compute_log_prob()
    guide_tr.compute_log_prob()
    parts = trace_parts(model_tr, guide_tr)
    y = model_tr.nodes["y"]
    mu, phi = model_tr.nodes["phi.w"]["fn"], guide_tr.nodes["phi.w"]["value"].detach()
    direct_ell = float(dist.Normal(phi, SIGMA).log_prob(batch.query_y).sum())
    direct_kl = float((guide_tr.nodes["phi.w"]["fn"].log_prob(phi) - mu.log_prob(phi)).sum().detach())
    assert y["is_observed"] and parts["ell"] == pytest.approx(direct_ell, rel=1e-12)
    assert parts["local_kl"] == pytest.approx(direct_kl, rel=1e-12) and parts["global_kl"] == 0.0
    assert elbo_fn.last_parts is None  # nothing recorded before a step


def test_inner_objective_reaches_the_log_evidence_in_one_exact_step():
    """Conjugate model, natural step at α = 1: after one step q(φ_i) is exact and Ns·L_S = log p(D_i^S | θ)."""
    batch = conjugate_batch(M=4, Ns=20)
    meta = conjugate_meta(steps=2, lr=1.0)
    trace = dg.inner_objective(meta, batch, num_samples=16)
    assert trace.shape == (4, 3)
    mu = pyro.param("theta.w.loc").detach()
    evidence = []
    for i in range(4):
        total = 0.0
        for d in range(D):
            y = batch.support_y[i, :, d]
            cov = SIGMA**2 * torch.eye(20, dtype=DT) + TAU**2 * torch.ones(20, 20, dtype=DT)
            total += float(dist.MultivariateNormal(mu[d].expand(20), cov).log_prob(y))
        evidence.append(total / 20)
    np.testing.assert_allclose(trace[:, 1], evidence, rtol=1e-10)
    np.testing.assert_allclose(trace[:, 2], evidence, rtol=1e-10)  # a second exact step stays there
    assert (trace[:, 0] < trace[:, 1] - 0.5).all()  # the prior (0 steps) is far below

    idata = dg.to_inference_data(meta, batch, num_samples=10, inner_draws=16)
    inner = idata.sample_stats["inner_elbo"]
    assert inner.dims == ("chain", "draw", "task", "inner_step") and list(inner["inner_step"].values) == [0, 1, 2]
    np.testing.assert_allclose(inner.values[0, 0], trace, rtol=1e-12)
    assert "sample_stats" not in dg.to_inference_data(meta, batch, num_samples=10, inner_draws=0).groups()


def test_elbo_trace_mapping_stores_the_parts():
    meta, batch = sine_meta(), sine_batch(B=2)
    trace = {"elbo": [-3.0, None], "ell": [-2.0, None], "local_kl": [0.5, None], "global_kl": [0.5, None]}
    stats = dg.to_inference_data(meta, batch, num_samples=5, elbo_trace=trace, inner_draws=0).sample_stats
    assert set(stats.data_vars) == {"elbo", "ell", "local_kl", "global_kl"}
    np.testing.assert_array_equal(stats["local_kl"].values.reshape(-1), [0.5, np.nan])
    with pytest.raises(ValueError, match="has 1 steps, elbo has 2"):
        dg.to_inference_data(meta, batch, num_samples=5, elbo_trace={**trace, "ell": [1.0]}, inner_draws=0)


def _texts(fig) -> list[str]:
    out = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_ylabel(), ax.get_xlabel()]
    return [t for t in out if t]


def test_image_grid_shows_input_truth_mean_and_std_with_colour_bars():
    import matplotlib.pyplot as plt

    g = np.random.default_rng(0)
    B, N, S = 3, 2, 40
    y = g.uniform(0, 1, size=(B, N, 1, 4, 5))
    rep = y[None] + g.normal(0, 0.1, size=(S,) + y.shape)
    idata = az.from_dict(
        posterior_predictive={"y": rep[None]}, observed_data={"y": y},
        constant_data={"x": g.uniform(size=(B, N, 3, 4, 5))},
        dims={"y": ["task", "point", "y_channel", "y_row", "y_col"], "x": ["task", "point", "c", "r", "k"]},
        coords={"task": [7, 8, 9]},
    )
    fig = dg.plot_image_grid(idata, tasks=2, x_channel=1, x_label="input [1]", y_label="kt", units="1")
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 4 and len(fig.axes) == 2 * 4 * 2  # every panel has its colour bar
    texts = _texts(fig)
    assert {"input", "truth", "predictive mean", "predictive std", "task 7", "task 8"} <= set(texts)
    assert "kt [1]" in texts and "std of kt [1]" in texts and "input [1]" in texts
    np.testing.assert_allclose(images[2].images[0].get_array(), rep[:, 0, 0, 0].mean(0))  # task 7's mean
    np.testing.assert_allclose(images[3].images[0].get_array(), rep[:, 0, 0, 0].std(0))
    np.testing.assert_allclose(images[0].images[0].get_array(), idata.constant_data["x"].values[0, 0, 1])
    plt.close(fig)
    with pytest.raises(ValueError, match="image targets"):
        dg.plot_image_grid(dg.to_inference_data(sine_meta(), sine_batch(), num_samples=5, inner_draws=0))


def test_reconstructions_after_each_inner_step():
    import matplotlib.pyplot as plt

    torch.manual_seed(0)
    h, w = 3, 4
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij"), -1)
    grid = grid.reshape(1, h * w, 2).expand(2, -1, -1).to(DT)
    img = torch.sin(2 * grid[..., :1]) * torch.tensor([1.0, -1.0], dtype=DT).reshape(2, 1, 1)
    batch = hvi.TaskBatch(grid[:, :6], img[:, :6], grid, img)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1)).to(DT)
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.5), hvi.Gaussian(noise=0.1), inner=hvi.InnerConfig(steps=2))
    fig = dg.plot_reconstructions(meta, batch, (h, w), num_samples=10, tasks=2)
    texts = _texts(fig)
    assert {"truth, support in red", "after 0 inner steps", "after 1 inner step", "after 2 inner steps"} <= set(texts)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 2 * 4
    # The panel after m steps is hvi.predict's mean after m steps.
    torch.manual_seed(0)
    with torch.no_grad():
        want = hvi.predict(meta, batch, inner_steps=1, num_samples=10).mean[0].reshape(h, w)
    np.testing.assert_allclose(panels[2].images[0].get_array(), want.numpy(), rtol=1e-10)
    # The support pixels (the first 6 in raster order) are marked on the truth.
    assert len(panels[0].collections[0].get_offsets()) == 6
    plt.close(fig)
    with pytest.raises(ValueError, match="all 20 pixels"):
        dg.plot_reconstructions(meta, batch, (4, 5))


# --------------------------------------------------------------------------- Pareto k̂


def test_pareto_k_is_good_for_the_exact_conditional_and_bad_for_the_prior():
    batch = conjugate_batch(M=8, Ns=20)
    exact = dg.pareto_k(conjugate_meta(steps=1, lr=1.0), batch)
    # One natural step at α = 1 is p(φ_i | θ, D_i) itself: the ratios are constant (k̂ = -inf).
    assert np.isneginf(exact.k).all() and exact.counts() == {"good": 8, "ok": 0, "bad": 0}
    assert exact.bad_tasks == []
    near = dg.pareto_k(conjugate_meta(steps=2, lr=0.5), batch)  # a quarter of the step left to go
    assert np.isfinite(near.k).all() and (near.k < dg.K_GOOD).all(), near.k
    # Zero inner steps: q(φ_i) is the prior, far wider than the posterior of 20 observations.
    bad = dg.pareto_k(conjugate_meta(steps=1, lr=1.0), batch, inner_steps=0)
    assert (bad.k > dg.K_OK).all(), bad.k
    assert bad.bad_tasks == list(range(8)) and "8 bad" in bad.verdict()


def test_pareto_k_of_a_latent_theta_is_taken_at_its_median():
    meta, batch = hierarchical_meta(), conjugate_batch(M=4, Ns=20)
    k = dg.pareto_k(meta, batch, num_samples=400)
    assert np.isneginf(k.k).all()  # exact given θ, whatever θ is
    assert (dg.pareto_k(meta, batch, num_samples=400, inner_steps=0).k > dg.K_OK).all()


# --------------------------------------------------------------------------- calibration


def _synthetic(y_sd: float, S: int = 400, B: int = 20, N: int = 50, seed: int = 0):
    """Replicated y ~ N(0, 1); observed y ~ N(0, y_sd²)."""
    g = np.random.default_rng(seed)
    rep = g.normal(size=(1, S, B, N))
    return az.from_dict(
        posterior={"m": g.normal(size=(1, S))},
        posterior_predictive={"y": rep, "f": rep},
        observed_data={"y": y_sd * g.normal(size=(B, N))},
        dims={"y": ["task", "point"], "f": ["task", "point"]},
    )


def test_coverage_and_pit_of_calibrated_and_overconfident_predictives():
    good, wide = _synthetic(1.0), _synthetic(2.0)
    cov = dg.interval_coverage(good)
    np.testing.assert_allclose(cov.observed, cov.levels, atol=0.03)
    assert cov.per_task.shape == (20, 4)
    assert (dg.interval_coverage(wide).observed < np.array(cov.levels) - 0.15).all()
    u = dg.pit(good).ravel()
    assert np.histogram(u, bins=5, range=(0, 1))[0].min() > 0.8 * u.size / 5
    u = dg.pit(wide).ravel()  # too narrow a predictive: PIT piles up at 0 and 1
    assert ((u < 0.1) | (u > 0.9)).mean() > 0.4


def test_reliability_and_ece_of_known_probabilities():
    # Two classes, every point predicted class 0 with probability 0.8: right 80% → ECE 0; right 50% → 0.3.
    B, N, S = 10, 20, 5
    logits = np.zeros((1, S, B, N, 2))
    logits[..., 0] = np.log(0.8 / 0.2)
    for right, ece in ((0.8, 0.0), (0.5, 0.3)):
        y = (np.arange(B * N).reshape(B, N) >= right * B * N).astype(np.int64)
        idata = az.from_dict(
            posterior={"m": np.zeros((1, S)) + np.arange(S)},
            posterior_predictive={"y": np.zeros((1, S, B, N), dtype=np.int64), "f": logits},
            observed_data={"y": y},
            dims={"y": ["task", "point"], "f": ["task", "point", "class"]},
        )
        rel = dg.reliability(idata, bins=15)
        assert rel.ece == pytest.approx(ece, abs=1e-12)
        assert rel.count[np.searchsorted(rel.edges, 0.8) - 1] == B * N and rel.count.sum() == B * N
        assert rel.confidence[rel.count > 0] == pytest.approx([0.8])


# --------------------------------------------------------------------------- hvi diagnose

TINY = ["--model", "mlp", "--steps", "5", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]


def _invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _assert_one_line_error(res, *fragments):
    assert res.exit_code != 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sine"
    res = _invoke(["fit", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_diagnose_writes_idata_and_plots(tiny_run, tmp_path):
    out, plots = tmp_path / "idata.nc", tmp_path / "plots"
    before = sorted(p.name for p in tiny_run.iterdir())
    res = _invoke(["diagnose", str(tiny_run), "--out", str(out), "--plots", str(plots),
                   "--num-samples", "20", "--max-tasks", "4"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in tiny_run.iterdir()) == before  # the run directory is untouched
    text = res.stdout
    assert "4 test tasks of 'sinusoid'" in text and "Pareto k̂ of q(φ_i)" in text
    assert "interval coverage" in text and "50%" in text and "95%" in text
    assert "held-out lppd" in text and "over 40 query points" in text
    assert "ELBO trace           5 steps" in text and f"wrote {out}" in text
    assert sorted(p.name for p in plots.iterdir()) == ["elbo.png", "loo_pit.png", "pareto_k.png", "ppc.png"]
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    idata = az.from_netcdf(str(out))
    assert idata.posterior_predictive["y"].shape == (1, 20, 4, 10)
    assert list(idata.posterior["layer"].values)[:2] == ["layers.0.weight", "layers.0.bias"]
    assert {"loc_mean", "loc_rms", "scale_mean", "scale_rms"} <= set(idata.posterior.data_vars)
    assert "noise" not in idata.posterior  # the sinusoid's default σ is fixed (hvi.defaults.DATA_DEFAULTS)
    # The stored ELBO trace is metrics.jsonl's.
    rows = [json.loads(line) for line in (tiny_run / METRICS_FILE).read_text().splitlines()]
    for key in ("elbo", "ell", "local_kl", "global_kl"):
        np.testing.assert_array_equal(idata.sample_stats[key].values.reshape(-1), [r[key] for r in rows])
    for r in rows:  # metrics.jsonl's parts add up to its ELBO (the step's own traces)
        assert r["ell"] - r["local_kl"] - r["global_kl"] == pytest.approx(r["elbo"], rel=1e-12)
    assert idata.sample_stats["inner_elbo"].shape == (1, 1, 4, 2)  # K = 1: after 0 and 1 inner steps
    assert json.loads(idata.posterior.attrs["hvi_config"])["inner"]["steps"] == 1

    # The default --out is RUN_DIR/idata.nc.
    res = _invoke(["diagnose", str(tiny_run), "--num-samples", "5", "--max-tasks", "2"])
    assert res.exit_code == 0, res.output
    assert (tiny_run / "idata.nc").is_file()
    (tiny_run / "idata.nc").unlink()


def test_diagnose_draws_a_forest_plot_of_a_small_hierarchical_model(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('q_theta = "normal"\n[model_args]\nhidden = [2]\n[prior_args]\nhyperprior = true\n')
    run, plots = tmp_path / "hier", tmp_path / "plots"
    assert _invoke(["fit", *TINY, "--config", str(cfg), "--out", str(run)]).exit_code == 0
    res = _invoke(["diagnose", str(run), "--plots", str(plots), "--num-samples", "30", "--max-tasks", "3",
                   "--k-samples", "100"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in plots.iterdir()) == [
        "elbo.png", "forest.png", "loo_pit.png", "pareto_k.png", "ppc.png"]
    post = az.from_netcdf(str(run / "idata.nc")).posterior
    assert post["phi.layers.0.weight"].shape == (1, 30, 3, 2, 1) and post["phi.layers.1.bias"].shape == (1, 30, 3)


def test_diagnose_errors_are_one_line_and_write_nothing(tiny_run, tmp_path):
    from hvi.data.files import write_tasks

    out, plots = tmp_path / "idata.nc", tmp_path / "plots"
    common = ["--out", str(out), "--plots", str(plots), "--num-samples", "5"]
    _assert_one_line_error(_invoke(["diagnose", str(tmp_path / "none"), *common]), "does not exist")
    _assert_one_line_error(
        _invoke(["diagnose", str(tiny_run), "--out", str(tmp_path / "no" / "x.nc")]), "does not exist"
    )
    # A run whose data file has lost its test split since training.
    g = np.random.default_rng(0)
    x = g.uniform(-5, 5, size=(12, 8, 1)).astype("float32")
    data = write_tasks(tmp_path / "tasks.nc", {"x": x, "y": np.sin(x)}, split=["train"] * 8 + ["val", "test"] * 2)
    cfg = tmp_path / "run.toml"
    cfg.write_text("[data_args]\nk_shot = 4\n")
    run = tmp_path / "notest"
    res = _invoke(["fit", *TINY, "--data", str(data), "--config", str(cfg), "--out", str(run)])
    assert res.exit_code == 0, res.output
    write_tasks(data, {"x": x, "y": np.sin(x)}, split=["train"] * 8 + ["val"] * 4)
    _assert_one_line_error(_invoke(["diagnose", str(run), *common]), "split 'test'", "has no tasks")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notest", "run.toml", "tasks.nc"]
    assert "idata.nc" not in {p.name for p in run.iterdir()}


def test_diagnose_on_other_data(tiny_run, tmp_path):
    from hvi.data.files import write_tasks

    g = np.random.default_rng(1)
    x = g.uniform(-5, 5, size=(10, 12, 1)).astype("float32")
    support = np.arange(12)[None, :].repeat(10, 0) < 5
    data = write_tasks(tmp_path / "other.nc", {"x": x, "y": 2 * np.sin(x), "is_support": support},
                       split=["train"] * 3 + ["val"] + ["test"] * 6)
    out = tmp_path / "idata.nc"
    res = _invoke(["diagnose", str(tiny_run), "--data", str(data), "--out", str(out), "--num-samples", "10",
                   "--k-samples", "100"])
    assert res.exit_code == 0, res.output
    assert f"6 test tasks of '{data.resolve()}'" in res.stdout
    idata = az.from_netcdf(str(out))
    source = hvi.data.files.FileSource(str(data))
    want = source.get_tasks("test", torch.arange(6)).query_y.squeeze(-1).numpy()
    np.testing.assert_array_equal(idata.observed_data["y"].values, want)
    assert "idata.nc" not in {p.name for p in tiny_run.iterdir()}


def test_diagnose_on_other_data_errors_are_one_line_and_write_nothing(tiny_run, tmp_path):
    from hvi.data.files import write_tasks

    g = np.random.default_rng(1)
    x2 = g.uniform(size=(6, 8, 2)).astype("float32")
    support = np.arange(8)[None, :].repeat(6, 0) < 4
    wide = write_tasks(tmp_path / "wide.nc", {"x": x2, "y": x2[..., :1], "is_support": support},
                       split=["train"] * 2 + ["val"] + ["test"] * 3)
    out, plots = tmp_path / "idata.nc", tmp_path / "plots"
    common = ["--out", str(out), "--plots", str(plots), "--num-samples", "5"]
    for data, fragments in [
        (str(tmp_path / "missing.nc"), ["missing.nc", "no such file"]),
        ("nosuch", ["unknown data source 'nosuch'"]),
        (str(wide), ["x_shape (2,)", "trained on (1,)", "same shape"]),
        ("glyphs", ["x_shape (1, 28, 28)"]),
        ("", ["--data is empty"]),
    ]:
        _assert_one_line_error(_invoke(["diagnose", str(tiny_run), "--data", data, *common]), *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.nc"]


def test_read_metrics_trace_keeps_only_recorded_parts(tmp_path):
    from hvi.cli.diagnose import read_elbo_trace, read_metrics_trace

    rows = [
        {"step": 1, "elbo": -3.0, "ell": -2.0, "local_kl": 1.0, "global_kl": None},
        {"step": 3, "elbo": -1.0, "ell": -0.5, "local_kl": 0.5, "global_kl": None},
    ]
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
    trace = read_metrics_trace(tmp_path)
    assert sorted(trace) == ["elbo", "ell", "local_kl"]  # global_kl never recorded (e.g. a method without an ELBO)
    np.testing.assert_array_equal(trace["ell"], [-2.0, np.nan, -0.5])  # step 2 missing: NaN
    np.testing.assert_array_equal(read_elbo_trace(tmp_path), [-3.0, np.nan, -1.0])
    assert read_metrics_trace(tmp_path / "none") is None


def test_diagnose_failing_while_writing_leaves_nothing(tiny_run, tmp_path, monkeypatch):
    import matplotlib.figure

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", disk_full)
    out, plots = tmp_path / "idata.nc", tmp_path / "plots"
    res = _invoke(["diagnose", str(tiny_run), "--out", str(out), "--plots", str(plots),
                   "--num-samples", "5", "--max-tasks", "2"])
    _assert_one_line_error(res, "No space left on device")
    assert list(tmp_path.iterdir()) == []
