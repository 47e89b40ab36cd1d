"""InnerConfig(memory="checkpoint"): the same second-order meta-gradients, from recomputed inner steps."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import hvi
from hvi.priors import GaussianPrior, LaplacePrior

DT = torch.float64


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def batch() -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 10, 1, generator=g, dtype=DT) * 4 - 2
    y = torch.sin(x + torch.rand(3, 1, 1, generator=g, dtype=DT)) + 0.1 * torch.randn(3, 10, 1, generator=g, dtype=DT)
    return hvi.TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:])


def loss_and_grads(memory: str, update: str, prior, learn_lr: bool):
    pyro.clear_param_store()
    inner = hvi.InnerConfig(steps=3, update=update, memory=memory, learn_lr=learn_lr, num_samples=2,
                            lr=0.3 if update == "natural" else 0.05)
    meta = hvi.MetaModel(net(), prior, hvi.Gaussian(init_scale=0.3), inner=inner)
    pyro.set_rng_seed(4)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch())
    params = dict(pyro.get_param_store().named_parameters())
    return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize("learn_lr", [False, True])
@pytest.mark.parametrize("update,prior", [
    ("natural", GaussianPrior(init_scale=0.2)),
    ("gradient", GaussianPrior(init_scale=0.2)),
    ("gradient", LaplacePrior(init_scale=0.2)),  # no closed-form KL gradient: autograd through the KL
])
def test_checkpointed_inner_steps_give_the_same_meta_gradients(update, prior, learn_lr):
    loss0, g0 = loss_and_grads("none", update, prior, learn_lr)
    loss1, g1 = loss_and_grads("checkpoint", update, prior, learn_lr)
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    assert set(g1) == set(g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-10, atol=1e-12)
    assert any(bool(v.abs().sum() > 0) for v in g0.values())


def test_an_unknown_memory_mode_is_one_clear_error():
    with pytest.raises(ValueError, match=r"inner memory='recompute' is not understood; use one of 'none', 'checkpoint', 'implicit'"):
        hvi.InnerConfig(memory="recompute")
