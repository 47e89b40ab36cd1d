"""models.unet's grouped task convolution: a backward that is differentiable by grouped convolutions.

``_TaskConv`` replaces PyTorch's double backward of a grouped convolution (per-group
slices and oddly shaped convolutions) by :class:`_DGrad` / :class:`_WGrad`; these
tests hold it to PyTorch's own convolution: the first backward bit for bit, second
derivatives to float64 rounding (and numerically), under vmap too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from hvi.models.unet import _task_conv


def _native(h, weight, bias, padding):
    tasks, c_out = weight.shape[:2]
    return F.conv2d(h, weight.reshape((tasks * c_out,) + weight.shape[2:]), bias.reshape(tasks * c_out),
                    padding=padding, groups=tasks)


def _inputs(dtype, tasks=3, n=2, c_in=2, c_out=3, k=3, size=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, tasks * c_in, size, size, generator=g, dtype=dtype)
    h = h.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(tasks, c_out, c_in, k, k, generator=g, dtype=dtype).requires_grad_()
    b = torch.randn(tasks, c_out, generator=g, dtype=dtype).requires_grad_()
    return h, w, b


def test_first_backward_is_pytorchs_bit_for_bit():
    h, w, b = _inputs(torch.float32, tasks=4, n=5, c_in=8, c_out=8, size=16)
    gy = torch.randn(5, 32, 16, 16).contiguous(memory_format=torch.channels_last)
    for create_graph in (False, True):  # PyTorch's fused call, or dgrad and wgrad as differentiable nodes
        ours = torch.autograd.grad(_task_conv(h, w, b, 1), [h, w, b], gy, create_graph=create_graph)
        theirs = torch.autograd.grad(_native(h, w, b, 1), [h, w, b], gy)
        for a, t in zip(ours, theirs):
            assert torch.equal(a, t)


def test_second_derivatives_match_pytorchs_double_backward():
    for k, padding in ((3, 1), (1, 0)):
        h, w, b = _inputs(torch.float64, k=k)
        gy = torch.randn(2, 9, 5, 5, dtype=torch.float64, requires_grad=True)
        outs = []
        for conv in (_task_conv, _native):
            grads = torch.autograd.grad(conv(h, w, b, padding), [h, w, b], gy, create_graph=True)
            # A scalar of the gradients that weighs each differently, then its gradient.
            s = sum((gr * torch.linspace(-1, 2, gr.numel(), dtype=gr.dtype).reshape(gr.shape)).sum() for gr in grads)
            outs.append(torch.autograd.grad(s, [h, w, gy]))  # the gradients do not depend on b
        for a, t in zip(*outs):
            torch.testing.assert_close(a, t, rtol=1e-12, atol=1e-12)
            assert a.abs().max() > 0


def test_gradcheck_and_gradgradcheck():
    h, w, b = _inputs(torch.float64, tasks=2, n=1, c_in=2, c_out=2, size=4)
    f = lambda h, w, b: _task_conv(h, w, b, 1)  # noqa: E731
    assert gradcheck(f, (h, w, b))
    assert gradgradcheck(f, (h, w, b))


def test_vmap_over_a_leading_weight_dim():
    # FunctionalNet vmaps batched_forward over θ particles (weight_batch_dims = 2).
    h, w, b = _inputs(torch.float64)
    wp = torch.stack([w, 2 * w]).detach().requires_grad_()
    bp = torch.stack([b, -b]).detach().requires_grad_()
    out = torch.func.vmap(lambda w_, b_: _task_conv(h, w_, b_, 1))(wp, bp)
    ref = torch.stack([_native(h, wp[i], bp[i], 1) for i in range(2)])
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(out.square().sum(), [h, wp, bp], create_graph=True)
    g2 = torch.autograd.grad(ref.square().sum(), [h, wp, bp], create_graph=True)
    for a, t in zip(g1, g2):
        torch.testing.assert_close(a, t, rtol=1e-12, atol=1e-12)
    gg1 = torch.autograd.grad(sum(g.sum() for g in g1), [h, wp, bp])  # b enters the square: used
    gg2 = torch.autograd.grad(sum(g.sum() for g in g2), [h, wp, bp])
    for a, t in zip(gg1, gg2):
        torch.testing.assert_close(a, t, rtol=1e-12, atol=1e-12)
