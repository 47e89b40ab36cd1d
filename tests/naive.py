"""Shared pieces of the naive per-task references that the engine tests compare against."""

from __future__ import annotations

import pyro
import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.func import functional_call


def outer_term(meta, tr, lam, i, loc, scale, sigma, batch, kl_weight):
    """Task i's outer ELBO term at the guide's own φ draw (its standard noise recovered), and λ checked.

    Returns ``log p(D_i^Q | φ) + β·(log p(φ | θ) − log q(φ))``, and asserts that the
    guide's λ_i equals the naive ``lam``.
    """
    ret = tr.nodes["_RETURN"]["value"]
    phi, log_q, log_p = {}, 0.0, 0.0
    for n in lam:
        for k in ("loc", "rho"):
            torch.testing.assert_close(ret["lambda"][n][k][i], lam[n][k], rtol=1e-10, atol=1e-12)
        q_scale = F.softplus(lam[n]["rho"])
        drawn = tr.nodes[f"phi.{n}"]["value"][i, 0]
        phi[n] = lam[n]["loc"] + q_scale * ((drawn - lam[n]["loc"]) / q_scale).detach()
        log_q = log_q + Normal(lam[n]["loc"], q_scale).log_prob(phi[n]).sum()
        log_p = log_p + Normal(loc[n], scale[n]).log_prob(phi[n]).sum()
    out = functional_call(meta.net.module, phi, (batch.query_x[i],))
    loglik = Normal(out, sigma).log_prob(batch.query_y[i]).sum()
    return loglik + kl_weight * (log_p - log_q)


def assert_same_param_grads(loss, naive_loss):
    """Equal losses, and equal gradients for every param in the store (None where unused)."""
    torch.testing.assert_close(loss, naive_loss, rtol=1e-10, atol=1e-9)
    names = list(pyro.get_param_store().keys())
    leaves = [pyro.param(n).unconstrained() for n in names]
    g_engine = torch.autograd.grad(loss, leaves, allow_unused=True)
    g_naive = torch.autograd.grad(naive_loss, leaves, allow_unused=True)
    for name, a, b in zip(names, g_engine, g_naive):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
