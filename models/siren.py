"""SIREN: sinusoidal representation network (Sitzmann et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .registry import register_model

__all__ = ["SineLayer", "Siren", "siren"]


class SineLayer(nn.Module):
    """``sin(w0 * (W x + b))``.

    Args:
        in_features: Input size.
        out_features: Output size.
        w0: Frequency factor (a Python float, not a parameter or buffer).
        first: If True, weights are drawn from ``U(-1/in, 1/in)``; otherwise
            from ``U(-sqrt(6/in)/w0, sqrt(6/in)/w0)``. Biases keep PyTorch's
            default ``nn.Linear`` initialisation.
    """

    def __init__(self, in_features: int, out_features: int, w0: float, first: bool) -> None:
        super().__init__()
        self.w0 = float(w0)
        self.linear = nn.Linear(in_features, out_features)
        bound = 1.0 / in_features if first else math.sqrt(6.0 / in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    """``depth`` sine layers followed by a linear output layer.

    Args:
        in_features: Coordinate dimension.
        out_features: Output dimension.
        width: Hidden width.
        depth: Number of sine layers (>= 1).
        w0: Frequency of the first sine layer.
        hidden_w0: Frequency of the other sine layers.

    Raises:
        ValueError: If a size is not a positive integer or a frequency is not positive.
    """

    def __init__(self, in_features: int, out_features: int, width: int, depth: int,
                 w0: float, hidden_w0: float) -> None:
        super().__init__()
        for arg, val in (("in_features", in_features), ("out_features", out_features),
                         ("width", width), ("depth", depth)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"siren: {arg} must be a positive int, got {val!r}")
        if not w0 > 0 or not hidden_w0 > 0:
            raise ValueError(f"siren: w0 and hidden_w0 must be positive, got {w0!r}, {hidden_w0!r}")
        layers = [SineLayer(in_features, width, w0, first=True)]
        layers += [SineLayer(width, width, hidden_w0, first=False) for _ in range(depth - 1)]
        self.layers = nn.Sequential(*layers)
        self.out = nn.Linear(width, out_features)
        bound = math.sqrt(6.0 / width) / float(hidden_w0)
        with torch.no_grad():
            self.out.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map coordinates ``(N, in_features)`` in ``[-1, 1]`` to ``(N, out_features)``."""
        return self.out(self.layers(x))


@register_model("siren")
def siren(in_features: int = 2, out_features: int = 1, width: int = 256, depth: int = 5,
          w0: float = 30.0, hidden_w0: float = 30.0) -> nn.Module:
    """SIREN coordinate network (Sitzmann et al. 2020): sine layers + linear head.

    ``depth`` sine layers -- the first computes ``sin(w0 * (W x + b))``, the
    others ``sin(hidden_w0 * (W x + b))`` -- then a linear layer. Sitzmann
    initialisation: first-layer weights ``U(-1/in_features, 1/in_features)``;
    all later weights (hidden sine layers and the final linear layer)
    ``U(-sqrt(6/width)/hidden_w0, +sqrt(6/width)/hidden_w0)``; biases keep the
    PyTorch ``nn.Linear`` default. Input ``(N, in_features)`` coordinates in
    ``[-1, 1]``; output ``(N, out_features)``.

    Args:
        in_features: Coordinate dimension. Defaults to 2.
        out_features: Output dimension. Defaults to 1.
        width: Hidden width. Defaults to 256.
        depth: Number of sine layers. Defaults to 5.
        w0: First-layer frequency. Defaults to 30.0.
        hidden_w0: Hidden-layer frequency. Defaults to 30.0.

    Returns:
        A :class:`Siren` (264,193 parameters with the defaults).

    Raises:
        ValueError: If a size is not a positive integer or a frequency is not positive.
    """
    return Siren(in_features, out_features, width, depth, w0, hidden_w0)
