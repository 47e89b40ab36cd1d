"""User code for the command line: ``hvi --import MODULE`` and the ``hvi.plugins`` entry points.

A module that registers priors (:func:`hvi.register_prior`), models
(:func:`hvi.models.register_model`), data sources
(:func:`hvi.data.register_source`) or likelihoods when it is imported makes
them usable from the command line in two ways:

* ``hvi --import mymod fit --prior mine ...`` imports ``mymod`` (found on
  ``PYTHONPATH`` or in the current directory) before the command runs; the
  option may be repeated.
* An installed package declares an entry point in the group ``hvi.plugins``,
  which every command that reads the registries loads first::

      [project.entry-points."hvi.plugins"]
      mine = "mypkg.hvi_plugin"            # a module, imported
      other = "mypkg.plugin:register"      # or a function, called without arguments

A module or plugin that fails to import is one ``Error: ...`` line naming it
(``hvi --debug`` shows the traceback). :func:`hvi.load_run` loads the entry
points too (through :func:`hvi.builders.load_registries`), so a run trained
with a plugin's prior loads in Python as it does on the command line.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Iterable

__all__ = ["ENTRY_POINT_GROUP", "import_modules", "load_entry_points"]

#: The entry-point group whose members every registry-reading command loads.
ENTRY_POINT_GROUP = "hvi.plugins"

_loaded_entry_points = False


def import_modules(names: Iterable[str]) -> list[types.ModuleType]:
    """Imports the ``--import`` modules in order (the current directory is searched last).

    Raises:
        ValueError: Naming the module that is not a module name, cannot be
            found, or raised while it was imported.
    """
    names = list(names)
    if names and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    out = []
    for name in names:
        if name.endswith(".py") or "/" in name or not all(part.isidentifier() for part in name.split(".")):
            module = name.removesuffix(".py").strip("./").replace("/", ".")
            example = module if all(part.isidentifier() for part in module.split(".")) else "mymod"
            raise ValueError(
                f"--import {name!r} is not a module name; pass the module's import name, e.g. --import {example} "
                "(its folder on PYTHONPATH or the current directory)."
            )
        try:
            out.append(importlib.import_module(name))
        except ModuleNotFoundError as e:
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                raise ValueError(
                    f"--import {name}: no module named {e.name!r}; put its folder on PYTHONPATH or run hvi "
                    "from that folder."
                ) from e
            raise ValueError(f"--import {name} failed: {type(e).__name__}: {_first_line(e)}") from e
        except Exception as e:  # noqa: BLE001 - user code: report it as such, one line
            raise ValueError(f"--import {name} failed: {type(e).__name__}: {_first_line(e)}") from e
    return out


def load_entry_points(group: str = ENTRY_POINT_GROUP) -> None:
    """Loads every entry point of ``group`` once per process: a module is imported, a function called.

    Raises:
        ValueError: Naming the entry point that failed and what provides it.
    """
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    from importlib.metadata import entry_points

    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=group):
        if (ep.name, ep.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((ep.name, ep.value))
        try:
            obj = ep.load()
            if callable(obj) and not isinstance(obj, (types.ModuleType, type)):
                obj()
        except Exception as e:  # noqa: BLE001 - user code: report it as such, one line
            dist = getattr(ep, "dist", None)
            where = f" of the package {dist.name}" if dist is not None else ""
            raise ValueError(
                f"plugin {ep.name!r} ({ep.value}){where} in the entry-point group {group} failed: "
                f"{type(e).__name__}: {_first_line(e)}; fix or uninstall it."
            ) from e
    _loaded_entry_points = True


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"
