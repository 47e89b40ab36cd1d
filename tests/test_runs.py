"""hvi.load_run: a finished run in Python, without touching the caller's param store."""

from __future__ import annotations

import pyro
import pytest
import torch

import hvi
from hvi.checkpoint import expected_params


def test_load_run_leaves_the_global_store_alone_and_activates_its_params(runner, tmp_path):
    from hvi.cli.main import cli

    out = tmp_path / "run"
    res = runner.invoke(cli, ["fit", "--model", "mlp", "--steps", "3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    pyro.clear_param_store()
    name = sorted(expected_params(hvi.load_run(out).meta))[0]
    mine = pyro.param("mine", torch.tensor(3.0))
    pyro.param(name, torch.tensor(2.0), constraint=torch.distributions.constraints.positive)  # one of the run's names
    store = pyro.get_param_store()
    before = store.get_state()
    run = hvi.load_run(out)
    after = store.get_state()
    assert list(store.keys()) == ["mine", name] and pyro.param("mine") is mine
    assert all(after["params"][k] is before["params"][k] for k in ("mine", name))
    assert after["constraints"][name] is torch.distributions.constraints.positive
    with run.activate():
        assert set(store.keys()) == set(expected_params(run.meta))
        assert torch.equal(pyro.param(name).detach(), run.params()[name])
        batch = hvi.data.get_source("sinusoid", k_shot=10, k_query=10).get_tasks("test", torch.arange(3))
        pred = hvi.predict(run.meta, batch, num_samples=4)
        assert pred.mean.shape == batch.query_y.shape
    assert list(store.keys()) == ["mine", name] and pyro.param(name).item() == pytest.approx(2.0)
    assert store.get_state()["params"][name] is before["params"][name]
    assert store.get_state()["constraints"][name] is torch.distributions.constraints.positive
    params = run.params()
    assert set(params) == set(expected_params(run.meta)) and run.config["model"] == "mlp"


def test_load_run_of_a_missing_run_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run directory .*nope does not exist; train one with 'hvi fit --out"):
        hvi.load_run(tmp_path / "nope")
