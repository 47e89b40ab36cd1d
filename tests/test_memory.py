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


def loss_and_grads(memory: str, update: str, prior, learn_lr: bool, **extra):
    pyro.clear_param_store()
    inner = hvi.InnerConfig(steps=3, update=update, memory=memory, learn_lr=learn_lr, num_samples=2,
                            lr=0.3 if update == "natural" else 0.05, **extra)
    meta = hvi.MetaModel(net(), prior, hvi.Gaussian(init_scale=0.3), inner=inner)
    pyro.set_rng_seed(4)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch())
    params = dict(pyro.get_param_store().named_parameters())
    return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize("learn_lr", [False, True])
@pytest.mark.parametrize("update,prior,extra", [
    ("natural", GaussianPrior(init_scale=0.2), {}),
    # the kept curvature h is part of the recomputed state (step 1 keeps step 0's h)
    ("natural", GaussianPrior(init_scale=0.2), {"curvature_every": 2}),
    ("natural", GaussianPrior(init_scale=0.2), {"line_search": True, "curvature_every": 2}),
    ("natural", LaplacePrior(init_scale=0.2), {}),  # generic prior moments: one checkpoint per step
    ("gradient", GaussianPrior(init_scale=0.2), {}),
    ("gradient", LaplacePrior(init_scale=0.2), {}),  # no closed-form KL gradient: autograd through the KL
])
def test_checkpointed_inner_steps_give_the_same_meta_gradients(update, prior, extra, learn_lr):
    loss0, g0 = loss_and_grads("none", update, prior, learn_lr, **extra)
    loss1, g1 = loss_and_grads("checkpoint", update, prior, learn_lr, **extra)
    torch.testing.assert_close(loss1, loss0, rtol=1e-12, atol=1e-12)
    assert set(g1) == set(g0)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-10, atol=1e-12)
    assert any(bool(v.abs().sum() > 0) for v in g0.values())


def test_an_unknown_memory_mode_is_one_clear_error():
    with pytest.raises(ValueError, match=r"^inner memory='recompute' is not understood; use one of 'none', 'checkpoint', 'implicit'\.$"):
        hvi.InnerConfig(memory="recompute")


# -- what the checkpointed loop keeps (issue #16: peak memory independent of K) ---------------------------
def _graph(memory: str, steps: int, update: str = "gradient", **extra):
    """The nodes of the outer loss's autograd graph, and the recomputed-steps nodes among them."""
    pyro.clear_param_store()
    inner = hvi.InnerConfig(steps=steps, update=update, memory=memory, lr=0.3 if update == "natural" else 0.05,
                            **extra)
    meta = hvi.MetaModel(net(), GaussianPrior(init_scale=0.2), hvi.Gaussian(init_scale=0.3), inner=inner)
    pyro.set_rng_seed(4)
    loss = Trace_ELBO().differentiable_loss(meta.model, meta.guide, batch())
    seen, todo = set(), [loss.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return seen, [fn for fn in seen if type(fn).__name__ == "RecomputedStepsBackward"], meta.net.num_weights


def test_checkpointed_steps_keep_only_each_steps_lambda_and_noise_states():
    graph2, _, D = _graph("checkpoint", 2)
    graph6, nodes, _ = _graph("checkpoint", 6)
    assert len(graph6) == len(graph2)  # no per-step graph: one node for the K steps
    (node,) = nodes
    assert {k: tuple(v.shape) for k, v in node.rows.items()} == {"loc": (5, 3, D), "rho": (5, 3, D)}  # λ^(1..5)
    assert len(node.noises) == 6 and all(e.drawn is None and len(e.states) == 3 for e in node.noises)
    none2, _, _ = _graph("none", 2)
    none6, _, _ = _graph("none", 6)
    assert len(none6) > len(graph6) + 4 * 10  # the unchecked loop keeps a graph per step


@pytest.mark.parametrize("every", [1, 2])
def test_checkpointed_natural_steps_are_one_node_keeping_m_s_and_the_kept_curvature(every):
    graph2, _, D = _graph("checkpoint", 2, "natural", curvature_every=every)
    graph6, nodes, _ = _graph("checkpoint", 6, "natural", curvature_every=every)
    assert len(graph6) == len(graph2)
    (node,) = nodes
    keys = ("m", "s", "h") if every > 1 else ("m", "s")
    assert {k: tuple(v.shape) for k, v in node.rows.items()} == {k: (5, 3, D) for k in keys}  # state^(1..5)
    assert len(node.noises) == 6 and all(e.drawn is None and len(e.states) == 3 for e in node.noises)
    none6, _, _ = _graph("none", 6, "natural", curvature_every=every)
    assert len(none6) > len(graph6) + 4 * 10


def test_redrawn_noise_is_the_noise_the_forward_pass_drew():
    from hvi.recompute import Redraw
    from hvi.noise import TaskNoise

    torch.manual_seed(3)
    eps = TaskNoise.draw_seed(lead=(), num_tasks=2, steps=3, shape=(2, 7), device=torch.device("cpu"), dtype=DT)
    streams = eps.generators()
    draws = [Redraw(eps, streams) for _ in range(3)]
    forward = [d() for d in draws]
    for d in draws:
        d.release()
    assert all(d.drawn is None for d in draws)
    expect = eps.materialize()  # (tasks, steps, S, D)
    for m, d in enumerate(draws):
        assert torch.equal(forward[m], expect[:, m])
        assert torch.equal(d(), expect[:, m])  # from the saved generator states, bit for bit
        assert torch.equal(d(), expect[:, m])  # and again (a second backward pass)


def test_checkpointed_steps_are_deterministic_and_accept_a_noise_tensor():
    loss0, g0 = loss_and_grads("checkpoint", "gradient", GaussianPrior(init_scale=0.2), True)
    loss1, g1 = loss_and_grads("checkpoint", "gradient", GaussianPrior(init_scale=0.2), True)
    assert torch.equal(loss0, loss1) and all(torch.equal(g0[k], g1[k]) for k in g0)
    # InnerLoop.adapt with the noise as one tensor (not streams): the same gradients as the unchecked loop.
    from hvi.adapt import InnerLoop

    grads = {}
    for memory in ("none", "checkpoint"):
        pyro.clear_param_store()
        cfg = hvi.InnerConfig(steps=3, update="gradient", memory=memory, lr=0.05, num_samples=2)
        meta = hvi.MetaModel(net(), GaussianPrior(init_scale=0.2), hvi.Gaussian(init_scale=0.3), inner=cfg)
        loop = InnerLoop(meta.net, meta.prior, meta.likelihood, cfg, y_event_dim=1)
        theta = {n: s.init.clone().requires_grad_() for n, s in meta.sites.items() if n.startswith("theta.")}
        lik = {"noise": meta.sites["likelihood.noise"].init.clone().requires_grad_()}
        lr = {n: {"loc": 0.05, "rho": 0.05} for n in meta.net.names}
        b = batch()
        eps = torch.randn(3, 3, 2, loop.size, dtype=DT, generator=torch.Generator().manual_seed(5))
        lam = loop.adapt(theta, lik, lr, b.support_x, b.support_y, None, eps, 3)
        out = (lam["loc"].sin().sum() + lam["rho"].square().sum())
        inputs = [*theta.values(), *lik.values()]
        grads[memory] = (out.detach(), torch.autograd.grad(out, inputs))
    torch.testing.assert_close(grads["checkpoint"][0], grads["none"][0], rtol=1e-12, atol=1e-12)
    for a, b_ in zip(grads["checkpoint"][1], grads["none"][1]):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def test_split_tensors_gives_the_node_its_inputs_and_the_step_its_structure():
    """hvi.recompute.split_tensors: the one unpacking of a recomputed step's inputs (sites, prior terms, α)."""
    from hvi.recompute import split_tensors

    a, b, c, d = (torch.full((2,), float(i)) for i in range(4))
    tree = ({"sigma": a, "nu": b}, (c, None), {"loc": d, "rho": 0.5})
    tensors, rebuild = split_tensors(tree)
    assert [t is u for t, u in zip(tensors, (a, b, c, d))] == [True] * 4 and len(tensors) == 4
    new = [t + 10 for t in tensors]
    lik, (prior_loc, none), alpha = rebuild(new)
    assert list(lik) == ["sigma", "nu"] and lik["sigma"] is new[0] and lik["nu"] is new[1]
    assert prior_loc is new[2] and none is None
    assert alpha["loc"] is new[3] and alpha["rho"] == 0.5
    assert split_tensors((None, 1.0))[0] == [] and split_tensors((None, 1.0))[1]([]) == (None, 1.0)
