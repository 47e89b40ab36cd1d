"""``hvi evaluate``: per-task values (``per_task``, keyed by task index) and ``RUN_DIR/evaluation.json``."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from click.testing import CliRunner

from cli_checks import assert_error, invoke
from hvi.cli.main import cli
from hvi.run_dir import EVALUATION_FILE

TINY = ["fit", "--model", "mlp", "--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]
EVAL = ["--max-tasks", "3", "--num-samples", "4", "--no-progress"]


@pytest.fixture(autouse=True)
def _fresh(fresh_store, monkeypatch):
    monkeypatch.delenv("HVI_DEBUG", raising=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    pyro.clear_param_store()
    threads = torch.get_num_threads()
    out = tmp_path_factory.mktemp("runs") / "sine"
    res = CliRunner().invoke(cli, [*TINY, "--out", str(out)], catch_exceptions=False)
    torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    return out


def test_json_has_per_task_values_whose_means_are_the_metrics(run_dir):
    (run_dir / EVALUATION_FILE).unlink(missing_ok=True)
    res = invoke(["evaluate", run_dir, "--json", *EVAL])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["seed"], out["num_tasks"]) == (0, 3)
    assert out["hvi_version"]
    for name, metrics, per in [("model", out["metrics"], out["per_task"])] + [
        (b, v["metrics"], v["per_task"]) for b, v in out["baselines"].items()
    ]:
        assert list(per) == ["0", "1", "2"], name
        assert all(list(per[t]) == list(metrics) for t in per), name
        for m, ci in metrics.items():
            values = [per[t][m] for t in per]
            if ci["value"] is None:
                assert all(v is None for v in values)
                continue
            assert math.isclose(sum(values) / 3, ci["value"], rel_tol=1e-9, abs_tol=1e-12), (name, m)
    assert sorted(out["baselines"]) == ["prior", "scratch"]
    assert len({out["per_task"][t]["rmse"] for t in "012"}) == 3  # each task's own value, not the mean repeated
    # the run directory holds the same object, written atomically (no temporary file left)
    assert json.loads((run_dir / EVALUATION_FILE).read_text()) == out
    assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_the_table_writes_evaluation_json_too(run_dir):
    (run_dir / EVALUATION_FILE).unlink(missing_ok=True)
    res = invoke(["evaluate", run_dir, *EVAL])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("3 test tasks of 'sinusoid'")
    saved = json.loads((run_dir / EVALUATION_FILE).read_text())
    assert saved["num_tasks"] == 3 and len(saved["per_task"]) == 3
    assert res.stderr == ""
    res = invoke(["-v", "evaluate", run_dir, *EVAL])
    assert res.stderr == f"wrote {run_dir / EVALUATION_FILE}\n"


def test_an_error_writes_nothing_and_a_failed_write_keeps_the_result(run_dir, monkeypatch):
    (run_dir / EVALUATION_FILE).write_text('{"old": 1}\n')
    assert_error(invoke(["evaluate", run_dir, "--max-tasks", "1"]), "--max-tasks 1 must be >= 2")
    assert json.loads((run_dir / EVALUATION_FILE).read_text()) == {"old": 1}

    def read_only(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("hvi.atomic.write_json", read_only)
    res = invoke(["evaluate", run_dir, "--json", *EVAL])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["num_tasks"] == 3
    assert res.stderr.startswith(f"Warning: could not write {run_dir}/{EVALUATION_FILE}: [Errno 13] Permission denied")
    assert json.loads((run_dir / EVALUATION_FILE).read_text()) == {"old": 1}


def test_extending_a_run_drops_the_old_evaluation(run_dir, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    assert invoke(["evaluate", run, *EVAL]).exit_code == 0
    assert (run / EVALUATION_FILE).is_file()
    res = invoke([*TINY, "--out", run, "--resume", "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert not (run / EVALUATION_FILE).exists()
