"""Task workers decoupled from torch's intra-op threads: ``hvi fit --threads N`` is N workers, kernels single-threaded."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine

import hvi
from hvi.cli.process import configure_process
from hvi.parallel import num_task_chunks, set_task_workers, task_workers
from hvi.priors import GaussianPrior

CPU = torch.device("cpu")


@pytest.fixture()
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_threads_are_task_workers_over_single_threaded_kernels(threads_restored):
    torch.set_num_threads(3)
    assert task_workers() == 3 and num_task_chunks(5, CPU) == 3  # the library default: one per intra-op thread
    configure_process({"threads": 2}, CPU)
    assert torch.get_num_threads() == 1  # the main thread's kernels: no OpenMP team to spin-wait
    assert task_workers() == 2 and num_task_chunks(5, CPU) == 2 and num_task_chunks(1, CPU) == 1
    assert num_task_chunks(5, CPU, enabled=False) == 1 and num_task_chunks(5, torch.device("meta")) == 1
    configure_process({"threads": None}, CPU)  # unset: both left as they were
    assert torch.get_num_threads() == 1 and task_workers() == 2
    set_task_workers(None)
    assert task_workers() == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_task_workers_refuses_a_non_positive_integer(bad):
    with pytest.raises(ValueError, match=r"task workers must be None or an integer >= 1, got .*; pass e\.g\. 2"):
        set_task_workers(bad)


def _loss_grads_lambda(parallel: bool):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x = torch.linspace(-2, 2, 5 * 9, dtype=torch.float64).reshape(5, 9, 1)
    y = torch.sin(3 * x) * torch.arange(1, 6, dtype=torch.float64).reshape(5, 1, 1)
    batch = hvi.TaskBatch(x[:, :4], y[:, :4], x[:, 4:], y[:, 4:])
    cfg = hvi.InnerConfig(update="natural", steps=2, lr=0.3, num_samples=2, parallel_tasks=parallel)
    meta = hvi.MetaModel(net, GaussianPrior(init_scale=0.1), hvi.Gaussian(noise="learned", init_scale=0.5), inner=cfg)
    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch)
    params = dict(pyro.get_param_store().named_parameters())
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    pyro.set_rng_seed(5)
    lam = poutine.trace(meta.guide).get_trace(batch).nodes["_RETURN"]["value"]["lambda"]
    return loss, grads, lam


def test_two_workers_at_one_intra_op_thread_give_the_serial_loss_gradients_and_lambda(threads_restored):
    """5 tasks in chunks of 3 + 2 on 2 workers while torch has 1 thread: the second-order natural loop, float64."""
    torch.set_num_threads(1)
    set_task_workers(2)
    assert num_task_chunks(5, CPU) == 2
    loss1, g1, lam1 = _loss_grads_lambda(parallel=True)
    loss0, g0, lam0 = _loss_grads_lambda(parallel=False)
    pyro.clear_param_store()
    assert torch.get_num_threads() == 1
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    assert g1.keys() == g0.keys() and len(g0) >= 3
    for name in g0:
        assert g0[name].abs().sum() > 0, name
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-10, atol=1e-12, msg=name)
    for n in lam0:
        for k in lam0[n]:
            torch.testing.assert_close(lam1[n][k], lam0[n][k], rtol=1e-12, atol=1e-12)
