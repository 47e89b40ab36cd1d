"""Full hierarchical VI (latent μ, τ with a half-Cauchy hyperprior, ``q_theta="normal"``) against NUTS.

Model and data: ``scripts/nuts_reference.py`` (eight schools, BDA3 §5.5; Efron &
Morris 1975 baseball, arcsine-transformed), which wrote the cached reference
``tests/data/nuts_reference.json``: NUTS (4 chains × 5000 draws), the exact
moments by quadrature, and the optimum of hvi's variational family (a diagonal
Normal on (μ, log τ), with the exact conditional q(θ_j | μ, τ) the natural inner
step gives). The hvi side is ``benchmarks/hierarchical_nuts.py``.

The issue's targets (#12): group-level posterior means within 0.25 NUTS sd,
sds within 25%, no frozen q(θ) parameters. What holds, and what cannot:

* μ (mean, sd), τ (mean), log τ (mean) and every marginal q(θ_j) (mean, sd)
  meet the targets on both data sets, and hvi lands on its family's optimum
  (within a few % of sd), so the optimiser is not the limit.
* τ's sd on eight schools does not: the best diagonal Normal on log τ has
  τ sd 4.09 against NUTS's 3.17 (+29%); hvi's fits give +31% (this file's CI
  run; +26% to +32% over seeds 0–4) and +31% (the slow run). log τ's posterior
  has a long left tail (τ → 0, where its density ∝ τ) that a Normal on log τ
  cannot follow; KL(q ‖ p) narrows log τ (sd −22%, inside the target by 3
  points) and the log-normal's right tail then inflates τ's sd.
* log τ's sd on baseball does not either: the optimum is 0.64 against NUTS's
  1.04 (−38%, and its mean sits +0.15 NUTS sd high); τ's own sd there is +9%.

Those two are compared with the family's optimum instead (the optimiser's
share of the error), and the NUTS gap is written down here rather than
asserted. ``q_theta="flow"`` (a spline flow over (μ, log τ), :mod:`hvi.flows`)
closes both gaps: the slow test below asserts every target on both data sets
(4000 steps, 32 particles; docs/results/hierarchical_nuts_flow_*.json). The plain-gradient inner loop (``update="gradient"``, α = 0.01,
K = 5) misses τ by far more (mean −0.37 / −0.62 NUTS sd, sd 68% / 41% of
NUTS's on eight schools / baseball; with K = 20 it crashed on baseball at
α = 0.01 and 0.05 and on eight schools at α = 0.05: a q(φ) scale underflowed
to 0), so it is not tested here; ``benchmarks/hierarchical_nuts.py --update gradient`` runs it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "nuts_reference.json"


bench = load_script("benchmarks/hierarchical_nuts.py", "hvi_bench_hierarchical_nuts")
script = load_script("scripts/nuts_reference.py", "hvi_scripts_nuts_reference")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


# -- the cached reference ----------------------------------------------------------
@pytest.mark.parametrize("name", ["eight_schools", "baseball"])
def test_reference_is_converged_and_exact(reference, name):
    """The JSON holds the script's data, a converged NUTS run, and NUTS agrees with quadrature."""
    entry = reference["datasets"][name]
    assert entry["data"] == json.loads(json.dumps(script.datasets()[name]))
    nuts = entry["nuts"]
    assert nuts["max_r_hat"] < 1.01
    assert nuts["min_ess_bulk"] > 1000 and nuts["min_ess_tail"] > 1000
    exact = script.quadrature(entry["data"]["y"], entry["data"]["sigma"])
    for k in ("mu", "tau", "log_tau"):
        assert exact[k]["mean"] == pytest.approx(entry["quadrature"][k]["mean"], rel=1e-9, abs=1e-12)
        assert abs(nuts[k]["mean"] - exact[k]["mean"]) < 5 * nuts[k]["mcse_mean"]
        assert abs(nuts[k]["sd"] - exact[k]["sd"]) < 5 * nuts[k]["mcse_sd"]
    for j, (m, se, e) in enumerate(zip(nuts["theta"]["mean"], nuts["theta"]["mcse_mean"], exact["theta"]["mean"])):
        assert abs(m - e) < 5 * se, (j, m, e, se)


def test_baseball_data_are_efron_morris():
    """Table 1 of Efron & Morris (1975): averages .400 (Clemente) … .156 (Alvis); X = √45·arcsin(2p − 1)."""
    d = script.baseball()
    assert len(d["y"]) == 18 and sum(d["hits"]) == 215 and d["at_bats"] == 45
    assert [round(p, 3) for p in d["batting_average"]] == [
        0.4, 0.378, 0.356, 0.333, 0.311, 0.311, 0.289, 0.267, 0.244, 0.244,
        0.222, 0.222, 0.222, 0.222, 0.222, 0.2, 0.178, 0.156,
    ]
    assert d["y"][0] == pytest.approx(math.sqrt(45) * math.asin(-0.2))  # -1.35, E&M's X for Clemente
    assert d["y"] == sorted(d["y"], reverse=True) and d["sigma"] == [1.0] * 18


# -- hvi against the reference -----------------------------------------------------------
def _z(fit: dict, ref: dict, k: str) -> float:
    return (fit[k]["mean"] - ref[k]["mean"]) / ref[k]["sd"]


def _ratio(fit: dict, ref: dict, k: str) -> float:
    return fit[k]["sd"] / ref[k]["sd"]


def _check_not_frozen(res: dict) -> None:
    """Every q(θ) parameter moves in every logged window, by a fair share of Adam's step size."""
    assert not res["skipped"]
    for window in res["moves"]:
        for k in ("mu.loc", "mu.scale", "tau.loc", "tau.scale"):
            assert window[k] > 0.05 * window["lr"], (k, window)


def _check_converged(res: dict) -> None:
    """The last logged quarter of the trace stays near the final q(θ) (tenths of its sd)."""
    final = res["summary"]["q_params"]
    tail = res["trace"][-len(res["trace"]) // 4:]
    for t in tail:
        assert abs(t["mu.loc"] - final["mu.loc"]) < 0.1 * final["mu.scale"]
        assert abs(t["tau.loc"] - final["tau.loc"]) < 0.1 * final["tau.scale"]
        assert abs(math.log(t["mu.scale"] / final["mu.scale"])) < 0.1
        assert abs(math.log(t["tau.scale"] / final["tau.scale"])) < 0.1


def _check_meets_targets(s: dict, nuts: dict, sd_targets: tuple[str, ...]) -> None:
    """The issue's targets against NUTS: means within 0.25 sd; the sds named in ``sd_targets`` within 25%."""
    for k in ("mu", "tau", "log_tau"):
        assert abs(_z(s, nuts, k)) < 0.25, (k, _z(s, nuts, k))
    for k in sd_targets:
        assert abs(_ratio(s, nuts, k) - 1) < 0.25, (k, _ratio(s, nuts, k))
    for j, (m, sd) in enumerate(zip(s["theta"]["mean"], s["theta"]["sd"])):
        assert abs(m - nuts["theta"]["mean"][j]) < 0.25 * nuts["theta"]["sd"][j], j
        assert abs(sd / nuts["theta"]["sd"][j] - 1) < 0.25, j


def _check_at_family_optimum(s: dict, best: dict, mean_tol: float, sd_tol: float) -> None:
    """hvi against the best diagonal Normal q(μ) q(log τ): the optimiser's own error."""
    for k in ("mu", "tau", "log_tau"):
        assert abs(_z(s, best, k)) < mean_tol, (k, _z(s, best, k))
    for k in ("mu", "log_tau"):
        assert abs(_ratio(s, best, k) - 1) < sd_tol, (k, _ratio(s, best, k))
    # τ's sd is the log-normal's, exp(d²)-sensitive: twice the tolerance of log τ's.
    assert abs(_ratio(s, best, "tau") - 1) < 2 * sd_tol, _ratio(s, best, "tau")


def test_eight_schools_natural_inner_matches_nuts(reference):
    """Fast: 1000 SVI steps, 32 particles, the natural inner step at α = 1 (exact q(θ_j | μ, τ))."""
    inner = bench.inner_config("natural")
    res = bench.run("eight_schools", reference, inner, steps=1000, lr=0.1, final_lr=0.005, particles=32,
                    seed=0, log_every=100, average_last=0.3)
    entry = reference["datasets"]["eight_schools"]
    s = res["summary"]
    _check_not_frozen(res)
    _check_converged(res)
    # μ and the marginals q(θ_j) meet the issue's targets; τ's sd does not (family: +29%, see above).
    _check_meets_targets(s, entry["nuts"], sd_targets=("mu", "log_tau"))
    _check_at_family_optimum(s, entry["gaussian_vi_optimum"], mean_tol=0.05, sd_tol=0.05)
    # The guide's own draws of θ agree with q(θ)'s closed-form moments.
    for k in ("mu", "log_tau"):
        assert abs(s["sampled"][k]["mean"] - s[k]["mean"]) < 0.1 * s[k]["sd"]
        assert abs(s["sampled"][k]["sd"] / s[k]["sd"] - 1) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight_schools", "baseball"])
def test_natural_inner_matches_nuts_long_run(reference, name):
    """3000 steps, 64 particles: tighter agreement with the family's optimum, both data sets."""
    inner = bench.inner_config("natural")
    res = bench.run(name, reference, inner, steps=3000, lr=0.1, final_lr=0.002, particles=64,
                    seed=0, log_every=250, average_last=0.3)
    entry = reference["datasets"][name]
    s = res["summary"]
    _check_not_frozen(res)
    _check_converged(res)
    # eight schools: τ's sd misses the target (family optimum +29%); baseball: log τ's sd
    # does (family optimum −38%). Both are checked against the optimum below.
    sd_targets = ("mu", "log_tau") if name == "eight_schools" else ("mu", "tau")
    _check_meets_targets(s, entry["nuts"], sd_targets=sd_targets)
    _check_at_family_optimum(s, entry["gaussian_vi_optimum"], mean_tol=0.03, sd_tol=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight_schools", "baseball"])
def test_flow_q_theta_meets_every_target_against_nuts(reference, name):
    """q_theta="flow" (hvi.flows) lifts the family's limit: every mean within 0.25 and every sd within 25%
    of NUTS's, τ and log τ included (the diagonal Normal misses τ's sd on eight schools, log τ's on baseball)."""
    inner = bench.inner_config("natural")
    res = bench.run(name, reference, inner, q_theta="flow", steps=4000, lr=0.02, final_lr=0.0005,
                    particles=32, seed=0, log_every=250)
    _check_not_frozen(res)
    _check_meets_targets(res["summary"], reference["datasets"][name]["nuts"], sd_targets=("mu", "tau", "log_tau"))
