"""Four-block convolutional few-shot classifier (MAML, Finn et al. 2017)."""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["Conv4", "conv4"]


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
