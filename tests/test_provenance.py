"""benchmarks/provenance.py: every results file's command pastes back into a shell."""

from __future__ import annotations

import json
import shlex

from script_loader import load_script

write_result = load_script("benchmarks/provenance.py", "hvi_bench_provenance").write_result


def test_the_command_is_shell_quoted_and_the_payload_kept(tmp_path):
    out = tmp_path / "r.json"
    argv = ["--replace-series", "engine, memory checkpoint", "--out", str(out)]
    written = write_result(out, "benchmarks/x.py", argv, {"a": 1})
    assert json.loads(out.read_text()) == written
    assert shlex.split(written["command"]) == ["python", "benchmarks/x.py", *argv]
    assert written["a"] == 1 and len(written["date"]) == 10
    assert write_result(out, "benchmarks/x.py", [], [1, 2])["results"] == [1, 2]
    assert not list(tmp_path.glob("*.tmp"))
