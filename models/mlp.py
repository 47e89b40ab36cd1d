"""Fully connected network for the sinusoid regression benchmark."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

__all__ = ["ACTIVATIONS", "MLP", "mlp"]

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": F.relu,
    "tanh": torch.tanh,
    "silu": F.silu,
    "gelu": F.gelu,
    "elu": F.elu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
}


class MLP(nn.Module):
    """Linear layers with an activation after every hidden layer (none on the output).

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Hidden widths; empty gives a single linear layer.
        activation: Key of :data:`ACTIVATIONS`.

    Raises:
        ValueError: If ``activation`` is unknown or a size is not a positive integer.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"mlp: unknown activation {activation!r}; choices: {', '.join(sorted(ACTIVATIONS))}."
            )
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise ValueError(f"mlp: hidden must be a list of layer widths such as [40, 40], got {hidden!r}.")
        sizes = [in_features, *hidden, out_features]
        for val in sizes:
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"mlp: layer sizes must be positive ints, got {sizes!r}")
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_features)`` to ``(N, out_features)``."""
        for layer in self.layers[:-1]:
            x = self._act(layer(x))
        return self.layers[-1](x)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


@register_model("mlp")
def mlp(in_features: int = 1, out_features: int = 1, hidden: tuple[int, ...] = (40, 40),
        activation: str = "relu") -> nn.Module:
    """Sinusoid-benchmark MLP (default 1 -> 40 -> 40 -> 1, ReLU).

    Args:
        in_features: Input size. Defaults to 1.
        out_features: Output size. Defaults to 1.
        hidden: Hidden layer widths. Defaults to ``(40, 40)``.
        activation: One of ``elu, gelu, relu, sigmoid, silu, softplus, tanh``.
            Defaults to ``"relu"``.

    Returns:
        An :class:`MLP` (1,761 parameters with the defaults).

    Raises:
        ValueError: If ``activation`` is unknown (the message lists the
            choices) or a size is not a positive integer.
    """
    if isinstance(hidden, (str, bytes)):
        raise ValueError(f"mlp: hidden must be a list of layer widths such as [40, 40], got {hidden!r}.")
    return MLP(in_features, out_features, tuple(hidden), activation)
