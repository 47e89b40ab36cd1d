"""A finished ``hvi fit`` run directory, loaded in Python: ``hvi.load_run``.

::

    run = hvi.load_run("runs/bayes_unet")          # the caller's param store is untouched
    with run.activate():                            # the run's params, for this block only
        pred = hvi.predict(run.meta, batch)

The run's params are loaded into a param store of their own, and
:meth:`Run.activate` swaps them into Pyro's global store for a ``with`` block
(``ParamStoreDict.scope``): a script can hold several runs, and its own
params, side by side.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pyro
import torch

from hvi.meta import MetaModel

__all__ = ["Run", "load_run"]


@dataclass(frozen=True)
class Run:
    """A loaded run.

    Attributes:
        path: The run directory.
        meta: The :class:`~hvi.MetaModel`, rebuilt from ``config.json``.
        config: The run's resolved configuration (read-only).
        info: What the final checkpoint records (shapes, likelihood, step, ...; read-only).
        device: Where the params live.
    """

    path: Path
    meta: MetaModel
    config: Mapping[str, Any]
    info: Mapping[str, Any]
    device: torch.device
    _state: dict

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        """Within the block, Pyro's global param store holds exactly this run's params; restored after."""
        with pyro.get_param_store().scope(self._state):
            yield

    def install(self) -> None:
        """Makes this run's params the global param store's content (replacing it), for a program that
        works with this one run (``hvi evaluate``, ``hvi predict``, ``hvi diagnose``)."""
        pyro.get_param_store().set_state(self._state)

    def params(self) -> dict[str, torch.Tensor]:
        """The run's params by name (constrained values, detached copies)."""
        with self.activate():
            return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def load_run(path: str | os.PathLike, device: str | torch.device | None = None) -> Run:
    """Rebuilds a finished run's model and loads its final params, leaving the global param store alone.

    Args:
        path: A run directory written by ``hvi fit``.
        device: Where to put the params (default ``"cpu"``).

    Returns:
        A :class:`Run`; use ``with run.activate():`` around calls of
        ``run.meta``'s model, guide, :func:`hvi.predict` or the diagnostics.

    Raises:
        FileNotFoundError: If ``path`` does not exist (one line naming the fix).
        ValueError: If ``path`` is not a finished run, or its ``config.json``
            is broken (one line naming the fix).
    """
    from pyro.params.param_store import ParamStoreDict

    from hvi.checkpoint import expected_params, load_checkpoint, read_checkpoint
    from hvi.builders import build_meta, resolve_device
    from hvi.run_dir import MODEL_DIR, has_final_model, model_dir, read_config

    root = Path(os.fspath(path)).expanduser().resolve()
    cfg = read_config(root)
    if not has_final_model(root):
        raise ValueError(
            f"run {root} has no final model ({MODEL_DIR}/ is missing): it did not finish; "
            f"resume it with 'hvi fit --out {root} --resume'."
        )
    dev = resolve_device("cpu" if device is None else str(device))
    info = dict(read_checkpoint(model_dir(root)).extra)
    meta = build_meta(cfg, dev)
    store = ParamStoreDict()
    load_checkpoint(model_dir(root), expected=expected_params(meta), device=dev, param_store=store)
    return Run(root, meta, MappingProxyType(dict(cfg)), MappingProxyType(info), dev, store.get_state())
