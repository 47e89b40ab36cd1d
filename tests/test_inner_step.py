"""The second-order gradient step's fused closed-form update (``hvi.adapt._normal_ascent``) against the plain formula."""

import pytest
import torch
import torch.nn.functional as F

from hvi.adapt import _ascend, _normal_ascent

B, S, D = 3, 2, 7
C = 0.37  # β / N


def loglik(phi, w):
    """A smooth non-quadratic stand-in for the network's log-likelihood."""
    return (torch.tanh(phi * w) * w).sum() - 0.1 * (phi ** 4).sum()


def old_step(lam, e, kl, alpha, w):
    """The step of ``InnerLoop._run`` before the fused update: ∇ in (loc, ρ), then the KL's terms, then ascend."""
    sigma = F.softplus(lam["rho"])
    phi = torch.addcmul(lam["loc"].unsqueeze(-2), sigma.unsqueeze(-2), e)
    g = dict(zip(lam, torch.autograd.grad(loglik(phi, w), list(lam.values()), create_graph=True)))
    if kl is not None:
        prior_loc, prior_prec = kl
        g["loc"] = torch.addcmul(g["loc"], lam["loc"] - prior_loc, prior_prec, value=-C)
        dkl_dsigma = sigma * prior_prec - sigma.reciprocal()
        g["rho"] = torch.addcmul(g["rho"], dkl_dsigma, torch.sigmoid(lam["rho"]), value=-C)
    return {k: _ascend(lam[k], alpha[k], g[k]) for k in lam}


def new_step(lam, e, kl, alpha, w):
    """The step as ``InnerLoop._run`` takes it now: ∇ in (loc, σ), then :func:`_normal_ascent`."""
    sigma = F.softplus(lam["rho"])
    phi = lam["loc"].unsqueeze(-2) + sigma.unsqueeze(-2) * e
    g_loc, g_sigma = torch.autograd.grad(loglik(phi, w), [lam["loc"], sigma], create_graph=True)
    new = _normal_ascent(lam["loc"], lam["rho"], sigma, g_loc, g_sigma, kl, C, alpha["loc"], alpha["rho"])
    return dict(zip(("loc", "rho"), new))


@pytest.mark.parametrize("with_kl", [True, False])
@pytest.mark.parametrize("learned_lr", [False, True])
def test_fused_step_matches_plain_formula_with_first_and_second_derivatives(with_kl, learned_lr):
    g = torch.Generator().manual_seed(3)
    dt = torch.float64

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dt)).requires_grad_()

    mu0, rho0 = randn(1, D), randn(1, D, scale=0.5)  # θ: λ^(0) and the prior
    prior_rho = randn(1, D, scale=0.3)
    w = randn(B, S, D)  # stands in for the likelihood's own θ
    eps = torch.randn(3, B, S, D, generator=g, dtype=dt)
    if learned_lr:
        alpha = {"loc": (0.2 + 0.1 * torch.rand(D, generator=g, dtype=dt)).requires_grad_(),
                 "rho": (0.1 + 0.1 * torch.rand(D, generator=g, dtype=dt)).requires_grad_()}
    else:
        alpha = {"loc": 0.3, "rho": 0.15}
    inputs = [mu0, rho0] + ([prior_rho] if with_kl else []) + [w] + [a for a in alpha.values() if isinstance(a, torch.Tensor)]

    def unrolled(step):
        kl = (mu0, F.softplus(prior_rho).pow(-2)) if with_kl else None
        lam = {"loc": mu0.expand(B, D), "rho": rho0.expand(B, D)}
        for m in range(eps.shape[0]):
            lam = step(lam, eps[m], kl, alpha, w)
        return lam

    old, new = unrolled(old_step), unrolled(new_step)
    for k in ("loc", "rho"):
        torch.testing.assert_close(new[k], old[k], rtol=0, atol=1e-10)
        # The steps move λ: the comparison is not of λ^(0) with itself.
        assert (old[k] - (mu0 if k == "loc" else rho0)).abs().max() > 1e-2

    def outer(lam):
        return (lam["loc"].sin() * lam["rho"]).sum() + lam["rho"].exp().sum()

    g_old = torch.autograd.grad(outer(old), inputs, create_graph=True)
    g_new = torch.autograd.grad(outer(new), inputs, create_graph=True)
    probe = [torch.randn(t.shape, generator=g, dtype=dt) for t in inputs]
    for a, b in zip(g_new, g_old):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # Second order: Hessian-vector products of the outer objective (the outer backward differentiated again).
    h_old = torch.autograd.grad(sum((a * v).sum() for a, v in zip(g_old, probe)), inputs)
    h_new = torch.autograd.grad(sum((a * v).sum() for a, v in zip(g_new, probe)), inputs)
    for a, b in zip(h_new, h_old):
        assert b.abs().max() > 1e-3
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
