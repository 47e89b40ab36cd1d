"""The README's shell commands work exactly as written.

Every command of README.md's fenced ``bash``/``sh``/``console``/``shell``
blocks runs with ``bash`` in one temporary directory, in README order (later
commands use what earlier ones wrote, e.g. ``runs/sine``), after the README's
Python block that writes ``tasks.nc``; each must exit 0 within a minute. In CI
(not ``slow``) only the commands that train nothing run (a few seconds);
``pytest -m slow`` runs all of them.
Commands that take longer, install packages or need the network are in
:data:`SKIPPED` with the reason; that list must name only commands the README
has, so it cannot go stale silently.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hvi.run_dir import EVALUATION_FILE

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SHELLS = {"bash", "sh", "console", "shell"}

#: Command prefix -> why it is not run here.
SKIPPED = {
    "python3 -m venv .venv": "creates a virtual environment and installs torch (network, minutes)",
    "hvi fit --model bayes_unet": "trains the U-Net on the solar maps: 1.5-3 min on 2 CPU cores",
    "hvi evaluate runs/bayes_unet": "needs runs/bayes_unet from the 1.5-3 min fit",
    "hvi diagnose runs/bayes_unet": "needs runs/bayes_unet from the 1.5-3 min fit",
    "hvi predict runs/bayes_unet": "needs runs/bayes_unet from the 1.5-3 min fit (and s.nc/q.nc of your own)",
    "hvi fit --model mlp --data file": "trains the mlp's default 5000 steps (about 5-10 min on 2 CPU cores)",
}


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(first line number, language, body)`` of every fenced code block."""
    return [
        (text[: m.start()].count("\n") + 1, m.group(1).lower(), m.group(2))
        for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```", text, re.S | re.M)
    ]


def shell_commands(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every command of the shell blocks (``\\``-continued lines joined)."""
    out = []
    for start, lang, body in fenced_blocks(text):
        if lang not in SHELLS:
            continue
        lines = body.split("\n")
        i = 0
        while i < len(lines):
            line, first = lines[i], i
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1] + " " + lines[i].strip()
            line = line.removeprefix("$ ").strip()
            if line and not line.startswith("#"):
                out.append((start + 1 + first, line))
            i += 1
    return out


COMMANDS = shell_commands(README.read_text())


def skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)


def test_the_readme_has_shell_blocks_and_the_skip_list_is_current():
    assert len(COMMANDS) >= 10
    for prefix in SKIPPED:
        assert any(c.startswith(prefix) for _, c in COMMANDS), f"SKIPPED names {prefix!r}, which the README lacks"
    assert sum(skip_reason(c) is None for _, c in COMMANDS) >= 4


def _trains(command: str) -> bool:
    """Whether a command trains a model or reads a trained run (seconds each, beyond the import)."""
    return ("fit " in command and "--print-config" not in command) or "runs/" in command


def _run(tmp_path: Path, commands: list[tuple[int, str]]) -> list[str]:
    """Runs ``commands`` with bash in ``tmp_path`` after the README's tasks.nc example; returns them."""
    text = README.read_text()
    # The README's data-file example writes tasks.nc, which later commands read.
    (setup,) = [body for _, lang, body in fenced_blocks(text) if lang == "python" and 'to_netcdf("tasks.nc")' in body]
    subprocess.run([sys.executable, "-c", setup], cwd=tmp_path, check=True, timeout=60)
    hvi = shutil.which("hvi", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    assert hvi, "the hvi executable is not installed next to this Python"
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(hvi).parent), os.environ.get("PATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HVI_DEBUG", None)
    ran, failures = [], []
    for line, command in commands:
        if skip_reason(command) is not None:
            continue
        res = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
        ran.append(command)
        if res.returncode != 0:
            failures.append(f"README.md:{line}: {command!r} exited {res.returncode}: {res.stderr.strip()[-400:]}")
    assert not failures, "\n".join(failures)
    return ran


def test_the_readme_shell_commands_that_do_not_train(tmp_path):
    ran = _run(tmp_path, [(line, c) for line, c in COMMANDS if not _trains(c)])
    assert len(ran) >= 3
    assert (tmp_path / "run.toml").read_text().count('model = "mlp"') == 1


@pytest.mark.slow
def test_every_readme_shell_command_that_takes_under_a_minute(tmp_path):
    """All of them, in order (about 15 s of CPU: five hvi processes, a 20-step fit and its evaluation)."""
    ran = _run(tmp_path, COMMANDS)
    assert sum(_trains(c) for c in ran) >= 2
    assert (tmp_path / "runs" / "sine" / EVALUATION_FILE).is_file()
