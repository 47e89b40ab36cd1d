"""MAML, first-order MAML and Reptile on the ABML engine (hvi.methods), against hand-written versions."""

from __future__ import annotations

import math

import pyro
import pyro.optim
import pytest
import torch
from torch import nn
from torch.func import functional_call

import hvi
from hvi.families import PointMassFamily
from hvi.methods import outer_loss
from hvi.priors.gaussian import GaussianPrior
from hvi.run_dir import CONFIG_FILE

ALPHA, K = 0.05, 2


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_default_dtype(old)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1))


def batch(B: int = 3, n: int = 4) -> hvi.TaskBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(B, 2 * n, 1, generator=g) * 4 - 2
    y = torch.sin(x + torch.rand(B, 1, 1, generator=g)) * 2
    return hvi.TaskBatch(x[:, :n], y[:, :n], x[:, n:], y[:, n:], torch.arange(B), B)


def meta(method: str, steps: int = K, **kw) -> hvi.MetaModel:
    # σ² = 1/2: −log p(y | f) = (y − f)² + const, so hvi's steps are MAML's steps on the MSE.
    return hvi.MetaModel(
        tiny_net(), prior="gaussian", likelihood=hvi.Gaussian(noise=math.sqrt(0.5)),
        inner=hvi.InnerConfig(steps=steps, update="gradient", lr=ALPHA, parallel_tasks=False), method=method, **kw,
    )


def mse(net, w, x, y):
    return (functional_call(net, w, (x,)) - y).pow(2).mean()


def adapted(net, w, x, y, second_order: bool, steps: int = K):
    """K hand-written SGD steps on one task's support MSE."""
    phi = dict(w)
    for _ in range(steps):
        grads = torch.autograd.grad(mse(net, phi, x, y), list(phi.values()), create_graph=second_order)
        phi = {n: p - ALPHA * g for (n, p), g in zip(phi.items(), grads)}
    return phi


def theta_grads(m: hvi.MetaModel, b: hvi.TaskBatch) -> tuple[float, dict[str, torch.Tensor]]:
    """hvi's outer loss of ``m`` on ``b`` and its gradient per weight (θ's loc params)."""
    loss = outer_loss(m)(m.model, m.guide, b)
    loss.backward()
    store = pyro.get_param_store()
    return loss.item(), {n: store.get_param(f"theta.{n}.loc").unconstrained().grad for n in m.net.shapes}


@pytest.mark.parametrize("method", ["maml", "fomaml"])
def test_meta_gradient_equals_hand_unrolled(method):
    m, b = meta(method), batch()
    loss, got = theta_grads(m, b)
    net = tiny_net()
    w = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    losses = []
    for i in range(b.batch_size):
        phi = adapted(net, w, b.support_x[i], b.support_y[i], second_order=method == "maml")
        if method == "fomaml":  # each inner gradient a constant: dφ_K/dθ = I
            phi = {n: w[n] + (p - w[n]).detach() for n, p in phi.items()}
        losses.append(mse(net, phi, b.query_x[i], b.query_y[i]))
    want = torch.stack(losses).mean()
    expected = dict(zip(w, torch.autograd.grad(want, list(w.values()))))
    assert loss == pytest.approx(want.item() + 0.5 * math.log(math.pi), rel=1e-12)  # NLL = MSE + ½ log(2πσ²)
    for n in w:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-10, atol=1e-12)
    assert max(float(g.abs().max()) for g in got.values()) > 1e-3  # a gradient that could be wrong


def test_maml_and_fomaml_gradients_differ():
    b = batch()
    _, second = theta_grads(meta("maml"), b)
    pyro.clear_param_store()
    _, first = theta_grads(meta("fomaml"), b)
    assert any(not torch.allclose(second[n], first[n], rtol=1e-4) for n in second)


def test_reptile_update_equals_its_definition():
    eps, b = 0.3, batch()
    m = meta("reptile", steps=3)
    hvi.fit(m, b, steps=1, optimizer=pyro.optim.SGD({"lr": eps}), seed=0)
    net = tiny_net()
    w = {n: p.detach().clone() for n, p in net.named_parameters()}
    ends = [adapted(net, {n: v.clone().requires_grad_() for n, v in w.items()}, b.support_x[i], b.support_y[i],
                    second_order=False, steps=3) for i in range(b.batch_size)]
    store = pyro.get_param_store()
    for n, v in w.items():
        mean_end = torch.stack([e[n].detach() for e in ends]).mean(0)
        want = v + eps * (mean_end - v)
        torch.testing.assert_close(store.get_param(f"theta.{n}.loc").detach(), want, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(want, v)


def test_reptile_default_optimizer_is_sgd_at_lr():
    b = batch()
    m = meta("reptile", steps=1)
    hvi.fit(m, b, steps=1, lr=0.5, seed=0)
    got = {n: pyro.get_param_store().get_param(f"theta.{n}.loc").detach().clone() for n in m.net.shapes}
    pyro.clear_param_store()
    m = meta("reptile", steps=1)
    hvi.fit(m, b, steps=1, optimizer=pyro.optim.SGD({"lr": 0.5}), seed=0)
    for n, v in got.items():
        torch.testing.assert_close(pyro.get_param_store().get_param(f"theta.{n}.loc").detach(), v)


class PointMassPrior(GaussianPrior):
    """The Gaussian prior with a point-mass guide family: ABML whose q(φ) is a δ."""

    family = PointMassFamily()


def test_abml_with_point_mass_and_vanishing_kl_is_maml():
    """The ELBO of ABML with q(φ) = δ and β → 0 is −(M·Nq) times MAML's loss, value and gradient."""
    b = batch()
    m = meta("maml")
    maml_loss, maml_grad = theta_grads(m, b)
    pyro.clear_param_store()
    beta = 1e-9
    abml = hvi.MetaModel(
        tiny_net(), prior=PointMassPrior(), likelihood=hvi.Gaussian(noise=math.sqrt(0.5)),
        inner=hvi.InnerConfig(steps=K, update="gradient", lr=ALPHA, kl_weight=beta, parallel_tasks=False),
    )
    elbo = pyro.infer.Trace_ELBO(max_plate_nesting=2)
    loss = elbo.differentiable_loss(abml.model, abml.guide, b)
    loss.backward()
    scale = b.num_tasks * b.query_y.shape[1]  # the ELBO sums over tasks (M/B · B) and query points
    assert loss.item() / scale == pytest.approx(maml_loss, rel=1e-6)
    store = pyro.get_param_store()
    for n, g in maml_grad.items():
        torch.testing.assert_close(store.get_param(f"theta.{n}.loc").unconstrained().grad / scale, g, rtol=1e-6, atol=1e-9)


def test_point_predictions_have_no_predictive_columns():
    b = batch()
    m = meta("maml")
    pred = hvi.predict(m, b, inner_steps=1, num_samples=7)
    assert pred.std is None and pred.samples.shape[0] == 1
    scores = hvi.regression_metrics(pred, b.query_y)
    assert torch.isnan(scores["nll"]).all() and torch.isnan(scores["coverage_90"]).all()
    net = tiny_net()
    w = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
    phi = adapted(net, w, b.support_x[0], b.support_y[0], second_order=False, steps=1)
    torch.testing.assert_close(pred.mean[0], functional_call(net, phi, (b.query_x[0],)).detach())
    assert float(scores["rmse"][0]) == pytest.approx(mse(net, phi, b.query_x[0], b.query_y[0]).sqrt().item(), rel=1e-10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "mamll"}, "method='mamll' is not understood"),
        ({"method": "maml", "inner": hvi.InnerConfig()}, "plain gradient steps"),
        ({"method": "maml", "inner": hvi.InnerConfig(update="gradient", first_order=True)}, "use method='fomaml'"),
        ({"method": "reptile", "q_theta": "normal"}, "q_theta='delta'"),
    ],
)
def test_bad_method_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        hvi.MetaModel(tiny_net(), **kwargs)
    assert "\n" not in str(e.value)


def test_a_deterministic_method_learns_a_point_theta():
    with pytest.raises(ValueError, match=r"^method='maml' learns a point θ; use q_theta='delta' \(or method='abml'\)\.$"):
        hvi.MetaModel(tiny_net(), method="maml", q_theta="normal")
    assert hvi.MetaModel(tiny_net(), GaussianPrior(hyperprior=True), q_theta="normal").q_theta == "normal"  # abml may


def test_method_is_in_the_config_and_defaults_to_plain_gradient_steps():
    m = hvi.MetaModel(tiny_net(), method="fomaml")
    assert m.config()["method"] == "fomaml"
    assert m.inner.update == "gradient" and m.inner.lr == 0.01 and m.inner.first_order and m.inner.kl_weight == 0
    assert hvi.MetaModel(tiny_net()).config()["method"] == "abml"


def test_meta_sgd_checkpoint_expects_the_params_the_guide_makes():
    """maml with learned α (Meta-SGD): one α per weight for the point mass's loc only, not the prior's ρ."""
    from hvi.checkpoint import expected_params

    m = hvi.MetaModel(tiny_net(), prior="gaussian", likelihood=hvi.Gaussian(noise=math.sqrt(0.5)),
                      inner=hvi.InnerConfig(steps=1, update="gradient", lr=ALPHA, learn_lr=True,
                                            parallel_tasks=False), method="maml")
    outer_loss(m)(m.model, m.guide, batch())
    made = dict(pyro.get_param_store().items())
    assert expected_params(m) == {k: tuple(v.shape) for k, v in made.items()}
    assert sum(k.startswith("inner_lr.") for k in made) == len(m.net.shapes)


# --------------------------------------------------------------------------- the CLI


@pytest.fixture()
def cli_env(fresh_store):
    """The CLI at float32 (this module's other tests run at float64)."""
    torch.set_default_dtype(torch.float32)
    from click.testing import CliRunner

    from hvi.cli.main import cli

    return CliRunner(), cli


@pytest.mark.parametrize("method", ["maml", "reptile"])
def test_cli_fit_and_evaluate_a_deterministic_method(cli_env, tmp_path, method):
    import json

    runner, cli = cli_env
    out = tmp_path / method
    res = runner.invoke(cli, ["fit", "--method", method, "--model", "mlp", "--steps", "3", "--task-batch", "2",
                              "--inner-steps", "1", "--no-progress", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / CONFIG_FILE).read_text())
    assert cfg["method"] == method and cfg["inner_update"] == "gradient" and cfg["first_order"] == (method != "maml")
    assert cfg["lr"] == (0.1 if method == "reptile" else 3e-3)
    res = runner.invoke(cli, ["evaluate", str(out), "--max-tasks", "4", "--json", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    scores = json.loads(res.stdout)["metrics"]
    assert scores["rmse"]["value"] > 0
    assert scores["nll"]["value"] is None and scores["coverage_90"]["value"] is None and scores["crps"]["value"] is None
    res = runner.invoke(cli, ["evaluate", str(out), "--max-tasks", "4", "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0 and "n/a" in res.stdout, res.output
    res = runner.invoke(cli, ["diagnose", str(out), "--max-tasks", "2"])
    assert res.exit_code != 0 and "hvi evaluate" in res.stderr and "Traceback" not in res.output
    if method != "maml":
        return
    import numpy as np
    import xarray as xr

    g = np.random.default_rng(1)
    xs, xq = g.uniform(-5, 5, size=(2, 5, 1)).astype("float32"), g.uniform(-5, 5, size=(2, 3, 1)).astype("float32")
    xr.Dataset({"x": (("task", "sample", "feature"), xs), "y": (("task", "sample"), np.sin(xs[..., 0]))}).to_netcdf(
        tmp_path / "s.nc", engine="h5netcdf")
    xr.Dataset({"x": (("task", "sample", "feature"), xq)}).to_netcdf(tmp_path / "q.nc", engine="h5netcdf")
    files = ["predict", str(out), "--support", str(tmp_path / "s.nc"), "--query", str(tmp_path / "q.nc")]
    res = runner.invoke(cli, [*files, "--out", str(tmp_path / "p.nc")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    with xr.open_dataset(tmp_path / "p.nc", engine="h5netcdf") as ds:
        assert sorted(ds.data_vars) == ["mean"] and np.isfinite(ds["mean"].values).all()
    res = runner.invoke(cli, [*files, "--out", str(tmp_path / "p2.nc"), "--quantiles", "0.5"])
    assert res.exit_code != 0 and "point predictions" in res.stderr and not (tmp_path / "p2.nc").exists()


def test_cli_bad_method_is_one_line_error(cli_env, tmp_path):
    from cli_checks import assert_error

    runner, cli = cli_env
    res = runner.invoke(cli, ["fit", "--method", "mamlx", "--model", "mlp", "--steps", "1", "--out", str(tmp_path / "r")])
    assert_error(res, "method='mamlx' is not understood", "'abml', 'maml', 'fomaml', 'reptile'")
    assert not (tmp_path / "r").exists()


def test_old_run_config_without_method_loads_as_abml(tmp_path):
    from hvi.defaults import defaults_for
    from hvi.run_dir import check_config as check_run_config

    cfg = {k: v for k, v in defaults_for("mlp").items() if k != "method"}
    cfg.update(model="mlp", likelihood="gaussian", val_every=1, checkpoint_every=1)
    assert check_run_config(cfg, tmp_path / CONFIG_FILE)["method"] == "abml"
    # Runs from before the natural step's curvature options measured the pair at every step.
    old = {k: v for k, v in cfg.items() if k not in ("curvature_every", "inner_curvature", "inner_line_search")}
    loaded = check_run_config(old, tmp_path / CONFIG_FILE)
    assert (loaded["curvature_every"], loaded["inner_curvature"], loaded["inner_line_search"]) == (1, "pair", False)
