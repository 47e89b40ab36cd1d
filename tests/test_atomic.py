"""hvi.atomic: the one atomic-write implementation (temp file, fsync, os.replace; nothing torn or left behind)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from hvi import atomic


def test_write_json_replaces_whole_file_with_usual_permissions(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    atomic.write_json(p, {"x": [1, 2]})
    assert json.loads(p.read_text()) == {"x": [1, 2]} and p.read_text().endswith("\n")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("old")
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        atomic.write_json(p, {"x": float("nan")})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old" and sorted(x.name for x in tmp_path.iterdir()) == ["a.json"]
