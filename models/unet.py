"""2-D U-Net for image-to-image regression (``bayes_unet``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["BayesUNet", "bayes_unet"]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
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


def _task_conv(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
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


def _cat(a: torch.Tensor, b: torch.Tensor, tasks: int) -> torch.Tensor:
    n, _, h, w = a.shape
    parts = [t.permute(0, 2, 3, 1).reshape(n, h, w, tasks, -1) for t in (a, b)]
    return torch.cat(parts, dim=-1).reshape(n, h, w, -1).permute(0, 3, 1, 2)


def _split(g: torch.Tensor, tasks: int, c_a: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjoint of :func:`_cat`: each task's first ``c_a`` channels, and the rest, channels-last."""
    n, _, h, w = g.shape
    v = g.permute(0, 2, 3, 1).reshape(n, h, w, tasks, -1)
    return tuple(p.clone(memory_format=torch.contiguous_format).reshape(n, h, w, -1).permute(0, 3, 1, 2)
                 for p in (v[..., :c_a], v[..., c_a:]))


class _TaskCat(torch.autograd.Function):
    """:func:`_cat` whose backward is :class:`_TaskSplit` (and whose double backward is itself again).

    Autograd's backward of ``torch.cat`` returns strided slices of the
    gradient, and the derivative of a slice (second order) zero-fills a
    tensor of the whole gradient's size and copies the slice into it. Both
    maps are linear and each other's adjoint, so here each is the other's
    backward: a copy per part, no zero-fill (same values).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(a, b, tasks):
        return _cat(a, b, tasks)

    @staticmethod
    def setup_context(ctx, inputs, output):
        a, _b, ctx.tasks = inputs
        ctx.c_a = a.shape[1] // ctx.tasks

    @staticmethod
    def backward(ctx, g):
        ga, gb = _TaskSplit.apply(g, ctx.tasks, ctx.c_a)
        return ga, gb, None


class _TaskSplit(torch.autograd.Function):
    """:func:`_split`, whose backward is :class:`_TaskCat`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g, tasks, c_a):
        return _split(g, tasks, c_a)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _g, ctx.tasks, _c_a = inputs

    @staticmethod
    def backward(ctx, gga, ggb):
        return _TaskCat.apply(gga, ggb, ctx.tasks), None, None


def _task_cat(a: torch.Tensor, b: torch.Tensor, tasks: int) -> torch.Tensor:
    """Per-task channel concatenation of task-interleaved ``(N, B*C, H, W)`` tensors, channels-last."""
    if torch.compiler.is_compiling():
        return _cat(a, b, tasks)
    return _TaskCat.apply(a, b, tasks)


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


def _relu(x: torch.Tensor) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return F.relu(x)
    return _Relu.apply(x)


def _task_head(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tasks: int) -> torch.Tensor:
    """The per-task 1x1 convolution of task-interleaved channels-last ``z``, as ``(B, N, C_out, H, W)``.

    A contraction over each task's channels (``einsum``: one batched
    matmul). As a grouped ``F.conv2d`` with one output channel per group,
    PyTorch's CPU convolution runs it, its backward and double backward one
    group at a time, with a copy of each group's slice.
    """
    n, _, h, w = z.shape
    zt = z.permute(0, 2, 3, 1).reshape(n, h, w, tasks, -1)  # a view of channels-last memory
    out = torch.einsum("nhwbc,boc->bnohw", zt, weight.reshape(tasks, weight.shape[1], -1))
    return out + bias[:, None, :, None, None]


class _DoubleConv(nn.Module):
    """Two 3x3 convolutions (padding 1), each followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))))


class BayesUNet(nn.Module):
    """Deterministic 2-D U-Net; the hvi engine places the distribution over its weights.

    Level ``l`` (``0 <= l < depth``) has ``base * 2**l`` channels. The encoder
    applies two 3x3 conv + ReLU per level with 2x2 max-pooling between levels.
    The decoder upsamples with bilinear ``F.interpolate`` (scale 2,
    ``align_corners=False``; parameter-free), concatenates the encoder skip
    feature of the same level (``[upsampled, skip]`` on the channel axis) and
    applies two 3x3 conv + ReLU. A final 1x1 conv maps to ``out_channels``
    (no output activation). No normalisation layers and no buffers. Pooling
    and upsampling run on channels-last memory (faster on CPU, same values).

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels.
        base: Channels at level 0.
        depth: Number of resolution levels (``depth - 1`` poolings).

    Raises:
        ValueError: If any argument is not a positive integer.
    """

    def __init__(self, in_channels: int, out_channels: int, base: int, depth: int) -> None:
        super().__init__()
        for arg, val in (("in_channels", in_channels), ("out_channels", out_channels),
                         ("base", base), ("depth", depth)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"bayes_unet: {arg} must be a positive int, got {val!r}")
        self.depth = depth
        widths = [base * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(_DoubleConv(prev, w))
            prev = w
        # up[i] produces level depth-2-i from [upsampled level+1, skip level].
        self.up = nn.ModuleList(
            _DoubleConv(widths[level + 1] + widths[level], widths[level])
            for level in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` to ``(N, out_channels, H, W)``.

        Raises:
            ValueError: If ``x`` is not 4-D or ``H``/``W`` is not divisible by
                ``2**(depth - 1)``.
        """
        if x.dim() != 4:
            raise ValueError(f"bayes_unet expects input of shape (N, C, H, W), got {tuple(x.shape)}")
        factor = 2 ** (self.depth - 1)
        h, w = x.shape[-2], x.shape[-1]
        if h % factor or w % factor:
            raise ValueError(
                f"bayes_unet with depth={self.depth} needs H and W divisible by "
                f"2**(depth-1) = {factor}; got input shape {tuple(x.shape)} (H={h}, W={w})"
            )
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = F.max_pool2d(_channels_last(x), kernel_size=2)
            x = block(x)
            skips.append(x)
        skips.pop()  # deepest level is the bottleneck, not a skip
        for block in self.up:
            x = F.interpolate(_channels_last(x), scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)

    def batched_forward(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The forward for B tasks at once, each with its own weights.

        Equal to ``torch.func.vmap`` of :meth:`forward` under
        ``functional_call`` (tested to float64 rounding, gradients included),
        and what :class:`hvi.functional.FunctionalNet` runs for a batch of
        tasks. Tasks are interleaved along the channels, ``(N, B*C, H, W)``
        in channels-last (NHWC) memory, and every convolution is one grouped
        call over the tasks. vmap builds the same grouped convolutions but on
        NCHW memory, where PyTorch's CPU (oneDNN) kernels for them take about
        twice as long forward and backward, and it moves the task dimension
        (a copy) around every pooling, upsampling and concatenation; here
        pooling and upsampling see the task-interleaved batch directly. The
        convolutions take channels-last weights (:func:`_task_conv`), and
        ReLU, the skip concatenation and the 1x1 head are :func:`_relu`,
        :func:`_task_cat` and :func:`_task_head`, whose (double) backward
        passes do less work than PyTorch's for the same values
        (``tests/test_unet_ops.py``, ``benchmarks/unet_ops_ab.py``).

        Args:
            weights: Every parameter name of this module mapped to a tensor
                ``(B, *shape)`` of per-task values.
            x: Inputs ``(B, N, in_channels, H, W)``.

        Returns:
            ``(B, N, out_channels, H, W)``.

        Raises:
            ValueError: If ``x`` is not 5-D or ``H``/``W`` is not divisible by
                ``2**(depth - 1)``.
        """
        if x.dim() != 5:
            raise ValueError(f"bayes_unet.batched_forward expects input of shape (B, N, C, H, W), got {tuple(x.shape)}")
        tasks, n, c, h, w = x.shape
        factor = 2 ** (self.depth - 1)
        if h % factor or w % factor:
            raise ValueError(
                f"bayes_unet with depth={self.depth} needs H and W divisible by "
                f"2**(depth-1) = {factor}; got input shape {tuple(x.shape)} (H={h}, W={w})"
            )

        def block(name: str, z: torch.Tensor) -> torch.Tensor:
            z = _relu(_task_conv(z, weights[f"{name}.conv1.weight"], weights[f"{name}.conv1.bias"], 1))
            return _relu(_task_conv(z, weights[f"{name}.conv2.weight"], weights[f"{name}.conv2.bias"], 1))

        # (B, N, C, H, W) -> (N, B*C, H, W) on (N, H, W, B, C) memory: channels-last.
        z = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, tasks * c).permute(0, 3, 1, 2)
        skips = []
        for level in range(len(self.down)):
            if level > 0:
                z = F.max_pool2d(z, kernel_size=2)
            z = block(f"down.{level}", z)
            skips.append(z)
        skips.pop()  # deepest level is the bottleneck, not a skip
        for i in range(len(self.up)):
            z = F.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
            z = block(f"up.{i}", _task_cat(z, skips.pop(), tasks))
        return _task_head(z, weights["head.weight"], weights["head.bias"], tasks)


@register_model("bayes_unet")
def bayes_unet(in_channels: int = 3, out_channels: int = 1, base: int = 16, depth: int = 3) -> nn.Module:
    """2-D U-Net for image-to-image regression (ReLU, bilinear upsampling, no BatchNorm).

    Level ``l`` has ``base * 2**l`` channels (defaults: 16/32/64), two 3x3
    convolutions (padding 1) each followed by ReLU, 2x2 max-pooling going
    down, bilinear ``F.interpolate`` (scale 2) going up, skip connections by
    concatenation, and a final 1x1 convolution. Input ``(N, C, H, W)`` with
    ``H`` and ``W`` divisible by ``2**(depth - 1)``; output
    ``(N, out_channels, H, W)``. The module is deterministic and has no
    buffers; "bayes" refers to the hvi engine placing a distribution over its
    weights.

    Args:
        in_channels: Input channels. Defaults to 3.
        out_channels: Output channels. Defaults to 1.
        base: Channels at the first level. Defaults to 16.
        depth: Number of resolution levels. Defaults to 3.

    Returns:
        A :class:`BayesUNet` (118,273 parameters with the defaults).

    Raises:
        ValueError: If any argument is not a positive integer.
    """
    return BayesUNet(in_channels, out_channels, base, depth)
