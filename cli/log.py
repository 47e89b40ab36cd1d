"""Verbosity of the ``hvi`` command line through :mod:`logging` (``hvi -v ...``, ``hvi -q ...``).

The library logs to the ``hvi`` logger (``logging.getLogger("hvi")`` and its
children, e.g. ``hvi.cli.run``); the command line attaches one handler that
writes each record as one line on stderr:

=========  ===========  =============================================================
option     level        shown on stderr
=========  ===========  =============================================================
``-q``     ERROR        nothing but the ``Error:`` line; no progress bars, no status
                        lines (``trained ...``, ``wrote ...``); results (tables, JSON,
                        listings) still go to stdout
(none)     WARNING      ``Warning: ...`` lines and progress bars
``-v``     INFO         also what a command does: data, device, resume point,
                        each checkpoint written, output paths
``-vv``    DEBUG        also the resolved configuration (``debug: ...``)
=========  ===========  =============================================================

Used as a library, hvi configures no handler: Python's defaults apply.
"""

from __future__ import annotations

import logging
import sys

import click

__all__ = ["LOGGER", "setup", "is_quiet", "level_for"]

#: The root logger of the library.
LOGGER = "hvi"

_PREFIX = {logging.DEBUG: "debug: ", logging.INFO: "", logging.WARNING: "Warning: "}


class _EchoHandler(logging.Handler):
    """One line per record on the *current* stderr (click.echo; CliRunner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = " ".join(record.getMessage().split("\n"))
            prefix = _PREFIX.get(record.levelno, "Error: " if record.levelno >= logging.ERROR else "")
            line = f"{prefix}{text}"
            bars = _active_bars()
            if bars:  # above the progress bar, which is redrawn below it
                bars.write(line, file=sys.stderr)
            else:
                click.echo(line, err=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _active_bars():
    """tqdm's class when a progress bar is showing (its ``write`` keeps the bar intact), else None."""
    tqdm = sys.modules.get("tqdm")
    cls = getattr(tqdm, "tqdm", None)
    return cls if cls is not None and getattr(cls, "_instances", None) else None


_state = {"quiet": False}


def level_for(verbose: int, quiet: bool) -> int:
    """The logging level of ``-v`` repeated ``verbose`` times, or of ``-q``."""
    if quiet:
        return logging.ERROR
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def setup(verbose: int = 0, quiet: bool = False) -> None:
    """Attaches the command line's stderr handler to the ``hvi`` logger at the level of ``-v``/``-q``.

    Raises:
        click.UsageError: If both ``-q`` and ``-v`` are given.
    """
    if quiet and verbose:
        raise click.UsageError("-q and -v contradict each other; pass one of them.")
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if isinstance(h, _EchoHandler)]:
        logger.removeHandler(h)
    logger.addHandler(_EchoHandler())
    logger.setLevel(level_for(verbose, quiet))
    logger.propagate = False
    _state["quiet"] = bool(quiet)


def is_quiet() -> bool:
    """Whether ``-q`` was given (no progress bars and status lines)."""
    return _state["quiet"]
