"""The outer settings of meta-training, checked in one place: :class:`FitSettings`.

:func:`hvi.fit` builds a :class:`FitSettings` from its keyword arguments and
``hvi fit`` (:mod:`hvi.cli.config`) from its merged TOML and command-line
options, so a value is refused with the same one-line message whichever way
it came. The checks are the small functions below (:func:`check_int`,
:func:`check_positive`, :func:`check_device`); the CLI uses them for its own
keys too.

The inner loop's settings are :class:`hvi.InnerConfig`'s (part of the
:class:`hvi.MetaModel`, not of a fit): they change the model, these only how it
is trained. Their checks are here too (:func:`check_inner`): ``InnerConfig``
runs them on construction, naming a field ``inner steps``; the run config
names it by its key (``inner_steps``, see :data:`INNER_KEYS`). What a
meta-learning method needs of them (ABML a KL term, MAML and the others plain
gradient steps on a point mass) is :func:`check_method_inner`.

The keys of a run's configuration (``hvi fit``'s options, ``run.toml``,
a run directory's ``config.json``) and their checks are here too:
:data:`KEYS`, :func:`check_value`, :data:`MUTABLE_ON_RESUME`, :func:`is_path`.

This module does not import torch at import time (``hvi --help`` stays fast).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hvi import choices

__all__ = [
    "DEVICE_RE",
    "FitSettings",
    "INNER_KEYS",
    "KEYS",
    "MUTABLE_ON_RESUME",
    "TABLE_KEYS",
    "check_choice",
    "check_device",
    "check_inner",
    "check_inner_field",
    "check_int",
    "check_method_inner",
    "check_method_theta",
    "check_nonnegative",
    "check_positive",
    "check_setting",
    "check_value",
    "is_path",
]

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


def check_nonnegative(name: str, value: Any, note: str = "") -> float:
    """``value`` as a float if it is a finite number ``>= 0`` (not a bool).

    Raises:
        ValueError: ``"{name}={value!r} must be a finite number >= 0{note}."``
    """
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
        raise ValueError(f"{name}={value!r} must be a finite number >= 0{note}.")
    return float(value)


def check_choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    """``value`` if it is one of ``options``.

    Raises:
        ValueError: ``"{name}={value!r} is not understood; use one of 'a', 'b'."``
    """
    if value not in options:
        raise ValueError(f"{name}={value!r} is not understood; use one of {', '.join(map(repr, options))}.")
    return value


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
            finite (default None: no clipping); what it does:
            :func:`hvi.fit.default_optimizer`.
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


# --------------------------------------------------------------------------- the inner loop's settings

#: The run config's keys of :class:`hvi.InnerConfig`'s fields (config key → field).
INNER_KEYS: dict[str, str] = {
    "inner_steps": "steps",
    "inner_update": "update",
    "inner_lr": "lr",
    "learn_lr": "learn_lr",
    "inner_samples": "num_samples",
    "kl_weight": "kl_weight",
    "first_order": "first_order",
    "memory_mode": "memory",
    "curvature_every": "curvature_every",
    "inner_curvature": "curvature",
    "inner_line_search": "line_search",
}


def check_inner_field(field: str, value: Any, name: str | None = None) -> Any:
    """One :class:`hvi.InnerConfig` field's value checked on its own (numbers normalised to float).

    Args:
        field: The field (``"steps"``, ``"lr"``, ...).
        value: Its value. ``lr`` may be None (the update's default) or a
            mapping of λ key → α.
        name: What messages call it (default ``"inner {field}"``; the run
            config passes its key, e.g. ``"inner_steps"``).

    Raises:
        ValueError: ``"{name}={value!r} must be ..."``, one line.
    """
    name = f"inner {field}" if name is None else name
    if field == "steps":
        return check_int(name, value, 0)
    if field == "update":
        return check_choice(name, value, choices.INNER_UPDATES)
    if field == "memory":
        return check_choice(name, value, choices.MEMORY_MODES)
    if field == "curvature":
        return check_choice(name, value, choices.INNER_CURVATURES)
    if field == "lr":
        if isinstance(value, Mapping):
            return {k: check_positive(f"{name}[{k!r}]", a) for k, a in value.items()}
        return _optional(check_positive, name, value)
    if field == "num_samples":
        return check_int(name, value, 1)
    if field == "curvature_every":
        return check_int(name, value, 1, " (1 measures it every step)")
    if field == "implicit_cg_steps":
        return check_int(name, value, 1, " (e.g. 10)")
    if field == "implicit_damping":
        return check_nonnegative(name, value, " (e.g. 0.0 or 0.1)")
    if field == "kl_weight":
        return check_nonnegative(name, value, " (e.g. 1e-3 to down-weight the KL)")
    return value  # the flags: learn_lr, first_order, parallel_tasks, line_search


def check_inner(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """:class:`hvi.InnerConfig`'s field values, checked each on its own and together (the one home of these checks).

    Args:
        values: Every field of ``InnerConfig`` → its value (``lr`` None: the
            update's default, which is valid).
        names: Field → what messages call it (default ``"inner {field}"``;
            the run config passes its keys, :data:`INNER_KEYS`).

    Returns:
        ``values`` normalised (numbers as float, an ``lr`` mapping as a dict).

    Raises:
        ValueError: One line naming the first bad value, what it must be and what to use instead.
    """
    n = _namer(names)
    v = {f: check_inner_field(f, x, n(f)) for f, x in values.items()}
    update, memory, lr = v["update"], v["memory"], v["lr"]
    if update == "natural" and lr is not None:
        top = 1.0 if not v["learn_lr"] else 1.0 - 1e-9
        if not all(a <= top for a in (lr.values() if isinstance(lr, Mapping) else [lr])):
            bound = "(0, 1]" if not v["learn_lr"] else "(0, 1) (a learned α starts strictly inside it)"
            raise ValueError(
                f"{n('lr')}={lr} is outside {bound}: under {n('update')}='natural' α is the fraction of a "
                f"full natural-gradient step; use e.g. {n('lr')}=0.5, or {n('update')}='gradient'."
            )
    if update == "natural" and not v["kl_weight"] > 0:
        raise ValueError(
            f"{n('kl_weight')}={v['kl_weight']} leaves the natural-gradient step without a prior precision; "
            f"use {n('kl_weight')} > 0 (e.g. 1e-3) or {n('update')}='gradient'."
        )
    if memory == "implicit" and not v["kl_weight"] > 0:
        raise ValueError(
            f"{n('memory')}='implicit' needs {n('kl_weight')} > 0 (got {v['kl_weight']}): the KL makes the inner "
            f"objective's stationary point unique; use e.g. {n('kl_weight')}=1e-3, or {n('memory')}='checkpoint'."
        )
    if memory == "implicit" and v["first_order"]:
        raise ValueError(
            f"{n('memory')}='implicit' replaces the second-order backward, which {n('first_order')}=True does "
            f"not have; use {n('first_order')}=False, or {n('memory')}='none' with {n('first_order')}=True."
        )
    if memory == "implicit" and v["learn_lr"]:
        raise ValueError(
            f"{n('memory')}='implicit' gives the step size α no gradient (the stationary point does not "
            f"depend on it); use {n('learn_lr')}=False, or {n('memory')}='checkpoint' to learn α exactly."
        )
    every = v["curvature_every"]
    if every > 1 and (update != "natural" or memory == "implicit"):
        raise ValueError(
            f"{n('curvature_every')}={every} needs {n('update')}='natural' and {n('memory')} 'none' or "
            f"'checkpoint' (got {n('update')}={update!r}, {n('memory')}={memory!r}); use {n('curvature_every')}=1."
        )
    if v["curvature"] != "pair" and update != "natural":
        raise ValueError(
            f"{n('curvature')}={v['curvature']!r} needs {n('update')}='natural' (got {update!r}); "
            f"use {n('curvature')}='pair', or {n('update')}='natural'."
        )
    if v["line_search"] and update != "natural":
        raise ValueError(
            f"{n('line_search')}=True scales the natural step, but {n('update')}={update!r}; "
            f"use {n('update')}='natural', or {n('line_search')}=False."
        )
    return v


def _namer(names: Mapping[str, str] | None):
    """What messages call an inner field: ``names[field]``, else ``"inner {field}"``."""
    names = names or {}
    return lambda field: names.get(field, f"inner {field}")


def check_method_inner(method: str, values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> None:
    """Checks that the meta-learning ``method`` can run with these inner settings (the one home of these rules).

    ABML's variational objective needs a KL term (``kl_weight > 0``). The
    deterministic methods (:mod:`hvi.methods`) adapt a point mass with plain
    gradient steps and no KL: ``update="gradient"``, one sample, not
    ``memory="implicit"`` (which needs the KL), and MAML is second order.
    :func:`hvi.methods.method_inner_config` (so :class:`hvi.MetaModel`) and the
    run config (``hvi fit``, before any data is read) call it.

    Args:
        method: One of :data:`hvi.choices.METHODS`.
        values: :class:`hvi.InnerConfig`'s fields ``update``, ``num_samples``,
            ``first_order``, ``kl_weight`` and ``memory`` → their values,
            each already valid on its own (:func:`check_inner`).
        names: Field → what messages call it, as in :func:`check_inner`.

    Raises:
        ValueError: One line naming the method, the setting it cannot run with and what to use instead.
    """
    check_choice("method", method, choices.METHODS)
    n = _namer(names)
    if method == "abml":
        if not values["kl_weight"] > 0:
            raise ValueError(
                f"{n('kl_weight')}={values['kl_weight']} must be > 0 for the variational objective of "
                "method='abml'; use a small value such as 1e-3 to down-weight the KL."
            )
        return
    if values["update"] != "gradient":
        raise ValueError(
            f"method={method!r} takes plain gradient steps on a point mass, but {n('update')}={values['update']!r}; "
            f"use {n('update')}='gradient' with a small step such as {n('lr')}=0.01."
        )
    if values["num_samples"] != 1:
        raise ValueError(
            f"method={method!r} adapts a point mass: {n('num_samples')}={values['num_samples']} must be 1."
        )
    if values["memory"] == "implicit":
        raise ValueError(
            f"method={method!r} adapts a point mass without a KL term, which {n('memory')}='implicit' needs; "
            f"use {n('memory')}='checkpoint' (or 'none')."
        )
    if method == "maml" and values["first_order"]:
        raise ValueError(
            f"method='maml' is second order but {n('first_order')}=True; use method='fomaml' "
            f"(or {n('first_order')}=False)."
        )


def check_method_theta(method: str, q_theta: str) -> None:
    """Checks that ``method`` can learn this q(θ): the deterministic methods learn a point θ.

    :class:`hvi.MetaModel` and the run config (``hvi fit``, before any data is
    read) call it.

    Raises:
        ValueError: One line naming the method, the q(θ) and what to use instead.
    """
    check_choice("method", method, choices.METHODS)
    if method != "abml" and q_theta != "delta":
        raise ValueError(f"method={method!r} learns a point θ; use q_theta='delta' (or method='abml').")


# --------------------------------------------------------------------------- a run's config keys

_INT, _FLOAT, _BOOL, _STR, _DICT = "int", "float", "bool", "str", "table"

#: Config key → (kind, may be None).
KEYS: dict[str, tuple[str, bool]] = {
    "model": (_STR, False),
    "model_args": (_DICT, False),
    "data": (_STR, False),
    "data_args": (_DICT, False),
    "prior": (_STR, False),
    "prior_args": (_DICT, False),
    "likelihood": (_STR, True),
    "likelihood_args": (_DICT, False),
    "method": (_STR, False),
    "q_theta": (_STR, False),
    "objective": (_STR, False),
    "inner_steps": (_INT, False),
    "inner_update": (_STR, False),
    "inner_lr": (_FLOAT, False),
    "learn_lr": (_BOOL, False),
    "first_order": (_BOOL, False),
    "kl_weight": (_FLOAT, False),
    "inner_samples": (_INT, False),
    "curvature_every": (_INT, False),
    "inner_curvature": (_STR, False),
    "inner_line_search": (_BOOL, False),
    "memory_mode": (_STR, False),
    "chunk": (_INT, True),
    "steps": (_INT, False),
    "task_batch": (_INT, False),
    "lr": (_FLOAT, False),
    "clip_norm": (_FLOAT, True),
    "seed": (_INT, False),
    "device": (_STR, False),
    "threads": (_INT, True),
    "val_every": (_INT, True),
    "val_tasks": (_INT, False),
    "val_samples": (_INT, False),
    "checkpoint_every": (_INT, True),
    "keep_checkpoints": (_INT, False),
    "eval_samples": (_INT, False),
    "eval_tasks": (_INT, True),
}

#: Keys that may change when a run is resumed; every other key must match the saved run.
MUTABLE_ON_RESUME = frozenset(
    {
        "steps", "device", "threads", "val_every", "val_tasks", "val_samples", "checkpoint_every", "memory_mode", "chunk",
        "keep_checkpoints", "eval_samples", "eval_tasks",
    }
)

#: The keys whose values are tables (``model_args``, ...): merged key by key, not replaced.
TABLE_KEYS: frozenset[str] = frozenset(k for k, (kind, _) in KEYS.items() if kind == _DICT)

_KIND_TEXT = {_INT: "an integer", _FLOAT: "a finite number", _BOOL: "true or false", _STR: "a string", _DICT: "a table"}

_CHOICES = {
    "method": choices.METHODS,
    "q_theta": choices.Q_THETAS,
    "objective": choices.OBJECTIVES,
}


def _kind_ok(kind: str, v: Any) -> bool:
    if kind == _INT:
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == _FLOAT:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == _BOOL:
        return isinstance(v, bool)
    if kind == _STR:
        return isinstance(v, str)
    return isinstance(v, Mapping)


def check_value(key: str, value: Any, where: str) -> Any:
    """Validates one config value; returns it normalised (floats as float).

    The keys of :class:`hvi.FitSettings` are checked by :func:`hvi.settings.check_setting`
    (the checks and messages of :func:`hvi.fit`), except that ``steps`` must be >= 1 here;
    those of :class:`hvi.InnerConfig` (:data:`INNER_KEYS`) by :func:`check_inner_field`, named
    by their key. The checks across inner keys run when the config is complete
    (:func:`hvi.builders.inner_config`).
    """
    if key not in KEYS:
        raise ValueError(
            f"unknown config key {key!r} in {where}; known keys: {', '.join(sorted(KEYS))}."
        )
    kind, nullable = KEYS[key]
    if value is None:
        if nullable:
            return None
        raise ValueError(f"config key {key!r} in {where} must not be empty.")
    if not _kind_ok(kind, value):
        raise ValueError(
            f"config key {key!r} in {where} must be {_KIND_TEXT[kind]}, got {value!r} ({type(value).__name__})."
        )
    if kind == _FLOAT:
        value = float(value)
    if kind == _DICT:
        value = json.loads(json.dumps(dict(value)))  # plain JSON (tuples → lists)
    if key in _CHOICES:
        return check_choice(key, value, _CHOICES[key])
    if key in INNER_KEYS:
        return check_inner_field(INNER_KEYS[key], value, key)
    if key == "steps":  # stricter than hvi.fit's steps >= 0: a run trains at least one step
        return check_int(key, value, 1, " (hvi fit trains at least one step)")
    if key in FIELDS:
        return check_setting(key, value)
    if key in {"val_tasks", "val_samples", "eval_samples", "val_every", "checkpoint_every", "threads",
               "keep_checkpoints"}:
        return check_int(key, value, 1)
    if key == "eval_tasks":
        return check_int(key, value, 2, " (a CI needs two tasks)")
    return value


def is_path(data: str) -> bool:
    """Whether ``--data`` names a file (netCDF / zarr) rather than a registered source."""
    return (
        os.sep in data
        or data.endswith((".nc", ".nc4", ".netcdf", ".zarr", ".h5"))
        or Path(data).exists()
    )
