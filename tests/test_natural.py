"""The natural-gradient inner step (hvi.natural): exact on conjugate models, equal to a naive loop."""

from __future__ import annotations

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import Normal
from torch.func import functional_call

import hvi
from hvi import natural
from hvi.families import inv_softplus
from hvi.guide import inner_lrs
from hvi.priors import GaussianPrior, LaplacePrior
from naive import assert_same_param_grads, outer_term
from hvi.run_dir import CONFIG_FILE

DT = torch.float64
NOISE = 0.7


class VectorNet(nn.Module):
    """f_φ(x) = φ for every example: a conjugate Normal–Normal model per coordinate."""

    def __init__(self, d: int = 3) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-0.5, 0.5, d, dtype=DT))

    def forward(self, x):
        return self.w.expand(x.shape[0], self.w.shape[0])


def conjugate_batch(M=4, N=6, d=3, seed=0) -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(seed)
    y = 2.0 * torch.randn(M, N, d, generator=g, dtype=DT) + torch.randn(M, 1, d, generator=g, dtype=DT)
    x = torch.zeros(M, N, 1, dtype=DT)
    return hvi.TaskBatch(x, y, x[:, :0], y[:, :0])


def one_step_error(tau: float, update: str, lr: float, line_search: bool = False) -> tuple[float, float]:
    """Relative errors of (mean, sd) of q(φ_i) after one inner step against p(φ_i | θ, D_i)."""
    net = VectorNet()
    meta = hvi.MetaModel(
        net, GaussianPrior(init_scale=tau, learn_scale=False), hvi.Gaussian(noise=NOISE),
        inner=hvi.InnerConfig(steps=1, update=update, lr=lr, line_search=line_search),
    )
    batch = conjugate_batch()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        lam = {k: v.detach() for k, v in meta.guide(batch)["lambda"]["w"].items()}
    N = batch.support_y.shape[1]
    prec = 1 / tau**2 + N / NOISE**2
    mean = (net.w.detach() / tau**2 + batch.support_y.sum(1) / NOISE**2) / prec
    sd = math.sqrt(1 / prec)
    err_mean = float(((lam["loc"] - mean).abs() / mean.abs().clamp_min(1e-12)).max())
    err_sd = float(((F.softplus(lam["rho"]) - sd).abs() / sd).max())
    return err_mean, err_sd


@pytest.mark.parametrize("line_search", [False, True])
@pytest.mark.parametrize("ratio", [1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3])
def test_one_natural_step_is_the_exact_local_posterior_at_any_prior_scale(ratio, line_search):
    # The line search measures the curvature along the step; diagonal here, so t = 1.
    err_mean, err_sd = one_step_error(ratio * NOISE, "natural", 1.0, line_search)
    assert err_mean < 1e-9 and err_sd < 1e-9, (err_mean, err_sd)


@pytest.mark.parametrize("ratio", [1e-3, 1.0, 1e3])
def test_reused_curvature_keeps_the_exact_posterior_on_later_steps(ratio):
    # Steps 2..3 keep step 1's h and take the gradient at the mean: on a quadratic
    # ℓ the posterior is their fixed point, so q stays on it (no Monte Carlo noise).
    net = VectorNet()
    tau = ratio * NOISE
    meta = hvi.MetaModel(
        net, GaussianPrior(init_scale=tau, learn_scale=False), hvi.Gaussian(noise=NOISE),
        inner=hvi.InnerConfig(steps=3, update="natural", lr=1.0, curvature_every=3),
    )
    batch = conjugate_batch()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        lam = meta.guide(batch)["lambda"]["w"]
    prec = 1 / tau**2 + batch.support_y.shape[1] / NOISE**2
    mean = (net.w.detach() / tau**2 + batch.support_y.sum(1) / NOISE**2) / prec
    torch.testing.assert_close(lam["loc"], mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(F.softplus(lam["rho"]), torch.full_like(mean, prec**-0.5), rtol=1e-9, atol=0.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(curvature_every=0), r"^inner curvature_every=0 must be an integer >= 1 \(1 measures it every step\)\.$"),
    (dict(curvature_every=2, update="gradient"), "^inner curvature_every=2 needs inner update='natural'"),
    (dict(curvature_every=2, memory="implicit"), "inner update='natural' and inner memory 'none' or 'checkpoint' \\(got inner update='natural', inner memory='implicit'\\); use inner curvature_every=1"),
])
def test_curvature_every_is_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hvi.InnerConfig(**kwargs)


def test_one_gradient_step_is_far_from_it_where_the_natural_step_is_exact():
    # The reason for the natural step: no one α serves every prior scale.
    errors = {r: one_step_error(r * NOISE, "gradient", 0.01) for r in (1e-3, 1.0, 1e3)}
    assert all(max(e) > 0.1 for e in errors.values()), errors


def test_probes_are_antithetic_sign_pairs():
    e = torch.tensor([[0.3, -2.0, 0.0]], dtype=DT)
    torch.testing.assert_close(natural.probes(e), torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0]], dtype=DT))


def test_moments_are_exact_on_a_quadratic_for_any_noise():
    g = torch.Generator().manual_seed(0)
    H = torch.rand(5, dtype=DT, generator=g) + 0.1  # ℓ(φ) = −½ Σ H (φ − c)²
    c = torch.randn(5, dtype=DT, generator=g)
    m, sigma = torch.randn(5, dtype=DT, generator=g), torch.rand(5, dtype=DT, generator=g) + 0.1
    e = natural.probes(torch.randn(2, 3, 5, dtype=DT, generator=g))
    phi = m + sigma * e
    grad_phi = -H * (phi - c)
    gbar, h = natural.moments(grad_phi, e, sigma)
    torch.testing.assert_close(gbar, (-H * (m - c)).expand(2, 5), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, H.expand(2, 5), rtol=1e-12, atol=1e-12)


def test_step_keeps_the_precision_positive_under_negative_curvature():
    s = torch.tensor([1.0, 4.0], dtype=DT)
    m = torch.zeros(2, dtype=DT)
    h = torch.tensor([-100.0, -1e6], dtype=DT)  # a non-convex loss: negative curvature estimates
    for alpha in (0.3, 1.0):
        _, s_new, _, _ = natural.step(m, s, m, h, m, torch.tensor([0.5, 0.5], dtype=DT), alpha, alpha, 1.0)
        assert bool((s_new > 0).all())
    # At α = 1 the clipped curvature leaves the prior precision.
    torch.testing.assert_close(s_new, torch.tensor([0.5, 0.5], dtype=DT))


# -- against a naive per-task loop ----------------------------------------------------
def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).to(DT)


def regression_batch(B=3, Ns=4, Nq=5, M=7, seed=0) -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(B, Ns, 1, generator=g, dtype=DT) * 4 - 2
    xq = torch.rand(B, Nq, 1, generator=g, dtype=DT) * 4 - 2
    a = torch.rand(B, 1, 1, generator=g, dtype=DT) + 0.5
    return hvi.TaskBatch(xs, a * torch.sin(xs), xq, a * torch.sin(xq), num_tasks=M)


def naive_natural(meta, loc, scale, sigma_y, lr, x, y, eps, cfg):
    """One task, written out: per point a forward and a gradient, the update of hvi.natural,
    and (``cfg.line_search``) the step's fraction from ℓ at m and m ± d."""
    names = list(loc)
    m = dict(loc)
    s = {n: F.softplus(inv_softplus(scale[n])).pow(-2) for n in names}
    beta, fo = cfg.kl_weight, cfg.first_order

    def ell(weights):
        return Normal(functional_call(meta.net.module, weights, (x,)), sigma_y).log_prob(y).sum()

    h_last = {}
    for t in range(cfg.steps):
        measure = t % cfg.curvature_every == 0  # else: the last h, and the gradient at m
        sign = {n: torch.where(eps[n][t] >= 0, 1.0, -1.0).to(DT) for n in names}
        pts = {n: torch.cat([sign[n], -sign[n]]) if cfg.curvature == "pair" else sign[n] for n in names}
        e = {n: pts[n] if measure else torch.zeros_like(sign[n][:1]) for n in names}
        sd = {n: s[n].rsqrt() for n in names}
        grads = {n: [] for n in names}
        for k in range(e[names[0]].shape[0]):
            phi = {n: m[n] + sd[n] * e[n][k] for n in names}
            if fo:
                phi = {n: v.detach().requires_grad_() for n, v in phi.items()}
            for n, gr in zip(names, torch.autograd.grad(ell(phi), [phi[n] for n in names], create_graph=not fo)):
                grads[n].append(gr)
        # First order: every increment is a constant (the moments, the prior terms, the line's t).
        c = (lambda v: v.detach()) if fo else (lambda v: v)
        s_new, d, G = {}, {}, {}
        for n in names:
            gs = torch.stack(grads[n])
            g = gs.mean(0)
            if measure:
                h_last[n] = -(gs * e[n]).mean(0) / c(sd[n])
            h = h_last[n]
            prec = c(scale[n].pow(-2))
            s_new[n] = s[n] + lr[n]["rho"] * (prec + h.clamp_min(0) / beta - c(s[n]))
            G[n] = g / beta - prec * (c(m[n]) - c(loc[n]))
            d[n] = G[n] / c(s_new[n])
        t_line = 1.0
        if cfg.line_search:
            with torch.set_grad_enabled(not fo):
                z = sum((c(d[n]) ** 2 * c(s_new[n])).sum() for n in names) / sum(d[n].numel() for n in names)
                delta = 1 / torch.sqrt(torch.clamp(z, min=1.0))
                l0, lp, lm = (ell({n: c(m[n]) + sign_ * delta * c(d[n]) for n in names}) for sign_ in (0.0, 1.0, -1.0))
                kappa = (2 * l0 - lp - lm) / delta**2
            gain = sum((G[n] * d[n]).sum() for n in names)
            quad = sum((c(scale[n].pow(-2)) * d[n] ** 2).sum() for n in names) + kappa / beta
            t_line = gain / torch.maximum(gain, quad)
        for n in names:
            m[n] = m[n] + lr[n]["loc"] * c(d[n] * t_line)
            s[n] = s_new[n]
    return {n: {"loc": m[n], "rho": inv_softplus(s[n].rsqrt())} for n in names}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_samples,learn_lr,line_search,every",
                         [(1, False, True, 1), (2, True, True, 1), (1, False, False, 1), (2, True, False, 2),
                          (1, False, True, 3)])
def test_natural_loop_and_outer_gradients_match_naive_loop(first_order, num_samples, learn_lr, line_search, every,
                                                            curvature="pair"):
    cfg = hvi.InnerConfig(steps=3, lr=0.6, num_samples=num_samples, kl_weight=0.7, curvature_every=every,
                          first_order=first_order, learn_lr=learn_lr, line_search=line_search, curvature=curvature)
    meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), hvi.Gaussian(noise="learned", init_scale=0.5),
                         inner=cfg)
    batch = regression_batch()
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
    pyro.set_rng_seed(3)
    tr = poutine.trace(meta.guide).get_trace(batch)
    ret = tr.nodes["_RETURN"]["value"]
    eps = meta.inner_loop(1).split(ret["inner_noise"].materialize())
    names = meta.net.names
    loc = {n: pyro.param(f"theta.{n}.loc") for n in names}
    scale = {n: pyro.param(f"theta.{n}.scale") for n in names}
    sigma_y = pyro.param("likelihood.noise")
    lr = inner_lrs(meta)
    B, M = batch.batch_size, batch.num_tasks
    naive_loss = 0.0
    for i in range(B):
        lam = naive_natural(meta, loc, scale, sigma_y, lr, batch.support_x[i], batch.support_y[i],
                            {n: e[i] for n, e in eps.items()}, cfg)
        naive_loss = naive_loss - (M / B) * outer_term(meta, tr, lam, i, loc, scale, sigma_y, batch, cfg.kl_weight)
    assert_same_param_grads(loss, naive_loss)


def test_first_order_gives_the_same_lambda_as_second_order():
    batch = regression_batch()
    lams = []
    for fo in (False, True):
        meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), "gaussian",
                             inner=hvi.InnerConfig(steps=3, lr=0.8, num_samples=2, first_order=fo))
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        lams.append(meta.guide(batch)["lambda"])
    for n in lams[0]:
        for k in ("loc", "rho"):
            torch.testing.assert_close(lams[0][n][k], lams[1][n][k], rtol=1e-12, atol=1e-14)


def test_generic_prior_moments_equal_the_closed_form_for_a_normal_prior():
    meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), "gaussian", inner=hvi.InnerConfig())
    loop = meta.inner_loop(1)
    g = torch.Generator().manual_seed(0)
    D = loop.size
    mu_p, sd_p = torch.randn(D, dtype=DT, generator=g), torch.rand(D, dtype=DT, generator=g) + 0.1
    m, sigma = torch.randn(2, D, dtype=DT, generator=g), torch.rand(2, D, dtype=DT, generator=g) + 0.05
    priors = {n: Normal(loc_n, sd_n) for n, loc_n, sd_n in zip(loop.shapes, loop.split(mu_p).values(), loop.split(sd_p).values())}
    e = natural.probes(torch.randn(2, 1, D, dtype=DT, generator=g))
    grad, curv = loop._generic_prior_moments(m, sigma, e, priors, create_graph=False)
    torch.testing.assert_close(grad, -(m - mu_p) / sd_p**2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(curv, (1 / sd_p**2).expand(2, D), rtol=1e-10, atol=1e-10)


def test_natural_step_with_a_laplace_prior_trains():
    meta = hvi.MetaModel(small_net(), LaplacePrior(init_scale=0.1), hvi.Gaussian(noise=0.3),
                         inner=hvi.InnerConfig(steps=2, num_samples=2))
    res = hvi.fit(meta, regression_batch(), steps=5, lr=1e-2)
    assert all(math.isfinite(v) for v in res.losses)


def test_learned_natural_step_is_bounded_to_the_unit_interval():
    meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), "gaussian",
                         inner=hvi.InnerConfig(steps=1, learn_lr=True))
    pyro.clear_param_store()
    meta.guide(regression_batch())
    name = next(n for n in pyro.get_param_store().keys() if n.startswith("inner_lr."))
    assert float(pyro.param(name).detach()) == pytest.approx(0.1)
    # Stored through the sigmoid of the unit interval (logit 0.1), not exp (log 0.1).
    assert float(pyro.param(name).unconstrained().detach()) == pytest.approx(math.log(0.1 / 0.9), abs=1e-12)


def test_natural_settings_are_checked():
    with pytest.raises(ValueError, match=r"^inner lr=1.5 is outside \(0, 1\]: under inner update='natural' .* use e.g. inner lr=0.5, or inner update='gradient'\.$"):
        hvi.InnerConfig(lr=1.5)
    with pytest.raises(ValueError, match=r"inner lr=1.0 is outside \(0, 1\) \(a learned"):
        hvi.InnerConfig(lr=1.0, learn_lr=True)
    with pytest.raises(ValueError, match="^inner kl_weight=0.0 leaves the natural-gradient step"):
        hvi.InnerConfig(kl_weight=0.0)
    with pytest.raises(ValueError, match="^inner update='newton' is not understood; use one of 'natural', 'gradient'.$"):
        hvi.InnerConfig(update="newton")
    assert hvi.InnerConfig().lr == 0.1 and hvi.InnerConfig(update="gradient").lr == 0.01
    assert hvi.InnerConfig(learn_lr=True).lr == 0.1


def test_runs_saved_before_the_natural_update_keep_gradient_ascent(tmp_path):
    from hvi.defaults import defaults_for
    from hvi.run_dir import check_config as check_run_config

    cfg = {**defaults_for("mlp"), "model": "mlp", "likelihood": "gaussian"}
    assert check_run_config(cfg, tmp_path / CONFIG_FILE)["inner_update"] == "natural"
    del cfg["inner_update"]
    assert check_run_config(cfg, tmp_path / CONFIG_FILE)["inner_update"] == "gradient"
    with pytest.raises(ValueError, match="^inner_update='newton' is not understood; use one of 'natural', 'gradient'.$"):
        check_run_config({**cfg, "inner_update": "newton"}, tmp_path / CONFIG_FILE)


def test_a_zero_scale_counts_as_a_diverged_inner_loop():
    fam = hvi.NormalFamily()
    ok = {"loc": torch.zeros(3, dtype=DT), "rho": torch.zeros(3, dtype=DT)}
    assert bool(fam.is_valid(ok))
    # softplus(-1000) underflows to exactly 0 in float64: finite λ, improper q.
    assert not bool(fam.is_valid({**ok, "rho": torch.tensor([0.0, -1000.0, 0.0], dtype=DT)}))
    assert not bool(fam.is_valid({**ok, "loc": torch.tensor([0.0, float("nan"), 0.0], dtype=DT)}))


def assert_checkpoint_matches_none(atol: float, **inner) -> None:
    """The outer loss and every meta-gradient with ``memory="checkpoint"`` equal the unchecked loop's."""
    out = []
    for memory in ("none", "checkpoint"):
        meta = hvi.MetaModel(small_net(), GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.5),
                             inner=hvi.InnerConfig(steps=4, lr=0.5, num_samples=2, learn_lr=True, memory=memory,
                                                   **inner))
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, regression_batch())
        params = dict(pyro.get_param_store().named_parameters())
        out.append((loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))))
    (l0, g0), (l1, g1) = out
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=1e-12)
    assert set(g0) == set(g1) and any(bool(v.abs().sum() > 0) for v in g0.values())
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-10, atol=atol)


def test_reused_curvature_is_checkpointed_exactly():
    # The kept h crosses checkpointed steps as an input: the meta-gradients stay exact.
    assert_checkpoint_matches_none(1e-12, curvature_every=2)


# -- curvature="one_sided": the points m + σ·r alone (hvi.natural's docstring) ----------
def test_one_sided_probes_are_the_signs_alone():
    e = torch.tensor([[0.3, -2.0, 0.0]], dtype=DT)
    torch.testing.assert_close(natural.probes(e, antithetic=False), torch.tensor([[1.0, -1.0, 1.0]], dtype=DT))
    assert (natural.num_points(3), natural.num_points(3, antithetic=False)) == (6, 3)


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("num_samples,learn_lr,line_search,every",
                         [(1, False, False, 1), (2, True, True, 1), (2, True, False, 2)])
def test_one_sided_loop_and_outer_gradients_match_naive_loop(first_order, num_samples, learn_lr, line_search, every):
    # The naive loop evaluates S points per measuring step; an engine that kept the pairs fails here.
    test_natural_loop_and_outer_gradients_match_naive_loop(first_order, num_samples, learn_lr, line_search, every,
                                                           curvature="one_sided")


@pytest.mark.parametrize("every", [1, 2])
def test_one_sided_is_checkpointed_exactly(every):
    assert_checkpoint_matches_none(1e-10, curvature_every=every, curvature="one_sided")


def one_step_posteriors(curvature: str, num_samples: int, tau: float, M: int = 400):
    """After one step at α = 1 on M conjugate tasks: q's (mean, precision), the exact ones, and ∇ℓ at the prior mean."""
    net = VectorNet()
    meta = hvi.MetaModel(
        net, GaussianPrior(init_scale=tau, learn_scale=False), hvi.Gaussian(noise=NOISE),
        inner=hvi.InnerConfig(steps=1, lr=1.0, num_samples=num_samples, curvature=curvature),
    )
    batch = conjugate_batch(M=M, seed=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        lam = meta.guide(batch)["lambda"]["w"]
    y, m0 = batch.support_y, net.w.detach()
    prec = 1 / tau**2 + y.shape[1] / NOISE**2
    mean = (m0 / tau**2 + y.sum(1) / NOISE**2) / prec
    grad0 = (y - m0).sum(1) / NOISE**2  # ∇ℓ at the prior mean, where the step starts
    return lam["loc"], F.softplus(lam["rho"]).pow(-2), mean, prec, grad0


def test_one_sided_step_is_the_posterior_to_monte_carlo_error_where_the_pair_is_exact():
    tau, S = 10 * NOISE, 8  # a wide prior: |∇ℓ(m)|/σ stays below the curvature, so h is never clipped
    loc, s, mean, prec, grad0 = one_step_posteriors("pair", S, tau)
    torch.testing.assert_close(loc, mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s, torch.full_like(s, prec), rtol=1e-9, atol=0.0)
    loc, s, mean, prec, grad0 = one_step_posteriors("one_sided", S, tau)
    H = prec - 1 / tau**2
    # h's error is −∇ℓ(m)·r̄/σ (σ = τ at the first step), with sd |∇ℓ(m)|/(σ·√S): standardised it has
    # mean 0 and sd 1 over the 1,200 task-coordinates (tolerances ≈ 4 standard errors).
    z = (s - prec) * tau * math.sqrt(S) / grad0.abs()
    assert float(z.abs().max()) > 0.3  # not the pair's exact answer
    assert abs(float(z.mean())) < 0.12 and 0.9 < float(z.std()) < 1.1, (float(z.mean()), float(z.std()))
    # The mean: g's error −H·σ·r̄ and h's, to first order δm = r̄·(∇ℓ²/(σ·s*²) − H·σ/s*), sd of order
    # 1/√S of it; measured in posterior sds, the errors' rms is that prediction's within 15%.
    predicted = ((grad0**2 / (tau * prec**2) - H * tau / prec) / math.sqrt(S)) * math.sqrt(prec)
    err = (loc - mean) * math.sqrt(prec)
    ratio = float(err.pow(2).mean().sqrt() / predicted.pow(2).mean().sqrt())
    assert 0.85 < ratio < 1.15, ratio
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(err.numel())


def test_one_sided_error_shrinks_like_one_over_root_s():
    tau = 10 * NOISE
    rms = []
    for S in (4, 64):
        _, s, _, prec, _ = one_step_posteriors("one_sided", S, tau)
        rms.append(float((s / prec - 1).pow(2).mean().sqrt()))
    assert 3.0 < rms[0] / rms[1] < 5.3, rms  # √16 = 4


def test_curvature_is_checked():
    with pytest.raises(ValueError, match=r"^inner curvature='two_sided' is not understood; use one of 'pair', 'one_sided'\.$"):
        hvi.InnerConfig(curvature="two_sided")
    with pytest.raises(ValueError, match=r"^inner curvature='one_sided' needs inner update='natural' \(got 'gradient'\); "
                       r"use inner curvature='pair', or inner update='natural'\.$"):
        hvi.InnerConfig(curvature="one_sided", update="gradient")
    assert hvi.InnerConfig().curvature == "pair"


def test_the_cli_option_and_toml_key_reach_the_run_config(runner, tmp_path):
    import cli_checks

    res = cli_checks.invoke(["fit", "--model", "mlp", "--inner-curvature", "one_sided", "--print-config"], runner)
    assert res.exit_code == 0, res.output
    assert 'inner_curvature = "one_sided"' in res.stdout.splitlines()
    toml = tmp_path / "run.toml"
    toml.write_text('inner_curvature = "one_sided"\ninner_update = "gradient"\ninner_lr = 0.01\n')
    res = cli_checks.invoke(["fit", "--model", "mlp", "--config", toml, "--print-config"], runner)
    cli_checks.assert_error(res, "inner_curvature='one_sided' needs inner_update='natural' (got 'gradient'); "
                                 "use inner_curvature='pair', or inner_update='natural'.")


def test_the_line_search_is_a_run_config_key(runner, tmp_path):
    import cli_checks

    from hvi.builders import inner_config

    def line_search(*args):
        res = cli_checks.invoke(["fit", *args, "--print-config"], runner)
        assert res.exit_code == 0, res.output
        (line,) = [line for line in res.stdout.splitlines() if line.startswith("inner_line_search = ")]
        return line.removeprefix("inner_line_search = ")

    # mlp's row keeps the common default (off); conv4's turns it on (glyphs overshoot, hvi/defaults.py)
    assert [line_search("--model", "mlp"), line_search("--model", "mlp", "--inner-line-search")] == ["false", "true"]
    assert [line_search("--model", "conv4"), line_search("--model", "conv4", "--no-inner-line-search")] == ["true", "false"]
    # conv4's line search goes with its natural step: gradient updates and the deterministic methods drop it
    assert line_search("--model", "conv4", "--inner-update", "gradient") == "false"
    assert line_search("--model", "conv4", "--method", "maml") == "false"
    from hvi.defaults import defaults_for

    assert [defaults_for("conv4", m)["inner_line_search"] for m in ("abml", "maml", "fomaml", "reptile")] == [
        True, False, False, False]
    res = cli_checks.invoke(["fit", "--model", "conv4", "--inner-update", "gradient", "--inner-line-search",
                             "--print-config"], runner)
    cli_checks.assert_error(res, "inner_line_search=True scales the natural step, but inner_update='gradient'")
    assert inner_config({"inner_line_search": True}).line_search is True
    assert inner_config({}).line_search is False
    res = cli_checks.invoke(["fit", "--model", "mlp", "--inner-line-search", "--inner-update", "gradient",
                             "--inner-lr", "0.01", "--print-config"], runner)
    cli_checks.assert_error(res, "inner_line_search=True scales the natural step, but inner_update='gradient'; "
                                 "use inner_update='natural', or inner_line_search=False.")
    with pytest.raises(ValueError, match=r"^inner line_search=True scales the natural step, but inner update='gradient'"):
        hvi.InnerConfig(update="gradient", line_search=True)
