"""Model registry for ``hvi.models``, modelled on ``torchvision.models._api``.

Builders are plain functions that take keyword configuration and return an
``nn.Module``. They are registered under a string name with
:func:`register_model` and instantiated with :func:`get_model`::

    from torch import nn
    from hvi.models import register_model, get_model

    @register_model("my_net")
    def my_net(width: int = 32) -> nn.Module:
        '''Two-layer perceptron (one-line description shown by ``hvi models``).'''
        return nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))

    net = get_model("my_net", width=64)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from hvi.registry import Registry

__all__ = ["MODELS", "register_model", "get_model", "list_models", "describe_model", "model_defaults"]

BuilderFn = TypeVar("BuilderFn", bound=Callable[..., nn.Module])

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)

#: The registered models (see :class:`hvi.registry.Registry`).
MODELS: Registry[nn.Module] = Registry("model")


def register_model(name: str) -> Callable[[BuilderFn], BuilderFn]:
    """Return a decorator that registers a model builder under ``name``.

    The decorated function is returned unchanged, so it can still be called
    directly. Its keyword parameters (and their defaults) form the model's
    configuration; the first line of its docstring is its description.

    Args:
        name: Registry name, e.g. ``"bayes_unet"``. Must be a non-empty string
            not already registered.

    Returns:
        A decorator taking a builder ``fn(**cfg) -> nn.Module``.

    Raises:
        ValueError: If ``name`` is empty or already registered.
        TypeError: If ``name`` is not a string or the decorated object is not callable.
    """
    return MODELS.register(name)


def get_model(name: str, **cfg: Any) -> nn.Module:
    """Build the registered model ``name`` with configuration ``cfg``.

    Configuration keys are checked against the builder's signature before it
    is called, so a misspelt key fails with a clear message.

    Args:
        name: A name from :func:`list_models`.
        **cfg: Keyword arguments passed to the builder; omitted keys take the
            builder's defaults (see :func:`model_defaults`).

    Returns:
        The freshly constructed ``nn.Module``.

    Raises:
        ValueError: If ``name`` is not registered, or ``cfg`` has a key the
            builder does not accept.
        TypeError: If the builder does not return an ``nn.Module``.
    """
    MODELS.check_keys(name, cfg)
    model = MODELS.build(name, **cfg)
    if not isinstance(model, nn.Module):
        raise TypeError(f"builder for model {name!r} returned {type(model).__name__}, not nn.Module")
    return model


def list_models() -> list[str]:
    """Return the registered model names, sorted alphabetically."""
    return MODELS.names()


def describe_model(name: str) -> str:
    """Return the first line of the builder's docstring ("" if it has none).

    Args:
        name: A name from :func:`list_models`.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    doc = inspect.getdoc(MODELS.builder(name)) or ""
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


def model_defaults(name: str) -> dict[str, Any]:
    """Return the builder's keyword defaults, in signature order.

    Parameters without a default are omitted.

    Args:
        name: A name from :func:`list_models`.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    params = inspect.signature(MODELS.builder(name)).parameters.values()
    return {
        p.name: p.default
        for p in params
        if p.kind in _KEYWORD_KINDS and p.default is not inspect.Parameter.empty
    }
