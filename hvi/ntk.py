"""The empirical neural tangent kernel (NTK) of a functional network, and how an image sits in its eigenbasis.

For a network with scalar output f_w(x) and inputs x_1..x_N (a pixel grid),
the empirical NTK at weights w is the N×N Gram matrix of the per-input
weight gradients::

    K = J Jᵀ,   J[i, p] = ∂f_w(x_i) / ∂w_p

Gradient descent on the squared error moves the outputs, to first order, by
``−α K (f − y)``, so the eigenvectors of K with large eigenvalues are the
patterns the network learns first. :func:`energy_fraction` measures how much
of an image's energy ‖y‖² lies in the span of the top-k eigenvectors (Tancik
et al. 2021, "Learned initializations for optimizing coordinate-based neural
representations", Sec. 5.3: meta-learning reshapes the NTK's eigenfunctions
towards the training signals, like dictionary learning).

J is built one weight tensor at a time (``torch.func.vmap`` of
``torch.func.jacrev`` over the inputs) and ``K = Σ_t J_t J_tᵀ`` accumulated,
so peak memory is N times the largest weight tensor, not N times all weights.

::

    from hvi.functional import FunctionalNet
    net = FunctionalNet(siren_module)
    K = empirical_ntk(net, net.init_weights, pixel_grid(25, 25))
    spec = ntk_spectrum(K)
    frac = energy_fraction(spec.eigenvectors, image.reshape(-1))   # frac[k-1]: top-k share
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jacrev, vmap

__all__ = ["MAX_POINTS", "NTKSpectrum", "empirical_ntk", "ntk_spectrum", "energy_fraction"]

#: The largest grid :func:`empirical_ntk` accepts by default (32×32 pixels): K has N² entries.
MAX_POINTS = 1024

Weights = Mapping[str, Tensor]


@dataclass(frozen=True)
class NTKSpectrum:
    """The eigendecomposition of a symmetric kernel, largest eigenvalue first.

    Attributes:
        eigenvalues: ``(N,)``, descending.
        eigenvectors: ``(N, N)``, column ``k`` the unit eigenvector of ``eigenvalues[k]``,
            its sign chosen so that its entries sum to ``>= 0``.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor


def _check_inputs(x: Tensor, max_points: int) -> None:
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError(f"x must be a tensor of inputs (N, *x_shape), got {type(x).__name__}.")
    n = x.shape[0]
    if not 1 <= n <= max_points:
        raise ValueError(
            f"the NTK over {n} inputs needs an {n}x{n} kernel; use between 1 and {max_points} inputs "
            f"(e.g. a 32x32 grid) or raise max_points."
        )


def empirical_ntk(
    net: Callable[[Weights, Tensor], Tensor],
    weights: Weights,
    x: Tensor,
    *,
    chunk_size: int | None = None,
    max_points: int = MAX_POINTS,
) -> Tensor:
    """The empirical NTK ``K = J Jᵀ`` of a scalar-output network at ``weights`` over the inputs ``x``.

    Args:
        net: A pure function ``net(weights, x) -> (N, 1)`` or ``(N,)`` outputs,
            e.g. a :class:`hvi.functional.FunctionalNet`.
        weights: Every weight tensor the kernel is taken over, by name (all of
            them: ``net`` is called with exactly this dict).
        x: Inputs ``(N, *x_shape)``, e.g. :func:`hvi.data.images.pixel_grid`.
        chunk_size: Inputs per vectorized Jacobian chunk (``torch.func.vmap``'s
            ``chunk_size``; default None: all at once). Lower it to save memory.
        max_points: The largest N accepted (default :data:`MAX_POINTS`).

    Returns:
        ``(N, N)`` symmetric positive semi-definite kernel in the weights' dtype.

    Raises:
        ValueError: If ``x`` has more than ``max_points`` inputs, ``weights``
            is empty, or the network's output per input is not a scalar.
    """
    _check_inputs(x, max_points)
    if not weights:
        raise ValueError("weights is empty; pass the network's weight tensors by name (e.g. net.init_weights).")
    names = list(weights)
    probe = net(dict(weights), x[:1])
    if probe.numel() != 1:
        raise ValueError(
            f"the empirical NTK here is for scalar outputs, but the network gives {tuple(probe.shape[1:])} per input; "
            "use a network with one output (e.g. siren out_features=1)."
        )
    n = x.shape[0]
    kernel = torch.zeros(n, n, dtype=probe.dtype, device=probe.device)
    for name in names:
        rest = {k: v.detach() for k, v in weights.items() if k != name}

        def f_one(w: Tensor, xi: Tensor, _name: str = name, _rest: dict = rest) -> Tensor:
            return net({**_rest, _name: w}, xi.unsqueeze(0)).reshape(())

        jac = vmap(jacrev(f_one), in_dims=(None, 0), chunk_size=chunk_size)(weights[name].detach(), x)
        jac = jac.reshape(n, -1)
        kernel += jac @ jac.T
        del jac
    return kernel


def ntk_spectrum(kernel: Tensor) -> NTKSpectrum:
    """Eigenvalues (descending) and unit eigenvectors of a symmetric kernel.

    Args:
        kernel: ``(N, N)`` symmetric matrix (symmetrized as ``(K + Kᵀ)/2``
            against round-off).

    Returns:
        An :class:`NTKSpectrum`.

    Raises:
        ValueError: If ``kernel`` is not a square matrix.
    """
    if kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
        raise ValueError(f"kernel must be a square (N, N) matrix, got shape {tuple(kernel.shape)}.")
    vals, vecs = torch.linalg.eigh((kernel + kernel.T) / 2)
    order = torch.argsort(vals, descending=True)
    vecs = vecs[:, order]
    # An eigenvector's sign is arbitrary: fix it (non-negative sum) so that plots of two kernels compare.
    vecs = vecs * torch.where(vecs.sum(0) < 0, -1.0, 1.0).to(vecs.dtype)
    return NTKSpectrum(vals[order], vecs)


def energy_fraction(eigenvectors: Tensor, y: Tensor) -> Tensor:
    """The fraction of ``‖y‖²`` captured by projecting ``y`` on the top-k eigenvectors, for k = 1..N.

    Args:
        eigenvectors: ``(N, N)`` orthonormal columns, most important first
            (:attr:`NTKSpectrum.eigenvectors`).
        y: A signal over the N inputs, ``(N,)``, or several ``(M, N)``.

    Returns:
        ``(N,)`` (or ``(M, N)``): entry ``k − 1`` is ``Σ_{j<k} ⟨v_j, y⟩² / ‖y‖²``;
        non-decreasing in k, 1 at k = N (up to round-off).

    Raises:
        ValueError: If the shapes do not match or a signal is all zeros.
    """
    n = eigenvectors.shape[0]
    if eigenvectors.ndim != 2 or eigenvectors.shape[1] != n:
        raise ValueError(f"eigenvectors must be (N, N), got shape {tuple(eigenvectors.shape)}.")
    if y.shape[-1] != n or y.ndim not in (1, 2):
        raise ValueError(f"y must be (N,) or (M, N) with N = {n}, got shape {tuple(y.shape)}.")
    y = y.to(eigenvectors.dtype)
    total = y.pow(2).sum(-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("y has a signal of all zeros, whose energy fraction is undefined; drop it.")
    coef = y @ eigenvectors  # (..., N): ⟨v_j, y⟩
    return coef.pow(2).cumsum(-1) / total
