"""Every example runs end to end on its built-in source (tiny settings)."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

CASES = {
    "sinusoid_mlp.py": ["--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--eval-tasks", "4"],
    "solar_unet.py": ["--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--base", "4"],
    "faces_siren.py": ["--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--width", "16", "--depth", "2"],
    "glyphs_conv4.py": ["--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--hidden", "8", "--eval-tasks", "4"],
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script])
    module = runpy.run_path(str(EXAMPLES / script))
    out = module["main"](CASES[script])
    assert out and all(math.isfinite(v) for v in out.values())
    assert capsys.readouterr().out.strip()
