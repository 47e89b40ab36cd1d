"""hvi.distributions: the frugal Normal densities against torch's, values, gradients and memory."""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal as TorchNormal

import hvi
from hvi.distributions import Normal, ReparamNormal

DT = torch.float64


def _rand(*shape, seed=0, positive=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)
    return t.abs() + 0.2 if positive else t


def _saved(fn):
    """(result of fn(), the tensors autograd saved for backward while it ran)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


@pytest.mark.parametrize(
    "value_shape, param_shape",
    [((3, 4), (3, 4)), ((2, 3, 4), (3, 4)), ((3, 4), (2, 3, 4)), ((5, 1, 4), (3, 1))],
)
def test_normal_log_prob_values_and_gradients_match_torch(value_shape, param_shape):
    value = _rand(*value_shape, seed=1).requires_grad_()
    loc = _rand(*param_shape, seed=2).requires_grad_()
    scale = _rand(*param_shape, seed=3, positive=True).requires_grad_()
    lp = Normal(loc, scale).log_prob(value)
    ref = TorchNormal(loc, scale).log_prob(value)
    assert lp.shape == ref.shape
    assert torch.allclose(lp, ref, rtol=1e-13, atol=1e-13)
    w = _rand(*ref.shape, seed=4)  # a non-uniform upstream gradient
    got = torch.autograd.grad((lp * w).sum(), [value, loc, scale])
    want = torch.autograd.grad((ref * w).sum(), [value, loc, scale])
    for name, a, b in zip(("value", "loc", "scale"), got, want):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12), name


def test_normal_log_prob_second_order_and_transforms():
    """Its backward is differentiable (second-order inner loops) and it runs under torch.func."""
    value, loc, scale = _rand(6, seed=1), _rand(6, seed=2), _rand(6, seed=3, positive=True)

    def f(v, m, s):
        return Normal(m, s).log_prob(v)

    args = tuple(t.clone().requires_grad_() for t in (value, loc, scale))
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    # A float scale (a fixed-variance prior) has no gradient to give.
    assert torch.allclose(Normal(loc, 0.3).log_prob(value), TorchNormal(loc, 0.3).log_prob(value), rtol=1e-13)
    g = torch.func.grad(lambda m: f(value, m, scale).sum())(loc)
    assert torch.allclose(g, (value - loc) / scale**2, rtol=1e-12)
    rows = {0: value.reshape(3, 2), 1: loc.reshape(3, 2), 2: scale.reshape(3, 2)}
    for i in range(3):  # a batch dim on any one argument
        args = [value[:2], loc[:2], scale[:2]]
        args[i] = rows[i]
        dims = tuple(0 if j == i else None for j in range(3))
        batched = torch.func.vmap(f, in_dims=dims)(*args)
        assert torch.allclose(batched, TorchNormal(args[1], args[2]).log_prob(args[0]), rtol=1e-13), i


def test_normal_log_prob_keeps_only_its_inputs_for_backward():
    value = _rand(50, seed=1).requires_grad_()
    loc = _rand(50, seed=2).requires_grad_()
    scale = _rand(50, seed=3, positive=True).requires_grad_()
    _, saved = _saved(lambda: Normal(loc, scale).log_prob(value))
    inputs = {t.data_ptr() for t in (value, loc, scale)}
    assert saved and all(t.data_ptr() in inputs for t in saved)
    _, saved_ref = _saved(lambda: TorchNormal(loc, scale).log_prob(value))
    assert sum(t.data_ptr() not in inputs for t in saved_ref) >= 3  # what the generic formula adds


def test_normal_validates_its_sample():
    d = Normal(torch.zeros(3), torch.ones(3), validate_args=True)
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.tensor([0.0, float("nan"), 1.0]))


def test_reparam_normal_scores_its_own_sample_from_the_noise():
    """log q at its own rsample (−ε²/2 − log σ − c) = the generic Normal, keeping nothing new."""
    loc = _rand(3, 4, seed=0).requires_grad_()
    rho = _rand(3, 4, seed=1).requires_grad_()
    q = hvi.NormalFamily().dist({"loc": loc, "rho": rho})
    assert isinstance(q, ReparamNormal)
    ref = TorchNormal(loc, F.softplus(rho))
    phi = q.rsample()
    lp, saved = _saved(lambda: q.log_prob(phi))
    assert sum(t.numel() for t in saved) <= phi.numel()  # σ, which φ's own graph holds
    lp_ref = ref.log_prob(phi)
    assert torch.allclose(lp, lp_ref, rtol=1e-12, atol=1e-12)
    # Total derivatives (φ moves with λ): ∂/∂loc is exactly 0 here, and the generic formula agrees.
    own = torch.autograd.grad(lp.sum(), [loc, rho], retain_graph=True, allow_unused=True, materialize_grads=True)
    for a, b in zip(own, torch.autograd.grad(lp_ref.sum(), [loc, rho])):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert not own[0].any() and own[1].abs().min() > 0
    other = phi.detach() + 0.3  # any other value: the generic formula
    assert torch.allclose(q.log_prob(other), ref.log_prob(other), rtol=1e-13, atol=1e-13)
    draws = q.rsample((40000,))
    assert draws.shape == (40000, 3, 4) and torch.allclose(q.log_prob(draws), ref.log_prob(draws), rtol=1e-12)
    assert torch.allclose(draws.mean(0), loc, atol=0.05) and torch.allclose(draws.std(0), ref.scale, rtol=0.03)


def test_reparam_normal_through_a_pyro_trace():
    """Pyro scores a plated, to_event'ed guide site at its own sample: the noise path, same value."""
    loc = _rand(2, 1, 3, seed=0).requires_grad_()
    scale = _rand(2, 1, 3, seed=1, positive=True).requires_grad_()

    def guide():
        with pyro.plate("tasks", 2, dim=-2):
            pyro.sample("phi", ReparamNormal(loc, scale).to_event(1))

    tr = pyro.poutine.trace(guide).get_trace()
    tr.compute_log_prob()
    site = tr.nodes["phi"]
    want = TorchNormal(loc, scale).log_prob(site["value"]).sum(-1)
    assert torch.allclose(site["log_prob"], want, rtol=1e-12)
    assert site["fn"].base_dist._sample is site["value"]
