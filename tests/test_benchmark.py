"""The meta-step benchmark: a smoke run of the CLI, and the naive reference's
loss and gradients against the engine's for the same θ, data and noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.poutine as poutine
import pytest
from script_loader import load_script
import torch
import torch.nn.functional as F

from hvi.fit import make_elbo

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "meta_step.py"


bench = load_script("benchmarks/meta_step.py", "hvi_bench_meta_step")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_smoke_json_lines():
    cmd = [sys.executable, str(SCRIPT), "--model", "mlp", "--task-batch", "2", "--inner-steps", "1",
           "--steps", "1", "--warmup", "0", "--json", "--threads", "1", "--matmul-size", "256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    results = [r for r in rows if r["impl"] != "matmul"]
    matmul = [r for r in rows if r["impl"] == "matmul"]
    assert sorted(r["impl"] for r in results) == ["engine", "naive"]
    assert len(matmul) == 1 and set(bench.MATMUL_KEYS) <= set(matmul[0])
    assert matmul[0]["gflop_per_s"] > 0
    for r in results:
        assert set(bench.RESULT_KEYS) <= set(r), set(bench.RESULT_KEYS) - set(r)
        assert r["model"] == "mlp" and r["weights"] == 1761
        assert r["task_batch"] == 2 and r["inner_steps"] == 1 and r["first_order"] is False
        assert r["tasks_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["gflop_per_task"] > 0
        assert r["loss_finite"]
        assert r["malloc"] == "tuned" and r["minflt_per_step"] >= 0 and r["sys_s_per_step"] >= 0


def test_help_lists_options():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0
    for opt in ("--model", "--size", "--base", "--k-shot", "--k-query", "--inner-steps", "--task-batch",
                "--steps", "--warmup", "--json", "--first-order", "--impl", "--malloc"):
        assert opt in proc.stdout


def _cfg(model: str, first_order: bool, **kw) -> dict:
    cfg = {
        "impl": "engine", "model": model, "size": 8, "base": 2, "depth": 2, "k_shot": 3, "k_query": 2,
        "inner_steps": 2, "task_batch": 3, "first_order": first_order, "steps": 1, "warmup": 0,
        "inner_lr": 1e-3, "kl_weight": 0.5, "prior_scale": 0.05, "noise_scale": 0.5, "lr": 1e-3,
        "threads": 1, "seed": 0,
    }
    cfg.update(kw)
    return cfg


def _engine_loss_grads_noise(cfg, batch):
    """Engine loss, gradients of the unconstrained params, and the noise it drew."""
    meta, _ = bench.make_engine(cfg)
    elbo = make_elbo()
    pyro.set_rng_seed(123)
    loss = elbo.differentiable_loss(meta.model, meta.guide, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in pyro.get_param_store().named_parameters()}
    # Trace_ELBO runs the guide first: re-seeding replays the same inner and outer noise.
    pyro.set_rng_seed(123)
    tr = poutine.trace(meta.guide).get_trace(batch)
    out = tr.nodes["_RETURN"]["value"]
    lam = out["lambda"]
    eps = meta.inner_loop(batch.support_y.dim() - 2).split(out["inner_noise"].materialize())
    inner = {n: e[:, :, 0].detach() for n, e in eps.items()}
    outer = {}
    for n in meta.net.shapes:
        phi = tr.nodes[f"phi.{n}"]["value"].squeeze(1)
        outer[n] = ((phi - lam[n]["loc"]) / F.softplus(lam[n]["rho"])).detach()
    return loss.item(), grads, {"inner": inner, "outer": outer}


@pytest.mark.parametrize("model", ["mlp", "bayes_unet"])
@pytest.mark.parametrize("first_order", [False, True])
def test_naive_matches_engine(model, first_order):
    torch.manual_seed(0)
    cfg = _cfg(model, first_order)
    batch = bench.make_batch(cfg)
    e_loss, e_grads, noise = _engine_loss_grads_noise(cfg, batch)

    naive = bench.NaiveMeta(bench.build_net(cfg), cfg)
    n_loss = naive.loss_and_grads(batch, noise)
    assert n_loss == pytest.approx(e_loss, rel=1e-4, abs=1e-3)

    # Gradients of every unconstrained parameter agree (log-scales for positive sites).
    pairs = [("likelihood.noise", naive.log_noise)]
    for n in naive.names:
        pairs += [(f"theta.{n}.loc", naive.loc[n]), (f"theta.{n}.scale", naive.log_scale[n])]
    assert set(e_grads) == {k for k, _ in pairs}
    for key, p in pairs:
        torch.testing.assert_close(p.grad, e_grads[key], rtol=2e-3, atol=1e-4 * e_grads[key].abs().max().item() + 1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_first_order_differs_from_second_order():
    """Sanity: the comparison is sensitive to the inner-loop order (the noise path matters)."""
    cfg2, cfg1 = _cfg("mlp", False), _cfg("mlp", True)
    batch = bench.make_batch(cfg2)
    _, g2, noise = _engine_loss_grads_noise(cfg2, batch)
    naive = bench.NaiveMeta(bench.build_net(cfg1), cfg1)
    naive.loss_and_grads(batch, noise)
    diff = (naive.log_scale[naive.names[0]].grad - g2[f"theta.{naive.names[0]}.scale"]).abs().max()
    assert diff > 1e-6
