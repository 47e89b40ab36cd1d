"""models.unet's task-batched operators against their plain PyTorch forms (benchmarks/unet_ops_ab.py).

``_task_conv``'s channels-last weights, ``_relu``, ``_task_cat`` and
``_task_head`` replace a reshape, ``F.relu``, ``torch.cat`` and a grouped 1x1
``F.conv2d`` in ``BayesUNet.batched_forward``. Each must give the plain form's
values and its first and second derivatives (float64, to rounding), under
vmap too (``FunctionalNet`` vmaps ``batched_forward`` over θ particles).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hvi.models import get_model, unet
from script_loader import load_script
from torch.autograd import gradcheck, gradgradcheck

D = torch.float64
CL = torch.channels_last


def _plain():
    return {op: f for op, (_name, f) in load_script("benchmarks/unet_ops_ab.py").plain_ops().items()}


def _cl(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).contiguous(memory_format=CL).requires_grad_()


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=D).requires_grad_()


def _orders(fn, inputs, seed=5):
    """fn's output, its gradients under a random cotangent, and the gradients of a weighted sum of those.

    The cotangent is an input too, so the second-order gradients include the
    path through it (the one a meta-gradient takes through an inner gradient).
    """
    out = fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    cot = [_rand(*o.shape, seed=seed + i) for i, o in enumerate(outs)]
    grads = torch.autograd.grad(outs, inputs, cot, create_graph=True)
    s = sum((g * torch.linspace(-1, 2, g.numel(), dtype=D).reshape(g.shape)).sum() + (g**2).sum() for g in grads)
    second = torch.autograd.grad(s, [*inputs, *cot], allow_unused=True, materialize_grads=True)
    return [*outs, *grads, *second]


def _assert_same(fn, ref, inputs):
    got, want = _orders(fn, inputs), _orders(ref, inputs)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert sum(t.abs().sum() for t in got) > 0


@pytest.mark.parametrize("k,padding", [(3, 1), (1, 0)])
def test_channels_last_task_weights_equal_the_plain_reshape(k, padding):
    h = _cl(2, 3 * 4, 6, 5, seed=0)
    w, b = _rand(3, 5, 4, k, k, seed=1), _rand(3, 5, seed=2)
    _assert_same(lambda h, w, b: unet._task_conv(h, w, b, padding), lambda h, w, b: _plain()["weights"](h, w, b, padding),
                 (h, w, b))


def test_relu_equals_f_relu_in_value_first_and_second_derivatives():
    x = _cl(2, 6, 5, 4, seed=0)
    _assert_same(unet._relu, F.relu, (x,))
    # through a product, so that the second derivative is not zero: y * relu(x)
    y = _rand(2, 6, 5, 4, seed=3)
    _assert_same(lambda x, y: y * unet._relu(x), lambda x, y: y * F.relu(x), (x, y))


@pytest.mark.parametrize("tasks", [1, 3])
def test_task_cat_equals_torch_cat(tasks):
    a, b = _cl(2, tasks * 4, 6, 5, seed=0), _cl(2, tasks * 2, 6, 5, seed=1)
    _assert_same(lambda a, b: unet._task_cat(a, b, tasks) ** 2, lambda a, b: _plain()["cat"](a, b, tasks) ** 2, (a, b))
    out = unet._task_cat(a, b, tasks)
    assert out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, _plain()["cat"](a, b, tasks), rtol=0, atol=0)


@pytest.mark.parametrize("c_out", [1, 2])
def test_task_head_equals_the_grouped_1x1_convolution(c_out):
    z = _cl(2, 3 * 4, 6, 5, seed=0)
    w, b = _rand(3, c_out, 4, 1, 1, seed=1), _rand(3, c_out, seed=2)
    _assert_same(lambda z, w, b: unet._task_head(z, w, b, 3) ** 2, lambda z, w, b: _plain()["head"](z, w, b, 3) ** 2,
                 (z, w, b))


def test_gradcheck_and_gradgradcheck():
    a, b = _cl(1, 2 * 2, 3, 3, seed=0), _cl(1, 2 * 1, 3, 3, seed=1)
    assert gradcheck(lambda a, b: unet._task_cat(a, b, 2), (a, b))
    assert gradgradcheck(lambda a, b: unet._task_cat(a, b, 2), (a, b))
    x = _cl(1, 3, 3, 3, seed=2)
    assert gradcheck(unet._relu, (x,))
    assert gradgradcheck(unet._relu, (x,))
    w, bias = _rand(2, 1, 2, 1, 1, seed=3), _rand(2, 1, seed=4)
    assert gradgradcheck(lambda z, w, bias: unet._task_head(z, w, bias, 2), (a, w, bias))


def _net_weights(tasks=3, particles=None):
    torch.manual_seed(0)
    net = get_model("bayes_unet", in_channels=3, out_channels=2, base=4, depth=3).double()
    lead = (tasks,) if particles is None else (particles, tasks)
    weights = {n: (p.detach().expand(lead + p.shape) + 0.1 * torch.randn(lead + p.shape, dtype=D)).requires_grad_()
               for n, p in net.named_parameters()}
    return net, weights, torch.randn(tasks, 2, 3, 8, 12, dtype=D)


def _meta(fn, weights, x):
    """The output, ∇_w loss (graph kept) and the gradient of ‖∇_w loss‖² + loss: a meta-gradient's path."""
    out = fn(weights, x)
    loss = (out.sin() ** 2).sum()
    grads = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
    return [out, *grads, *torch.autograd.grad(sum((g**2).sum() for g in grads) + loss, list(weights.values()))]


@pytest.mark.parametrize("particles", [None, 2])
def test_batched_forward_equals_the_plain_operators(monkeypatch, particles):
    net, weights, x = _net_weights(particles=particles)
    fn = net.batched_forward if particles is None else torch.func.vmap(net.batched_forward, in_dims=(0, None))
    new = _meta(fn, weights, x)
    for name, f in load_script("benchmarks/unet_ops_ab.py").plain_ops().values():
        monkeypatch.setattr(unet, name, f)
    plain = _meta(fn, weights, x)
    for a, b in zip(new, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)




def test_max_pool_equals_f_max_pool2d_in_value_first_and_second_derivatives():
    x = _cl(2, 6, 8, 6, seed=0)
    y = _rand(2, 6, 4, 3, seed=3)
    # through a product, so that the second derivative is not zero
    _assert_same(lambda x, y: y * unet._max_pool(x) ** 2, lambda x, y: y * F.max_pool2d(x, 2) ** 2, (x, y))


def test_max_pool_ties_pick_the_same_element_as_pytorch():
    """After a ReLU most windows are all zeros: the first maximum takes the gradient, as in PyTorch's kernel."""
    x = F.relu(_cl(1, 4, 6, 6, seed=1)).detach().contiguous(memory_format=CL).requires_grad_()
    y = _rand(1, 4, 3, 3, seed=2)
    _assert_same(lambda x, y: y * unet._max_pool(x) ** 2, lambda x, y: y * F.max_pool2d(x, 2) ** 2, (x, y))


def _non_channels_last_activations(monkeypatch, plain: bool) -> list[str]:
    """Ops that output an activation-shaped tensor in another memory order, in a U-Net meta-gradient."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if plain:
        monkeypatch.setattr(unet, "_max_pool", lambda z: F.max_pool2d(z, 2))
        monkeypatch.setattr(unet, "_grad_channels_last", lambda z: z)
    net, weights, x = _net_weights()
    levels = {(x.shape[-2] // 2**k, x.shape[-1] // 2**k) for k in range(3)}
    found = []

    class Layouts(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            is_view = func is torch.ops.aten._unsafe_view.default or (
                func._schema.returns and func._schema.returns[0].alias_info is not None)
            # (N, C, H, W) at one of the U-Net's levels; an (N, H, W, C) tensor is channels-last memory viewed as such
            if (isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[0] == x.shape[1] and not is_view
                    and tuple(out.shape[2:]) in levels and not out.is_contiguous(memory_format=CL)):
                found.append(f"{func} -> {tuple(out.shape)} {out.stride()}")
            return out

    with Layouts():
        _meta(net.batched_forward, weights, x)
    return found


def test_second_order_gradients_stay_channels_last(monkeypatch):
    """The point of the layout operators: no op of a meta-gradient makes an NCHW or permuted activation.

    PyTorch's max-pool hands autograd an NCHW zero gradient for the pooled
    input in the outer pass, and the head's batched matmul returns its
    gradient in ``(B*C, N, H, W)`` order; every elementwise op or
    convolution that then meets a channels-last tensor runs a strided loop
    or copies.
    """
    assert _non_channels_last_activations(monkeypatch, plain=False) == []
    assert _non_channels_last_activations(monkeypatch, plain=True) != []  # the check can fail


def test_grad_channels_last_is_the_identity_with_a_channels_last_gradient():
    x = _rand(2, 3, 4, 5, seed=0)
    y = unet._grad_channels_last(x)
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    (g,) = torch.autograd.grad(y, x, torch.ones(2, 3, 4, 5, dtype=D), create_graph=True)
    assert g.is_contiguous(memory_format=CL)
    assert gradgradcheck(unet._grad_channels_last, (x,))


def test_task_cat_second_order_with_one_part_unused():
    """The split's backward when only one part's gradient is differentiated (no NCHW zeros for the other)."""
    a, b = _cl(2, 3 * 4, 5, 4, seed=0), _cl(2, 3 * 2, 5, 4, seed=1)
    w = _rand(2, 3 * 6, 5, 4, seed=2)

    def meta(cat):
        ga, _gb = torch.autograd.grad((cat(a, b, 3) * w).sin().sum(), (a, b), create_graph=True)
        return torch.autograd.grad((ga**2).sum(), (a, b, w), allow_unused=True, materialize_grads=True)

    for got, want in zip(meta(unet._task_cat), meta(_plain()["cat"])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_max_pool_under_vmap_equals_f_max_pool2d():
    """FunctionalNet vmaps batched_forward over θ particles: the pool's backward and double backward batch too."""
    x = _rand(2, 2, 6, 8, 6, seed=0)
    y = _rand(2, 2, 6, 4, 3, seed=3)

    def f(pool):
        return lambda x, y: y * torch.func.vmap(lambda xi: pool(unet._grad_channels_last(unet._channels_last(xi))))(x) ** 2

    _assert_same(f(unet._max_pool), f(lambda z: F.max_pool2d(z, 2)), (x, y))
