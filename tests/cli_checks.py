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


def invoke(args, runner=None, **kwargs):
    """Run ``hvi ARGS`` in this process (click's CliRunner); exceptions propagate to the test.

    ``args`` may hold paths or numbers (converted with ``str``); ``kwargs`` go to
    ``CliRunner.invoke`` (e.g. ``env``, ``input``).
    """
    from click.testing import CliRunner

    from hvi.cli.main import cli

    return (runner or CliRunner()).invoke(cli, [str(a) for a in args], catch_exceptions=False, prog_name="hvi", **kwargs)
