"""Atomic file writes: the one way hvi writes a file that a reader or a resumed run may open.

A file is written under a temporary name in its own directory, flushed to disk
(``fsync``), given the usual permissions (0666 minus the umask; ``mkstemp``
would leave 0600) and ``os.replace``-d into place, so a reader sees the old
file or the new one, never a torn one, even if the writer is killed mid-write.
On any error the temporary file is removed and the old file is untouched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes", "write_text", "write_json", "fsync_dir", "make_public"]


@functools.cache
def _umask() -> int:
    # Read once, at the first write (not at import): os.umask can only be read by
    # setting it, which is process-wide and races with other threads.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_public(path: str | os.PathLike, directory: bool = False) -> None:
    """Gives a mkstemp/mkdtemp-created path the usual permissions (0666/0777 minus the umask)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename into it) to disk where the platform allows."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, sync: bool = True) -> Iterator[Path]:
    """A temporary path next to ``path``; on a clean exit it replaces ``path``.

    Args:
        path: The final file.
        sync: ``fsync`` the written file before the rename (default True).

    Yields:
        The temporary file's path (it exists, empty); write it by name.
    """
    final = Path(os.fspath(path))
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        make_public(tmp)
        yield tmp
        if sync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Writes strict JSON (no NaN/inf tokens: ``ValueError``) and a final newline to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")
