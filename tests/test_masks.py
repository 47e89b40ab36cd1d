"""Observation masks (TaskBatch.support_mask / query_mask): unobserved targets drop out exactly."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO

import hvi
from hvi.metrics import point_metrics, regression_metrics
from hvi.predict import Prediction
from hvi.priors import GaussianPrior
from test_natural import NOISE, VectorNet, conjugate_batch

DT = torch.float64


def masked_conjugate(seed: int = 0) -> tuple[hvi.TaskBatch, torch.Tensor]:
    batch = conjugate_batch(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch.support_y.shape, generator=g) < 0.6
    mask[:, 0] = True  # every (task, coordinate) keeps an observation
    return dataclasses.replace(batch, support_mask=mask), mask


def test_one_natural_step_is_the_exact_posterior_of_the_observed_targets():
    tau = 0.9
    batch, mask = masked_conjugate()
    # Garbage (finite) values where nothing is observed must not matter.
    batch = dataclasses.replace(batch, support_y=torch.where(mask, batch.support_y, torch.full_like(batch.support_y, 1e3)))
    net = VectorNet()
    meta = hvi.MetaModel(
        net, GaussianPrior(init_scale=tau, learn_scale=False), hvi.Gaussian(noise=NOISE),
        inner=hvi.InnerConfig(steps=1, update="natural", lr=1.0),
    )
    pyro.clear_param_store()
    with torch.no_grad():
        lam = meta.guide(batch)["lambda"]["w"]
    m = mask.to(DT)
    prec = 1 / tau**2 + m.sum(1) / NOISE**2
    mean = (net.w.detach() / tau**2 + (batch.support_y * m).sum(1) / NOISE**2) / prec
    torch.testing.assert_close(lam["loc"], mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(F.softplus(lam["rho"]), prec.rsqrt(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("update", ["natural", "gradient"])
def test_masked_targets_change_neither_the_loss_nor_its_gradients(update):
    batch, mask = masked_conjugate()
    qmask = torch.ones_like(batch.support_y, dtype=torch.bool)
    qmask[:, :, 1] = False
    batch = dataclasses.replace(batch, query_x=batch.support_x, query_y=batch.support_y.clone(), query_mask=qmask)
    shifted = dataclasses.replace(
        batch,
        support_y=torch.where(mask, batch.support_y, batch.support_y + 5.0),
        query_y=torch.where(qmask, batch.query_y, batch.query_y - 7.0),
    )

    def loss_and_grads(b):
        pyro.clear_param_store()
        meta = hvi.MetaModel(VectorNet(), GaussianPrior(init_scale=0.8), hvi.Gaussian(init_scale=0.6),
                             inner=hvi.InnerConfig(steps=2, update=update))
        pyro.set_rng_seed(3)
        loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, b)
        params = dict(pyro.get_param_store().named_parameters())
        grads = torch.autograd.grad(loss, list(params.values()))
        return loss, dict(zip(params, grads))

    loss0, g0 = loss_and_grads(batch)
    loss1, g1 = loss_and_grads(shifted)
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-12, atol=1e-12)
    # ...while an observed target does change it.
    moved = dataclasses.replace(batch, query_y=batch.query_y + qmask.to(DT))
    loss2, _ = loss_and_grads(moved)
    assert abs(float((loss2 - loss0).detach())) > 1.0


def test_observe_leaves_out_masked_elements_of_an_event():
    lik = hvi.Gaussian(noise=0.5)
    out = torch.zeros(2, 3, 1, 4, 4, dtype=DT)
    y = torch.randn(2, 3, 1, 4, 4, dtype=DT)
    mask = torch.rand(2, 3, 1, 4, 4) < 0.5
    lp = lik.observe(out, {}, None, 3, mask).log_prob(y)
    ref = (torch.distributions.Normal(out, 0.5).log_prob(y) * mask).sum((-1, -2, -3))
    torch.testing.assert_close(lp, ref)


def test_metrics_score_only_observed_targets():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 5, 2, generator=g, dtype=DT)
    mean = torch.randn(3, 5, 2, generator=g, dtype=DT)
    std = torch.rand(3, 5, 2, generator=g, dtype=DT) + 0.1
    mask = torch.rand(3, 5, 2, generator=g) < 0.5
    mask[:, 0, 0] = True
    pred = Prediction(mean=mean, std=std, probs=None, samples=None)
    got = regression_metrics(pred, y, mask=mask)
    point = point_metrics(mean, y, mask)
    for i in range(3):
        m = mask[i]
        err = mean[i][m] - y[i][m]
        assert math.isclose(float(got["rmse"][i]), float(err.pow(2).mean().sqrt()), rel_tol=1e-12)
        assert math.isclose(float(point["mae"][i]), float(err.abs().mean()), rel_tol=1e-12)
        inside = (err.abs() <= 1.959963984540054 * std[i][m]).to(DT).mean()
        assert math.isclose(float(got["coverage_95"][i]), float(inside), rel_tol=1e-9)


def test_a_mask_of_the_wrong_type_is_one_clear_error():
    batch, mask = masked_conjugate()
    bad = dataclasses.replace(batch, support_mask=mask.to(DT))
    meta = hvi.MetaModel(VectorNet(), GaussianPrior(init_scale=0.8), hvi.Gaussian(noise=NOISE))
    with pytest.raises(ValueError, match=r"support_mask is torch.float64 .* must be a bool tensor shaped like the targets"):
        hvi.fit(meta, bad, steps=1)


def test_solar_masks_are_the_daylight_pixels():
    from hvi.data import get_source
    from hvi.data.solar import daylight_mask

    src = get_source("solar")
    b = src.get_tasks("test", torch.arange(3))
    assert torch.equal(b.query_mask, daylight_mask(b))
    assert b.support_mask.shape == b.support_y.shape and b.support_mask.dtype == torch.bool
    assert 0.5 < float(b.query_mask.float().mean()) < 0.95
    assert get_source("solar", mask_night=False).get_tasks("test", torch.arange(3)).query_mask is None


def test_diagnostics_leave_unobserved_query_targets_out():
    from hvi import diagnostics as dg

    pyro.clear_param_store()
    batch, _ = masked_conjugate()
    qmask = torch.ones_like(batch.support_y, dtype=torch.bool)
    qmask[:, :, 0] = False
    batch = dataclasses.replace(batch, query_x=batch.support_x, query_y=batch.support_y.clone(), query_mask=qmask)
    meta = hvi.MetaModel(VectorNet(), GaussianPrior(init_scale=0.8), hvi.Gaussian(noise=NOISE),
                         inner=hvi.InnerConfig(steps=1, lr=1.0))
    idata = dg.to_inference_data(meta, batch, num_samples=50, seed=0)
    mask = idata.constant_data["observed_mask"].values
    assert mask.shape == tuple(batch.query_y.shape) and not mask[..., 0].any() and mask[..., 1:].all()
    u = dg.pit(idata)
    assert np.isnan(u[..., 0]).all() and np.isfinite(u[..., 1:]).all()
    # A wildly wrong unobserved target changes neither the log-likelihood nor the coverage.
    far = dataclasses.replace(batch, query_y=torch.where(qmask, batch.query_y, batch.query_y + 100.0))
    idata2 = dg.to_inference_data(meta, far, num_samples=50, seed=0)
    np.testing.assert_allclose(idata2.log_likelihood["y"].values, idata.log_likelihood["y"].values)
    np.testing.assert_allclose(dg.interval_coverage(idata2).observed, dg.interval_coverage(idata).observed)
