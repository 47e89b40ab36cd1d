"""The configuration of ``hvi fit``: keys, TOML loading, resolution and resume checks.

Every ``hvi fit`` option is also a key of the TOML config (``--inner-steps``
is ``inner_steps``; dashes are accepted too), plus the tables
``model_args``, ``data_args``, ``prior_args`` and ``likelihood_args``
(keyword arguments of the model builder, the data source, the prior and the
likelihood). Example ``run.toml``::

    model = "bayes_unet"
    data = "solar"
    steps = 300
    inner_steps = 3
    inner_lr = 3e-4

    [model_args]
    base = 16

    [prior_args]
    init_scale = 0.03

Resolution: per-model defaults (:mod:`hvi.defaults`) < TOML < CLI.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hvi.defaults import defaults_for
from hvi.settings import KEYS, MUTABLE_ON_RESUME, TABLE_KEYS, FitSettings, check_method_theta, check_value, is_path

__all__ = ["load_toml", "resolve", "resolve_resume", "finalize", "dump_toml", "check_flag"]


def check_flag(flag: str, value: Any, low: int, note: str = "") -> Any:
    """``value`` of the integer option ``flag`` of ``hvi evaluate``/``predict``/``diagnose``/``analyze`` if it
    is None (unset) or an integer ``>= low``: the one wording of these options' errors, for the commands and
    for a Python caller of their functions (:func:`hvi.cli.evaluate.evaluate_run`, ...).

    Raises:
        ValueError: ``"{flag} {value} must be >= {low}{note}."`` (``"must be an integer >= ..."`` for a non-integer).
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return value
    kind = "" if isinstance(value, int) and not isinstance(value, bool) else "an integer "
    raise ValueError(f"{flag} {value} must be {kind}>= {low}{note}.")

def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a ``run.toml`` (keys with dashes are accepted)."""
    p = Path(os.fspath(path))
    try:
        with open(p, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {p} does not exist; check the --config path.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read config file {p}: {e}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {p} is not valid TOML: {e}.") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.replace("-", "_")
        if k in {"out", "resume", "config"}:
            raise ValueError(f"config key {key!r} in {p} is a command-line-only option; pass --{k} instead.")
        out[k] = check_value(k, value, str(p))
    return out


def _normalise_data(cfg: dict[str, Any]) -> None:
    """Data paths become absolute (``data`` itself, and a source's ``path`` argument) so a run works from anywhere."""
    data = cfg.get("data")
    if isinstance(data, str) and is_path(data):
        cfg["data"] = str(Path(data).expanduser().resolve())
    args = cfg.get("data_args")
    if isinstance(args, Mapping) and isinstance(args.get("path"), str):
        cfg["data_args"] = {**args, "path": str(Path(args["path"]).expanduser().resolve())}


def resolve(cli: Mapping[str, Any], toml: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The resolved config of a new run and the set of keys set explicitly.

    A row's ``inner_line_search`` (conv4's) belongs to the natural step: with
    another ``inner_update`` it is off unless given (then it is refused).

    Args:
        cli: Options given on the command line (None = not given).
        toml: Keys from ``--config``.

    Raises:
        ValueError: If no model is named or a value is invalid.
    """
    given = {k: v for k, v in cli.items() if v is not None}
    for k, v in given.items():
        check_value(k, v, "the command line")
    model = given.get("model", toml.get("model"))
    if model is None:
        raise ValueError("no model given; pass --model NAME (see 'hvi models') or set model in --config.")
    from hvi.builders import load_registries
    from hvi.models import list_models

    load_registries()
    if model not in list_models():
        raise ValueError(f"unknown model {model!r}; registered models: {', '.join(list_models())} (see 'hvi models').")
    method = given.get("method", toml.get("method", "abml"))
    check_value("method", method, "--config" if "method" not in given else "the command line")
    data = given.get("data", toml.get("data"))
    cfg = defaults_for(model, method, data)
    if data is not None and data != cfg.get("data"):
        cfg["data_args"] = {}  # a different source does not inherit the default source's arguments
    explicit: set[str] = set()
    for layer in (toml, given):
        for k, v in layer.items():
            explicit.add(k)
            if k in TABLE_KEYS:
                cfg[k] = {**(cfg.get(k) or {}), **copy.deepcopy(v)}
            else:
                cfg[k] = copy.deepcopy(v)
    if cfg.get("inner_update") != "natural" and "inner_line_search" not in explicit:
        cfg["inner_line_search"] = False  # a row's line search (conv4's) is the natural step's; given, it is refused
    cfg["model"] = model
    if cfg.get("data") is None:
        raise ValueError(
            f"model {model!r} has no default data source; pass --data SOURCE_OR_PATH (see 'hvi sources')."
        )
    _normalise_data(cfg)
    return cfg, explicit


def resolve_resume(
    saved: Mapping[str, Any], cli: Mapping[str, Any], toml: Mapping[str, Any]
) -> dict[str, Any]:
    """The config of a resumed run: the saved one, with the mutable keys overridden.

    Raises:
        ValueError: Naming the first key that was given with a value different
            from the saved run's (other than :data:`MUTABLE_ON_RESUME`).
    """
    given = {k: v for k, v in cli.items() if v is not None}
    for k, v in given.items():
        check_value(k, v, "the command line")
    cfg = copy.deepcopy(dict(saved))
    for where, layer in (("--config", toml), ("the command line", given)):
        layer = dict(layer)
        _normalise_data(layer)
        for k, v in layer.items():
            if k in MUTABLE_ON_RESUME:
                cfg[k] = copy.deepcopy(v)
                continue
            old = saved.get(k)
            if k in TABLE_KEYS and isinstance(v, Mapping):
                for sub, sv in v.items():
                    ov = (old or {}).get(sub)
                    if json.dumps(ov) != json.dumps(sv):
                        raise ValueError(
                            f"cannot --resume: {k}.{sub} is {_show(ov)} in the saved run but {_show(sv)} "
                            f"in {where}; it changes the model. Resume with the saved settings or start a new "
                            "run with another --out."
                        )
                continue
            if json.dumps(old) != json.dumps(v):
                raise ValueError(
                    f"cannot --resume: {k} is {_show(old)} in the saved run but {_show(v)} in {where}; "
                    f"only {', '.join(sorted(MUTABLE_ON_RESUME))} may change. Resume with the saved settings or start a new run with another --out."
                )
    return cfg


def _show(v: Any) -> str:
    return "unset" if v is None else repr(v)


def finalize(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fills the derived defaults (val/checkpoint cadence) and checks cross-key constraints."""
    steps = cfg["steps"]
    if cfg.get("val_every") is None:
        cfg["val_every"] = max(1, steps // 10)
    if cfg.get("checkpoint_every") is None:
        cfg["checkpoint_every"] = max(1, steps // 10)
    for k, v in cfg.items():
        if k in KEYS:
            check_value(k, v, "the resolved config")
    FitSettings.from_config(cfg)  # the merged fit settings, as hvi.fit checks them
    from hvi.builders import inner_config

    inner_config(cfg)  # the inner keys together and with the method (inner_lr <= 1 under natural, ...)
    check_method_theta(cfg.get("method", "abml"), cfg.get("q_theta", "delta"))
    return cfg


# --------------------------------------------------------------------------- writing TOML

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_value(str(k))


def _toml_value(v: Any) -> str:
    """One TOML value: str, int, float (nan/inf too), bool, lists and inline tables of them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):  # a JSON string is a TOML basic string once DEL is escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None) + "}"
    raise ValueError(f"TOML cannot hold {v!r} ({type(v).__name__}).")


def dump_toml(cfg: Mapping[str, Any], header: str = "") -> str:
    """``cfg`` as TOML that ``tomllib`` reads back to the same values.

    Keys whose value is None are left out (TOML has no null: reading the file
    back, they take their defaults, which is how they became None); a None
    inside a list is an error. Mappings become ``[tables]`` (nested ones
    ``[a.b]``) after the top-level keys; mappings inside lists inline tables.
    ``header`` lines are written first, as ``#`` comments.
    """
    out = [f"# {line}".rstrip() for line in header.splitlines()]

    def table(path: list[str], t: Mapping[str, Any]) -> None:
        if path:
            out.extend(["", "[" + ".".join(map(_toml_key, path)) + "]"])
        scalars = {k: v for k, v in t.items() if v is not None and not isinstance(v, Mapping)}
        out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            if isinstance(v, Mapping):
                table([*path, str(k)], v)

    table([], cfg)
    return "\n".join(out).lstrip("\n") + "\n"
