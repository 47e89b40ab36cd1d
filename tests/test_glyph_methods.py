"""benchmarks/glyph_methods.py: ABML variants build what they say, --merge keeps the other rows as measured."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/glyph_methods.py", "hvi_bench_glyph_methods")


def test_abml_variants_set_the_inner_loop_they_name(bench):
    base = bench.build("abml").inner
    assert (base.lr, base.kl_weight, base.first_order, base.line_search, base.learn_lr) == (0.3, 1e-3, True, False, False)
    assert bench.build("abml_2nd").inner.first_order is False
    ls = bench.build("abml_ls_a1").inner
    assert ls.line_search and ls.lr == 1.0
    assert dict(bench.build("abml_rho003").inner.lr) == {"loc": 0.3, "rho": 0.03}
    assert bench.settings("abml_b1e-2")["kl_weight"] == 1e-2 and bench.settings("abml_s2")["inner_samples"] == 2
    with pytest.raises(ValueError, match="abml_nope"):
        bench.settings("abml_nope")


def test_merge_keeps_other_rows_and_refuses_another_budget(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    budget = ["--steps", "1", "--test-tasks", "2", "--task-batch", "1", "--samples", "2", "--shots", "1", "--out", str(out)]
    assert bench.main(["--methods", "reptile,fomaml", *budget]) == 0
    before = json.loads(out.read_text())
    assert bench.main(["--methods", "fomaml", "--merge", *budget]) == 0
    after = json.loads(out.read_text())
    assert list(after["results"]["1-shot"]) == ["reptile", "fomaml"]
    kept = dict(after["results"]["1-shot"]["reptile"])
    assert kept.pop("command") == before["command"] and kept.pop("date") == before["date"]
    assert kept == before["results"]["1-shot"]["reptile"]  # the kept row is unchanged, now with its own command
    assert "--merge" in after["results"]["1-shot"]["fomaml"]["command"] and after["complete"]
    assert after["config"]["methods"] == "reptile,fomaml" and after["config"]["shots"] == "1"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--methods", "fomaml", "--merge", *budget, "--test-tasks", "3"])
    assert exit_info.value.code != 0 and "--merge:" in capsys.readouterr().err
    assert json.loads(out.read_text()) == after  # nothing written
    with pytest.raises(SystemExit):
        bench.main(["--methods", "abml_nope", *budget])
    assert "--methods: unknown abml_nope" in capsys.readouterr().err


def test_side_by_side_merges_keep_each_others_rows_and_wall_times(bench, tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    budget = ["--steps", "1", "--test-tasks", "2", "--task-batch", "1", "--samples", "2", "--shots", "1", "--out", str(out),
              "--merge"]
    assert bench.main(["--methods", "reptile", *budget]) == 0
    fit = bench.hvi.fit

    def fit_while_another_command_writes(*args, **kwargs):  # the other command lands a row mid-run
        monkeypatch.setattr(bench.hvi, "fit", fit)
        assert bench.main(["--methods", "maml", *budget]) == 0
        return fit(*args, **kwargs)

    monkeypatch.setattr(bench.hvi, "fit", fit_while_another_command_writes)
    assert bench.main(["--methods", "fomaml", *budget]) == 0
    after = json.loads(out.read_text())
    assert sorted(after["results"]["1-shot"]) == ["fomaml", "maml", "reptile"]
    runs = after["runs"]
    assert sorted(c.split("--methods ")[1].split()[0] for c in runs) == ["fomaml", "maml", "reptile"]
    assert all(r["complete"] and r["wall_seconds"] > 0 for r in runs.values()) and after["complete"]
    assert all(r["eval_seconds"] > 0 for r in after["results"]["1-shot"].values())
