"""The engine against naive references: inner loop, outer gradients, ELBO pieces, scaling, errors."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call

import hvi
from hvi.adapt import InnerLoop
from hvi.families import inv_softplus
from hvi.fit import make_elbo
from hvi.guide import guide_globals, inner_lrs
from hvi.names import inner_lr, q_theta_normal
from hvi.parallel import map_task_chunks, num_task_chunks
from hvi.priors import GaussianPrior
from naive import assert_same_param_grads, outer_term

DT = torch.float64


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).to(DT)


def regression_batch(B=3, Ns=4, Nq=5, M=None, seed=0) -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(B, Ns, 1, generator=g, dtype=DT) * 4 - 2
    xq = torch.rand(B, Nq, 1, generator=g, dtype=DT) * 4 - 2
    a = torch.rand(B, 1, 1, generator=g, dtype=DT) + 0.5
    return hvi.TaskBatch(xs, a * torch.sin(xs), xq, a * torch.sin(xq), num_tasks=M)


def build(inner: hvi.InnerConfig, q_theta="delta", hyperprior=False, objective="query") -> hvi.MetaModel:
    return hvi.MetaModel(
        small_net(),
        GaussianPrior(init_scale=0.1, hyperprior=hyperprior),
        hvi.Gaussian(noise="learned", init_scale=0.5),
        q_theta=q_theta,
        inner=inner,
        objective=objective,
    )


def naive_adapt(meta, theta_loc, theta_scale, sigma, lr, x, y, eps, steps, cfg):
    """One task, the obvious way: torch.autograd.grad per step, no vmap."""
    lam = {n: {"loc": theta_loc[n], "rho": inv_softplus(theta_scale[n])} for n in theta_loc}
    names = list(lam)
    for m in range(steps):
        loglik = 0.0
        phis = {n: lam[n]["loc"] + F.softplus(lam[n]["rho"]) * eps[n][m] for n in names}  # (S, *w)
        for s in range(cfg.num_samples):
            out = functional_call(meta.net.module, {n: phis[n][s] for n in names}, (x,))
            loglik = loglik + Normal(out, sigma).log_prob(y).sum()
        loglik = loglik / cfg.num_samples
        kl = sum(
            kl_divergence(Normal(lam[n]["loc"], F.softplus(lam[n]["rho"])), Normal(theta_loc[n], theta_scale[n])).sum()
            for n in names
        )
        obj = (loglik - cfg.kl_weight * kl) / x.shape[0]
        flat = [lam[n][k] for n in names for k in ("loc", "rho")]
        grads = torch.autograd.grad(obj, flat, create_graph=not cfg.first_order)
        it = iter(grads)
        lam = {
            n: {k: lam[n][k] + lr[n][k] * (next(it).detach() if cfg.first_order else next(it)) for k in ("loc", "rho")}
            for n in names
        }
    return lam


def current_theta(meta):
    loc = {n: pyro.param(f"theta.{n}.loc") for n in meta.net.names}
    scale = {n: pyro.param(f"theta.{n}.scale") for n in meta.net.names}
    return loc, scale


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_samples,learn_lr", [(1, False), (2, True)])
def test_vmapped_inner_loop_and_outer_gradients_match_naive_loop(first_order, num_samples, learn_lr):
    cfg = hvi.InnerConfig(update="gradient", steps=3, lr=0.05, num_samples=num_samples, kl_weight=0.7, first_order=first_order, learn_lr=learn_lr)
    meta = build(cfg)
    batch = regression_batch(M=7)
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    elbo = Trace_ELBO()
    loss = elbo.differentiable_loss(meta.model, meta.guide, batch)
    pyro.set_rng_seed(3)
    tr = poutine.trace(meta.guide).get_trace(batch)
    ret = tr.nodes["_RETURN"]["value"]
    eps = meta.inner_loop(1).split(ret["inner_noise"].materialize())

    loc, scale = current_theta(meta)
    sigma = pyro.param("likelihood.noise")
    lr = {n: {k: (pyro.param(inner_lr(n, k)) if learn_lr else cfg.lr) for k in ("loc", "rho")} for n in loc}
    B, M = batch.batch_size, batch.num_tasks
    naive_loss = 0.0
    for i in range(B):
        lam = naive_adapt(meta, loc, scale, sigma, lr, batch.support_x[i], batch.support_y[i],
                          {n: e[i] for n, e in eps.items()}, cfg.steps, cfg)
        naive_loss = naive_loss - (M / B) * outer_term(meta, tr, lam, i, loc, scale, sigma, batch, cfg.kl_weight)
    assert_same_param_grads(loss, naive_loss)


@pytest.mark.parametrize("num_samples", [1, 2])
def test_first_order_inner_loop_without_kl_matches_naive_loop(num_samples):
    """kl_weight=0 (reachable through InnerLoop itself; MetaModel needs β > 0): likelihood only."""
    meta = build(hvi.InnerConfig(update="gradient", steps=3, lr=0.05))
    cfg = hvi.InnerConfig(update="gradient", steps=3, lr=0.05, num_samples=num_samples, kl_weight=0.0, first_order=True)
    loop = InnerLoop(meta.net, meta.prior, meta.likelihood, cfg, y_event_dim=1)
    batch = regression_batch()
    pyro.clear_param_store()
    theta, _ = guide_globals(meta)
    lik = {k: theta.pop(f"likelihood.{k}") for k in meta.likelihood.global_sites()}
    eps = torch.randn(batch.batch_size, 3, num_samples, loop.size, dtype=DT, generator=torch.Generator().manual_seed(2))
    lam = loop.unflatten(loop.adapt(theta, lik, inner_lrs(meta), batch.support_x, batch.support_y, None, eps, 3))
    loc, scale = current_theta(meta)
    lr = {n: {"loc": 0.05, "rho": 0.05} for n in loc}
    for i in range(batch.batch_size):
        ref = naive_adapt(meta, loc, scale, pyro.param("likelihood.noise"), lr, batch.support_x[i],
                          batch.support_y[i], {n: e[i] for n, e in loop.split(eps).items()}, 3, cfg)
        for n in ref:
            for k in ("loc", "rho"):
                torch.testing.assert_close(lam[n][k][i], ref[n][k], rtol=1e-10, atol=1e-12)


def test_second_order_gradient_differs_from_first_order():
    """The two modes must really differ (else the test above could not tell them apart)."""
    grads = {}
    for fo in (False, True):
        meta = build(hvi.InnerConfig(update="gradient", steps=3, lr=0.05, first_order=fo))
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, regression_batch())
        leaf = pyro.param("theta.0.weight.loc").unconstrained()
        grads[fo] = torch.autograd.grad(loss, leaf)[0]
    assert (grads[False] - grads[True]).abs().max() > 1e-3 * grads[False].abs().max()


@pytest.mark.parametrize("learn_lr", [False, True])
def test_first_order_lambda_is_bitwise_the_same_with_and_without_a_graph(learn_lr):
    """First order updates λ in place and attaches ∂/∂λ^(0), ∂/∂α at the end: values unchanged."""
    meta = build(hvi.InnerConfig(update="gradient", steps=3, lr=0.05, first_order=True, learn_lr=learn_lr))
    batch = regression_batch()
    pyro.clear_param_store()
    lams = {}
    for grad in (True, False):
        pyro.set_rng_seed(1)
        with torch.set_grad_enabled(grad):
            lams[grad] = poutine.trace(meta.guide).get_trace(batch).nodes["_RETURN"]["value"]["lambda"]
    for n, d in lams[False].items():
        for k, v in d.items():
            assert v.grad_fn is None, (n, k)
            assert lams[True][n][k].requires_grad, (n, k)
            assert torch.equal(v, lams[True][n][k]), (n, k)


class _PlainNormal(hvi.NormalFamily):
    """The Normal family under another type: the inner loop takes its generic (autograd KL) path."""


class _AutogradKLGaussian(GaussianPrior):
    family = _PlainNormal()


@pytest.mark.parametrize("first_order", [False, True])
def test_generic_inner_loop_path_matches_the_closed_form_path(first_order):
    """Autograd through the sampler and the analytic KL = the written-out Normal gradients."""
    batch = regression_batch(M=7)
    runs = []
    for prior in (GaussianPrior(init_scale=0.1), _AutogradKLGaussian(init_scale=0.1)):
        meta = hvi.MetaModel(
            small_net(), prior, hvi.Gaussian(noise="learned", init_scale=0.5),
            inner=hvi.InnerConfig(update="gradient", steps=3, lr=0.05, num_samples=2, kl_weight=0.7, first_order=first_order, learn_lr=True),
        )
        assert (type(meta.prior.family) is hvi.NormalFamily) == (type(prior) is GaussianPrior)
        pyro.clear_param_store()
        pyro.set_rng_seed(4)
        loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
        pyro.set_rng_seed(4)
        lam = poutine.trace(meta.guide).get_trace(batch).nodes["_RETURN"]["value"]["lambda"]
        store = pyro.get_param_store()
        grads = torch.autograd.grad(loss, [store[k].unconstrained() for k in store.keys()])
        runs.append((loss, lam, dict(zip(store.keys(), grads))))
    (loss, lam, grads), (loss_g, lam_g, grads_g) = runs
    torch.testing.assert_close(loss_g, loss, rtol=1e-10, atol=1e-9)
    for n, d in lam.items():
        for k, v in d.items():
            torch.testing.assert_close(lam_g[n][k], v, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_g.keys()
    for name, g in grads.items():
        torch.testing.assert_close(grads_g[name], g, rtol=1e-8, atol=1e-10, msg=name)


def test_svi_matches_pyro_svi_and_frees_the_gradients():
    """hvi.SVI: pyro.infer.SVI's losses and parameters bit for bit, with no gradient held between steps."""
    batch = regression_batch(M=7)
    runs = []
    for cls in (pyro.infer.SVI, hvi.SVI):
        meta = build(hvi.InnerConfig(update="gradient", steps=2, lr=0.05, learn_lr=True))
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = cls(meta.model, meta.guide, pyro.optim.Adam({"lr": 0.01}), loss=Trace_ELBO())
        losses = [svi.step(batch) for _ in range(3)]
        store = pyro.get_param_store()
        grads = [store[k].unconstrained().grad for k in store.keys()]
        runs.append((losses, {k: v.detach().clone() for k, v in store.items()}, grads))
    (pyro_losses, pyro_params, pyro_grads), (losses, params, grads) = runs
    assert losses == pyro_losses
    assert params.keys() == pyro_params.keys() and len(params) > 5
    for k, v in params.items():
        assert torch.equal(v, pyro_params[k]), k
    assert all(g is not None for g in pyro_grads)  # Pyro keeps zero-filled gradients
    assert all(g is None for g in grads)


def log_normal(x, m, s):
    return (-0.5 * ((x - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum()


@pytest.mark.parametrize("objective", ["query", "support+query"])
def test_elbo_equals_hand_computation_for_a_fixed_trace(objective):
    """Trace_ELBO on one trace = Σ_i (M/B)[log p(y|φ) + β(log p(φ|θ) − log q(φ))] + log p(θ) − log q(θ)."""
    cfg = hvi.InnerConfig(update="gradient", steps=2, lr=0.05, kl_weight=0.5)
    meta = build(cfg, q_theta="normal", hyperprior=True, objective=objective)
    batch = regression_batch(B=3, M=11)
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
    pyro.set_rng_seed(5)
    tr = poutine.trace(meta.guide).get_trace(batch)
    store = pyro.get_param_store()
    total = 0.0
    theta = {}
    for name in meta.sites:  # latent θ: log p(θ) − log q(θ) at the drawn value
        if not meta.sites[name].latent:
            continue  # the likelihood's noise has no hyperprior: a param, no ELBO term
        v = tr.nodes[name]["value"]
        theta[name] = v
        qloc, qscale = (store[p] for p in q_theta_normal(name))
        if name.endswith(".loc"):
            total = total + log_normal(v, torch.zeros_like(v), torch.ones_like(v))
            total = total - log_normal(v, qloc, qscale)
        else:  # positive sites: LogNormal hyperprior; q is a Normal on log v plus the Jacobian
            lv = torch.log(v)
            total = total + log_normal(lv, torch.full_like(v, math.log(0.1)), torch.ones_like(v)) - lv.sum()
            total = total - (log_normal(lv, qloc, qscale) - lv.sum())
    sigma = store["likelihood.noise"]
    B, M = batch.batch_size, batch.num_tasks
    x, y = (batch.query_x, batch.query_y) if objective == "query" else batch.joined()[:2]
    for i in range(B):
        phi, lp, lq = {}, 0.0, 0.0
        for n in meta.net.names:
            d = tr.nodes[f"phi.{n}"]["fn"].base_dist
            phi[n] = tr.nodes[f"phi.{n}"]["value"][i, 0]
            lq = lq + log_normal(phi[n], d.loc[i, 0], d.scale[i, 0])
            lp = lp + log_normal(phi[n], theta[f"theta.{n}.loc"], theta[f"theta.{n}.scale"])
        out = functional_call(meta.net.module, phi, (x[i],))
        ll = log_normal(y[i], out, sigma.expand_as(out))
        total = total + (M / B) * (ll + cfg.kl_weight * (lp - lq))
    torch.testing.assert_close(loss, -total, rtol=1e-10, atol=1e-8)


def test_task_subsampling_gives_an_unbiased_full_data_elbo():
    """E over subsets of B tasks of the scaled ELBO = the ELBO on all M tasks.

    The φ draws are pinned by conditioning the guide (λ still comes from the inner
    loop with steps=0), so every per-task term is deterministic and the identity
    must hold exactly; a missing or doubled M/B factor breaks it.
    """
    M, B = 5, 2
    meta = build(hvi.InnerConfig(update="gradient", steps=0))
    full = regression_batch(B=M, seed=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    phi_all = {n: 0.1 * torch.randn((M, 1) + s, dtype=DT) for n, s in meta.net.shapes.items()}

    def loss_on(idx):
        idx_t = torch.tensor(idx)
        sub = hvi.TaskBatch(full.support_x[idx_t], full.support_y[idx_t], full.query_x[idx_t],
                            full.query_y[idx_t], idx_t, M)
        data = {f"phi.{n}": v[idx_t] for n, v in phi_all.items()}
        guide_tr = poutine.trace(poutine.condition(meta.guide, data=data)).get_trace(sub)
        for name in data:  # pinned draws, still scored as guide samples
            guide_tr.nodes[name]["is_observed"] = False
        model_tr = poutine.trace(poutine.replay(meta.model, guide_tr)).get_trace(sub)
        # Trace.log_prob_sum applies each site's scale: the plate's M/B and β.
        return float((guide_tr.log_prob_sum() - model_tr.log_prob_sum()).detach())

    full_loss = loss_on(list(range(M)))
    subsets = list(itertools.combinations(range(M), B))
    mean_sub = sum(loss_on(list(s)) for s in subsets) / len(subsets)
    assert math.isclose(mean_sub, full_loss, rel_tol=1e-12)
    assert not math.isclose(loss_on([0, 1]), full_loss, rel_tol=1e-3)  # the subsets do differ


def test_prediction_shapes_and_moments():
    meta = build(hvi.InnerConfig(update="gradient", steps=2, lr=0.05))
    batch = regression_batch(B=3, Nq=7)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pred = hvi.predict(meta, batch, num_samples=50)
    assert pred.mean.shape == (3, 7, 1) and pred.std.shape == (3, 7, 1)
    assert pred.samples.shape == (50, 3, 7, 1)
    # The sd's value is checked against the closed-form posterior predictive in
    # test_conjugate.py::test_predictive_is_the_exact_posterior_predictive.
    assert bool((pred.std > pyro.param("likelihood.noise").detach()).all())
    m = hvi.regression_metrics(pred, batch.query_y)
    assert set(m) >= {"rmse", "nll", "crps", "coverage_90"} and m["rmse"].shape == (3,)


def test_gaussian_crps_matches_numerical_integral():
    mean, std, y = torch.tensor(0.3, dtype=DT), torch.tensor(0.7, dtype=DT), torch.tensor(1.1, dtype=DT)
    # CRPS = ∫ (F(z) − 1[z ≥ y])² dz, integrated on each side of the step at y.
    below = torch.linspace(-10, float(y), 100001, dtype=DT)
    above = torch.linspace(float(y), 10, 100001, dtype=DT)
    numeric = torch.trapezoid(Normal(mean, std).cdf(below) ** 2, below) + torch.trapezoid(
        (1 - Normal(mean, std).cdf(above)) ** 2, above
    )
    torch.testing.assert_close(hvi.metrics.gaussian_crps(mean, std, y), numeric, rtol=1e-6, atol=1e-8)


# -- bad input ---------------------------------------------------------------------------


def test_bad_batches_raise_clear_errors():
    lik = hvi.Gaussian()
    good = regression_batch()
    cases = {
        "query_x has per-example shape": dict(query_x=torch.zeros(3, 5, 2, dtype=DT)),
        "support set is empty": dict(support_x=torch.zeros(3, 0, 1, dtype=DT), support_y=torch.zeros(3, 0, 1, dtype=DT)),
        r"support_y contains 1 NaN/inf": dict(support_y=good.support_y.clone().index_put_((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"), dtype=DT))),
        r"query_x contains 15 NaN/inf": dict(query_x=torch.full_like(good.query_x, float("inf"))),
        "query_y holds 2 tasks": dict(query_y=good.query_y[:2]),
        "support_noise has non-positive": dict(support_noise=torch.zeros_like(good.support_y), query_noise=torch.ones_like(good.query_y)),
    }
    for msg, change in cases.items():
        fields = {k: getattr(good, k) for k in ("support_x", "support_y", "query_x", "query_y")}
        noise = {k: change.pop(k) for k in ("support_noise", "query_noise") if k in change}
        fields.update(change)
        with pytest.raises(ValueError, match=msg):
            hvi.validate_batch(hvi.TaskBatch(**fields, **noise), lik)


def test_bad_configuration_raises_clear_errors():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'; registered likelihoods: categorical, gaussian"):
        hvi.get_likelihood("poisson")
    with pytest.raises(ValueError, match="noise=-1.0 must be a positive standard deviation"):
        hvi.Gaussian(noise=-1.0)
    for noise in (0.1, "known"):  # an initial σ that would go unused
        with pytest.raises(ValueError, match=r"init_scale=0.5 is the initial value of a learned σ, but noise="):
            hvi.Gaussian(noise=noise, init_scale=0.5)
    assert hvi.Gaussian(init_scale=0.5).global_sites()["noise"].init.item() == 0.5
    assert hvi.Gaussian().global_sites()["noise"].init.item() == 1.0
    with pytest.raises(ValueError, match="init_scale=0.0 must be a positive standard deviation"):
        GaussianPrior(init_scale=0.0)
    with pytest.raises(ValueError, match=r"^inner lr=-0.1 must be a positive finite number\.$"):
        hvi.InnerConfig(update="gradient", lr=-0.1)
    with pytest.raises(ValueError, match=r"^inner num_samples=0 must be an integer >= 1\.$"):
        hvi.InnerConfig(update="gradient", num_samples=0)
    with pytest.raises(ValueError, match=r"^inner kl_weight=-1.0 must be a finite number >= 0 \(e.g. 1e-3 to down-weight the KL\)\.$"):
        hvi.InnerConfig(update="gradient", kl_weight=-1.0)
    with pytest.raises(ValueError, match="unknown prior 'nope'"):
        hvi.MetaModel(small_net(), "nope")
    with pytest.raises(ValueError, match="q_theta='normal' needs latent global sites"):
        hvi.MetaModel(small_net(), q_theta="normal")
    with pytest.raises(ValueError, match="needs per-observation noise|support_noise is missing"):
        meta = hvi.MetaModel(small_net(), likelihood=hvi.Gaussian(noise="known"))
        hvi.fit(meta, regression_batch(), steps=1)
    with pytest.raises(ValueError, match="has dtype torch.float64 but the categorical likelihood needs int64"):
        hvi.validate_batch(regression_batch(), hvi.Categorical())


def test_batchnorm_with_running_stats_is_refused_and_buffers_work():
    net = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm1d\) tracks running statistics.*track_running_stats=False"):
        hvi.FunctionalNet(net)
    ok = hvi.FunctionalNet(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3, track_running_stats=False)))
    assert ok.names == ("0.weight", "0.bias", "1.weight", "1.bias")

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(1, 1)
            self.register_buffer("factor", torch.tensor(3.0))

        def forward(self, x):
            return self.factor * self.lin(x)

    f = hvi.FunctionalNet(Scaled())
    w = {n: torch.ones(4, *s) for n, s in f.shapes.items()}
    out = f.batched(w, torch.ones(4, 2, 1))
    torch.testing.assert_close(out, torch.full((4, 2, 1), 6.0))


def test_diverging_inner_loop_is_reported_not_hidden():
    meta = build(hvi.InnerConfig(update="gradient", steps=5, lr=1e6))
    with pytest.raises(FloatingPointError, match=r"^3 steps in a row \(the last at step 2\) had a non-finite"):
        hvi.fit(meta, regression_batch(), steps=5, max_skips=3)


def test_a_non_finite_step_is_skipped_and_does_not_poison_adam():
    """A batch that makes the loss inf leaves the params and Adam's moments as they were."""
    meta = build(hvi.InnerConfig(update="gradient", steps=1, lr=0.05))
    good = regression_batch()
    bad = hvi.TaskBatch(good.support_x, good.support_y, good.query_x, good.query_y * 1e160)
    it = iter([good, bad, good])
    seen = []

    def record(step, loss, batch):
        seen.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})

    optim = pyro.optim.Adam({"lr": 1e-2})
    res = hvi.fit(meta, lambda g: next(it), steps=3, optimizer=optim, callback=record)
    assert res.skipped == (1,) and math.isnan(res.losses[1]) and math.isfinite(res.losses[2])
    for k in seen[0]:
        assert torch.equal(seen[1][k], seen[0][k]), k  # the bad step changed nothing
        assert not torch.equal(seen[2][k], seen[1][k]) or k == "likelihood.noise", k
    for opt in optim.optim_objs.values():
        for state in opt.state.values():
            assert all(bool(torch.isfinite(v).all()) for v in state.values() if torch.is_tensor(v))


def test_non_finite_network_outputs_are_a_skipped_step_not_a_validation_error():
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1, dtype=DT))

        def forward(self, x):
            return self.w * x * x  # finite inputs of 1e200 overflow here

    x = torch.ones(2, 3, 1, dtype=DT)
    batch = hvi.TaskBatch(x, x, x * 1e200, x)
    meta = hvi.MetaModel(Square(), GaussianPrior(init_scale=0.1), hvi.Gaussian(noise=1.0), inner=hvi.InnerConfig(steps=1))
    with pytest.raises(FloatingPointError, match=r"^2 steps in a row \(the last at step 1\)"):
        hvi.fit(meta, batch, steps=3, max_skips=2)
    with pytest.raises(FloatingPointError, match="the network's outputs are not finite"):
        pyro.clear_param_store()
        Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)


def test_fit_leaves_site_inits_untouched_and_refit_starts_fresh():
    """The param store must not alias GlobalSite.init (the optimizer updates in place)."""
    meta = build(hvi.InnerConfig(update="gradient", steps=1, lr=0.05))
    before = {n: s.init.clone() for n, s in meta.sites.items()}
    first = hvi.fit(meta, regression_batch(), steps=5, lr=0.05)
    for n, s in meta.sites.items():
        torch.testing.assert_close(s.init, before[n], rtol=0, atol=0, msg=n)
    assert not torch.equal(first.params["theta.0.weight.loc"], before["theta.0.weight.loc"])
    second = hvi.fit(meta, regression_batch(), steps=5, lr=0.05)
    torch.testing.assert_close(first.params["theta.0.weight.loc"], second.params["theta.0.weight.loc"])


def test_per_key_inner_lr():
    cfg = hvi.InnerConfig(update="gradient", steps=1, lr={"loc": 0.0125, "rho": 0.5})
    assert cfg.lr_for("loc") == 0.0125 and cfg.lr_for("rho") == 0.5
    meta = build(cfg)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ret = meta.guide(regression_batch())
    assert torch.isfinite(ret["lambda"]["0.weight"]["rho"]).all()
    with pytest.raises(ValueError, match=r"^inner lr\['rho'\]=0.0 must be a positive finite number\.$"):
        hvi.InnerConfig(update="gradient", lr={"loc": 0.1, "rho": 0.0})
    with pytest.raises(ValueError, match="no entry for λ key 'rho'"):
        build(hvi.InnerConfig(update="gradient", steps=1, lr={"loc": 0.1})).guide(regression_batch())


def test_predict_accepts_unknown_query_targets():
    meta = build(hvi.InnerConfig(update="gradient", steps=1, lr=0.05))
    b = regression_batch()
    unknown = hvi.TaskBatch(b.support_x, b.support_y, b.query_x, torch.full_like(b.query_y, float("nan")))
    pyro.clear_param_store()
    pred = hvi.predict(meta, unknown, num_samples=3)
    assert torch.isfinite(pred.mean).all()
    with pytest.raises(ValueError, match="query_y contains 15 NaN/inf"):
        hvi.validate_batch(unknown, meta.likelihood)


@pytest.mark.parametrize("first_order", [False, True])
def test_single_task_fast_path_equals_vmapped_path(first_order):
    meta = build(hvi.InnerConfig(update="gradient", steps=2, lr=0.05, num_samples=2, first_order=first_order))
    b = regression_batch(B=2)
    loop = meta.inner_loop(1)
    theta = {n: s.init for n, s in meta.sites.items() if n.startswith("theta.")}
    lik = {"noise": meta.sites["likelihood.noise"].init}
    lr = {n: {"loc": 0.05, "rho": 0.05} for n in meta.net.names}
    torch.manual_seed(0)
    streams = loop.draw_noise((2,), 2, torch.device("cpu"), DT)
    eps = streams.materialize()
    assert eps.shape == (2, 2, 2, meta.net.num_weights)
    both = loop.unflatten(loop.adapt(theta, lik, lr, b.support_x, b.support_y, None, eps, 2))
    from_streams = loop.unflatten(loop.adapt(theta, lik, lr, b.support_x, b.support_y, None, streams, 2))
    for i in range(2):
        one = loop.unflatten(loop.adapt(theta, lik, lr, b.support_x[i : i + 1], b.support_y[i : i + 1], None,
                                        eps[i : i + 1], 2))
        for n in both:
            for k in both[n]:
                torch.testing.assert_close(one[n][k][0], both[n][k][i], rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(from_streams[n][k][i], both[n][k][i], rtol=0, atol=0)
    out = meta.net.batched({n: v["loc"][:1] for n, v in both.items()}, b.query_x[:1])
    ref = functional_call(meta.net.module, {n: v["loc"][0] for n, v in both.items()}, (b.query_x[0],))
    torch.testing.assert_close(out[0], ref)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "first_order,q_theta,particles", [(False, "delta", 1), (True, "delta", 1), (False, "normal", 3)]
)
def test_parallel_task_chunks_give_the_same_lambda_loss_and_gradients(two_threads, first_order, q_theta, particles):
    # 5 tasks over 2 worker threads: uneven chunks (3 + 2); θ particles put the task dim at 1.
    batch = regression_batch(B=5, M=9)
    results = []
    for parallel in (False, True):
        cfg = hvi.InnerConfig(update="gradient", steps=3, lr=0.05, num_samples=2, first_order=first_order, parallel_tasks=parallel)
        meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1, hyperprior=q_theta == "normal"),
                             hvi.Gaussian(noise="learned", init_scale=0.5), q_theta=q_theta, inner=cfg)
        assert num_task_chunks(5, torch.device("cpu"), parallel) == (2 if parallel else 1)
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        loss = make_elbo(num_particles=particles).differentiable_loss(meta.model, meta.guide, batch)
        params = dict(pyro.get_param_store().named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()))
        pyro.set_rng_seed(5)
        lam = poutine.trace(meta.guide).get_trace(batch).nodes["_RETURN"]["value"]["lambda"]
        results.append((loss, dict(zip(params, grads)), lam))
    (loss0, g0, lam0), (loss1, g1, lam1) = results
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-10, atol=1e-12, msg=name)
    for n in lam0:
        for k in lam0[n]:
            torch.testing.assert_close(lam1[n][k], lam0[n][k], rtol=1e-12, atol=1e-12)


def test_map_task_chunks_is_differentiable_and_steps_aside_for_thread_local_state(two_threads):
    from torch.utils.flop_counter import FlopCounterMode

    w = torch.randn(3, dtype=DT, requires_grad=True)
    x = torch.randn(7, 3, dtype=DT)

    def fn(inputs, c):
        return (torch.tanh(x[c] @ inputs[0]) ** 2, x[c] * inputs[0])

    cpu = torch.device("cpu")
    out = map_task_chunks(fn, [w], 7, num_task_chunks(7, cpu), task_dim=0)
    ref = fn([w], slice(0, 7))
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b)
    g = torch.autograd.grad(out[0].sum() + out[1].square().sum(), w)[0]
    g_ref = torch.autograd.grad(ref[0].sum() + ref[1].square().sum(), w)[0]
    torch.testing.assert_close(g, g_ref)
    assert num_task_chunks(7, cpu) == 2 and num_task_chunks(1, cpu) == 1
    assert num_task_chunks(7, torch.device("meta")) == 1 and num_task_chunks(7, cpu, enabled=False) == 1
    with FlopCounterMode(display=False):  # its counts live in this thread only
        assert num_task_chunks(7, cpu) == 1
    assert torch.func.vmap(lambda t: t * num_task_chunks(7, cpu))(torch.ones(2)).tolist() == [1.0, 1.0]


def test_inv_softplus_gradients_and_transforms():
    """inv_softplus (a custom autograd Function, to save memory) has exact first and second derivatives."""
    x = (torch.rand(20, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 30 + 1e-3).requires_grad_()
    assert torch.equal(inv_softplus(x), x + torch.log(-torch.expm1(-x)))
    assert torch.allclose(F.softplus(inv_softplus(x)), x, rtol=1e-12)
    assert torch.autograd.gradcheck(inv_softplus, (x,))
    assert torch.autograd.gradgradcheck(inv_softplus, (x,))
    g = torch.func.grad(lambda t: inv_softplus(t).sum())(x.detach())
    assert torch.allclose(g, 1 / -torch.expm1(-x.detach()), rtol=1e-14)
    assert torch.func.vmap(inv_softplus)(x.detach().reshape(4, 5)).shape == (4, 5)


def test_task_batch_tasks_selects_every_tensor_and_keeps_the_population():
    b = regression_batch(B=4, M=9)
    noisy = hvi.TaskBatch(b.support_x, b.support_y, b.query_x, b.query_y, b.task_index, 9,
                          b.support_y * 0 + 0.1, b.query_y * 0 + 0.2)
    sub = noisy.tasks(slice(1, 3))
    assert sub.batch_size == 2 and sub.num_tasks == 9
    for name in ("support_x", "support_y", "query_x", "query_y", "task_index", "support_noise", "query_noise"):
        assert torch.equal(getattr(sub, name), getattr(noisy, name)[1:3]), name
    assert b.tasks(slice(0, 1)).support_noise is None


@pytest.mark.parametrize("update", ["natural", "gradient"])
def test_one_task_with_folded_draws_keeps_second_order_terms_under_threads(two_threads, update):
    # One task and 2 draws: the loop does not split, the network sees a batch of 2 (draws folded in);
    # its worker-thread chunks have a backward that is not differentiable, so second order must not use them.
    batch = regression_batch(B=1, M=4)
    grads = []
    for parallel in (False, True):
        cfg = hvi.InnerConfig(update=update, steps=2, num_samples=2, parallel_tasks=parallel)
        meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.5), inner=cfg)
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        loss = make_elbo().differentiable_loss(meta.model, meta.guide, batch)
        params = dict(pyro.get_param_store().named_parameters())
        grads.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-10, atol=1e-12, msg=name)
