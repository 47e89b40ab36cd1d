"""Fixtures shared by the CLI and checkpoint tests, and the allocator stub every test runs under."""

from __future__ import annotations

import pyro
import pytest
import torch
from click.testing import CliRunner


@pytest.fixture()
def fresh_store():
    """An empty Pyro param store, and torch's thread count restored afterwards (the CLI sets it)."""
    threads = torch.get_num_threads()
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)


@pytest.fixture()
def runner():
    """A click test runner (stdout and stderr kept apart)."""
    return CliRunner()


@pytest.fixture()
def one_thread():
    """One intra-op thread for the test (tiny problems: fastest, and immune to a busy machine); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def mallopt_calls(monkeypatch):
    """glibc's malloc left as the session found it: the ``mallopt`` calls made in this process, recorded instead.

    ``hvi fit`` and ``hvi evaluate`` on CPU call :func:`hvi.tune_allocator`,
    whose settings cannot be read back (so not restored): in-process CLI tests
    would leave malloc tuned for every later test. Here ``tune_allocator``
    checks its arguments and reports success as on glibc, but the calls go to
    this list of ``(param, value)``; tests/test_allocator.py measures the real
    ones in child processes.
    """
    import hvi.allocator

    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(hvi.allocator, "_glibc_mallopt", lambda: mallopt)
    return calls


@pytest.fixture(autouse=True)
def task_workers_reset():
    """The task-worker count left at the library's default (one per intra-op thread) after each test:
    in-process ``hvi fit`` / ``hvi evaluate`` fix it process-wide (``--threads``)."""
    import hvi.parallel

    yield
    hvi.parallel.set_task_workers(None)
