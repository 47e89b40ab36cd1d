"""The outer settings of meta-training, checked in one place: :class:`FitSettings`.

:func:`hvi.fit` builds a :class:`FitSettings` from its keyword arguments and
``hvi fit`` (:mod:`hvi.cli.config`) from its merged TOML and command-line
options, so a value is refused with the same one-line message whichever way
it came. The checks are the small functions below (:func:`check_int`,
:func:`check_positive`, :func:`check_device`); the CLI uses them for its own
keys too.

The inner loop's settings are :class:`hvi.InnerConfig`'s (part of the
:class:`hvi.MetaModel`, not of a fit): they change the model, these only how it
is trained.

This module does not import torch at import time (``hvi --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEVICE_RE", "FitSettings", "check_device", "check_int", "check_positive"]

#: The accepted device strings: ``cpu``, ``cuda``, ``cuda:N``.
DEVICE_RE = re.compile(r"cpu|cuda(:[0-9]+)?")


def check_int(name: str, value: Any, low: int, note: str = "") -> int:
    """``value`` if it is an integer (not a bool) ``>= low``.

    Raises:
        ValueError: ``"{name}={value!r} must be an integer >= {low}{note}."``
    """
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"{name}={value!r} must be an integer >= {low}{note}.")
    return value


def check_positive(name: str, value: Any, note: str = "") -> float:
    """``value`` as a float if it is a positive finite number (not a bool).

    Raises:
        ValueError: ``"{name}={value!r} must be a positive finite number{note}."``
    """
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
        raise ValueError(f"{name}={value!r} must be a positive finite number{note}.")
    return float(value)


def check_device(value: Any) -> Any:
    """``value`` if it is ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.

    Whether a CUDA device exists is not checked here (a config may name one
    that the machine reading it lacks).

    Raises:
        ValueError: ``"device=... is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...)."``
    """
    import torch

    if isinstance(value, torch.device):
        return value
    if isinstance(value, str) and DEVICE_RE.fullmatch(value):
        try:
            torch.device(value)
            return value
        except RuntimeError:  # an index beyond what torch parses, e.g. cuda:99999999999999999999
            pass
    raise ValueError(f"device={value!r} is not understood; use cpu, cuda or cuda:N (N = 0, 1, ...).")


def _optional(check, name: str, value: Any, *args: Any) -> Any:
    return None if value is None else check(name, value, *args)


@dataclass(frozen=True)
class FitSettings:
    """The settings of one meta-training run (:func:`hvi.fit`, ``hvi fit``), checked on construction.

    Attributes:
        steps: Number of outer (SVI) steps, ``>= 0`` (default 1000; ``hvi fit``
            requires ``>= 1``: a run trains at least one step).
        task_batch: Tasks per step B, ``>= 1`` (default None: 8 for a source,
            all tasks for a fixed batch).
        lr: Learning rate of the default optimizer, positive and finite
            (default 1e-3; Reptile's ε).
        clip_norm: Clip each parameter's gradient norm to this, positive and
            finite (default None: no clipping).
        seed: Seed of the fit's RNGs and task sampler, ``>= 0`` (default 0;
            None: draw from the caller's global RNGs).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` each
            batch is moved to (default None: leave batches where they are).
        max_skips: Stop after this many non-finite steps in a row, ``>= 1``
            (default 10).
        chunk: Tasks per backward pass, ``>= 1`` (default None: the whole
            batch in one pass).

    Raises:
        ValueError: On construction, naming the first bad field, what it must
            be, and (where it helps) what to pass instead.

    Example::

        FitSettings(steps=0)          # fine: a fit of no steps (a no-op)
        FitSettings(chunk=0)          # ValueError: chunk=0 must be an integer >= 1 (...).
    """

    steps: int = 1000
    task_batch: int | None = None
    lr: float = 1e-3
    clip_norm: float | None = None
    seed: int | None = 0
    device: Any = None
    max_skips: int = 10
    chunk: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, check_setting(f.name, getattr(self, f.name)))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> FitSettings:
        """The settings among ``cfg``'s keys (others, such as ``model``, are ignored)."""
        return cls(**{f.name: cfg[f.name] for f in dataclasses.fields(cls) if f.name in cfg})


#: FitSettings' field names.
FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(FitSettings))


def check_setting(name: str, value: Any) -> Any:
    """One :class:`FitSettings` field's value, checked (and normalised: ``lr`` and ``clip_norm`` as float).

    Raises:
        ValueError: As :class:`FitSettings`; KeyError if ``name`` is not a field.
    """
    if name == "steps":
        return check_int(name, value, 0)
    if name == "task_batch":
        return _optional(check_int, name, value, 1, " (tasks per step)")
    if name == "lr":
        return check_positive(name, value)
    if name == "clip_norm":
        return _optional(check_positive, name, value, " (unset: no clipping)")
    if name == "seed":
        return _optional(check_int, name, value, 0)
    if name == "device":
        return None if value is None else check_device(value)
    if name == "max_skips":
        return check_int(name, value, 1)
    if name == "chunk":
        return _optional(check_int, name, value, 1, " (tasks per backward pass; unset: one pass)")
    raise KeyError(name)
