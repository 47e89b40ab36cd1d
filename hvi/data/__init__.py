"""Built-in task sources (see :mod:`hvi.data.base`); importing this registers them all."""

from hvi.data import clouds, files, glyphs, images, sinusoid, solar  # noqa: F401  (registration)
from hvi.data.base import SPLITS, TaskSource, get_source, list_sources, register_source

__all__ = ["SPLITS", "TaskSource", "get_source", "list_sources", "register_source"]
