#!/usr/bin/env python3
"""Exact-inference references for full hierarchical VI: NUTS (and quadrature) on two classic data sets.

Writes ``tests/data/nuts_reference.json``, which ``tests/test_nuts_agreement.py``
and ``benchmarks/hierarchical_nuts.py`` compare hvi's fitted q(θ) against.

Model (the same for both data sets; σ_j known)::

    μ ~ Normal(0, 5)        τ ~ HalfCauchy(5)
    θ_j | μ, τ ~ Normal(μ, τ²)        y_j | θ_j ~ Normal(θ_j, σ_j²),   j = 1..J

The hyperpriors are those of the Stan and PyMC eight-schools examples
(μ ~ N(0, 5), τ ~ HalfCauchy(5)); the baseball data are on a unit-noise scale
(σ_j = 1), so the same numbers are a weakly informative prior there too
("5 × the noise scale").

Data sets:

* ``eight_schools``: Rubin (1981), BDA3 §5.5 (Table 5.2): estimated SAT-coaching
  effects y_j and their standard errors σ_j in eight schools.
* ``baseball``: Efron & Morris (1975), "Data analysis using Stein's estimator and
  its generalizations", JASA 70(350):311–319, Table 1: the batting records of 18
  major-league players after their first 45 at-bats of the 1970 season. As in
  Efron & Morris (their eq. 1.1–1.3), each batting average p_j = hits_j / 45 is
  variance-stabilised with the arcsine transform
  ``y_j = sqrt(45) · arcsin(2 p_j − 1)``, which is approximately
  Normal(θ_j, 1): σ_j = 1 for every player.

Two references per data set:

* ``nuts``: Pyro NUTS on the non-centered model (θ_j = μ + τ·η_j, η_j ~ N(0, 1)),
  ``--chains`` independent chains (run one after another, seeds ``seed + c``),
  ``target_accept_prob`` 0.95, float64. Posterior mean, sd, MCSE, bulk/tail ESS
  and rank-normalized split-R̂ (ArviZ) of μ, τ, log τ and every θ_j, and the
  number of divergent transitions. The script fails unless R̂ < 1.01 and the
  bulk ESS > 1000 for every quantity.
* ``quadrature``: the exact posterior moments. Given τ, μ and θ are jointly
  Gaussian a posteriori (conjugate), so every moment is a 1-D integral over
  log τ, done on a fine grid (trapezoid rule). NUTS must agree with it to its
  Monte Carlo error (checked here: every |NUTS − exact| < 5 MCSE).

And one for hvi's variational family: ``gaussian_vi_optimum``, the diagonal Normal
q(μ) q(log τ) that maximizes the ELBO of the collapsed model (θ integrated out,
which is what hvi's q(θ_j | μ, τ) reaches when its inner loop is exact), by
Gauss–Hermite quadrature and L-BFGS, with the marginals q(θ_j) it implies. It is
the best full hierarchical VI with ``q_theta="normal"`` can do: hvi's distance
to NUTS splits into the family's gap (this vs NUTS) and the optimiser's (hvi vs this).

Usage (the exact command of the committed file is stored in it)::

    python scripts/nuts_reference.py                          # writes tests/data/nuts_reference.json
    python scripts/nuts_reference.py --samples 200 --warmup 200 --out /tmp/ref.json   # a quick run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "data" / "nuts_reference.json"

#: Hyperprior scales (both data sets): μ ~ N(0, MU_SCALE), τ ~ HalfCauchy(TAU_SCALE).
MU_SCALE = 5.0
TAU_SCALE = 5.0

# -- data ----------------------------------------------------------------------
EIGHT_SCHOOLS = {
    "names": ["A", "B", "C", "D", "E", "F", "G", "H"],
    "y": [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0],
    "sigma": [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0],
}

#: Efron & Morris (1975), Table 1: hits in the first 45 at-bats of 1970.
BASEBALL_AT_BATS = 45
BASEBALL_HITS = {
    "Clemente": 18,
    "F. Robinson": 17,
    "F. Howard": 16,
    "Johnstone": 15,
    "Berry": 14,
    "Spencer": 14,
    "Kessinger": 13,
    "L. Alvarado": 12,
    "Santo": 11,
    "Swoboda": 11,
    "Unser": 10,
    "Williams": 10,
    "Scott": 10,
    "Petrocelli": 10,
    "E. Rodriguez": 10,
    "Campaneris": 9,
    "Munson": 8,
    "Alvis": 7,
}


def arcsine_transform(p: float, n: int = BASEBALL_AT_BATS) -> float:
    """Efron & Morris's variance-stabilising transform: sqrt(n)·arcsin(2p − 1), ≈ N(·, 1)."""
    return math.sqrt(n) * math.asin(2.0 * p - 1.0)


def baseball() -> dict:
    names = list(BASEBALL_HITS)
    p = [BASEBALL_HITS[k] / BASEBALL_AT_BATS for k in names]
    return {
        "names": names,
        "hits": [BASEBALL_HITS[k] for k in names],
        "at_bats": BASEBALL_AT_BATS,
        "batting_average": p,
        "y": [arcsine_transform(v) for v in p],
        "sigma": [1.0] * len(names),
    }


def datasets() -> dict[str, dict]:
    """Both data sets: ``names``, ``y``, ``sigma`` (and the raw counts for baseball)."""
    return {"eight_schools": dict(EIGHT_SCHOOLS), "baseball": baseball()}


# -- exact moments by quadrature over log τ --------------------------------------
def _log_halfcauchy(tau: np.ndarray, scale: float) -> np.ndarray:
    return math.log(2.0 / (math.pi * scale)) - np.log1p((tau / scale) ** 2)


def quadrature(y, sigma, mu_scale: float = MU_SCALE, tau_scale: float = TAU_SCALE, grid: int = 200_001) -> dict:
    """Exact posterior means and sds of μ, τ, log τ and θ_j (1-D integral over u = log τ).

    Given τ: μ | τ, y ~ N(m(τ), V(τ)) with precision P = 1/s² + Σ w_j, w_j = 1/(σ_j² + τ²),
    m = Σ w_j y_j / P; θ_j | τ, y ~ N((1 − B_j) y_j + B_j m, σ_j²τ²/(σ_j²+τ²) + B_j² V), B_j = σ_j² w_j;
    p(u | y) ∝ HalfCauchy(e^u) e^u ∫ N(μ; 0, s²) Π N(y_j; μ, σ_j² + τ²) dμ.
    """
    y = np.asarray(y, dtype=np.float64)
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    u = np.linspace(-30.0, math.log(1e5), grid)
    tau = np.exp(u)
    w = 1.0 / (s2[None, :] + tau[:, None] ** 2)  # (G, J)
    P = 1.0 / mu_scale**2 + w.sum(1)
    B = (w * y).sum(1)
    C = (w * y**2).sum(1)
    m = B / P
    V = 1.0 / P
    log_marg = (
        -0.5 * math.log(2 * math.pi * mu_scale**2)
        + 0.5 * np.log(2 * math.pi / P)
        + 0.5 * (B**2 / P - C)
        + 0.5 * np.log(w / (2 * math.pi)).sum(1)
    )
    logp = _log_halfcauchy(tau, tau_scale) + u + log_marg
    p = np.exp(logp - logp.max())
    p /= np.trapezoid(p, u)

    def moments(mean_c: np.ndarray, var_c: np.ndarray | float = 0.0) -> tuple[float, float]:
        mean = np.trapezoid(p * mean_c, u)
        second = np.trapezoid(p * (var_c + mean_c**2), u)
        return float(mean), float(math.sqrt(max(second - mean**2, 0.0)))

    out = {
        "mu": moments(m, V),
        "tau": moments(tau),
        "log_tau": moments(u),
    }
    shrink = s2[None, :] * w
    theta_mean = (1 - shrink) * y + shrink * m[:, None]
    theta_var = s2[None, :] * tau[:, None] ** 2 * w + shrink**2 * V[:, None]
    thetas = [moments(theta_mean[:, j], theta_var[:, j]) for j in range(len(y))]
    res = {k: {"mean": v[0], "sd": v[1]} for k, v in out.items()}
    res["theta"] = {"mean": [t[0] for t in thetas], "sd": [t[1] for t in thetas]}
    res["grid"] = {"log_tau_min": float(u[0]), "log_tau_max": float(u[-1]), "points": grid, "rule": "trapezoid"}
    return res


# -- the optimum of hvi's variational family ------------------------------------------
def gaussian_vi_optimum(y, sigma, mu_scale: float = MU_SCALE, tau_scale: float = TAU_SCALE, nodes: int = 80) -> dict:
    """The diagonal Normal q(μ) q(log τ) maximizing the collapsed ELBO, and the q(θ_j) it implies.

    ELBO(a, b, c, d) = E_{μ~N(a,b²), u~N(c,d²)}[log p(y | μ, e^u) + log p(μ) + log HalfCauchy(e^u) + u]
    + log b + log d + const, with p(y | μ, τ) = Π N(y_j; μ, σ_j² + τ²): θ integrated out
    exactly, as it is by hvi's adapted q(θ_j | μ, τ) when the inner loop is exact.
    Expectations by a ``nodes``² Gauss–Hermite rule, maximized by L-BFGS.
    """
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=np.float64)
    s2 = np.asarray(sigma, dtype=np.float64) ** 2
    x, wts = np.polynomial.hermite_e.hermegauss(nodes)  # ∫ f(z) N(z; 0, 1) dz ≈ Σ w f(x) / √(2π)
    wts = wts / wts.sum()
    Z1, Z2 = np.meshgrid(x, x, indexing="ij")
    W = np.outer(wts, wts)

    def log_joint(mu, u):
        tau2 = np.exp(2 * u)
        v = s2 + tau2[..., None]
        ll = -0.5 * (np.log(2 * math.pi * v) + (y - mu[..., None]) ** 2 / v).sum(-1)
        lp_mu = -0.5 * (mu / mu_scale) ** 2 - math.log(mu_scale * math.sqrt(2 * math.pi))
        return ll + lp_mu + _log_halfcauchy(np.exp(u), tau_scale) + u

    def neg_elbo(z):
        a, lb, c, ld = z
        mu = a + np.exp(lb) * Z1
        u = c + np.exp(ld) * Z2
        return -((W * log_joint(mu, u)).sum() + lb + ld)

    y_bar = float(y.mean())
    start = np.array([y_bar, math.log(max(y.std(), 1e-3) / math.sqrt(len(y)) + 1.0), 0.0, 0.0])
    res = minimize(neg_elbo, start, method="L-BFGS-B", options={"maxiter": 2000, "gtol": 1e-10, "ftol": 1e-15})
    a, lb, c, ld = res.x
    b, d = math.exp(lb), math.exp(ld)
    mu = a + b * Z1
    tau = np.exp(c + d * Z2)
    shrink = s2 / (s2 + tau[..., None] ** 2)
    cond_mean = (1 - shrink) * y + shrink * mu[..., None]
    cond_var = s2 * tau[..., None] ** 2 / (s2 + tau[..., None] ** 2)
    t_mean = (W[..., None] * cond_mean).sum((0, 1))
    t_var = (W[..., None] * (cond_var + cond_mean**2)).sum((0, 1)) - t_mean**2
    tau_mean = math.exp(c + d**2 / 2)
    tau_sd = tau_mean * math.sqrt(math.expm1(d**2))
    return {
        "q_mu": {"loc": float(a), "scale": float(b)},
        "q_log_tau": {"loc": float(c), "scale": float(d)},
        "mu": {"mean": float(a), "sd": float(b)},
        "tau": {"mean": tau_mean, "sd": tau_sd},
        "log_tau": {"mean": float(c), "sd": float(d)},
        "theta": {"mean": t_mean.tolist(), "sd": np.sqrt(t_var).tolist()},
        "elbo": float(-res.fun),
        "converged": bool(res.success),
        "gauss_hermite_nodes": nodes,
    }


# -- NUTS ------------------------------------------------------------------------------
def pyro_model(y, sigma, mu_scale: float = MU_SCALE, tau_scale: float = TAU_SCALE):
    """The non-centered model: θ_j = μ + τ·η_j (no funnel for NUTS to fall into)."""
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), mu_scale))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(tau_scale)))
    with pyro.plate("groups", y.shape[0]):
        eta = pyro.sample("eta", dist.Normal(y.new_tensor(0.0), 1.0))
        pyro.sample("y", dist.Normal(mu + tau * eta, sigma), obs=y)


def run_nuts(data: dict, chains: int, warmup: int, samples: int, seed: int, target_accept: float) -> dict:
    import pyro
    import torch
    from pyro.infer import MCMC, NUTS

    y = torch.tensor(data["y"], dtype=torch.float64)
    sigma = torch.tensor(data["sigma"], dtype=torch.float64)
    draws: dict[str, list] = {"mu": [], "tau": [], "theta": []}
    divergences = []
    start = time.perf_counter()
    for c in range(chains):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed + c)
        kernel = NUTS(pyro_model, target_accept_prob=target_accept, jit_compile=True, ignore_jit_warnings=True)
        mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, num_chains=1, disable_progbar=True)
        mcmc.run(y, sigma)
        s = mcmc.get_samples(group_by_chain=False)
        s["theta"] = s["mu"][:, None] + s["tau"][:, None] * s["eta"]
        for k in draws:
            draws[k].append(s[k].detach().numpy())
        divergences.append(len(mcmc.diagnostics()["divergences"]["chain 0"]))
    seconds = time.perf_counter() - start
    posterior = {
        "mu": np.stack(draws["mu"]),  # (chains, draws)
        "tau": np.stack(draws["tau"]),
        "log_tau": np.log(np.stack(draws["tau"])),
        "theta": np.stack(draws["theta"]),  # (chains, draws, J)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ announces its refactor on import
        import arviz as az

        idata = az.from_dict(posterior=posterior)
        summ = az.summary(idata, kind="all", round_to="none")

    def row(name: str) -> dict:
        r = summ.loc[name]
        return {
            "mean": float(r["mean"]),
            "sd": float(r["sd"]),
            "mcse_mean": float(r["mcse_mean"]),
            "mcse_sd": float(r["mcse_sd"]),
            "ess_bulk": float(r["ess_bulk"]),
            "ess_tail": float(r["ess_tail"]),
            "r_hat": float(r["r_hat"]),
        }

    J = len(data["y"])
    out = {k: row(k) for k in ("mu", "tau", "log_tau")}
    rows = [row(f"theta[{j}]") for j in range(J)]
    out["theta"] = {key: [r[key] for r in rows] for key in rows[0]}
    out["divergences"] = int(sum(divergences))
    out["divergences_per_chain"] = divergences
    out["chains"] = chains
    out["warmup"] = warmup
    out["samples_per_chain"] = samples
    out["seed"] = seed
    out["target_accept_prob"] = target_accept
    out["parameterisation"] = "non-centered: theta_j = mu + tau * eta_j, eta_j ~ N(0, 1)"
    out["seconds"] = round(seconds, 1)
    every = [out[k] for k in ("mu", "tau", "log_tau")]
    out["max_r_hat"] = max([r["r_hat"] for r in every] + out["theta"]["r_hat"])
    out["min_ess_bulk"] = min([r["ess_bulk"] for r in every] + out["theta"]["ess_bulk"])
    out["min_ess_tail"] = min([r["ess_tail"] for r in every] + out["theta"]["ess_tail"])
    return out


def check(name: str, nuts: dict, exact: dict, min_ess: float) -> list[str]:
    """Convergence and agreement with the exact moments; returns the problems found."""
    problems = []
    if not nuts["max_r_hat"] < 1.01:
        problems.append(f"{name}: max R-hat {nuts['max_r_hat']:.4f} >= 1.01")
    if not nuts["min_ess_bulk"] > min_ess:
        problems.append(f"{name}: min bulk ESS {nuts['min_ess_bulk']:.0f} <= {min_ess:g}")
    for k in ("mu", "tau", "log_tau"):
        z = abs(nuts[k]["mean"] - exact[k]["mean"]) / nuts[k]["mcse_mean"]
        if z > 5:
            problems.append(f"{name}: NUTS mean of {k} is {z:.1f} MCSE from the exact value")
    for j, (m, e, se) in enumerate(zip(nuts["theta"]["mean"], exact["theta"]["mean"], nuts["theta"]["mcse_mean"])):
        if abs(m - e) / se > 5:
            problems.append(f"{name}: NUTS mean of theta[{j}] is {abs(m - e) / se:.1f} MCSE from the exact value")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", nargs="+", choices=["eight_schools", "baseball"], default=["eight_schools", "baseball"])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=5000, help="draws per chain after warmup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-accept", type=float, default=0.95)
    parser.add_argument("--min-ess", type=float, default=1000.0)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    import pyro

    all_data = datasets()
    result = {
        "model": {
            "mu": f"Normal(0, {MU_SCALE:g})",
            "tau": f"HalfCauchy({TAU_SCALE:g})",
            "theta_j": "Normal(mu, tau^2)",
            "y_j": "Normal(theta_j, sigma_j^2), sigma_j known",
            "mu_scale": MU_SCALE,
            "tau_scale": TAU_SCALE,
        },
        "command": " ".join(["python", "scripts/nuts_reference.py", *sys.argv[1:]]) if argv is None else
        " ".join(["python", "scripts/nuts_reference.py", *argv]),
        "date": datetime.date.today().isoformat(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
                     "numpy": np.__version__},
        "datasets": {},
    }
    problems = []
    for name in args.data:
        data = all_data[name]
        print(f"{name}: NUTS, {args.chains} chains x ({args.warmup} warmup + {args.samples} draws)", flush=True)
        nuts = run_nuts(data, args.chains, args.warmup, args.samples, args.seed, args.target_accept)
        exact = quadrature(data["y"], data["sigma"])
        vi = gaussian_vi_optimum(data["y"], data["sigma"])
        problems += check(name, nuts, exact, args.min_ess)
        result["datasets"][name] = {"data": data, "nuts": nuts, "quadrature": exact, "gaussian_vi_optimum": vi}
        print(f"  {nuts['seconds']:.0f} s, {nuts['divergences']} divergences, max R-hat {nuts['max_r_hat']:.4f}, "
              f"min bulk ESS {nuts['min_ess_bulk']:.0f}")
        print("              NUTS mean ± sd       exact mean ± sd      best diagonal-Normal VI")
        for k in ("mu", "tau", "log_tau"):
            print(f"  {k:8s}  {nuts[k]['mean']:8.3f} ± {nuts[k]['sd']:6.3f}   {exact[k]['mean']:8.3f} ± "
                  f"{exact[k]['sd']:6.3f}   {vi[k]['mean']:8.3f} ± {vi[k]['sd']:6.3f}")
        for j, label in enumerate(data["names"]):
            print(f"  θ {label:12s} {nuts['theta']['mean'][j]:7.3f} ± {nuts['theta']['sd'][j]:6.3f}   "
                  f"{exact['theta']['mean'][j]:8.3f} ± {exact['theta']['sd'][j]:6.3f}   "
                  f"{vi['theta']['mean'][j]:8.3f} ± {vi['theta']['sd'][j]:6.3f}")
    for p in problems:
        print("PROBLEM:", p, file=sys.stderr)
    if problems:
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
