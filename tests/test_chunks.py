"""hvi.fit(chunk=C) / SVI.step_chunked: a task batch in chunks, one backward each, equals the unchunked step."""

from __future__ import annotations

import pyro
import pytest
import torch

import hvi
from hvi.fit import make_elbo
from hvi.priors import GaussianPrior
from hvi.run_dir import CONFIG_FILE

DT = torch.float64


def setup(q_theta: str):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.2, hyperprior=q_theta == "normal"),
                         hvi.Gaussian(init_scale=0.3), q_theta=q_theta,
                         inner=hvi.InnerConfig(steps=2, num_samples=2), q_theta_init_scale=0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 10, 1, generator=g, dtype=DT) * 4 - 2
    y = torch.sin(x + torch.rand(12, 1, 1, generator=g, dtype=DT))
    batch = hvi.TaskBatch(x[:, :5], y[:, :5], x[:, 5:], y[:, 5:], num_tasks=40)
    return meta, batch


@pytest.mark.parametrize("q_theta,particles", [("delta", 1), ("normal", 1), ("normal", 3)])
def test_chunked_fit_equals_unchunked(q_theta, particles):
    results = {}
    for chunk in (None, 5, 1):
        meta, batch = setup(q_theta)
        res = hvi.fit(meta, batch, steps=3, task_batch=7, num_particles=particles, seed=3, chunk=chunk)
        results[chunk] = res
    for chunk in (5, 1):
        assert results[chunk].losses == pytest.approx(results[None].losses, rel=1e-10)
        for k, v in results[None].params.items():
            torch.testing.assert_close(results[chunk].params[k], v, rtol=1e-9, atol=1e-12)


def test_chunked_step_keeps_the_elbo_parts():
    meta, batch = setup("normal")
    parts = {}
    for chunk in (None, 4):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = make_elbo()
        svi = hvi.SVI(meta.model, meta.guide, pyro.optim.Adam({"lr": 1e-3}), loss=elbo)
        loss = svi.step(batch) if chunk is None else svi.step_chunked(batch, chunk)
        parts[chunk] = (loss, dict(elbo.last_parts))
    assert parts[4][0] == pytest.approx(parts[None][0], rel=1e-10)
    for k, v in parts[None][1].items():
        assert parts[4][1][k] == pytest.approx(v, rel=1e-9, abs=1e-9)


def test_bad_chunk_is_one_clear_error():
    meta, batch = setup("delta")
    with pytest.raises(ValueError, match=r"chunk=0 must be an integer >= 1"):
        hvi.fit(meta, batch, steps=1, chunk=0)


def test_cli_chunk_option(runner, tmp_path):
    from hvi.cli.main import cli

    out = tmp_path / "run"
    res = runner.invoke(cli, ["fit", "--model", "mlp", "--steps", "2", "--task-batch", "4", "--chunk", "2",
                              "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads((out / CONFIG_FILE).read_text())["chunk"] == 2
    bad = runner.invoke(cli, ["fit", "--model", "mlp", "--steps", "2", "--chunk", "0", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "chunk=0 must be an integer >= 1" in bad.output and not (tmp_path / "b").exists()
