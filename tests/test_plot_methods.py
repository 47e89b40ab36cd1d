"""benchmarks/plot_methods.py: the two method studies' figures plot the JSON's numbers under the tables' labels."""

from __future__ import annotations

import json

import pytest
from script_loader import ROOT, load_script

SINUSOID = ROOT / "docs/results/sinusoid_methods.json"
GLYPH = ROOT / "docs/results/glyph_methods.json"


@pytest.fixture(scope="module")
def plot():
    return load_script("benchmarks/plot_methods.py", "hvi_bench_plot_methods")


@pytest.fixture(scope="module")
def tables():
    return load_script("benchmarks/results_table.py", "hvi_bench_results_table")


def _png_shape(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path).shape


def test_sinusoid_figure_plots_every_row_of_the_json(plot, tables, tmp_path):
    out = tmp_path / "s.png"
    series = plot.plot_sinusoid(SINUSOID, out)
    h, w, _ = _png_shape(out)
    assert w > h > 400
    d = json.loads(SINUSOID.read_text())
    assert [s["name"] for s in series.values()] == list(d["methods"])
    table = tables.sinusoid_methods()
    for label, s in series.items():
        b = d["methods"][s["name"]]["by_inner_steps"]
        assert s["steps"] == sorted(int(k) for k in b)
        assert s["mse"] == [b[str(k)]["mse"] for k in s["steps"]]
        assert s["ci95"] == [b[str(k)]["mse_ci95"] for k in s["steps"]]
        # the legend label is the table's row label, and the row shows these numbers
        i1, i10 = s["steps"].index(1), s["steps"].index(10)
        assert (f"| {label} | " in table and f"{s['mse'][i1]:.3f} ± {s['ci95'][i1]:.3f}" in table
                and f"{s['mse'][i10]:.3f} ± {s['ci95'][i10]:.3f}" in table)
    maml = series["MAML"]
    assert maml["steps"] == [0, 1, 5, 10]
    assert maml["mse"][1] == pytest.approx(0.459, abs=5e-4) and maml["ci95"][1] == pytest.approx(0.044, abs=5e-4)
    assert series["ABML"]["mse"][3] == pytest.approx(0.042, abs=5e-4)


def test_glyph_figure_plots_both_episode_kinds_and_the_ece(plot, tables, tmp_path):
    out = tmp_path / "g.png"
    series = plot.plot_glyph(GLYPH, out)
    h, w, _ = _png_shape(out)
    assert w > 2 * h
    d = json.loads(GLYPH.read_text())
    assert list(series) == list(d["results"]) == ["1-shot", "5-shot"]
    table = tables.glyph_methods()
    for shots, rows in series.items():
        assert [s["name"] for s in rows.values()] == list(d["results"][shots])
        for label, s in rows.items():
            b = d["results"][shots][s["name"]]["by_inner_steps"]
            assert s["steps"] == [1, 3, 10]
            assert s["accuracy"] == [b[k]["accuracy"] for k in ("1", "3", "10")]
            assert s["ci95"] == [b[k]["accuracy_ci95"] for k in ("1", "3", "10")]
            assert s["ece_3"] == b["3"]["ece"] and s["ece_3_ci95"] == b["3"]["ece_ci95"]
            assert f"| 5-way {shots} | {label} | " in table
            assert all(lo <= a <= hi for a, (lo, hi) in zip(s["accuracy"], s["ci95"]))
    ls = series["1-shot"]["ABML, line search"]
    assert ls["accuracy"][1] == pytest.approx(0.894, abs=5e-4) and ls["ece_3"] == pytest.approx(0.045, abs=5e-4)
    assert series["5-shot"]["MAML"]["accuracy"][2] == pytest.approx(0.989, abs=5e-4)


def test_the_cli_writes_both_figures(plot, tmp_path, capsys):
    assert plot.main(["--figure-dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["glyph_methods.png", "sinusoid_methods.png"]
    assert capsys.readouterr().out.count("wrote ") == 2


@pytest.mark.parametrize("case", ["missing", "not_json", "wrong_study"])
def test_a_bad_json_is_one_clear_line_and_no_figure(plot, tmp_path, capsys, case):
    bad = tmp_path / "bad.json"
    if case == "not_json":
        bad.write_text('{"methods": {')
    elif case == "wrong_study":
        bad.write_text(GLYPH.read_text())  # a glyph result given as the sinusoid one: no "methods"
    figs = tmp_path / "figs"
    figs.mkdir()
    assert plot.main(["--sinusoid", str(bad), "--figure-dir", str(figs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("plot_methods.py: error: ") and str(bad) in err
    assert {"missing": "no such file", "not_json": "not valid JSON",
            "wrong_study": "has no 'methods' results"}[case] in err
    assert not list(figs.iterdir())  # neither figure written
    with pytest.raises(ValueError, match="no such file"):
        plot.plot_glyph(tmp_path / "absent.json", tmp_path / "g.png")
