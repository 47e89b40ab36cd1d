"""benchmarks/siren_study.py --data images: the SIREN study on photo tiles, at tiny sizes; and its table renderer."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/siren_study.py", "hvi_bench_siren_study")


def test_the_test_images_are_spread_over_every_test_photo(bench):
    import hvi.data

    assert bench.pick_test(10, 10).tolist() == list(range(10))  # faces: all 10, in order, as before --data
    assert bench.pick_test(10, 25).tolist() == list(range(10))
    pick = bench.pick_test(293, 10)
    assert pick[0] == 0 and pick[-1] == 292 and bool((pick.diff() > 0).all())
    info = hvi.data.get_source("images").tile_info("test")
    assert len(info) == 293
    assert {info[i][0] for i in pick.tolist()} == {"coffee", "coins", "moon"}


def test_data_images_runs_and_writes_its_own_files(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs/results").mkdir(parents=True)
    tiny = ["--steps", "2", "--match-steps", "12", "--width", "16", "--depth", "2", "--test-images", "3",
            "--abml-samples", "2", "--methods", "maml,abml"]
    assert bench.main(["--data", "images", *tiny]) == 0
    capsys.readouterr()
    # the default outputs of --data images, not the faces study's
    out = tmp_path / "docs/results/siren_study_images.json"
    assert sorted(p.name for p in (tmp_path / "docs/results").iterdir()) == ["siren_study_images.json"]
    assert sorted(p.name for p in (tmp_path / "docs/figures").iterdir()) == ["siren_ntk_images.png", "siren_study_images.png"]
    d = json.loads(out.read_text())
    assert d["command"].startswith("python benchmarks/siren_study.py --data images") and d["config"]["data"] == "images"
    assert "32x32 gray" in d["protocol"] and "all 1024 pixels; 1650 training photo tiles" in d["protocol"]
    assert "3 test photo tiles (evenly spaced over the 293)" in d["protocol"]
    # hvi.predict's inner loop and the script's own SGD curve agree on the standard init
    assert d["consistency_max_abs_psnr_diff_own_sgd_vs_hvi_predict"] < 1e-3
    t = d["psnr_by_inner_steps"]
    assert list(t) == ["standard SGD", "maml", "abml", "standard SGD lr/10", "standard Adam"]
    # step 0 of every standard-init row is the same untrained network on the same 3 tiles
    assert t["standard SGD"]["0"] == t["standard SGD lr/10"]["0"] == t["standard Adam"]["0"]
    assert 3.0 < t["standard SGD"]["0"]["mean"] < 30.0
    assert t["standard SGD"]["10"]["mean"] > t["standard SGD"]["0"]["mean"]  # SGD at α fits a 16-wide net
    ntk = d["ntk"]["standard"]["energy_fraction_centered"]
    assert 0.0 <= ntk["1"] <= ntk["10"] <= ntk["200"] <= 1.0 + 1e-6
    # the renderer names the images study by its data
    tables = load_script("benchmarks/results_table.py", "hvi_bench_results_table")
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "docs/results")
    text = tables.siren_study("siren_study_images.json")
    assert "over 3 held-out photo tiles (32×32, all pixels fitted)" in text and "of 3 photo tiles" in text
    row = next(r for r in text.splitlines() if r.startswith("| MAML init"))
    assert f"{t['maml']['2']['mean']:.2f} ± {t['maml']['2']['ci95']:.2f}" in row
    assert "on the 32×32 grid, mean over 3 photo tiles" in tables.siren_ntk("siren_study_images.json")


def test_faces_stays_the_default_and_its_outputs_keep_their_names(bench, capsys):
    a = bench.parse_args([])
    assert (a.data, a.out, a.steps, a.match_steps, a.threads) == ("faces", "docs/results/siren_study.json", 300, 1000, 1)
    b = bench.parse_args(["--data", "images", "--steps", "500", "--match-steps", "1000"])
    assert (b.data, b.out, b.steps, b.match_steps) == ("images", "docs/results/siren_study_images.json", 500, 1000)
    assert bench.parse_args(["--data", "images", "--out", "x.json"]).out == "x.json"
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", "photos"])
    assert "invalid choice: 'photos'" in capsys.readouterr().err
