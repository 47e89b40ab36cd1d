"""Checkpoints of a training run: safetensors for every tensor, one JSON file for the rest.

A checkpoint is a directory::

    checkpoint.json                      format, step, config, extra, param constraints
                                         and shapes, optimizer hyperparameters, RNG
                                         metadata, sha256 of the tensor file
    tensors-<step>-<tag>.safetensors     every tensor: the Pyro param store's
                                         *unconstrained* values, the optimizer's
                                         per-param state, RNG and task-sampler states
    checkpoint-<step>.json               with ``save_checkpoint(..., keep=N)``, N > 1: the
                                         newest N checkpoints (their tensor files are kept)

Nothing is pickled and ``torch.load`` is never used: tensors go through
``safetensors``, everything else through JSON (tuples, int-keyed dicts and
numpy arrays are tagged so they round-trip exactly). Parameter constraints are
stored by name (``real``, ``positive``, ``greater_than``, ``interval``, ...);
an unknown constraint fails at save time.

Writes are atomic: the tensor file is written under a fresh name and
``os.replace``-d into place, then ``checkpoint.json`` (which names the tensor
file and its checksum) is replaced atomically; only then are older tensor
files removed. A reader therefore always sees a complete checkpoint, even if
the writer is killed half-way. If the newest checkpoint is damaged later
(truncated, failing its checksum), :func:`read_checkpoint` falls back to the
newest good kept one with a warning.

Example::

    save_checkpoint("run/checkpoint", step=100, optimizer=optim, generator=gen,
                    config={"model": "mlp"}, extra={"loss": 1.2})
    ckpt = load_checkpoint("run/checkpoint", expected=expected_params(meta),
                           optimizer=optim, generator=gen, restore_rng=True)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import random
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyro
import torch
from pyro.distributions import constraints
from torch import Tensor

from hvi import names
from hvi.atomic import atomic_path, fsync_dir, make_public, write_bytes
from hvi.sites import positive

if TYPE_CHECKING:
    from pyro.optim import PyroOptim
    from pyro.params.param_store import ParamStoreDict

    from hvi.meta import MetaModel

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "constraint_from_json",
    "constraint_to_json",
    "expected_params",
    "load_checkpoint",
    "metadata_files",
    "read_checkpoint",
    "read_metadata",
    "save_checkpoint",
]

FORMAT = "hvi-checkpoint"
FORMAT_VERSION = 1
META_FILE = "checkpoint.json"
_TENSOR_GLOB = "tensors-*.safetensors"
_HISTORY_GLOB = "checkpoint-[0-9]*.json"
#: Prefixes of the writes' temporary files (``.<final name>.<random>.tmp``); a killed writer leaves one behind.
_TEMP_PREFIXES = (".tensors-", ".checkpoint")

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- constraints

_SINGLETONS: dict[str, constraints.Constraint] = {
    "real": constraints.real,
    "positive": constraints.positive,
    "nonnegative": constraints.nonnegative,
    "unit_interval": constraints.unit_interval,
    "simplex": constraints.simplex,
    "lower_cholesky": constraints.lower_cholesky,
    "positive_definite": constraints.positive_definite,
    "corr_cholesky": constraints.corr_cholesky,
    "softplus_positive": constraints.softplus_positive,
    "softplus_lower_cholesky": constraints.softplus_lower_cholesky,
}


def _bound(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"cannot store constraint {what} with a non-scalar bound of shape {tuple(value.shape)}.")
        value = value.item()
    return float(value)


def constraint_to_json(c: constraints.Constraint) -> dict[str, Any]:
    """A JSON description of a Pyro/PyTorch constraint.

    Raises:
        ValueError: For a constraint without a mapping (name it in the message).
    """
    # Exact types, on purpose: torch's constraint classes subclass each other
    # (``positive`` is a ``greater_than``; hvi's ``positive`` subclasses torch's),
    # and torch has no public way to name a constraint's kind; ``constraints.real``'s
    # class is private, so its singleton's type stands for it.
    if type(c) is type(positive):
        return {"type": "positive"}
    for name, known in _SINGLETONS.items():
        if c is known:
            return {"type": name}
    if type(c) is type(constraints.real):
        return {"type": "real"}
    if isinstance(c, constraints.independent):
        return {
            "type": "independent",
            "base": constraint_to_json(c.base_constraint),
            "reinterpreted_batch_ndims": int(c.reinterpreted_batch_ndims),
        }
    kinds = [
        ("greater_than", constraints.greater_than, ("lower_bound",)),
        ("greater_than_eq", constraints.greater_than_eq, ("lower_bound",)),
        ("less_than", constraints.less_than, ("upper_bound",)),
        ("interval", constraints.interval, ("lower_bound", "upper_bound")),
        ("half_open_interval", constraints.half_open_interval, ("lower_bound", "upper_bound")),
    ]
    for name, cls, attrs in kinds:
        if type(c) is cls:
            return {"type": name, **{a: _bound(getattr(c, a), name) for a in attrs}}
    raise ValueError(
        f"cannot store a param with constraint {c!r} ({type(c).__name__}) in a checkpoint; supported: "
        f"{', '.join(sorted(set(_SINGLETONS) | {'greater_than', 'greater_than_eq', 'less_than', 'interval', 'half_open_interval', 'independent'}))}."
    )


def constraint_from_json(d: Mapping[str, Any]) -> constraints.Constraint:
    """The constraint described by :func:`constraint_to_json`."""
    kind = d.get("type")
    if kind == "positive":  # the same support and values as constraints.positive, leaner
        return positive
    if kind in _SINGLETONS:
        return _SINGLETONS[kind]
    if kind == "independent":
        return constraints.independent(constraint_from_json(d["base"]), int(d["reinterpreted_batch_ndims"]))
    if kind == "greater_than":
        return constraints.positive if d["lower_bound"] == 0.0 else constraints.greater_than(d["lower_bound"])
    if kind == "greater_than_eq":
        return constraints.nonnegative if d["lower_bound"] == 0.0 else constraints.greater_than_eq(d["lower_bound"])
    if kind == "less_than":
        return constraints.less_than(d["upper_bound"])
    if kind == "interval":
        if (d["lower_bound"], d["upper_bound"]) == (0.0, 1.0):
            return constraints.unit_interval
        return constraints.interval(d["lower_bound"], d["upper_bound"])
    if kind == "half_open_interval":
        return constraints.half_open_interval(d["lower_bound"], d["upper_bound"])
    raise ValueError(f"checkpoint names an unknown constraint {dict(d)!r}; it was written by a newer hvi.")


# --------------------------------------------------------------------------- generic encoding


class _Encoder:
    """Nested Python/torch/numpy values → JSON with tensor references + a flat tensor dict."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}

    def put(self, key: str, t: Tensor) -> dict[str, str]:
        if key in self.tensors:
            raise ValueError(f"duplicate tensor key {key!r} in checkpoint.")
        self.tensors[key] = t.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}

    def encode(self, obj: Any, key: str) -> Any:
        if isinstance(obj, Tensor):
            return self.put(key, obj)
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            self.put(key, torch.frombuffer(bytearray(arr.tobytes()), dtype=torch.uint8))
            return {"__ndarray__": key, "dtype": arr.dtype.str, "shape": list(arr.shape)}
        if isinstance(obj, (bool, str)) or obj is None:
            return obj
        if isinstance(obj, (int, np.integer)):
            return int(obj)
        if isinstance(obj, (float, np.floating)):
            v = float(obj)
            return v if math.isfinite(v) else {"__float__": repr(v)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{key}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self.encode(v, f"{key}/{k}") for k, v in obj.items()}
            items = []
            for k, v in obj.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    raise ValueError(f"cannot store a dict key of type {type(k).__name__} at {key!r} in a checkpoint.")
                items.append([k, self.encode(v, f"{key}/{k}")])
            return {"__items__": items}
        raise ValueError(f"cannot store a value of type {type(obj).__name__} at {key!r} in a checkpoint.")


def _decode(obj: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        raw = tensors[obj["__ndarray__"]].numpy().tobytes()
        return np.frombuffer(raw, dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _json_safe(obj: Any, what: str) -> Any:
    """``obj`` checked to be plain JSON (config/extra): no tensors, no NaN."""
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {what} must be plain JSON (str/number/bool/None/list/dict): {e}") from None


# --------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# One atomic-write implementation (hvi.atomic); the old private names stay for callers.
_fsync_dir = fsync_dir
_public = make_public
_atomic_write_bytes = write_bytes


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    path_dir: PathLike,
    *,
    step: int,
    optimizer: "PyroOptim | None" = None,
    generator: torch.Generator | None = None,
    config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    rng: bool = True,
    param_store: "ParamStoreDict | None" = None,
    keep: int = 1,
) -> Path:
    """Writes the Pyro param store (and optionally optimizer, RNG and sampler state) atomically.

    ``checkpoint.json`` names the newest checkpoint; with ``keep`` > 1 the
    newest ``keep`` checkpoints stay as ``checkpoint-<step>.json`` and their
    tensor files, which :func:`read_checkpoint` falls back to (with a
    warning) when the newest one is damaged.

    Args:
        path_dir: The checkpoint directory (created if missing; an older
            checkpoint there is replaced).
        step: Number of training steps done.
        optimizer: A ``pyro.optim.PyroOptim`` whose per-param state to keep.
        generator: The task-sampling generator whose state to keep.
        config: The run's configuration (plain JSON).
        extra: Anything else to keep (plain JSON), e.g. the last loss.
        rng: Also keep the torch/python/numpy (and CUDA) RNG states.
        param_store: The param store to save, all of its params (default: Pyro's global one).
        keep: How many checkpoints to keep (the newest; >= 1; default 1).

    Returns:
        The checkpoint directory.

    Raises:
        ValueError: If a param has an unsupported constraint or config/extra is not JSON.
    """
    if not (isinstance(step, int) and step >= 0):
        raise ValueError(f"step={step!r} must be a non-negative int.")
    if not (isinstance(keep, int) and not isinstance(keep, bool) and keep >= 1):
        raise ValueError(f"keep={keep!r} must be an int >= 1.")
    path = Path(os.fspath(path_dir))
    path.mkdir(parents=True, exist_ok=True)
    state = (pyro.get_param_store() if param_store is None else param_store).get_state()
    enc = _Encoder()
    params: dict[str, Any] = {}
    for name in sorted(state["params"]):
        u = state["params"][name]
        params[name] = {
            "shape": list(u.shape),
            "dtype": str(u.dtype).removeprefix("torch."),
            "constraint": constraint_to_json(state["constraints"][name]),
        }
        enc.put(f"param/{name}", u)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": step,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "params": params,
        "optimizer": None,
        "rng": None,
        "generator": None,
        "config": _json_safe(dict(config or {}), "config"),
        "extra": _json_safe(dict(extra or {}), "extra"),
    }
    if optimizer is not None:
        meta["optimizer"] = {
            "class": type(optimizer).__name__,
            "state": enc.encode(optimizer.get_state(), "optim"),
        }
    if rng:
        meta["rng"] = enc.encode(_rng_state(), "rng")
    if generator is not None:
        meta["generator"] = enc.put("generator", generator.get_state())

    from safetensors.torch import save_file

    name = f"tensors-{step:08d}-{secrets.token_hex(4)}.safetensors"
    final = path / name
    with atomic_path(final) as tmp:
        save_file(enc.tensors, str(tmp), metadata={"format": FORMAT, "step": str(step)})
    meta["tensors"] = {"file": name, "sha256": _sha256(final), "bytes": final.stat().st_size}
    text = json.dumps(meta, indent=1, allow_nan=False).encode()
    if keep > 1:
        _atomic_write_bytes(path / f"checkpoint-{step:08d}.json", text)
    _atomic_write_bytes(path / META_FILE, text)
    _fsync_dir(path)
    history = _history(path)
    for old in history[: max(0, len(history) - keep)] if keep > 1 else history:
        with contextlib.suppress(OSError):
            old.unlink()
    used = {name} | {_tensor_file(p) for p in _history(path)}
    for old in path.glob(_TENSOR_GLOB):
        if old.name not in used:
            with contextlib.suppress(OSError):
                old.unlink()
    for torn in path.glob(".*.tmp"):  # left by a writer killed mid-file (never read)
        if torn.name.startswith(_TEMP_PREFIXES):
            with contextlib.suppress(OSError):
                torn.unlink()
    return path


def _history(path: Path) -> list[Path]:
    """The kept ``checkpoint-<step>.json`` files, oldest first."""
    return sorted(path.glob(_HISTORY_GLOB))


def metadata_files(path_dir: PathLike) -> list[Path]:
    """A checkpoint directory's metadata files, newest first: ``checkpoint.json`` (if present), then the
    kept ``checkpoint-<step>.json`` (``save_checkpoint(..., keep=N)``)."""
    path = Path(os.fspath(path_dir))
    newest = path / META_FILE
    return ([newest] if newest.is_file() else []) + list(reversed(_history(path)))


def read_metadata(path_dir: PathLike) -> dict[str, Any] | None:
    """The newest readable metadata (``step``, ``config``, ``extra``, ...) of a checkpoint directory.

    A quick look (which step a run reached, what it recorded) that neither
    reads nor verifies the tensors; load with :func:`read_checkpoint`.

    Returns:
        The first of :func:`metadata_files` that is a JSON object with an
        integer ``step``, or None if there is none.
    """
    for meta_path in metadata_files(path_dir):
        try:
            meta = json.loads(meta_path.read_text())
            int(meta["step"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            continue
        return meta
    return None


def _tensor_file(meta_path: Path) -> str | None:
    try:
        return json.loads(meta_path.read_text())["tensors"]["file"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk (tensors on the requested device).

    Attributes:
        path: The checkpoint directory.
        step: Training steps done.
        params: Unconstrained param values by name.
        constraints: Param constraints by name.
        config: The run configuration.
        extra: Extra information saved with it.
        optimizer_state: ``PyroOptim.get_state()`` as saved, or None.
        rng_state: RNG states, or None.
        generator_state: Task-sampler generator state (uint8), or None.
    """

    path: Path
    step: int
    params: Mapping[str, Tensor]
    constraints: Mapping[str, constraints.Constraint]
    config: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    optimizer_state: Mapping[str, Any] | None = None
    rng_state: Mapping[str, Any] | None = None
    generator_state: Tensor | None = None

    def constrained(self) -> dict[str, Tensor]:
        """Constrained param values (what ``pyro.param`` returns)."""
        from torch.distributions import transform_to

        return {n: transform_to(self.constraints[n])(u) for n, u in self.params.items()}


def read_checkpoint(path_dir: PathLike, device: torch.device | str | None = None) -> Checkpoint:
    """Reads and verifies a checkpoint directory (format, checksum) without touching any state.

    If the newest checkpoint (``checkpoint.json``) is damaged (not JSON,
    truncated, its tensor file missing or failing the checksum) and older
    ones were kept (``save_checkpoint(..., keep=N)``), the newest good one is
    read instead, with a ``UserWarning`` naming both.

    Raises:
        FileNotFoundError: If there is no checkpoint at ``path_dir``.
        ValueError: If it is malformed, from an unknown format version, or its
            tensor file fails the checksum (and no kept checkpoint is good).
    """
    path = Path(os.fspath(path_dir))
    try:
        return _read_one(path, path / META_FILE, device)
    except (ValueError, FileNotFoundError) as first:
        for older in reversed(_history(path)):
            try:
                ckpt = _read_one(path, older, device)
            except (ValueError, FileNotFoundError):
                continue
            import warnings

            warnings.warn(
                f"{first} Falling back to the newest good checkpoint, step {ckpt.step} ({older.name}).",
                UserWarning,
                stacklevel=2,
            )
            return ckpt
        raise


def _read_one(path: Path, meta_path: Path, device: torch.device | str | None) -> Checkpoint:
    if not meta_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path} ({meta_path.name} is missing).")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} is corrupted: {meta_path.name} is not valid JSON ({e}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not an hvi checkpoint (format tag missing).")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path} has format version {version!r}; this hvi reads version {FORMAT_VERSION}."
        )
    try:
        tinfo = meta["tensors"]
        tfile = path / tinfo["file"]
        expected_sha = tinfo["sha256"]
        step = int(meta["step"])
        pinfo = meta["params"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is corrupted: {meta_path.name} lacks {e}.") from None
    if not tfile.is_file():
        raise ValueError(f"checkpoint {path} is corrupted: its tensor file {tfile.name} is missing.")
    actual = _sha256(tfile)
    if actual != expected_sha:
        raise ValueError(
            f"checkpoint {path} is corrupted: sha256 of {tfile.name} is {actual[:12]}..., expected "
            f"{expected_sha[:12]}... (the file was modified or truncated); use another checkpoint or retrain."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(tfile), device="cpu")
    except (SafetensorError, OSError) as e:
        raise ValueError(f"checkpoint {path} is corrupted: cannot read {tfile.name} ({e}).") from None
    dev = torch.device(device) if device is not None else None
    try:
        params: dict[str, Tensor] = {}
        cons: dict[str, constraints.Constraint] = {}
        for name, info in pinfo.items():
            key = f"param/{name}"
            if key not in tensors:
                raise ValueError(f"checkpoint {path} is corrupted: tensor of param {name!r} is missing.")
            t = tensors[key]
            if list(t.shape) != list(info["shape"]):
                raise ValueError(f"checkpoint {path} is corrupted: param {name!r} has inconsistent shapes.")
            params[name] = t if dev is None else t.to(dev)
            cons[name] = constraint_from_json(info["constraint"])
        opt = meta.get("optimizer")
        return Checkpoint(
            path=path,
            step=step,
            params=params,
            constraints=cons,
            config=meta.get("config") or {},
            extra=meta.get("extra") or {},
            optimizer_state=None if opt is None else _decode(opt["state"], tensors),
            rng_state=None if meta.get("rng") is None else _decode(meta["rng"], tensors),
            generator_state=None if meta.get("generator") is None else _decode(meta["generator"], tensors),
        )
    except (KeyError, TypeError, AttributeError, IndexError) as e:  # a hand-edited or damaged checkpoint.json
        raise ValueError(
            f"checkpoint {path} is corrupted: {meta_path.name} has a malformed entry ({type(e).__name__}: {e})."
        ) from None


def expected_params(meta: "MetaModel") -> dict[str, tuple[int, ...]]:
    """Names and shapes of the Pyro params that ``meta``'s model and guide create.

    The names of :mod:`hvi.names` (which the guide uses): ``theta.*``/``likelihood.*`` for
    point-estimated sites, ``q_theta.<site>`` (delta) or ``q_theta.<site>.loc``
    and ``.scale`` (normal) for latent ones, ``q_theta.flow$$$<parameter>``
    (flow), ``inner_lr.<weight>.<key>`` when
    the inner step sizes are learned.
    """
    out: dict[str, tuple[int, ...]] = {}
    for name, site in meta.sites.items():
        shape = tuple(site.shape)
        if not site.latent:
            out[name] = shape
        elif meta.q_theta == "delta":
            out[names.q_theta_point(name)] = shape
        elif meta.q_theta == "normal":
            for param in names.q_theta_normal(name):
                out[param] = shape
    if meta.flow is not None:  # pyro.module's names: "<module name>$$$<parameter>"
        for n, p in meta.flow.named_parameters():
            out[names.q_theta_flow(n)] = tuple(p.shape)
    if meta.inner.learn_lr:
        for n in meta.net.shapes:
            for k in meta.family.param_names:  # q(φ)'s family: a point mass under maml has loc only
                out[names.inner_lr(n, k)] = ()
    return out


def _check_params(ckpt: Checkpoint, expected: Mapping[str, Sequence[int]]) -> None:
    hint = "the run was made with a different --model/config"
    for name, shape in expected.items():
        if name not in ckpt.params:
            raise ValueError(
                f"checkpoint {ckpt.path} has no param {name!r}, which the model expects; {hint}."
            )
        got = tuple(ckpt.params[name].shape)
        if got != tuple(shape):
            raise ValueError(
                f"checkpoint has param {name!r} of shape {got} but the model expects {tuple(shape)}; {hint}."
            )
    for name in ckpt.params:
        if name not in expected:
            raise ValueError(
                f"checkpoint has param {name!r} of shape {tuple(ckpt.params[name].shape)}, which the model "
                f"does not have; {hint}."
            )


def load_checkpoint(
    path_dir: PathLike,
    *,
    expected: "Mapping[str, Sequence[int]] | MetaModel | None" = None,
    optimizer: "PyroOptim | None" = None,
    generator: torch.Generator | None = None,
    restore_rng: bool = False,
    device: torch.device | str | None = None,
    param_store: "ParamStoreDict | None" = None,
) -> Checkpoint:
    """Reads a checkpoint, checks it against the model and restores it.

    The checkpoint's params (on ``device``) go into ``param_store``, by
    default Pyro's global one: each replaces the param of the same name, and
    params of other names are kept. To hold exactly the saved params, clear
    the store first (``pyro.clear_param_store()``, as ``hvi fit`` does) or
    pass a fresh ``pyro.params.param_store.ParamStoreDict()`` and use it
    with ``pyro.get_param_store().scope(store.get_state())``. The
    optimizer's per-param state, the task generator and (with
    ``restore_rng``) the global RNGs are restored when given. The checkpoint
    is read and checked in full first: one that is corrupted or does not
    match ``expected`` leaves the store, the optimizer, the generator and the
    RNGs as they were.

    Args:
        path_dir: The checkpoint directory.
        expected: The params the model needs, as ``{name: shape}`` or a
            :class:`~hvi.MetaModel` (see :func:`expected_params`); None skips the check.
        optimizer: A ``PyroOptim`` to receive the saved optimizer state.
        generator: A ``torch.Generator`` to receive the saved sampler state.
        restore_rng: Restore the torch/python/numpy (and CUDA) RNG states.
        device: Where to put the params (default: CPU).
        param_store: The param store to load into (default: Pyro's global one).

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: If there is no checkpoint.
        ValueError: If it is corrupted, or a param is missing, extra or of the
            wrong shape (the message names it), or state is requested that
            the checkpoint does not hold.
    """
    ckpt = read_checkpoint(path_dir, device=device)
    if expected is not None:
        if not isinstance(expected, Mapping):
            expected = expected_params(expected)
        _check_params(ckpt, expected)
    if optimizer is not None and ckpt.optimizer_state is None:
        raise ValueError(f"checkpoint {ckpt.path} holds no optimizer state; it cannot be resumed.")
    if generator is not None and ckpt.generator_state is None:
        raise ValueError(f"checkpoint {ckpt.path} holds no task-sampler state; it cannot be resumed.")
    if restore_rng and ckpt.rng_state is None:
        raise ValueError(f"checkpoint {ckpt.path} holds no RNG state; it cannot be resumed.")
    store = pyro.get_param_store() if param_store is None else param_store
    for name in ckpt.params:
        if name in store:
            del store[name]
    store.set_state(
        {
            "params": {n: u.detach().clone().requires_grad_(True) for n, u in ckpt.params.items()},
            "constraints": dict(ckpt.constraints),
        }
    )
    if optimizer is not None:
        assert ckpt.optimizer_state is not None
        optimizer.set_state(dict(ckpt.optimizer_state))
    if generator is not None:
        assert ckpt.generator_state is not None
        generator.set_state(ckpt.generator_state)
    if restore_rng:
        assert ckpt.rng_state is not None
        set_rng_state(ckpt.rng_state)
    return ckpt
