"""FunctionalNet.configure(compile=..., autocast=...): the same meta-gradients, faster or in reduced precision."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import hvi
from hvi.models import get_model
from hvi.priors import GaussianPrior


def meta_gradient(first_order: bool, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and flat meta-gradient of one Trace_ELBO meta-step on a tiny U-Net (float32)."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    net = get_model("bayes_unet", in_channels=3, out_channels=1, base=4, depth=2)
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.05), hvi.Gaussian(init_scale=0.5),
                         inner=hvi.InnerConfig(steps=2, update="gradient", lr=1e-3, first_order=first_order))
    assert meta.net.configure(**options) is meta.net
    g = torch.Generator().manual_seed(1)
    batch = hvi.TaskBatch(*(torch.randn(2, 3, c, 8, 8, generator=g) for c in (3, 1, 3, 1)))
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
    params = dict(pyro.get_param_store().named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), torch.cat([v.reshape(-1) for v in grads])


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_meta_gradient_is_close_to_float32(precision, first_order, one_thread):
    loss0, g0 = meta_gradient(first_order)
    loss1, g1 = meta_gradient(first_order, autocast=precision)
    assert torch.isfinite(g1).all()
    rel = float((g1 - g0).norm() / g0.norm())
    # bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 2e-3 per op); measured ~5e-4 here.
    assert 0 < rel < 1e-2, rel  # > 0: the forward did run in reduced precision
    assert abs(float(loss1 - loss0)) < 1e-3 * abs(float(loss0))


# Dynamo reads .grad of the non-leaf weights (λ's draws) while tracing: its warning, not ours.
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_a_compiled_forward_gives_the_same_meta_gradient(first_order, one_thread):
    # "eager": dynamo captures the vmapped functional forward and replays it (fast to compile);
    # inductor (compile=True) is what the benchmark times. The second-order inner loop runs uncompiled.
    loss0, g0 = meta_gradient(first_order)
    loss1, g1 = meta_gradient(first_order, compile="eager")
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6)


def test_bad_options_are_one_clear_error():
    net = hvi.FunctionalNet(torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match=r"autocast='float8' is not understood; use one of 'none', 'bf16', 'fp16'"):
        net.configure(autocast="float8")
    with pytest.raises(ValueError, match=r"compile=1 must be True, False or a torch.compile backend name"):
        net.configure(compile=1)
    assert net.configure() is net and (net.compile, net.autocast) == (False, "none")
