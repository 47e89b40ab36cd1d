"""Operators for many tasks' networks at once, each task with its own weights.

The engine evaluates B tasks' per-task weights together. A model's
``batched_forward`` (``models/unet.py``, ``models/conv4.py``) lays the tasks
out along the channels, ``(N, B*C, H, W)`` in channels-last memory, so that
every convolution is one grouped call over the tasks. The operators here are
that layout's convolution, ReLU and 2x2 max-pooling, with backward passes
that are themselves cheap to differentiate (the second-order meta-gradient
differentiates them) and that keep every gradient channels-last: an
elementwise op or convolution that meets two memory orders runs a strided
loop or copies (``grad_channels_last``, ``benchmarks/layout_ab.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["channels_last", "grad_channels_last", "task_conv", "task_max_pool", "task_relu"]

def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last (NHWC) memory order, same values and shape.

    PyTorch's CPU kernels for bilinear upsampling and max-pooling are
    vectorized over channels only in this order; on NCHW memory the upsample
    of a ``(20, 32, 16, 16)`` batch takes 4.4 ms instead of 0.9 ms (forward
    and backward together 10.9 vs 3.0 ms). ``x.contiguous(memory_format=...)``
    is refused inside ``torch.func.vmap`` (how the engine evaluates many
    tasks at once); permute-contiguous-permute gives the same layout and
    works there. A no-op (no copy) when ``x`` is channels-last already.
    """
    return x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


class _GradChannelsLast(torch.autograd.Function):
    """The identity, whose backward hands its gradient on in channels-last memory (see :func:`grad_channels_last`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return _GradChannelsLast.apply(channels_last(g))


def grad_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself, but the gradient that flows back through it is copied to channels-last memory.

    An elementwise op whose operands differ in memory order (a channels-last
    activation and an NCHW or permuted gradient) runs a strided loop on CPU,
    about ten times slower than on two channels-last operands (ReLU's
    backward on a ``(5, 128, 32, 32)`` batch: 4.7 against 0.37 ms), and a
    convolution copies such a gradient itself. An op whose backward returns
    another layout (a batched matmul's, for one) is followed here by one
    copy instead. Its own backward does the same, so a second-order
    gradient keeps the layout too. Same values.
    """
    if torch.compiler.is_compiling():
        return x
    return _GradChannelsLast.apply(x)


_conv_backward = torch.ops.aten.convolution_backward


def _dgrad(g: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, padding: int, groups: int) -> torch.Tensor:
    """The input gradient of a stride-1 grouped convolution (``h`` only gives the shape)."""
    return _conv_backward(g, h, weight, None, [1, 1], [padding, padding], [1, 1], False, [0, 0], groups,
                          [True, False, False])[0]


def _wgrad(g: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, padding: int, groups: int):
    """The weight and bias gradients of a stride-1 grouped convolution (``weight`` only gives the shape)."""
    return _conv_backward(g, h, weight, [weight.shape[0]], [1, 1], [padding, padding], [1, 1], False, [0, 0],
                          groups, [False, True, True])[1:]


class _DGrad(torch.autograd.Function):
    """``dgrad(g, W)``, differentiable by grouped convolutions (see :class:`_TaskConv`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, h, weight, padding, groups):
        return _dgrad(g, h, weight, padding, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, _h, weight, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(g, weight)

    @staticmethod
    def backward(ctx, gg):
        g, weight = ctx.saved_tensors
        # dgrad is linear in g (its adjoint: the convolution) and in W (its adjoint: wgrad at input gg).
        dg = F.conv2d(gg, weight, padding=ctx.padding, groups=ctx.groups) if ctx.needs_input_grad[0] else None
        dw = _WGrad.apply(g, gg, weight, ctx.padding, ctx.groups)[0] if ctx.needs_input_grad[2] else None
        return dg, None, dw, None, None


class _WGrad(torch.autograd.Function):
    """``(wgrad(g, h), bias grad(g))``, differentiable by grouped convolutions (see :class:`_TaskConv`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, h, weight, padding, groups):
        return _wgrad(g, h, weight, padding, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        g, h, _weight, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(g, h)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gw, gb):
        g, h = ctx.saved_tensors
        dg = dh = None
        if ctx.needs_input_grad[0]:
            if gw is None:
                dg = torch.zeros_like(g) if gb is None else torch.zeros_like(g) + gb[:, None, None]
            else:  # the bias term in the convolution's own epilogue, not a pass over g of its own
                dg = F.conv2d(h, gw, gb, padding=ctx.padding, groups=ctx.groups)
        if ctx.needs_input_grad[1] and gw is not None:
            dh = _DGrad.apply(g, h, gw, ctx.padding, ctx.groups)
        return dg, dh, None, None, None


class _TaskConv(torch.autograd.Function):
    """``F.conv2d(h, W, b, padding, groups)`` (stride 1) whose backward is differentiable by grouped convolutions.

    The second-order meta-gradient differentiates the inner loop's gradient,
    i.e. each convolution's backward. PyTorch's double backward of a grouped
    convolution computes two of its four terms one group at a time, with
    per-group slices copied out of channels-last memory and convolutions
    shaped (batch = channels, kernel = image) that oneDNN runs slowly. Here
    the backward is written as :class:`_DGrad` and :class:`_WGrad`, whose
    own derivatives are again one grouped convolution, input gradient or
    weight gradient each: the same values (the first backward bit for bit,
    its derivative to rounding, ``tests/test_unet_batched.py``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(h, weight, bias, padding, groups):
        return F.conv2d(h, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h, weight, _bias, ctx.padding, ctx.groups = inputs
        ctx.save_for_backward(h, weight)

    @staticmethod
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if not torch.is_grad_enabled():  # a backward that is not differentiated: PyTorch's own, in one call
            dh, dw, db = _conv_backward(g, h, weight, [weight.shape[0]], [1, 1], [ctx.padding] * 2, [1, 1], False,
                                        [0, 0], ctx.groups, [need_h, need_w, need_b])
            return dh, dw, db, None, None
        dh = _DGrad.apply(g, h.detach(), weight, ctx.padding, ctx.groups) if need_h else None
        dw, db = _WGrad.apply(g, h, weight.detach(), ctx.padding, ctx.groups) if need_w or need_b else (None, None)
        return dh, dw, db, None, None


def task_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """Per-task convolution of task-interleaved channels, one grouped call.

    ``h`` is ``(N, B*C_in, H, W)`` (task b's channels at ``b*C_in …``),
    ``weight`` ``(B, C_out, C_in, k, k)`` and ``bias`` ``(B, C_out)``; the
    result is ``(N, B*C_out, H, W)``. On channels-last memory the output is
    channels-last too, so a chain of these stays in that layout. Its backward
    is differentiable by grouped convolutions (:class:`_TaskConv`).
    """
    tasks, c_out, c_in, kh, kw = weight.shape
    # (B, C_out, C_in, k, k) -> (B*C_out, C_in, k, k) in channels-last memory: one copy (the per-task
    # weights are views into flat (B, D) tensors, so any merge copies), in the layout that the
    # channels-last convolution would otherwise copy them to again; its backward is views only.
    w = weight.permute(0, 1, 3, 4, 2).reshape(tasks * c_out, kh, kw, c_in).permute(0, 3, 1, 2)
    args = (h, w, bias.reshape(tasks * c_out), padding, tasks)
    if torch.compiler.is_compiling():  # a compiled forward is differentiated once (FunctionalNet.configure)
        return F.conv2d(*args[:3], padding=padding, groups=tasks)
    return _TaskConv.apply(*args)


_threshold_backward = torch.ops.aten.threshold_backward


class _ReluGrad(torch.autograd.Function):
    """ReLU's backward ``g * (y > 0)`` from its output ``y``; differentiable in ``g`` (the same mask).

    PyTorch's double backward of ReLU (``ThresholdBackwardBackward0``) also
    returns a zero-filled gradient for ``y`` (the mask's derivative is zero
    almost everywhere), which autograd then adds into ``y``'s gradient and
    carries on; here ``y`` gets none. Same values.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(g, y):
        return _threshold_backward(g, y, 0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    @staticmethod
    def backward(ctx, gg):
        (y,) = ctx.saved_tensors
        return _ReluGrad.apply(gg, y), None


class _Relu(torch.autograd.Function):
    """``F.relu`` whose backward is :class:`_ReluGrad` (PyTorch's own op when not differentiated)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return _threshold_backward(g, y, 0)
        return _ReluGrad.apply(g, y)


def task_relu(x: torch.Tensor) -> torch.Tensor:
    """``F.relu(x)`` whose backward is cheap to differentiate (:class:`_Relu`); plain ``F.relu`` when compiling."""
    if torch.compiler.is_compiling():
        return F.relu(x)
    return _Relu.apply(x)


_max_pool_backward = torch.ops.aten.max_pool2d_with_indices_backward


def _pick(g: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``g`` at each window's argmax, ``(N, C, H/2, W/2)``: the adjoint of max-pooling's backward, channels-last.

    ``indices`` index ``H*W`` per ``(n, c)``; on channels-last memory both
    are ``(N, H*W, C)`` views, so the gather runs along contiguous channels.
    """
    n, c, h, w = indices.shape
    flat = g.permute(0, 2, 3, 1).reshape(n, -1, c)
    out = flat.gather(1, indices.permute(0, 2, 3, 1).reshape(n, h * w, c))
    return out.reshape(n, h, w, c).permute(0, 3, 1, 2)


class _MaxPoolGrad(torch.autograd.Function):
    """Max-pooling's backward: ``g`` scattered to each window's argmax; differentiable in ``g`` only.

    PyTorch's double backward of max-pooling returns, besides the gather of
    ``gg``, an all-zero gradient for the pooled input, created in NCHW
    memory, which autograd adds into that activation's channels-last
    gradient (a strided add) and so hands NCHW gradients to the ReLU and
    convolution before it; its gather comes out NCHW too. Here the input
    gets no gradient and the gather stays channels-last. Same values.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(g, x, indices):
        return _max_pool_backward(g, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, gg):
        (indices,) = ctx.saved_tensors
        return _pick(gg, indices), None, None


class _MaxPool(torch.autograd.Function):
    """2x2 max-pooling (stride 2) whose backward is :class:`_MaxPoolGrad` (PyTorch's own op when not differentiated)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return F.max_pool2d_with_indices(x, kernel_size=2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the indices

    @staticmethod
    def backward(ctx, g, _g_indices):
        if g is None:
            return None
        x, indices = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return _max_pool_backward(g, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
        return _MaxPoolGrad.apply(g, x.detach(), indices)


def task_max_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` whose backward keeps channels-last memory when differentiated (:class:`_MaxPool`)."""
    if torch.compiler.is_compiling():
        return F.max_pool2d(x, kernel_size=2)
    return _MaxPool.apply(x)[0]
