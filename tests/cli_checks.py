"""Assertions shared by the CLI tests."""

from __future__ import annotations


def assert_error(res, *fragments):
    """Non-zero exit, exactly one line 'Error: ...' on stderr, no traceback."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for f in fragments:
        assert f in lines[0], lines[0]
