"""Loads a repository script (``benchmarks/``, ``scripts/``, ``examples/``) as a module for the tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(relpath: str, name: str | None = None) -> ModuleType:
    """The script at ``ROOT / relpath``, executed as module ``name`` and kept in ``sys.modules``.

    The script's folder is on ``sys.path`` while it runs, so that its sibling
    imports (``from provenance import write_result``) resolve as when it is run
    from the command line.
    """
    path = ROOT / relpath
    name = name or f"hvi_script_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module
