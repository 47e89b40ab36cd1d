#!/usr/bin/env python3
"""Full hierarchical VI against NUTS on eight schools and Efron–Morris baseball.

The model of ``scripts/nuts_reference.py`` (which also holds the data and writes
the NUTS reference ``tests/data/nuts_reference.json``), fitted with hvi::

    μ ~ N(0, 5)   τ ~ HalfCauchy(5)       global latents, q(μ) q(log τ) a diagonal Normal (or a flow)
    φ_j | μ, τ ~ N(μ, τ²)                 one task per group; the "network" returns φ_j
    y_j | φ_j ~ N(φ_j, σ_j²)              hvi.Gaussian(noise="known"), σ_j as support_noise

with ``q_theta="normal"`` (``--q-theta flow``: a spline flow over (μ, log τ) jointly,
:mod:`hvi.flows`; its "q_params" are then moments of flow draws), ``objective="support+query"`` (all data in the
support set, the query set empty) and float64. The guide's q(φ_j | μ, τ) is the
inner loop's adapted λ_j: with the natural-gradient update at α = 1 one step is
the exact conditional posterior p(φ_j | μ, τ, y_j) (the model is conjugate given
μ, τ), so q(μ) q(log τ) is then the only approximation.

The prior is :class:`NormalHalfCauchyPrior`, two *shared* global sites, so
hvi names them ``theta.mu`` and ``theta.tau`` (Pyro sample sites), and q(θ)'s
parameters ``q_theta.theta.mu.loc`` / ``.scale`` (a Normal on μ) and
``q_theta.theta.tau.loc`` / ``.scale`` (a Normal on log τ).

Usage::

    python benchmarks/hierarchical_nuts.py                          # both data sets, natural update
    python benchmarks/hierarchical_nuts.py --data eight_schools --update gradient --inner-lr 0.01 --inner-steps 5
    python benchmarks/hierarchical_nuts.py --steps 3000 --particles 32 --json out.json
    python benchmarks/hierarchical_nuts.py --q-theta flow --steps 2000 --lr 0.02 --json flow.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints
from torch import Tensor, nn

import hvi
from hvi.distributions import Normal

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "nuts_reference.json"
WEIGHT = "effect"
#: The q(θ) parameters, in the param store's names.
Q_PARAMS = ("q_theta.theta.mu.loc", "q_theta.theta.mu.scale", "q_theta.theta.tau.loc", "q_theta.theta.tau.scale")


class NormalHalfCauchyPrior(hvi.HierarchicalPrior):
    """p(φ | μ, τ) = N(μ, τ²) with latent μ ~ N(0, mu_scale²) and τ ~ HalfCauchy(tau_scale), shared by all weights.

    The classic Normal hierarchy (Gelman 2006's half-Cauchy on the group scale):
    the global sites are ``theta.mu`` (real) and ``theta.tau`` (positive), both
    latent, so ``MetaModel(q_theta="normal")`` fits q(μ) q(log τ).

    Args:
        mu_scale: sd of the Normal hyperprior on μ (mean 0).
        tau_scale: Scale of the half-Cauchy hyperprior on τ.
        mu_init: Initial q(μ) mean.
        tau_init: Initial q(τ) median (default: ``tau_scale``, the hyperprior's median).
    """

    def __init__(self, mu_scale: float = 5.0, tau_scale: float = 5.0, mu_init: float = 0.0,
                 tau_init: float | None = None) -> None:
        if not (mu_scale > 0 and tau_scale > 0):
            raise ValueError(f"mu_scale={mu_scale} and tau_scale={tau_scale} must be positive.")
        self.mu_scale = float(mu_scale)
        self.tau_scale = float(tau_scale)
        self.mu_init = float(mu_init)
        self.tau_init = float(tau_scale if tau_init is None else tau_init)

    def shared_sites(self, weights: Mapping[str, Tensor]) -> dict[str, hvi.GlobalSite]:
        ref = next(iter(weights.values()))
        return {
            "mu": hvi.GlobalSite(ref.new_tensor(self.mu_init), constraints.real,
                                 dist.Normal(ref.new_tensor(0.0), self.mu_scale)),
            "tau": hvi.GlobalSite(ref.new_tensor(self.tau_init), constraints.positive,
                                  dist.HalfCauchy(ref.new_tensor(self.tau_scale))),
        }

    def weight_sites(self, name: str, weight: Tensor) -> dict[str, hvi.GlobalSite]:
        return {}

    def local(self, name: str, theta: Mapping[str, Tensor]) -> dist.Distribution:
        return Normal(theta["mu"], theta["tau"])


class GroupEffect(nn.Module):
    """A "network" that is one group effect: it returns its weight for every input."""

    def __init__(self) -> None:
        super().__init__()
        self.effect = nn.Parameter(torch.zeros(1, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return self.effect.expand(x.shape[0], 1)


def load_reference(path: Path = REFERENCE) -> dict:
    """The committed NUTS / quadrature / best-Gaussian-VI reference (see scripts/nuts_reference.py)."""
    return json.loads(Path(path).read_text())


def task_batch(data: Mapping) -> hvi.TaskBatch:
    """One task per group with its one observation in the support set (the query set is empty)."""
    J = len(data["y"])
    y = torch.tensor(data["y"], dtype=torch.float64).reshape(J, 1, 1)
    sigma = torch.tensor(data["sigma"], dtype=torch.float64).reshape(J, 1, 1)
    x = torch.zeros(J, 1, 1, dtype=torch.float64)
    return hvi.TaskBatch(x, y, x[:, :0], y[:, :0], support_noise=sigma, query_noise=sigma[:, :0])


def inner_config(update: str = "natural", steps: int | None = None, lr: float | None = None,
                 num_samples: int = 1) -> hvi.InnerConfig:
    """natural: one step at α = 1 (exact here); gradient: ``steps`` plain steps of size ``lr``."""
    if update == "natural":
        return hvi.InnerConfig(update="natural", steps=1 if steps is None else steps,
                               lr=1.0 if lr is None else lr, num_samples=num_samples)
    return hvi.InnerConfig(update="gradient", steps=5 if steps is None else steps,
                           lr=0.01 if lr is None else lr, num_samples=num_samples)


def build(model: Mapping, inner: hvi.InnerConfig, q_theta_init_scale: float = 0.1,
          q_theta: str = "normal") -> hvi.MetaModel:
    """The hvi MetaModel of the reference's model (hyperprior scales from ``model``)."""
    prior = NormalHalfCauchyPrior(mu_scale=model["mu_scale"], tau_scale=model["tau_scale"])
    return hvi.MetaModel(GroupEffect(), prior, hvi.Gaussian(noise="known"), q_theta=q_theta, inner=inner,
                         objective="support+query", q_theta_init_scale=q_theta_init_scale)


def q_params(meta: hvi.MetaModel | None = None, draws: int = 4000) -> dict[str, float]:
    """The current q(θ) by short name: the Normal's parameters (scales positive), or for a flow
    the same four numbers as moments of q(μ) and q(log τ) from ``draws`` flow draws (common random numbers)."""
    if meta is not None and meta.flow is not None:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(12345)
            z = meta.flow.dist().sample((draws,))
        mu, log_tau = z[:, 0], z[:, 1]
        return {"mu.loc": float(mu.mean()), "mu.scale": float(mu.std()),
                "tau.loc": float(log_tau.mean()), "tau.scale": float(log_tau.std())}
    store = pyro.get_param_store()
    return {k.removeprefix("q_theta.theta."): float(store[k].detach()) for k in Q_PARAMS}


def fit(meta: hvi.MetaModel, batch: hvi.TaskBatch, *, steps: int = 2000, lr: float = 0.05,
        final_lr: float = 0.001, particles: int = 16, seed: int = 0, log_every: int = 100,
        average_last: float = 0.0) -> dict:
    """SVI with ClippedAdam, lr decaying geometrically from ``lr`` to ``final_lr``.

    Logs q(θ)'s parameters every ``log_every`` steps (``trace``) and the largest
    per-step change of each over every window between logs (``moves``, in the
    unconstrained coordinates: loc, log scale), which is zero for a frozen
    parameter (``lr`` is the step size at the window's end: Adam moves a
    parameter by up to about lr per step). With ``average_last`` > 0, q(θ)'s parameters are averaged over that
    fraction of the last steps (Polyak–Ruppert, on loc and log scale) before
    they are summarised.
    """
    lrd = (final_lr / lr) ** (1.0 / max(steps, 1))
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": lrd})
    trace = []
    moves: list[dict[str, float]] = []
    window: dict[str, float] = {}
    last: dict[str, float] = {}
    avg: dict[str, list[float]] = {}
    start_avg = steps - int(average_last * steps)

    def unconstrained(p: dict[str, float]) -> dict[str, float]:
        return {k: (math.log(v) if k.endswith("scale") else v) for k, v in p.items()}

    def callback(step: int, loss: float, b: hvi.TaskBatch) -> None:
        nonlocal window, last
        now = unconstrained(q_params(meta))
        if last:
            for k, v in now.items():
                window[k] = max(window.get(k, 0.0), abs(v - last[k]))
        last = now
        if average_last > 0 and step >= start_avg:
            for k, v in now.items():
                avg.setdefault(k, []).append(v)
        if (step + 1) % log_every == 0 or step == 0:
            trace.append({"step": step + 1, "loss": loss, **q_params(meta)})
            if step > 0:
                # ClippedAdam's step ``step`` (0-based) ran at lr·lrd^(step+1) (the decay comes first): the smallest in the window.
                moves.append({"step": step + 1, "lr": lr * lrd ** (step + 1), **window})
                window = {}

    pyro.clear_param_store()
    # The params exist before the first step, so the trace can start at step 0.
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        meta.guide(batch)
    trace.append({"step": 0, "loss": float("nan"), **q_params(meta)})
    last = unconstrained(q_params(meta))
    result = hvi.fit(meta, batch, steps=steps, optimizer=optim, num_particles=particles, seed=seed,
                     resume=True, callback=callback)
    if avg and meta.flow is None:  # Polyak averaging of the Normal's parameters only
        store = pyro.get_param_store()
        for k, vals in avg.items():
            m = sum(vals) / len(vals)
            full = f"q_theta.theta.{k}"
            store[full] = torch.tensor(math.exp(m) if k.endswith("scale") else m, dtype=torch.float64)
    return {"trace": trace, "moves": moves, "seconds": result.seconds, "skipped": list(result.skipped),
            "final_loss": sum(result.losses[-100:]) / len(result.losses[-100:])}


def summarize(meta: hvi.MetaModel, batch: hvi.TaskBatch, draws: int = 4000, calls: int = 4, seed: int = 1) -> dict:
    """Moments of the fitted guide: q(μ), q(τ), q(log τ) in closed form, and from guide draws.

    The marginal q(θ_j) (the group effects; hvi's ``phi.effect``) is a mixture
    over q(μ, τ) of the adapted q(φ_j | μ, τ): its moments are taken from
    ``draws`` draws of the guide (each draws μ, τ, adapts, then draws φ_j).
    """
    p = q_params(meta)
    a, b, c, d = p["mu.loc"], p["mu.scale"], p["tau.loc"], p["tau.scale"]
    tau_mean = math.exp(c + d * d / 2)
    out = {
        "mu": {"mean": a, "sd": b},
        "tau": {"mean": tau_mean, "sd": tau_mean * math.sqrt(math.expm1(d * d))},
        "log_tau": {"mean": c, "sd": d},
        "q_params": p,
    }
    pyro.set_rng_seed(seed)
    mus, taus, phis = [], [], []
    J = batch.batch_size
    for _ in range(calls):
        with torch.no_grad(), pyro.plate("draws", draws // calls, dim=-3):
            tr = poutine.trace(meta.guide).get_trace(batch)
        mus.append(tr.nodes["theta.mu"]["value"].reshape(-1))
        taus.append(tr.nodes["theta.tau"]["value"].reshape(-1))
        phis.append(tr.nodes[f"phi.{WEIGHT}"]["value"].reshape(-1, J))
    mu, tau, phi = torch.cat(mus), torch.cat(taus), torch.cat(phis)
    out["sampled"] = {
        "draws": int(mu.numel()),
        "mu": {"mean": float(mu.mean()), "sd": float(mu.std())},
        "tau": {"mean": float(tau.mean()), "sd": float(tau.std())},
        "log_tau": {"mean": float(tau.log().mean()), "sd": float(tau.log().std())},
    }
    out["theta"] = {"mean": phi.mean(0).tolist(), "sd": phi.std(0).tolist()}
    if meta.flow is not None:  # no closed form: the draws are the moments
        out.update({k: out["sampled"][k] for k in ("mu", "tau", "log_tau")})
    return out


def compare(fitted: Mapping, ref: Mapping) -> dict:
    """Per quantity: (fit − ref)/ref_sd for the mean and fit_sd/ref_sd − 1 for the sd."""
    out = {}
    for k in ("mu", "tau", "log_tau"):
        out[k] = {"mean_z": (fitted[k]["mean"] - ref[k]["mean"]) / ref[k]["sd"],
                  "sd_rel": fitted[k]["sd"] / ref[k]["sd"] - 1}
    tm, ts = fitted["theta"]["mean"], fitted["theta"]["sd"]
    rm, rs = ref["theta"]["mean"], ref["theta"]["sd"]
    out["theta"] = {"max_abs_mean_z": max(abs(f - r) / s for f, r, s in zip(tm, rm, rs)),
                    "max_abs_sd_rel": max(abs(f / s - 1) for f, s in zip(ts, rs))}
    return out


def run(name: str, reference: Mapping, inner: hvi.InnerConfig, q_theta: str = "normal", **fit_kw) -> dict:
    entry = reference["datasets"][name]
    batch = task_batch(entry["data"])
    meta = build(reference["model"], inner, q_theta=q_theta)
    fitted = fit(meta, batch, **fit_kw)
    summary = summarize(meta, batch)
    return {
        "data": name,
        "q_theta": q_theta,
        "inner": {"update": inner.update, "steps": inner.steps, "lr": inner.lr, "num_samples": inner.num_samples},
        "fit": {k: v for k, v in fit_kw.items()},
        "seconds": fitted["seconds"],
        "skipped": fitted["skipped"],
        "final_loss": fitted["final_loss"],
        "summary": summary,
        "vs_nuts": compare(summary, entry["nuts"]),
        "vs_best_gaussian": compare(summary, entry["gaussian_vi_optimum"]),
        "trace": fitted["trace"],
        "moves": fitted["moves"],
    }


def report(res: Mapping, reference: Mapping) -> None:
    entry = reference["datasets"][res["data"]]
    nuts, vi, s = entry["nuts"], entry["gaussian_vi_optimum"], res["summary"]
    print(f"{res['data']} (q_theta={res.get('q_theta', 'normal')}, {res['inner']['update']} inner, {res['seconds']:.1f} s, {len(res['skipped'])} skipped; "
          f"fit {res['fit']})")
    print("             NUTS mean ± sd     hvi mean ± sd     (mean−NUTS)/sd  sd ratio   best-Gaussian mean ± sd")
    for k in ("mu", "tau", "log_tau"):
        c = res["vs_nuts"][k]
        print(f"  {k:8s} {nuts[k]['mean']:8.3f} ± {nuts[k]['sd']:6.3f}  {s[k]['mean']:8.3f} ± {s[k]['sd']:6.3f}"
              f"   {c['mean_z']:+7.3f}        {1 + c['sd_rel']:6.3f}    {vi[k]['mean']:8.3f} ± {vi[k]['sd']:6.3f}")
    for j, label in enumerate(entry["data"]["names"]):
        print(f"  θ {label:12s} {nuts['theta']['mean'][j]:7.3f} ± {nuts['theta']['sd'][j]:6.3f}  "
              f"{s['theta']['mean'][j]:8.3f} ± {s['theta']['sd'][j]:6.3f}"
              f"   {(s['theta']['mean'][j] - nuts['theta']['mean'][j]) / nuts['theta']['sd'][j]:+7.3f}"
              f"        {s['theta']['sd'][j] / nuts['theta']['sd'][j]:6.3f}")
    print("  q(θ) trace: step  μ.loc  μ.scale  logτ.loc  logτ.scale   (max per-step |Δ| in the window)")
    moves = {m["step"]: m for m in res["moves"]}
    for t in res["trace"]:
        m = moves.get(t["step"])
        mv = "" if m is None else "   " + " ".join(f"{m[k]:.1e}" for k in ("mu.loc", "mu.scale", "tau.loc", "tau.scale"))
        print(f"    {t['step']:6d} {t['mu.loc']:8.3f} {t['mu.scale']:7.3f} {t['tau.loc']:8.3f} {t['tau.scale']:7.3f}{mv}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", choices=["eight_schools", "baseball"], default=["eight_schools", "baseball"])
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--update", choices=["natural", "gradient"], default="natural")
    parser.add_argument("--q-theta", choices=["normal", "flow"], default="normal",
                        help="q(μ, τ): a diagonal Normal on (μ, log τ), or a spline flow (hvi.flows)")
    parser.add_argument("--inner-steps", type=int, default=None)
    parser.add_argument("--inner-lr", type=float, default=None)
    parser.add_argument("--inner-samples", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--final-lr", type=float, default=0.001)
    parser.add_argument("--particles", type=int, default=16)
    parser.add_argument("--average-last", type=float, default=0.0)
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reference = load_reference(args.reference)
    inner = inner_config(args.update, args.inner_steps, args.inner_lr, args.inner_samples)
    results = []
    for name in args.data:
        t0 = time.perf_counter()
        res = run(name, reference, inner, q_theta=args.q_theta, steps=args.steps, lr=args.lr, final_lr=args.final_lr,
                  particles=args.particles, seed=args.seed, log_every=args.log_every,
                  average_last=args.average_last)
        res["wall_seconds"] = time.perf_counter() - t0
        report(res, reference)
        results.append(res)
    if args.json is not None:
        from provenance import write_result

        write_result(args.json, "benchmarks/hierarchical_nuts.py", argv, results)
    return results


if __name__ == "__main__":
    main()
