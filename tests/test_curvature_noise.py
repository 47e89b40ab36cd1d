"""benchmarks/curvature_noise.py: the estimates it compares, on the sinusoid MLP (fast)."""

import pytest

from script_loader import load_script


@pytest.fixture(scope="module")
def row():
    script = load_script("benchmarks/curvature_noise.py", "curvature_noise")
    return script.measure("mlp", alpha=0.1, ref_pairs=16, trials=4, seed=0)


def test_the_pair_beats_one_sided_and_the_oracle_baseline_recovers_it(row):
    for where in ("start", "after one step"):
        err = row[where]["relative_error"]
        step = row[where]["mean_step_relative_error"]
        assert err["one_sided"] > 2 * err["pair"]
        assert step["one_sided"] > 1.5 * step["pair"]
        # the exact ∇ℓ(m) removes the one-sided noise term: within 1.5× the pair
        assert err["one_sided, exact baseline"] < 1.5 * err["pair"]
    assert "one_sided, last-step baseline" not in row["start"]["relative_error"]
    assert row["after one step"]["relative_error"]["one_sided, last-step baseline"] > err["pair"]


def test_the_step_between_the_measurements_moves_the_mean(row):
    assert row["start"]["mean_moved_in_sigmas_rms"] is None
    assert 0.01 < row["after one step"]["mean_moved_in_sigmas_rms"] < 10
    assert row["weights"] == 1761
