"""benchmarks/scaling_sweep.py's grid, its files, and meta_step.py's options that it and #16 use."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"


sweep = load_script("benchmarks/scaling_sweep.py", "hvi_bench_scaling_sweep")


def test_the_quick_grid_varies_one_axis_at_a_time_and_runs_each_point_once():
    grid = sweep.GRIDS["quick"]
    pts = sweep.points(grid)
    assert len(pts) == len(set(pts)) == 11  # 5 batches + 4 more K + 2 more sizes
    assert {p for p in pts if p[0] == 128} == {(128, 5, 1)}  # the largest images at task batch 1 only
    assert sweep.axes_of(grid, 32, 5, 2) == ["task_batch", "inner_steps"]
    assert sweep.axes_of(grid, 32, 5, 1) == ["task_batch", "size"]
    assert sweep.axes_of(grid, 32, 20, 2) == ["inner_steps"]
    calls = sweep.invocations(grid)
    assert sum(len(c["task_batch"]) for c in calls) == len(pts)
    assert {"size": 32, "inner_steps": [5], "task_batch": [1, 2, 4, 8, 16]} in calls


def test_every_memory_mode_has_a_series():
    from hvi.choices import MEMORY_MODES

    names = [s["series"] for s in sweep.series_list()]
    assert names == [f"engine, memory {m}" for m in MEMORY_MODES] + ["engine, first order", "naive loop"]


RESULT = ROOT / "docs" / "results" / "scaling.json"


@pytest.mark.skipif(not RESULT.exists(), reason="no sweep results yet")
def test_plot_only_redraws_the_committed_results(tmp_path):
    out_csv, out_png = tmp_path / "s.csv", tmp_path / "s.png"
    assert sweep.main(["--plot-only", "--out", str(RESULT), "--csv", str(out_csv), "--png", str(out_png)]) == 0
    data = json.loads(RESULT.read_text())
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["results"]) > 0
    assert [float(r["peak_rss_mb"]) for r in rows] == [r["peak_rss_mb"] for r in data["results"]]
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert data["machine"]["loadavg_before"] and "under load" in data["machine"]["note"]


def test_meta_step_reduced_precision_without_flops_or_matmul(one_thread):
    cmd = [sys.executable, str(BENCH / "meta_step.py"), "--model", "mlp", "--impl", "engine", "--task-batch", "2",
           "--inner-steps", "1", "--steps", "1", "--warmup", "0", "--json", "--threads", "1",
           "--autocast", "bf16", "--no-flops", "--no-matmul"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["impl"] for r in rows] == ["engine"]  # no matmul line
    r = rows[0]
    assert r["autocast"] == "bf16" and r["compile"] is None and r["loss_finite"]
    assert r["gflop_per_task"] is None and r["gflop_per_s"] is None and r["tasks_per_s"] > 0


def test_meta_step_refuses_network_options_for_the_naive_loop():
    cmd = [sys.executable, str(BENCH / "meta_step.py"), "--impl", "both", "--compile"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "--compile and --autocast configure the engine's network; add --impl engine" in proc.stderr


@pytest.mark.skipif(not RESULT.exists(), reason="no sweep results yet")
def test_replace_series_reruns_one_series_and_keeps_the_others(tmp_path, monkeypatch):
    old = json.loads(RESULT.read_text())
    out = tmp_path / "s.json"
    out.write_text(json.dumps(old))
    target = "engine, memory checkpoint"
    called = []

    def fake(series, call, grid, timeout):
        called.append(series["series"])
        return [{**r, "peak_rss_mb": -1.0} for r in old["results"]
                if r["series"] == series["series"] and r["size"] == call["size"]
                and r["inner_steps"] in call["inner_steps"] and r["task_batch"] in call["task_batch"]], None

    monkeypatch.setattr(sweep, "run_meta_step", fake)
    argv = ["--quick", "--replace-series", target, "--out", str(out), "--csv", str(tmp_path / "s.csv"),
            "--png", str(tmp_path / "s.png")]
    assert sweep.main(argv) == 0
    new = json.loads(out.read_text())
    assert set(called) == {target}
    assert [r for r in new["results"] if r["series"] != target] == [r for r in old["results"] if r["series"] != target]
    mine = [r for r in new["results"] if r["series"] == target]
    assert len(mine) == sum(r["series"] == target for r in old["results"]) > 0
    assert all(r["peak_rss_mb"] == -1.0 for r in mine)
    assert new["previous"][-1] == {"command": old["command"], "date": old["date"]}
    with pytest.raises(SystemExit):
        sweep.main(["--quick", "--replace-series", "engine, memory nonsense", "--out", str(out)])
