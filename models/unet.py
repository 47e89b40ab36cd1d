"""2-D U-Net for image-to-image regression (``bayes_unet``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
# Private aliases: benchmarks/unet_ops_ab.py swaps these module globals for their plain forms.
from .task_ops import channels_last as _channels_last
from .task_ops import grad_channels_last as _grad_channels_last
from .task_ops import task_max_pool as _max_pool
from .task_ops import task_conv as _task_conv
from .task_ops import task_relu as _relu

__all__ = ["BayesUNet", "bayes_unet"]


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
        ctx.shapes = [o.shape for o in output]
        # Autograd would fill a part without a gradient with NCHW zeros, and each elementwise op that then mixed
        # them with channels-last tensors would run a strided loop.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gga, ggb):
        if gga is None and ggb is None:
            return None, None, None
        ref = ggb if gga is None else gga
        gga, ggb = (torch.zeros((n, h, w, c), dtype=ref.dtype, device=ref.device).permute(0, 3, 1, 2)
                    if part is None else part for part, (n, c, h, w) in zip((gga, ggb), ctx.shapes))
        return _TaskCat.apply(gga, ggb, ctx.tasks), None, None


def _task_cat(a: torch.Tensor, b: torch.Tensor, tasks: int) -> torch.Tensor:
    """Per-task channel concatenation of task-interleaved ``(N, B*C, H, W)`` tensors, channels-last."""
    if torch.compiler.is_compiling():
        return _cat(a, b, tasks)
    return _TaskCat.apply(a, b, tasks)


def _task_head(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, tasks: int) -> torch.Tensor:
    """The per-task 1x1 convolution of task-interleaved channels-last ``z``, as ``(B, N, C_out, H, W)``.

    A contraction over each task's channels (``einsum``: one batched
    matmul). As a grouped ``F.conv2d`` with one output channel per group,
    PyTorch's CPU convolution runs it, its backward and double backward one
    group at a time, with a copy of each group's slice.
    """
    n, _, h, w = z.shape
    # The einsum's gradient for z comes out of a batched matmul in (B*C, N, H, W) memory order.
    zt = _grad_channels_last(z).permute(0, 2, 3, 1).reshape(n, h, w, tasks, -1)  # a view of channels-last memory
    out = torch.einsum("nhwbc,boc->bnohw", zt, weight.reshape(tasks, weight.shape[1], -1))
    return out + bias[:, None, :, None, None]


UPSAMPLE_MODES = ("bilinear", "nearest_1x1")


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
    The decoder upsamples by 2 (see ``upsample``), concatenates the encoder
    skip feature of the same level (``[upsampled, skip]`` on the channel axis)
    and applies two 3x3 conv + ReLU. A final 1x1 conv maps to ``out_channels``
    (no output activation). No normalisation layers and no buffers. Pooling
    and upsampling run on channels-last memory (faster on CPU, same values).

    Args:
        in_channels: Input channels ``C``.
        out_channels: Output channels.
        base: Channels at level 0.
        depth: Number of resolution levels (``depth - 1`` poolings).
        upsample: ``"bilinear"``: bilinear ``F.interpolate`` (``align_corners=False``,
            parameter-free), so the decoder's first conv sees the deeper
            level's channels plus the skip's. ``"nearest_1x1"``: nearest
            upsampling and a 1x1 conv (``up_proj.{i}``) to the skip's width,
            the seed reference's decoder, with fewer weights and FLOPs
            (``docs/performance.md``). The 1x1 conv runs before the upsampling, which
            gives the same values (a pointwise affine map commutes with
            repeating pixels) at a quarter of its cost.

    Raises:
        ValueError: If any size is not a positive integer or ``upsample`` is unknown.
    """

    def __init__(self, in_channels: int, out_channels: int, base: int, depth: int,
                 upsample: str = "bilinear") -> None:
        super().__init__()
        for arg, val in (("in_channels", in_channels), ("out_channels", out_channels),
                         ("base", base), ("depth", depth)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"bayes_unet: {arg} must be a positive int, got {val!r}")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(
                f"bayes_unet: upsample must be one of {', '.join(map(repr, UPSAMPLE_MODES))}, got {upsample!r}"
            )
        self.depth = depth
        self.upsample = upsample
        widths = [base * 2**level for level in range(depth)]
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(_DoubleConv(prev, w))
            prev = w
        # up[i] produces level depth-2-i from [upsampled level+1, skip level].
        levels = list(reversed(range(depth - 1)))
        if upsample == "nearest_1x1":
            self.up_proj = nn.ModuleList(nn.Conv2d(widths[lv + 1], widths[lv], kernel_size=1) for lv in levels)
        self.up = nn.ModuleList(
            _DoubleConv((widths[lv] if upsample == "nearest_1x1" else widths[lv + 1]) + widths[lv], widths[lv])
            for lv in levels
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
        for i, block in enumerate(self.up):
            if self.upsample == "nearest_1x1":
                x = F.interpolate(_channels_last(self.up_proj[i](x)), scale_factor=2.0, mode="nearest")
            else:
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
        ReLU, max-pooling, the skip concatenation and the 1x1 head are
        :func:`_relu`, :func:`_max_pool`, :func:`_task_cat` and
        :func:`_task_head`, whose (double) backward passes do less work than
        PyTorch's for the same values and keep the gradients channels-last
        (``tests/test_unet_ops.py``, ``benchmarks/unet_ops_ab.py``,
        ``benchmarks/layout_ab.py``).

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
                z = _max_pool(z)
            z = block(f"down.{level}", z)
            skips.append(z)
        skips.pop()  # deepest level is the bottleneck, not a skip
        for i in range(len(self.up)):
            if self.upsample == "nearest_1x1":
                z = _task_conv(z, weights[f"up_proj.{i}.weight"], weights[f"up_proj.{i}.bias"], 0)
                z = F.interpolate(z, scale_factor=2.0, mode="nearest")
            else:
                z = F.interpolate(z, scale_factor=2.0, mode="bilinear", align_corners=False)
            z = block(f"up.{i}", _task_cat(z, skips.pop(), tasks))
        return _task_head(z, weights["head.weight"], weights["head.bias"], tasks)


@register_model("bayes_unet")
def bayes_unet(in_channels: int = 3, out_channels: int = 1, base: int = 16, depth: int = 3,
               upsample: str = "bilinear") -> nn.Module:
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
        upsample: ``"bilinear"`` (parameter-free) or ``"nearest_1x1"`` (nearest
            upsampling and a 1x1 conv to the skip's width, the seed
            reference's decoder; 109,361 parameters). Defaults to ``"bilinear"``.

    Returns:
        A :class:`BayesUNet` (118,273 parameters with the defaults).

    Raises:
        ValueError: If any size is not a positive integer or ``upsample`` is unknown.
    """
    return BayesUNet(in_channels, out_channels, base, depth, upsample)
