"""hvi.fit(seed=...) is a function of its seed: it leaves the caller's RNGs and thread count as it found them."""

from __future__ import annotations

import random

import numpy as np
import pyro
import torch

import hvi
from hvi.priors import GaussianPrior


def small():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.linspace(-2, 2, 40).reshape(4, 10, 1)
    return hvi.MetaModel(net, GaussianPrior(init_scale=0.1), hvi.Gaussian(init_scale=0.3)), hvi.TaskBatch(
        x[:, :5], torch.sin(x[:, :5]), x[:, 5:], torch.sin(x[:, 5:]))


def _global_state():
    return (torch.initial_seed(), torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(),
            torch.get_num_threads())


def test_fit_with_a_seed_leaves_global_rngs_and_threads_alone():
    meta, batch = small()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two tasks chunks in threads: hvi.parallel drops the kernels to one thread meanwhile
    try:
        torch.manual_seed(123)
        random.seed(5)
        np.random.seed(7)
        before = _global_state()
        r1 = hvi.fit(meta, batch, steps=3, seed=0)
        after = _global_state()
    finally:
        torch.set_num_threads(threads)
    assert before[0] == after[0] == 123 and torch.equal(before[1], after[1]) and before[2] == after[2]
    assert np.array_equal(before[3], after[3]) and before[4] == after[4] == 2
    # ... and it is a function of its seed, whatever the caller's RNG state.
    torch.manual_seed(999)
    r2 = hvi.fit(meta, batch, steps=3, seed=0)
    assert r1.losses == r2.losses


def test_fit_without_a_seed_uses_and_advances_the_global_rng():
    meta, batch = small()
    pyro.set_rng_seed(1)
    state = torch.get_rng_state()
    hvi.fit(meta, batch, steps=2, seed=None)
    assert not torch.equal(state, torch.get_rng_state())


def test_fit_keeps_the_callers_params_and_leaves_its_own_in_the_store():
    meta, batch = small()
    pyro.clear_param_store()
    mine = pyro.param("mine", torch.tensor([1.0, 2.0]), constraint=torch.distributions.constraints.positive)
    mine_u = pyro.get_param_store().get_state()["params"]["mine"]
    stale = pyro.param("theta.0.weight.loc", torch.full((8, 1), 7.0))  # a same-named param: replaced, not a start
    result = hvi.fit(meta, batch, steps=2, seed=0)
    store = pyro.get_param_store()
    # The caller's param: the same tensor, value and constraint as before.
    assert store.get_state()["params"]["mine"] is mine_u and torch.equal(pyro.param("mine").detach(), mine.detach())
    assert store.get_state()["constraints"]["mine"] is torch.distributions.constraints.positive
    # The fitted params are where predict and checkpoints read them: the global store.
    assert set(store.keys()) == set(result.params) | {"mine"}
    for k, v in result.params.items():
        assert torch.equal(pyro.param(k).detach(), v), k
    assert not torch.equal(pyro.param("theta.0.weight.loc").detach(), stale.detach())
    # Trained from the model's init, not from the stale value: the same as a fit in an empty store.
    pyro.clear_param_store()
    fresh = hvi.fit(meta, batch, steps=2, seed=0)
    assert result.losses == fresh.losses
    # resume=True continues the store's params (a second fit of 2 steps differs from the first).
    again = hvi.fit(meta, batch, steps=2, seed=0, resume=True)
    assert again.losses != fresh.losses


def test_an_interrupted_fit_restores_the_callers_params_and_keeps_what_it_trained():
    meta, batch = small()
    pyro.clear_param_store()
    pyro.param("mine", torch.tensor(3.0))

    def stop(step, loss, b):
        raise KeyboardInterrupt

    try:
        hvi.fit(meta, batch, steps=5, seed=0, callback=stop)
    except KeyboardInterrupt:
        pass
    assert pyro.param("mine").item() == 3.0 and "theta.0.weight.loc" in pyro.get_param_store()
