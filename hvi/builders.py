"""Loading the registries and building sources and models from a resolved run config (the CLI and :func:`hvi.load_run`)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = [
    "load_registries",
    "build_source",
    "build_meta",
    "inner_config",
    "infer_model_args",
    "source_description",
    "resolve_device",
]

#: Modules whose import registers the built-in data sources.
_SOURCE_MODULES = (
    "hvi.data.sinusoid",
    "hvi.data.clouds",
    "hvi.data.images",
    "hvi.data.glyphs",
    "hvi.data.files",
    "hvi.data.solar",
)

_loaded = False


def load_registries() -> None:
    """Imports the model zoo, the priors, every built-in data source and the
    ``hvi.plugins`` entry points (:mod:`hvi.plugins`), once."""
    global _loaded
    if _loaded:
        return
    importlib.import_module("hvi.models")
    importlib.import_module("hvi.priors")
    for name in _SOURCE_MODULES:
        importlib.import_module(name)
    from hvi.plugins import load_entry_points

    load_entry_points()
    _loaded = True


def check_kwargs(what: str, name: str, builder: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Raises ValueError naming a keyword the builder does not accept."""
    try:
        params = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and p.name != "self"
    ]
    label = "data source" if what == "data" else what
    listing = {"data": " (see 'hvi sources')", "model": " (see 'hvi models')"}.get(what, "")
    for k in kwargs:
        if k not in accepted:
            raise ValueError(
                f"unknown {what}_args key {k!r} for {label} {name!r} (from --{what}-arg or [{what}_args] of "
                f"--config); accepted keys: {', '.join(accepted) if accepted else '(none)'}{listing}."
            )


def _build(what: str, name: str, builder: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``builder(*args, **kwargs)``, where ``kwargs`` is the config's ``{what}_args`` table.

    Raises:
        ValueError: Instead of the TypeError of a missing required argument or
            of a value of the wrong type, naming the table and its values.
    """
    label = "data source" if what == "data" else what
    try:
        inspect.signature(builder).bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"{label} {name!r} cannot be built from {what}_args {kwargs}: {e}; set it in the [{what}_args] table "
            f"of --config or with --{what}-arg KEY=VALUE."
        ) from None
    except ValueError:  # no signature to check against
        pass
    try:
        return builder(*args, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"{label} {name!r} rejected {what}_args {kwargs}: {e}; check the types of these values."
        ) from None


def build_source(cfg: Mapping[str, Any]):
    """The task source of ``cfg["data"]``: a registered name or a netCDF/zarr path."""
    load_registries()
    from hvi.settings import is_path
    from hvi.data.base import SOURCES, list_sources

    data = cfg["data"]
    args = dict(cfg.get("data_args") or {})
    if is_path(data):
        from hvi.data.files import FileSource

        check_kwargs("data", "file", FileSource, args)
        if "split_fractions" in args and isinstance(args["split_fractions"], list):
            args["split_fractions"] = tuple(args["split_fractions"])
        return _build("data", "file", FileSource, data, **args)
    if data not in SOURCES:
        raise ValueError(
            f"unknown data source {data!r}; registered sources: {', '.join(list_sources())} "
            "(or pass the path of a .nc/.zarr file)."
        )
    check_kwargs("data", data, SOURCES.builder(data), args)
    for k, v in list(args.items()):
        if k == "num_tasks" and isinstance(v, list):
            args[k] = tuple(v)
    return _build("data", data, SOURCES.builder(data), **args)


def source_description(name: str) -> str:
    """First line of a registered source's docstring."""
    from hvi.data.base import SOURCES

    doc = inspect.getdoc(SOURCES.builder(name)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def infer_model_args(model: str, source, given: Mapping[str, Any]) -> dict[str, Any]:
    """Model arguments that follow from the data's shapes (zoo models only).

    Keys in ``given`` win; only missing ones are filled.
    """
    xs, ys = tuple(source.x_shape), tuple(source.y_shape)
    classes = getattr(source, "num_classes", None)
    out: dict[str, Any] = {}
    if model == "mlp" and len(xs) == 1:
        out["in_features"] = xs[0]
        out["out_features"] = classes if classes else (ys[0] if len(ys) == 1 else math.prod(ys) or 1)
    elif model == "siren" and len(xs) == 1:
        out["in_features"] = xs[0]
        out["out_features"] = classes if classes else (ys[0] if len(ys) == 1 else 1)
    elif model == "bayes_unet" and len(xs) == 3 and len(ys) == 3:
        out["in_channels"], out["out_channels"] = xs[0], ys[0]
    elif model == "conv4" and len(xs) == 3:
        out["in_channels"], out["image_size"] = xs[0], xs[-1]
        if classes:
            out["num_classes"] = classes
    return {k: v for k, v in out.items() if k not in given}


def resolve_device(name: str) -> torch.device:
    """``cpu`` / ``cuda`` / ``cuda:N``, checked to exist.

    Raises:
        ValueError: If ``name`` is not one of these forms, or the CUDA device does not exist.
    """
    from hvi.settings import check_device

    dev = torch.device(check_device(name))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: CUDA is not available on this machine; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist.")
    return dev


def inner_config(cfg: Mapping[str, Any]):
    """The :class:`hvi.InnerConfig` of a run config (its keys :data:`hvi.settings.INNER_KEYS`).

    Checked by :func:`hvi.settings.check_inner` and, for ``cfg["method"]``
    (default ``abml``), :func:`hvi.settings.check_method_inner`, with messages
    that name the config keys (``inner_lr=1.5 is outside (0, 1]: under
    inner_update='natural' ...``). A key missing from the config (a run saved
    before it existed, e.g. ``curvature_every``) takes ``InnerConfig``'s default.

    Raises:
        ValueError: One line naming the first bad key.
    """
    from hvi import InnerConfig
    from hvi.settings import INNER_KEYS, check_inner, check_method_inner

    given = {field: cfg[key] for key, field in INNER_KEYS.items() if key in cfg}
    defaults = {f.name: f.default for f in dataclasses.fields(InnerConfig)}
    names = {field: key for key, field in INNER_KEYS.items()}
    values = check_inner({**defaults, **given}, names=names)
    check_method_inner(cfg.get("method", "abml"), values, names=names)
    return InnerConfig(**given)


def build_meta(cfg: Mapping[str, Any], device: torch.device, seed: int | None = None):
    """The :class:`hvi.MetaModel` of a resolved config, with its network on ``device``.

    The network is initialised from ``seed`` (default ``cfg["seed"]``) without
    disturbing the global RNG.
    """
    load_registries()
    from hvi import MetaModel
    from hvi.likelihoods import LIKELIHOODS
    from hvi.models import get_model
    from hvi.priors.base import PRIORS

    prior_name = cfg["prior"]
    check_kwargs("prior", prior_name, PRIORS.builder(prior_name), cfg.get("prior_args") or {})
    lik_name = cfg["likelihood"]
    check_kwargs("likelihood", lik_name, LIKELIHOODS.builder(lik_name), cfg.get("likelihood_args") or {})
    margs = dict(cfg.get("model_args") or {})
    for k, v in margs.items():
        if isinstance(v, list):
            margs[k] = tuple(v)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"] if seed is None else seed)
        try:
            net = get_model(cfg["model"], **margs)
        except TypeError as e:  # a builder called with a value of the wrong type
            raise ValueError(f"model {cfg['model']!r} rejected model_args {margs}: {e}") from None
    net = net.to(device)
    inner = inner_config(cfg)
    return MetaModel(
        net,
        _build("prior", prior_name, PRIORS.builder(prior_name), **(cfg.get("prior_args") or {})),
        _build("likelihood", lik_name, LIKELIHOODS.builder(lik_name), **(cfg.get("likelihood_args") or {})),
        q_theta=cfg["q_theta"],
        inner=inner,
        objective=cfg["objective"],
        method=cfg.get("method", "abml"),
    )
