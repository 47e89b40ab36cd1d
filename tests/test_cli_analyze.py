"""hvi analyze ntk: plots and table of a tiny siren run; one-line errors for runs it cannot analyze."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli_checks import assert_error, invoke
from hvi.cli.main import cli

TINY = ["--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _fresh_store(fresh_store):
    """Every test here starts from an empty param store (tests/conftest.py)."""


@pytest.fixture(scope="module")
def siren_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "siren"
    res = invoke(["fit", "--model", "siren", "--data", "faces", "--model-arg", "width=8", "--model-arg", "depth=2",
                  "--method", "maml", *TINY, "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_ntk_writes_plots_and_table(siren_run):
    res = invoke(["analyze", "ntk", str(siren_run), "--images", "3", "--eigenfunctions", "4"])
    assert res.exit_code == 0, res.output
    out = siren_run / "ntk"  # the default --out
    assert sorted(p.name for p in out.iterdir()) == ["eigenfunctions.png", "energy.png", "ntk.json"]
    assert (out / "energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = json.loads((out / "ntk.json").read_text())
    assert table["grid"] == [25, 25] and table["images"] == 3 and table["method"] == "maml"
    for init in ("standard", "learned"):
        frac = [table["inits"][init]["energy_fraction"][k] for k in ("1", "2", "5", "10", "20", "50", "100", "200")]
        assert all(0 < a <= b <= 1 + 1e-6 for a, b in zip(frac, frac[1:])), frac
        eig = table["inits"][init]["eigenvalues_top10"]
        assert eig == sorted(eig, reverse=True) and eig[0] > 0
    # 2 MAML steps moved θ: the learned init's kernel is not the standard one
    assert table["inits"]["learned"]["trace"] != table["inits"]["standard"]["trace"]
    assert "energy fraction" in res.stdout and "learned" in res.stdout


def test_ntk_refuses_a_run_that_is_not_on_a_pixel_grid(tmp_path):
    run = tmp_path / "sine"
    assert invoke(["fit", "--model", "mlp", *TINY, "--out", str(run)]).exit_code == 0
    res = CliRunner().invoke(cli, ["analyze", "ntk", str(run), "--out", str(tmp_path / "ntk")], prog_name="hvi")
    assert_error(res, "not a coordinate network on a pixel grid", "--model siren --data faces")
    assert not (tmp_path / "ntk").exists()


def test_ntk_missing_run(tmp_path):
    res = CliRunner().invoke(cli, ["analyze", "ntk", str(tmp_path / "nope")], prog_name="hvi")
    assert_error(res, "does not exist")
