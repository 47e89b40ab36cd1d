"""hvi.ntk: the empirical NTK equals J Jᵀ built by hand; energy fractions."""

from __future__ import annotations

import hvi.models
import pytest
import torch

from hvi.data.images import pixel_grid
from hvi.functional import FunctionalNet
from hvi.ntk import empirical_ntk, energy_fraction, ntk_spectrum


def _tiny_siren() -> FunctionalNet:
    torch.manual_seed(0)
    module = hvi.models.get_model("siren", width=6, depth=2, w0=3.0, hidden_w0=3.0).double()
    return FunctionalNet(module, parallel_tasks=False)


def _direct(net: FunctionalNet, x: torch.Tensor) -> torch.Tensor:
    """J Jᵀ with J built row by row: one autograd.grad per output."""
    weights = {n: w.clone().requires_grad_(True) for n, w in net.init_weights.items()}
    out = net(weights, x).reshape(-1)
    rows = []
    for i in range(out.shape[0]):
        grads = torch.autograd.grad(out[i], list(weights.values()), retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    jac = torch.stack(rows)
    return jac @ jac.T


def test_ntk_equals_direct_jacobian_product(one_thread):
    net = _tiny_siren()
    x = pixel_grid(4, 5).double()
    kernel = empirical_ntk(net, net.init_weights, x)
    direct = _direct(net, x)
    assert kernel.shape == (20, 20) and kernel.dtype == torch.float64
    assert float(direct.abs().max()) > 1e-2  # not a trivially zero kernel
    torch.testing.assert_close(kernel, direct, rtol=0, atol=1e-10)
    # chunked Jacobians give the same kernel
    torch.testing.assert_close(empirical_ntk(net, net.init_weights, x, chunk_size=3), direct, rtol=0, atol=1e-10)


def test_spectrum_and_energy_fraction(one_thread):
    net = _tiny_siren()
    x = pixel_grid(4, 4).double()
    spec = ntk_spectrum(empirical_ntk(net, net.init_weights, x))
    assert bool((spec.eigenvalues[:-1] >= spec.eigenvalues[1:]).all())
    assert float(spec.eigenvalues[-1]) > -1e-10  # positive semi-definite
    torch.testing.assert_close(spec.eigenvectors.T @ spec.eigenvectors, torch.eye(16, dtype=torch.float64))
    assert bool((spec.eigenvectors.sum(0) >= 0).all())  # signs fixed
    y = torch.randn(3, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    frac = energy_fraction(spec.eigenvectors, y)
    assert frac.shape == (3, 16)
    assert bool((frac[:, 1:] >= frac[:, :-1] - 1e-12).all())
    torch.testing.assert_close(frac[:, -1], torch.ones(3, dtype=torch.float64))
    # the top eigenvector alone captures all of its own energy; a later one none of the first
    v0 = spec.eigenvectors[:, 0]
    assert float(energy_fraction(spec.eigenvectors, 2.5 * v0)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(energy_fraction(spec.eigenvectors, spec.eigenvectors[:, 5])[4]) == pytest.approx(0.0, abs=1e-12)


def test_errors():
    net = _tiny_siren()
    with pytest.raises(ValueError, match="1024"):
        empirical_ntk(net, net.init_weights, torch.zeros(2000, 2, dtype=torch.float64))
    wide = FunctionalNet(hvi.models.get_model("siren", width=4, depth=1, out_features=2).double(), parallel_tasks=False)
    with pytest.raises(ValueError, match="scalar outputs"):
        empirical_ntk(wide, wide.init_weights, pixel_grid(2, 2).double())
    with pytest.raises(ValueError, match="all zeros"):
        energy_fraction(torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
