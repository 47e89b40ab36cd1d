"""What ``hvi models``, ``hvi sources`` and ``hvi fit --help`` show: defaults and accepted arguments.

Values are written as JSON (``null``, ``[40, 40]``, ``"relu"``), the form
``--model-arg`` / ``--data-arg`` read. Importing this module does not import
torch (``hvi fit --help`` uses :func:`default_help`).
"""

from __future__ import annotations

import inspect
import json
import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from hvi.defaults import COMMON, DATA_DEFAULTS, MODEL_DEFAULTS

__all__ = ["value_text", "builder_args", "args_text", "default_help", "model_lines", "source_lines"]

#: Shown for a builder argument without a default.
REQUIRED = "(required)"

_KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def value_text(v: Any) -> str:
    """``v`` as JSON (tuples as lists), or its repr if JSON cannot hold it."""
    try:
        return json.dumps(v, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(v)


def builder_args(fn: Callable[..., Any]) -> dict[str, Any]:
    """The keyword arguments of ``fn`` (a function or class) with their defaults; :data:`REQUIRED` if none."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {
        p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default
        for p in params
        if p.kind in _KEYWORD and p.name != "self"
    }


def args_text(args: Mapping[str, Any]) -> str:
    """``name=value`` pairs (``name (required)`` for required ones), or ``(none)``."""
    if not args:
        return "(none)"
    return " ".join(f"{k} {v}" if v is REQUIRED else f"{k}={value_text(v)}" for k, v in args.items())


def default_help(key: str) -> str:
    """``default V; model V, ...``: the common default of a ``hvi fit`` key and the model rows that change it."""
    common = COMMON.get(key)
    rows = [f"{m} {value_text(row[key])}" for m, row in MODEL_DEFAULTS.items() if key in row and row[key] != common]
    text = f"default {value_text(common)}" if common is not None else ""
    if rows:
        text = f"{text}; {', '.join(rows)}" if text else ", ".join(rows)
    return text


def model_lines(name: str, width: int = 0) -> list[str]:
    """``hvi models`` entry: the description, the ``hvi fit`` defaults row, the builder's arguments."""
    from hvi.models import describe_model
    from hvi.models.registry import MODELS

    row = MODEL_DEFAULTS.get(name, {})
    lines = [f"{name.ljust(width)}  {describe_model(name)}"]
    pad = " " * (width + 2)
    fit = " ".join(f"{k}={value_text(v)}" for k, v in row.items())
    lines += _wrap(f"{pad}fit defaults: ", fit or "(the common ones)")
    for (model, source), extra in DATA_DEFAULTS.items():
        if model == name:
            lines += _wrap(f"{pad}{f'on {source}:'.ljust(14)}", " ".join(f"{k}={value_text(v)}" for k, v in extra.items()))
    lines += _wrap(f"{pad}model_args:   ", args_text(builder_args(MODELS.builder(name))))
    return lines


def _wrap(head: str, text: str, width: int = 100) -> list[str]:
    """``head + text`` wrapped at spaces to ``width`` columns, continuation lines indented under the text."""
    return textwrap.wrap(
        text, width, initial_indent=head, subsequent_indent=" " * len(head), break_long_words=False,
        break_on_hyphens=False,
    )


def source_lines(name: str, width: int = 0) -> list[str]:
    """``hvi sources`` entry: the description and the constructor's arguments (``data_args``)."""
    from hvi.builders import source_description
    from hvi.data.base import SOURCES

    pad = " " * (width + 2)
    return [f"{name.ljust(width)}  {source_description(name)}"] + _wrap(
        f"{pad}data_args: ", args_text(builder_args(SOURCES.builder(name)))
    )
