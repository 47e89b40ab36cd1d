"""What every results file in ``docs/results/`` carries: the command that wrote it and the date."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def write_result(path: str | os.PathLike, script: str, argv: list[str] | None, payload: Any) -> dict[str, Any]:
    """Writes ``{"command", "date", **payload}`` (or ``"results": payload`` for a list) as JSON.

    Args:
        path: The JSON file to write (replaced atomically).
        script: The script's path relative to the repository, e.g. ``benchmarks/x.py``.
        argv: The script's arguments (default ``sys.argv[1:]``).
        payload: A dict of results, or a list (stored under ``"results"``).

    Returns:
        What was written.
    """
    args = sys.argv[1:] if argv is None else argv
    # Quoted, so that the command pastes back into a shell.
    out = {"command": shlex.join(["python", script, *args]), "date": datetime.date.today().isoformat()}
    out.update(payload if isinstance(payload, dict) else {"results": payload})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)
    return out
