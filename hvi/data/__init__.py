"""Built-in task sources (see :mod:`hvi.data.base`)."""

from hvi.data.base import SPLITS, TaskSource, get_source, list_sources, register_source

__all__ = ["SPLITS", "TaskSource", "get_source", "list_sources", "register_source"]
