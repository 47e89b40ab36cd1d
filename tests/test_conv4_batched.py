"""Conv4.batched_forward: the many-task forward FunctionalNet runs equals vmap of forward."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, vmap

from hvi.functional import FunctionalNet
from models import get_model


def _setup(tasks: int = 3, in_channels: int = 1, image_size: int = 16, lead: tuple[int, ...] = ()):
    torch.manual_seed(0)
    net = get_model("conv4", in_channels=in_channels, num_classes=3, hidden=4, image_size=image_size).double()
    weights = {
        n: (p.detach().expand(lead + (tasks,) + p.shape)
            + 0.1 * torch.randn(lead + (tasks,) + p.shape, dtype=torch.float64)).requires_grad_()
        for n, p in net.named_parameters()
    }
    x = torch.randn(tasks, 4, in_channels, image_size, image_size, dtype=torch.float64)
    return net, weights, x


def _assert_same_grads(g, g_ref):
    # The second derivatives reach about 1e4 here; a convolution's bias ahead of BatchNorm has a
    # gradient that is zero but for rounding, so the tolerance is set by the largest of them.
    atol = 1e-14 * max(float(b.abs().max()) for b in g_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=atol)


def _second_order(fn, weights, x):
    """Output, and the gradient of ‖∇_w loss‖² (the second-order meta-gradient's path)."""
    out = fn(weights, x)
    loss = (out.sin() ** 2).sum()
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    return out, torch.autograd.grad(sum((g**2).sum() for g in grads), list(weights.values()))


# image_size 16: 1x1 features; 37: floor pooling at odd sides (37 -> 18 -> 9 -> 4 -> 2), 2x2 features,
# so the classifier sees torch.flatten's (C, s, s) order.
@pytest.mark.parametrize("in_channels,image_size", [(1, 16), (3, 37)])
def test_batched_forward_equals_vmap_with_second_order_gradients(in_channels, image_size):
    net, weights, x = _setup(in_channels=in_channels, image_size=image_size)
    ref = lambda w, xx: vmap(lambda ww, xi: functional_call(net, ww, (xi,)))(w, xx)  # noqa: E731
    out_ref, g_ref = _second_order(ref, weights, x)
    out, g = _second_order(net.batched_forward, weights, x)
    assert out.shape == (3, 4, 3)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    _assert_same_grads(g, g_ref)


def test_every_task_gets_its_own_batch_statistics():
    net, weights, x = _setup()
    out = net.batched_forward(weights, x)
    alone = net.batched_forward({n: w[1:2] for n, w in weights.items()}, x[1:2])
    torch.testing.assert_close(out[1:2], alone, rtol=0, atol=1e-12)
    shifted = x.clone()
    shifted[0] = 5 * shifted[0] + 3  # task 0's images only
    torch.testing.assert_close(net.batched_forward(weights, shifted)[1:], out[1:], rtol=0, atol=0)


@pytest.mark.parametrize("model", ["conv4", "bayes_unet"])
def test_weight_draws_fold_into_the_task_dim(model, monkeypatch):
    torch.manual_seed(0)
    net = (get_model("conv4", num_classes=3, hidden=4, image_size=16) if model == "conv4"
           else get_model("bayes_unet", in_channels=1, out_channels=1, base=4, depth=2)).double()
    lead, tasks = (2, 5), 3
    weights = {n: (p.detach() + 0.1 * torch.randn(lead + (tasks,) + p.shape, dtype=torch.float64)).requires_grad_()
               for n, p in net.named_parameters()}
    x = torch.randn(tasks, 4, 1, 16, 16, dtype=torch.float64)
    fnet = FunctionalNet(net, parallel_tasks=False)
    calls = []
    orig = type(net).batched_forward
    monkeypatch.setattr(type(net), "batched_forward", lambda self, w, xx: calls.append(xx.shape[0]) or orig(self, w, xx))
    out_fn = lambda w, xx: fnet.batched(w, xx, weight_batch_dims=3)  # noqa: E731
    single = lambda ww, xi: functional_call(net, ww, (xi,))  # noqa: E731
    ref = lambda w, xx: vmap(vmap(vmap(single), in_dims=(0, None)), in_dims=(0, None))(w, xx)  # noqa: E731
    out, g = _second_order(out_fn, weights, x)
    out_ref, g_ref = _second_order(ref, weights, x)
    assert calls == [2 * 5 * 3]  # one call for every draw of every task
    assert out.shape == lead + out_ref.shape[2:]
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    _assert_same_grads(g, g_ref)


def test_batched_forward_rejects_a_4d_input():
    net, weights, x = _setup()
    with pytest.raises(ValueError, match=r"conv4\.batched_forward .*\(B, N, C, H, W\)"):
        net.batched_forward(weights, x[0])
