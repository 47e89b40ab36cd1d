"""One name registry for everything hvi builds by name: task sources, likelihoods, priors, models.

Each kind owns a :class:`Registry` (``hvi.data.base.SOURCES``,
``hvi.likelihoods.LIKELIHOODS``, ``hvi.priors.base.PRIORS``,
``hvi.models.registry.MODELS``) and exposes it through its public front
(``register_source``/``get_source``/``list_sources`` and so on), in the style
of torchvision's ``models/_api.py``: duplicate names raise, an unknown name
lists the registered ones, and a misspelt configuration key names the keys
the builder accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")
B = TypeVar("B", bound=Callable[..., Any])

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Registry(Generic[T]):
    """Builders of one kind of object, by name.

    Args:
        kind: What is registered, singular (``"task source"``, ``"prior"``);
            used in error messages.
        plural: How the list of registered names is introduced
            (``"sources"``); defaults to ``kind + "s"``.
    """

    def __init__(self, kind: str, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or kind + "s"
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[B], B]:
        """A decorator registering a builder (class or function) under ``name``; returns it unchanged.

        Raises:
            TypeError: If ``name`` is not a string or the decorated object is not callable.
            ValueError: If ``name`` is empty or already registered.
        """
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a str, got {type(name).__name__}.")
        if not name:
            raise ValueError(f"{self.kind} name must be a non-empty string.")

        def wrap(builder: B) -> B:
            if not callable(builder):
                raise TypeError(f"registering {self.kind} {name!r} needs a callable, got {builder!r}.")
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name.")
            self._builders[name] = builder
            return builder

        return wrap

    def builder(self, name: str) -> Callable[..., T]:
        """The builder registered under ``name``.

        Raises:
            ValueError: If ``name`` is not registered (the message lists the registered names).
        """
        if not isinstance(name, str) or name not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}; registered {self.plural}: {', '.join(self.names())}.")
        return self._builders[name]

    def accepted_keys(self, name: str) -> tuple[list[str], bool]:
        """The keyword arguments the builder of ``name`` accepts, and whether it takes ``**kwargs``."""
        params = inspect.signature(self.builder(name)).parameters.values()
        keys = [p.name for p in params if p.kind in _KEYWORD_KINDS and p.name != "self"]
        return keys, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)

    def check_keys(self, name: str, cfg: dict[str, Any]) -> None:
        """Raises ``ValueError`` naming the accepted keys if ``cfg`` has a key the builder does not take."""
        keys, var_kw = self.accepted_keys(name)
        unknown = [k for k in cfg if k not in keys]
        if unknown and not var_kw:
            plural = "s" if len(unknown) > 1 else ""
            raise ValueError(
                f"unknown config key{plural} {', '.join(repr(k) for k in unknown)} for {self.kind} {name!r}; "
                f"accepted keys: {', '.join(keys) if keys else '(none)'}."
            )

    def build(self, name: str, **cfg: Any) -> T:
        """Builds ``name`` with keyword configuration ``cfg``."""
        return self.builder(name)(**cfg)

    def unregister(self, name: str) -> None:
        """Removes ``name`` (e.g. a plugin's or a test's entry); a missing name is ignored."""
        self._builders.pop(name, None)

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def describe(self, name: str) -> str:
        """The first line of the builder's own docstring (empty if none; not inherited)."""
        doc = inspect.cleandoc(self.builder(name).__doc__ or "")
        return doc.splitlines()[0] if doc else ""
