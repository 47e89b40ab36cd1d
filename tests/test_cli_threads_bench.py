"""benchmarks/cli_threads.py: one short fresh ``hvi fit`` recorded with its training, CPU and wall seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cli_threads.py"


def test_one_short_fit_is_recorded_with_cpu_and_training_seconds(tmp_path):
    out = tmp_path / "threads.json"
    cmd = [sys.executable, str(SCRIPT), "--model", "mlp", "--steps", "2", "--threads", "2", "--rounds", "1",
           "--fit-arg=--task-batch", "--fit-arg=2", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(out.read_text())
    assert d["command"].startswith("python benchmarks/cli_threads.py --model mlp") and d["date"]
    (run,) = d["runs"]["2"]
    # The parsed "trained 2 steps ... in X s" is part of the run, which is part of the wall time.
    assert run["train_s"] is not None and 0 < run["train_s"] < run["wall_s"]
    assert run["cpu_s"] > 0.5 and abs(run["cpu_s"] - run["user_s"] - run["sys_s"]) < 1e-9  # torch's import alone
    assert d["median"]["2"]["cpu_s"] == run["cpu_s"] and d["config"]["fit_arg"] == ["--task-batch", "2"]


def test_thread_counts_are_checked_before_any_run(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1,0", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "each entry must be a positive integer, optionally with 'i'" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_failing_fit_reports_its_error(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "mlp", "--steps", "1", "--threads", "1", "--rounds", "1",
                           "--fit-arg=--no-such-option", "--out", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1 and "hvi fit failed" in proc.stderr and "No such option '--no-such-option'" in proc.stderr
    assert not (tmp_path / "x.json").exists()
