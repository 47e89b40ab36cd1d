"""BayesUNet.batched_forward: the many-task forward FunctionalNet runs equals vmap of forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from hvi.functional import FunctionalNet
from models import get_model


def _setup(tasks: int = 3, depth: int = 3, upsample: str = "bilinear"):
    torch.manual_seed(0)
    net = get_model("bayes_unet", in_channels=3, out_channels=2, base=4, depth=depth, upsample=upsample).double()
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


@pytest.mark.parametrize("upsample", ["bilinear", "nearest_1x1"])
@pytest.mark.parametrize("depth", [1, 3])
def test_batched_forward_equals_vmap_with_second_order_gradients(depth, upsample):
    net, weights, x = _setup(depth=depth, upsample=upsample)
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


def _reference_forward(net, x):
    """The seed reference's decoder order: nearest upsampling first, then the 1x1 conv (``seed_reference.py``)."""
    skips = []
    for level, block in enumerate(net.down):
        x = block(F.max_pool2d(x, 2) if level else x)
        skips.append(x)
    skips.pop()
    for proj, block in zip(net.up_proj, net.up):
        x = block(torch.cat([proj(F.interpolate(x, scale_factor=2.0)), skips.pop()], dim=1))
    return net.head(x)


def test_nearest_1x1_is_the_reference_decoder_with_its_weight_count():
    net, _, x = _setup(upsample="nearest_1x1")
    torch.testing.assert_close(net(x[0]), _reference_forward(net, x[0]), rtol=0, atol=1e-12)
    names = [n for n, _ in net.named_parameters() if n.startswith("up_proj")]
    assert names == ["up_proj.0.weight", "up_proj.0.bias", "up_proj.1.weight", "up_proj.1.bias"]
    # base 16, depth 3: the reference's BayesianUNet has 109,361 weights (seed_reference.py prints it).
    assert sum(p.numel() for p in get_model("bayes_unet", upsample="nearest_1x1").parameters()) == 109_361
    assert sum(p.numel() for p in get_model("bayes_unet").parameters()) == 118_273


def test_an_unknown_upsample_names_the_choices():
    with pytest.raises(ValueError, match=r"bayes_unet: upsample must be one of 'bilinear', 'nearest_1x1', got 'cubic'"):
        get_model("bayes_unet", upsample="cubic")
