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


def test_fit_with_a_seed_leaves_global_rngs_and_threads_alone():
    meta, batch = small()
    torch.manual_seed(123)
    random.seed(5)
    np.random.seed(7)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads())
    r1 = hvi.fit(meta, batch, steps=3, seed=0)
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads())
    assert torch.equal(before[0], after[0]) and before[1] == after[1]
    assert np.array_equal(before[2], after[2]) and before[3] == after[3]
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
