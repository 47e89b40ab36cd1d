"""Four-block convolutional few-shot classifier (MAML, Finn et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model
from .task_ops import task_conv, task_max_pool, task_relu

__all__ = ["Conv4", "conv4"]


_native_batch_norm = torch.ops.aten.native_batch_norm
_native_batch_norm_backward = torch.ops.aten.native_batch_norm_backward


class _BatchNorm(torch.autograd.Function):
    """``F.batch_norm(z, None, None, weight, bias, training=True, eps)`` whose backward is cheap to differentiate.

    PyTorch's double backward of batch norm sums over ``(N, H, W)`` of
    channels-last memory with a slow strided reduction. The forward, and a
    backward that is not differentiated, are PyTorch's own kernels; a
    backward that will be differentiated (second order) is written in plain
    ops on the ``(N, H, W, C)`` view of the memory, where each reduction runs
    over leading dims (docs/performance.md). Same values to rounding
    (``tests/test_conv4_batched.py``).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(z, weight, bias, eps):
        return _native_batch_norm(z, weight, bias, None, None, True, 0.0, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        z, weight, _bias, ctx.eps = inputs
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_backward(z, weight, output[1], output[2])

    @staticmethod
    def backward(ctx, g, _g_mean, _g_invstd):
        z, weight, mean, invstd = ctx.saved_tensors
        if not torch.is_grad_enabled():
            return (*_native_batch_norm_backward(g, z, weight, None, None, mean, invstd, True, ctx.eps,
                                                 list(ctx.needs_input_grad[:3])), None)
        zt, gt = z.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
        d = zt - zt.mean((0, 1, 2))
        rstd = torch.rsqrt((d * d).mean((0, 1, 2)) + ctx.eps)
        xhat = d * rstd
        db = gt.sum((0, 1, 2))
        dw = (gt * xhat).sum((0, 1, 2))
        m = zt.numel() // zt.shape[-1]
        dz = (gt - db / m - xhat * (dw / m)) * (rstd * weight)
        return dz.permute(0, 3, 1, 2), dw, db, None


def _batch_norm(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
    if torch.compiler.is_compiling():
        return F.batch_norm(z, None, None, weight, bias, training=True, eps=eps)
    return _BatchNorm.apply(z, weight, bias, eps)[0]


class Conv4(nn.Module):
    """4 x [conv3x3 -> BatchNorm2d(track_running_stats=False) -> ReLU -> MaxPool2d(2)] -> linear.

    BatchNorm always normalises with the statistics of the current batch (in
    train and eval mode alike) and holds no buffers, which is what lets the hvi
    engine evaluate per-task weights with ``torch.func``.

    Args:
        in_channels: Image channels.
        num_classes: Number of output logits (ways).
        hidden: Channels of every conv block.
        image_size: Square input side; the flattened size is
            ``hidden * s**2`` with ``s = image_size // 2**4`` (floor per pool).

    Raises:
        ValueError: If a size is not a positive integer or ``image_size < 16``.
    """

    def __init__(self, in_channels: int, num_classes: int, hidden: int, image_size: int) -> None:
        super().__init__()
        for arg, val in (("in_channels", in_channels), ("num_classes", num_classes),
                         ("hidden", hidden), ("image_size", image_size)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"conv4: {arg} must be a positive int, got {val!r}")
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"conv4: image_size must be >= 16 (four 2x2 poolings), got {image_size}")
        self.image_size = image_size
        blocks = []
        prev = in_channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(prev, hidden, kernel_size=3, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            prev = hidden
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(hidden * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images ``(N, in_channels, image_size, image_size)`` to logits ``(N, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), start_dim=1))

    def batched_forward(self, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """The forward for B tasks at once, each with its own weights.

        Equal to ``torch.func.vmap`` of :meth:`forward` under
        ``functional_call`` (tested to float64 rounding, first and second
        derivatives included, ``tests/test_conv4_batched.py``), and what
        :class:`hvi.functional.FunctionalNet` runs for a batch of tasks.
        Tasks are interleaved along the channels, ``(N, B*C, H, W)`` in
        channels-last memory: each convolution is one grouped call over the
        tasks, and since BatchNorm normalises each channel over
        ``(N, H, W)``, one batch norm over the B*C channels gives every
        task its own batch statistics. vmap reaches the same grouped calls
        on NCHW memory and moves the task dimension around every
        normalisation and pooling (``benchmarks/conv4_batched_ab.py``).

        Args:
            weights: Every parameter name of this module mapped to a tensor
                ``(B, *shape)`` of per-task values.
            x: Inputs ``(B, N, in_channels, image_size, image_size)``.

        Returns:
            Logits ``(B, N, num_classes)``.

        Raises:
            ValueError: If ``x`` is not 5-D.
        """
        if x.dim() != 5:
            raise ValueError(f"conv4.batched_forward expects input of shape (B, N, C, H, W), got {tuple(x.shape)}")
        tasks, n, c, h, w = x.shape
        # (B, N, C, H, W) -> (N, B*C, H, W) on (N, H, W, B, C) memory: channels-last.
        z = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, tasks * c).permute(0, 3, 1, 2)
        for i in range(0, len(self.features), 4):
            conv, norm = f"features.{i}", f"features.{i + 1}"
            z = task_conv(z, weights[f"{conv}.weight"], weights[f"{conv}.bias"], 1)
            z = _batch_norm(z, weights[f"{norm}.weight"].reshape(-1), weights[f"{norm}.bias"].reshape(-1),
                            self.features[i + 1].eps)
            # ReLU after the pooling: the same values (both are monotone), on a quarter of the elements.
            z = task_relu(task_max_pool(z))
        # torch.flatten of one task's (C, s, s) features, for every task: (N, B, C*s*s).
        feats = z.reshape(n, tasks, -1, z.shape[-2] * z.shape[-1]).reshape(n, tasks, -1)
        out = torch.einsum("nbf,bkf->bnk", feats, weights["classifier.weight"])
        return out + weights["classifier.bias"][:, None, :]


@register_model("conv4")
def conv4(in_channels: int = 1, num_classes: int = 5, hidden: int = 64, image_size: int = 28) -> nn.Module:
    """MAML four-block conv few-shot classifier (BatchNorm with per-batch statistics).

    Four blocks of conv3x3 (``hidden`` channels, padding 1) ->
    ``BatchNorm2d(hidden, track_running_stats=False)`` -> ReLU ->
    ``MaxPool2d(2)``, then flatten and a linear layer to ``num_classes``
    logits. The flattened size is computed from ``image_size`` (28 -> 1x1,
    84 -> 5x5). Input ``(N, in_channels, image_size, image_size)``.

    Args:
        in_channels: Image channels (1 for Omniglot, 3 for miniImageNet). Defaults to 1.
        num_classes: Number of classes per task (N-way). Defaults to 5.
        hidden: Channels per conv block. Defaults to 64.
        image_size: Square image side. Defaults to 28.

    Returns:
        A :class:`Conv4` (112,261 parameters with the defaults).

    Raises:
        ValueError: If a size is not a positive integer or ``image_size < 16``.
    """
    return Conv4(in_channels, num_classes, hidden, image_size)
