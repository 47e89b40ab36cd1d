"""BayesUNet.batched_forward: the many-task forward FunctionalNet runs equals vmap of forward."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

from hvi.functional import FunctionalNet
from models import get_model


def _setup(tasks: int = 3, depth: int = 3):
    torch.manual_seed(0)
    net = get_model("bayes_unet", in_channels=3, out_channels=2, base=4, depth=depth).double()
    weights = {
        n: (p.detach().expand((tasks,) + p.shape) + 0.1 * torch.randn((tasks,) + p.shape, dtype=torch.float64))
        .requires_grad_()
        for n, p in net.named_parameters()
    }
    x = torch.randn(tasks, 2, 3, 8, 12, dtype=torch.float64)
    return net, weights, x


def _second_order(fn, weights, x):
    """Output, and the gradient of ‖∇_w loss‖² (the second-order meta-gradient's path)."""
    out = fn(weights, x)
    loss = (out.sin() ** 2).sum()
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    return out, torch.autograd.grad(sum((g**2).sum() for g in grads), list(weights.values()))


@pytest.mark.parametrize("depth", [1, 3])
def test_batched_forward_equals_vmap_with_second_order_gradients(depth):
    net, weights, x = _setup(depth=depth)
    ref = lambda w, xx: vmap(lambda ww, xi: functional_call(net, ww, (xi,)))(w, xx)  # noqa: E731
    out_ref, g_ref = _second_order(ref, weights, x)
    out, g = _second_order(net.batched_forward, weights, x)
    assert out.shape == (3, 2, 2, 8, 12)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_functional_net_uses_batched_forward_for_many_tasks_only(monkeypatch):
    net, weights, x = _setup()
    fnet = FunctionalNet(net, parallel_tasks=False)
    calls = []
    orig = type(net).batched_forward
    monkeypatch.setattr(type(net), "batched_forward", lambda self, w, xx: calls.append(xx.shape[0]) or orig(self, w, xx))
    many = fnet.batched(weights, x)
    one = fnet.batched({n: w[:1] for n, w in weights.items()}, x[:1])
    assert calls == [3]  # one task runs forward itself
    torch.testing.assert_close(one, many[:1], rtol=0, atol=1e-12)


def test_batched_forward_rejects_a_4d_input():
    net, weights, x = _setup()
    with pytest.raises(ValueError, match=r"\(B, N, C, H, W\)"):
        net.batched_forward(weights, x[0])
