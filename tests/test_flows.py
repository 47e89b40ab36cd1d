"""q_theta="flow" (hvi.flows): the guide's density of θ is the flow's, pushed through each site's bijection."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

import hvi
from hvi.flows import GlobalFlow
from hvi.names import FLOW_LATENT, q_theta_flow
from hvi.sites import GlobalSite, positive

DT = torch.float64


def sites() -> dict[str, GlobalSite]:
    return {
        "mu": GlobalSite(torch.tensor([0.5, -1.0], dtype=DT), hyperprior=dist.Normal(0.0, 5.0)),
        "tau": GlobalSite(torch.tensor(2.0, dtype=DT), positive, hyperprior=dist.HalfCauchy(5.0)),
    }


def test_site_density_is_the_flow_density_with_the_log_jacobian():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    flow = GlobalFlow(sites(), init_scale=0.3)
    tr = pyro.poutine.trace(flow.sample_sites).get_trace()
    z = tr.nodes[FLOW_LATENT]["value"]
    assert z.shape == (3,) and torch.equal(tr.nodes["tau"]["value"], z[2].exp())
    torch.testing.assert_close(tr.nodes["mu"]["value"], z[:2])
    guide_lp = sum(tr.nodes[n]["fn"].log_prob(tr.nodes[n]["value"]) for n in (FLOW_LATENT, "mu", "tau"))
    # log q(μ, τ) = log q_z(μ, log τ) − log τ
    direct = flow.dist().log_prob(z) - z[2]
    torch.testing.assert_close(guide_lp, direct)
    # It is a density: the flow starts at the sites' initial values with the given scale.
    import math

    torch.testing.assert_close(flow.loc, torch.tensor([0.5, -1.0, math.log(2.0)], dtype=DT))


def test_one_latent_coordinate_uses_an_elementwise_spline():
    flow = GlobalFlow({"tau": sites()["tau"]}, init_scale=0.3)
    z = flow.dist().sample((5,))
    assert z.shape == (5, 1) and torch.isfinite(flow.dist().log_prob(z)).all()


def test_flow_needs_latent_sites():
    with pytest.raises(ValueError, match="q_theta='flow' needs latent global sites"):
        hvi.MetaModel(torch.nn.Linear(1, 1), "gaussian", q_theta="flow")


def test_flow_trains_with_vectorized_particles():
    from hvi.priors import GaussianPrior

    pyro.clear_param_store()
    net = torch.nn.Linear(1, 1).double()
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.5, hyperprior=True), hvi.Gaussian(noise=0.3), q_theta="flow")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 1, generator=g, dtype=DT)
    batch = hvi.TaskBatch(x[:, :3], 2 * x[:, :3], x[:, 3:], 2 * x[:, 3:])
    res = hvi.fit(meta, batch, steps=3, num_particles=4, seed=0)
    assert len(res.losses) == 3 and all(torch.isfinite(torch.tensor(res.losses)))
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith(q_theta_flow("")) for n in names), names
    loss = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2).loss(meta.model, meta.guide, batch)
    assert torch.isfinite(torch.tensor(loss))


def test_a_flow_checkpoint_round_trips(tmp_path):
    from hvi.checkpoint import expected_params, load_checkpoint, save_checkpoint
    from hvi.priors import GaussianPrior

    pyro.clear_param_store()
    net = torch.nn.Linear(1, 1).double()
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.5, hyperprior=True), hvi.Gaussian(noise=0.3), q_theta="flow")
    x = torch.linspace(-1, 1, 24, dtype=DT).reshape(4, 6, 1)
    batch = hvi.TaskBatch(x[:, :3], 2 * x[:, :3], x[:, 3:], 2 * x[:, 3:])
    hvi.fit(meta, batch, steps=2, seed=0)
    store = pyro.get_param_store()
    saved = {k: v.detach().clone() for k, v in store.items()}
    assert set(saved) == set(expected_params(meta))
    save_checkpoint(tmp_path / "ckpt", step=2)
    pyro.clear_param_store()
    load_checkpoint(tmp_path / "ckpt", expected=expected_params(meta))
    for k, v in saved.items():
        torch.testing.assert_close(pyro.param(k).detach(), v)
    # The guide's flow reads the loaded values, not the module's own.
    with torch.no_grad():
        meta.flow.loc.zero_()
        meta.guide(batch)
    torch.testing.assert_close(meta.flow.loc.detach(), saved[q_theta_flow("loc")])


def test_a_network_sized_latent_is_refused_with_the_fix():
    from hvi.priors import GaussianPrior

    net = torch.nn.Linear(40, 40).double()
    with pytest.raises(ValueError, match=r"covers the latent global sites jointly, here \d+ numbers .* Use q_theta='normal'"):
        hvi.MetaModel(net, GaussianPrior(init_scale=0.5, hyperprior=True), hvi.Gaussian(noise=0.3), q_theta="flow")
