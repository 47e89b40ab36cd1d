"""benchmarks/sinusoid_methods.py --merge: one method rerun, the other rows kept as measured."""

from __future__ import annotations

import json

import pytest
from script_loader import load_script

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def bench():
    return load_script("benchmarks/sinusoid_methods.py", "hvi_bench_sinusoid_methods")


def test_merge_keeps_other_rows_and_refuses_another_budget(bench, tmp_path, capsys):
    out = tmp_path / "r.json"
    budget = ["--steps", "2", "--test-tasks", "4", "--task-batch", "2", "--out", str(out)]
    assert bench.main(["--methods", "maml,abml", *budget]) == 0
    before = json.loads(out.read_text())
    assert bench.main(["--methods", "abml", "--merge", *budget]) == 0
    after = json.loads(out.read_text())
    assert list(after["methods"]) == ["maml", "abml"]
    maml = dict(after["methods"]["maml"])
    assert maml.pop("command") == before["command"] and maml.pop("date") == before["date"]
    assert maml == before["methods"]["maml"]  # the kept row is unchanged, now with its own command
    assert "--merge" in after["methods"]["abml"]["command"] and after["complete"]
    assert after["config"]["methods"] == "maml,abml"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--methods", "abml", "--merge", *budget, "--test-tasks", "5"])
    assert exit_info.value.code != 0 and "--merge:" in capsys.readouterr().err
    assert json.loads(out.read_text()) == after  # nothing written
