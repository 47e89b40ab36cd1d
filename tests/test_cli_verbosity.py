"""``hvi -v`` / ``hvi -vv`` / ``hvi -q``: how much the command line says on stderr (through logging)."""

from __future__ import annotations

import json
import logging

import pytest

from cli_checks import assert_error, invoke
from hvi.cli.log import level_for
from hvi.checkpoint import META_FILE
from hvi.run_dir import CHECKPOINT_DIR, CONFIG_FILE, MODEL_DIR

TINY = ["fit", "--model", "mlp", "--steps", "2", "--task-batch", "2", "--inner-steps", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _fresh(fresh_store, monkeypatch):
    monkeypatch.delenv("HVI_DEBUG", raising=False)
    yield
    logging.getLogger("hvi").setLevel(logging.NOTSET)


def test_levels():
    assert [level_for(v, False) for v in (0, 1, 2, 3)] == [logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG]
    assert level_for(0, True) == logging.ERROR


def test_default_says_nothing_on_stderr_and_the_summary_on_stdout(tmp_path):
    res = invoke([*TINY, "--out", tmp_path / "r"])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    assert res.stdout.splitlines()[0].startswith("trained 2 steps (2 now)")
    assert res.stdout.splitlines()[1] == f"run directory: {tmp_path / 'r'}"


def test_verbose_says_what_the_run_does(tmp_path):
    out = tmp_path / "r"
    res = invoke(["-v", *TINY, "--checkpoint-every", "1", "--out", out])
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert lines[0].startswith(
        "training mlp on sinusoid: x (1,), y (1,), gaussian likelihood, train/val/test tasks 20000/1000/1000; "
        "cpu, steps 1..2, in "
    )
    assert [line.split(" (loss")[0] for line in lines[1:3]] == ["step 1: checkpoint written", "step 2: checkpoint written"]
    assert lines[3:] == [f"run complete: {out}"]
    assert not any(line.startswith("debug: ") for line in lines)
    assert res.stdout.startswith("trained 2 steps")
    res = invoke(["-v", *TINY, "--out", out, "--resume", "--steps", "3"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[0].startswith(f"resuming {out} from its checkpoint at step 2 (")


def test_very_verbose_adds_the_configuration_as_json(tmp_path):
    out = tmp_path / "r"
    res = invoke(["-vv", *TINY, "--out", out])
    assert res.exit_code == 0, res.output
    (line,) = [line for line in res.stderr.splitlines() if line.startswith("debug: configuration: ")]
    assert json.loads(line.removeprefix("debug: configuration: ")) == json.loads((out / CONFIG_FILE).read_text())


def test_quiet_says_nothing_but_errors_and_keeps_results(tmp_path):
    out = tmp_path / "r"
    res = invoke(["-q", *TINY, "--progress", "--out", out])  # not even the progress bar
    assert res.exit_code == 0, res.output
    assert (res.stdout, res.stderr) == ("", "")
    assert (out / MODEL_DIR / META_FILE).is_file()
    res = invoke(["-q", "evaluate", out, "--json", "--max-tasks", "2", "--num-samples", "2"])
    assert res.exit_code == 0, res.output
    assert res.stderr == ""
    assert json.loads(res.stdout)["num_tasks"] == 2
    assert_error(invoke(["-q", *TINY, "--out", out]), "already exists")


def test_quiet_hides_warnings_that_the_default_shows(tmp_path):
    out = tmp_path / "r"
    res = invoke([*TINY, "--steps", "3", "--checkpoint-every", "1", "--keep-checkpoints", "2", "--out", out])
    assert res.exit_code == 0, res.output
    damaged = (out / CHECKPOINT_DIR / META_FILE).read_text()[:50]
    for steps, flags, shown in ((4, [], True), (5, ["-q"], False)):
        (out / CHECKPOINT_DIR / META_FILE).write_text(damaged)
        res = invoke([*flags, *TINY, "--out", out, "--resume", "--steps", steps])
        assert res.exit_code == 0, res.output
        warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning: ")]
        assert len(warnings) == (1 if shown else 0), res.stderr
        if shown:
            assert f"Falling back to the newest good checkpoint, step {steps - 1}" in warnings[0]
        assert res.stderr == ("" if not shown else warnings[0] + "\n")
    res = invoke(["-q", *TINY, "--out", out, "--resume", "--steps", "5"])  # nothing left to do: the error stays
    assert_error(res, "already has 5 steps")


def test_quiet_and_verbose_together_is_a_usage_error():
    res = invoke(["-q", "-v", "models"])
    assert res.exit_code == 2
    assert res.stderr == "Error: -q and -v contradict each other; pass one of them. (see 'hvi --help')\n"
