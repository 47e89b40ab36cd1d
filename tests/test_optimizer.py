"""hvi.fit.default_optimizer: the one optimizer (and the one meaning of clip_norm) of hvi.fit and hvi fit."""

from __future__ import annotations

import importlib

import pyro
import pytest
import torch
from cli_checks import invoke
from torch import nn

import hvi
from hvi.fit import default_optimizer
from hvi.priors import GaussianPrior

fit_mod = importlib.import_module("hvi.fit")  # the module (hvi.fit is the function)


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


def _params(grads):
    """Params of the store, named a, b, ..., with these gradients set on their (unconstrained) tensors."""
    out = []
    for name, g in zip("abc", grads):
        p = pyro.param(name, torch.zeros(len(g), dtype=torch.float64)).unconstrained()
        p.grad = torch.tensor(g, dtype=torch.float64)
        out.append(p)
    return out


@pytest.mark.parametrize("method", ["abml", "reptile"])
def test_clip_norm_scales_each_parameters_gradient_to_that_norm(method):
    a, b = _params([[3.0, 4.0], [0.3, 0.4]])  # norms 5 and 0.5
    default_optimizer(method, lr=0.1, clip_norm=1.0)([a, b])
    # a's gradient is scaled to norm 1, direction kept ([1, 1] would be an element-wise clamp); b's is below 1: kept.
    torch.testing.assert_close(a.grad, torch.tensor([0.6, 0.8], dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4], dtype=torch.float64), rtol=0, atol=0)
    if method == "reptile":  # SGD: the step is lr times the clipped gradient
        torch.testing.assert_close(a.detach(), torch.tensor([-0.06, -0.08], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("method", ["abml", "reptile"])
def test_no_clip_norm_leaves_the_gradient_alone(method):
    (a,) = _params([[3.0, 4.0]])
    optim = default_optimizer(method, lr=0.1)
    assert optim.pt_clip_args == {}
    optim([a])
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0], dtype=torch.float64), rtol=0, atol=0)


def test_bad_settings_are_fit_settings_messages():
    with pytest.raises(ValueError, match=r"^clip_norm=0.0 must be a positive finite number \(unset: no clipping\)\.$"):
        default_optimizer("abml", 1e-3, 0.0)
    with pytest.raises(ValueError, match=r"^lr=-1.0 must be a positive finite number\.$"):
        default_optimizer("abml", -1.0)


def _record_optimizers(monkeypatch):
    """The optimizers hvi.fit trains with (its SVI's), as (torch class, args, clip args)."""
    seen = []

    class Recording(fit_mod.SVI):
        def __init__(self, model, guide, optim, *args, **kwargs):
            seen.append((optim.pt_optim_constructor, dict(optim.pt_optim_args), dict(optim.pt_clip_args)))
            super().__init__(model, guide, optim, *args, **kwargs)

    monkeypatch.setattr(fit_mod, "SVI", Recording)
    return seen


@pytest.mark.parametrize("method", ["abml", "reptile"])
@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_fit_and_the_cli_build_the_same_optimizer(monkeypatch, tmp_path, method, clip_norm):
    seen = _record_optimizers(monkeypatch)
    torch.manual_seed(0)
    meta = hvi.MetaModel(nn.Linear(1, 1), GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.5),
                         inner=hvi.InnerConfig(steps=1, update="gradient"), method=method)
    x = torch.randn(3, 4, 1, generator=torch.Generator().manual_seed(0))
    hvi.fit(meta, hvi.TaskBatch(x[:, :2], x[:, :2], x[:, 2:], x[:, 2:]), steps=1, lr=0.01, clip_norm=clip_norm)
    toml = tmp_path / "run.toml"
    toml.write_text("" if clip_norm is None else f"clip_norm = {clip_norm}\n")
    res = invoke(["fit", "--model", "mlp", "--method", method, "--inner-update", "gradient", "--steps", "1",
                  "--task-batch", "2", "--inner-steps", "1", "--lr", "0.01", "--config", toml, "--no-progress",
                  "--out", tmp_path / "run"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 2 and seen[0] == seen[1]
    torch_class = torch.optim.SGD if method == "reptile" else torch.optim.Adam
    assert seen[0] == (torch_class, {"lr": 0.01}, {} if clip_norm is None else {"clip_norm": 0.5})
