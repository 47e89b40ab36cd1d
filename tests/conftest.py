"""Fixtures shared by the CLI and checkpoint tests."""

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
