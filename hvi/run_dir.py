"""The run directory of ``hvi fit``: its layout, and the reading and writing of its files.

::

    RUN_DIR/
      config.json      the resolved configuration (every key of run.toml)
      metrics.jsonl    one JSON object per training step (loss, ELBO and its
                       parts ell, local_kl, global_kl (hvi.elbo_parts), loss per
                       task, ``skipped`` (1 when a non-finite step was not
                       applied), tasks/s; ``val`` metrics every val_every steps)
      checkpoint/      the latest training state (hvi.checkpoint: params,
                       optimizer, RNG and task-sampler state), every
                       checkpoint_every steps and at the end
      model/           the final model (params + config), what evaluate/predict read
      evaluation.json  the last ``hvi evaluate`` result (written by it; removed when the run is extended)

A run is built in a sibling ``RUN_DIR.tmp-XXXXXXXX`` (:func:`new_work_dir`) and
renamed to ``RUN_DIR`` only when it finished (:func:`finalize`), so
``RUN_DIR`` exists iff the run is complete; an interrupted one stays a
``.tmp-`` directory that :func:`find_resumable` finds.

This module is the one place that spells these names: ``hvi fit``,
``hvi evaluate``, ``hvi predict``, ``hvi diagnose`` and :func:`hvi.load_run`
go through it. Every write is atomic (:mod:`hvi.atomic`) except the
append-only ``metrics.jsonl`` (a torn last line of a killed run is dropped
on resume by :func:`truncate_metrics`); checkpoints are read and written by
:mod:`hvi.checkpoint` in :func:`checkpoint_dir` and :func:`model_dir`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hvi import atomic
from hvi.defaults import defaults_for
from hvi.settings import KEYS, MUTABLE_ON_RESUME, check_value

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "CHECKPOINT_DIR",
    "MODEL_DIR",
    "EVALUATION_FILE",
    "checkpoint_dir",
    "model_dir",
    "has_checkpoint",
    "has_final_model",
    "checkpoint_step",
    "saved_info",
    "tmp_dirs",
    "find_resumable",
    "new_work_dir",
    "finalize",
    "DISTRIBUTED_KEY",
    "BEFORE_THE_KEY",
    "check_config",
    "read_config",
    "write_config",
    "finite_json",
    "append_metrics",
    "truncate_metrics",
    "read_metrics",
    "write_evaluation",
    "remove_evaluation",
]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
#: The file ``hvi evaluate`` writes its result to.
EVALUATION_FILE = "evaluation.json"

_TMP = ".tmp-"


def _path(run_dir: str | os.PathLike) -> Path:
    return Path(os.fspath(run_dir))


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    """The latest training state's checkpoint directory (:mod:`hvi.checkpoint`)."""
    return _path(run_dir) / CHECKPOINT_DIR


def model_dir(run_dir: str | os.PathLike) -> Path:
    """The final model's checkpoint directory (:mod:`hvi.checkpoint`)."""
    return _path(run_dir) / MODEL_DIR


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    """Whether the run has a training checkpoint (its newest metadata file exists)."""
    from hvi.checkpoint import META_FILE

    return (checkpoint_dir(run_dir) / META_FILE).is_file()


def has_final_model(run_dir: str | os.PathLike) -> bool:
    """Whether the run wrote its final model (it finished)."""
    from hvi.checkpoint import META_FILE

    return (model_dir(run_dir) / META_FILE).is_file()


def checkpoint_step(run_dir: str | os.PathLike) -> int | None:
    """The step of the newest readable training checkpoint metadata (None if none; tensors not verified)."""
    from hvi.checkpoint import read_metadata

    meta = read_metadata(checkpoint_dir(run_dir))
    return None if meta is None else int(meta["step"])


def saved_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the newest training checkpoint records about the data (``extra``: shapes, likelihood, ...), or None."""
    from hvi.checkpoint import read_metadata

    meta = read_metadata(checkpoint_dir(run_dir))
    return None if meta is None else meta.get("extra")


# --------------------------------------------------------------------------- life cycle


def tmp_dirs(out: str | os.PathLike) -> list[Path]:
    """The ``RUN_DIR.tmp-*`` working directories of run ``out`` (finished or not), by name."""
    out = _path(out)
    if not out.parent.is_dir():
        return []
    return sorted(p for p in out.parent.glob(f"{out.name}{_TMP}*") if p.is_dir())


def find_resumable(out: str | os.PathLike) -> tuple[Path | None, int | None]:
    """The newest interrupted ``RUN_DIR.tmp-*`` with a checkpoint, and its step."""
    from hvi.checkpoint import metadata_files

    best: tuple[Path | None, int | None, float] = (None, None, -1.0)
    for d in tmp_dirs(out):
        step = checkpoint_step(d)
        if step is None:
            continue
        mtime = max(p.stat().st_mtime for p in metadata_files(checkpoint_dir(d)))
        if mtime > best[2]:
            best = (d, step, mtime)
    return best[0], best[1]


def new_work_dir(out: str | os.PathLike) -> Path:
    """Creates a fresh ``RUN_DIR.tmp-XXXXXXXX`` next to ``out`` (and ``out``'s parent), with the usual permissions."""
    out = _path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{out.name}{_TMP}", dir=out.parent))
    atomic.make_public(work, directory=True)
    return work


def finalize(work: str | os.PathLike, out: str | os.PathLike) -> None:
    """Renames the finished working directory to ``out``, replacing an older ``out`` (an extended run)."""
    work, out = _path(work), _path(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
        os.rmdir(old)
        os.rename(out, old)
        os.rename(work, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(work, out)


# --------------------------------------------------------------------------- config

#: config.json's record of a data-parallel run (not a setting: a resumed run records its own).
DISTRIBUTED_KEY = "distributed"

#: Keys added after runs were first written, with the value those older runs used.
BEFORE_THE_KEY = {"inner_update": "gradient", "method": "abml", "memory_mode": "none", "chunk": None,
                  "curvature_every": 1, "inner_curvature": "pair", "inner_line_search": False}


def check_config(cfg: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """A run's saved configuration, checked key by key (it may be older or edited by hand).

    Keys that only steer validation, checkpoints and evaluation
    (:data:`~hvi.settings.MUTABLE_ON_RESUME`) and are missing get the
    model's defaults; every other key must be present, since its default may
    have changed since the run was trained.

    Args:
        cfg: The parsed ``config.json``.
        path: Where it was read from (named in the errors).

    Returns:
        A checked copy with the missing evaluation keys filled in.

    Raises:
        ValueError: Naming the first unknown key, missing key or value of the
            wrong type or range, and how to fix it.
    """
    model = cfg.get("model")
    if not isinstance(model, str):
        raise ValueError(f"config key 'model' in {path} must be a string, got {model!r}; the run directory is damaged.")
    unknown = sorted(k for k in cfg if k not in KEYS and k != DISTRIBUTED_KEY)
    if unknown:
        raise ValueError(
            f"{path} has the unknown key {unknown[0]!r} (written by a newer hvi, or edited by hand); remove it."
        )
    defaults = defaults_for(model)
    out: dict[str, Any] = {}
    for key in KEYS:
        if key in cfg:
            out[key] = check_value(key, cfg[key], str(path))
        elif key in MUTABLE_ON_RESUME:
            out[key] = defaults.get(key)
        elif key in BEFORE_THE_KEY:  # runs written before the key existed used this value
            out[key] = BEFORE_THE_KEY[key]
        else:
            raise ValueError(
                f"{path} lacks the key {key!r} (written by an older hvi, or edited by hand); add it, e.g. "
                f'"{key}": {json.dumps(defaults.get(key))} if the run used the default, or train a new run.'
            )
    if out["likelihood"] is None:
        raise ValueError(
            f'config key \'likelihood\' in {path} must name the likelihood the run was trained with, e.g. "gaussian".'
        )
    return out


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a run directory, checked key by key (:func:`check_config`).

    Raises:
        FileNotFoundError: If ``run_dir`` does not exist (naming an interrupted run to resume, if any).
        ValueError: If it is not a complete run or its config is broken (one line naming the fix).
    """
    run_dir = _path(run_dir)
    if not run_dir.is_dir():
        tmp, step = find_resumable(run_dir)
        if tmp is not None:
            raise ValueError(
                f"run {run_dir} is not complete: an interrupted run is at {tmp} (step {step}); "
                f"finish it with 'hvi fit --out {run_dir} --resume'."
            )
        raise FileNotFoundError(f"run directory {run_dir} does not exist; train one with 'hvi fit --out {run_dir}'.")
    path = run_dir / CONFIG_FILE
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not an hvi run directory ({CONFIG_FILE} is missing).") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the run directory is damaged.") from None
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{path} is not an hvi run config (no 'model').")
    return check_config(cfg, path)


def write_config(run_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> None:
    """Writes the resolved configuration to ``config.json`` (strict JSON, atomically)."""
    atomic.write_json(_path(run_dir) / CONFIG_FILE, cfg)


# --------------------------------------------------------------------------- metrics


def finite_json(obj: Any) -> Any:
    """A copy of ``obj`` that strict JSON can hold: NaN and ±inf floats become None (``null``).

    Python's ``json`` writes non-finite floats as the bare tokens ``NaN`` and
    ``Infinity``, which are not JSON; every JSON file and line of a run goes
    through this and then ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(obj, Mapping):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def append_metrics(run_dir: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Appends one step's record to ``metrics.jsonl`` (non-finite floats as null)."""
    with open(_path(run_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(finite_json(record), allow_nan=False) + "\n")


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drops the ``metrics.jsonl`` lines of steps after ``step`` (they are redone on resume), and a torn last line."""
    path = _path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line of a killed run
    atomic.write_text(path, "".join(f"{line}\n" for line in keep))


def read_metrics(run_dir: str | os.PathLike) -> dict[int, dict[str, Any]] | None:
    """``metrics.jsonl``'s records by step, or None if the run has none.

    Raises:
        ValueError: If a non-blank line is not a JSON object with a ``step``.
    """
    path = _path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    rows: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[int(row["step"])] = row
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} has a line that is not a metrics record; the run directory is damaged.") from None
    return rows


# --------------------------------------------------------------------------- evaluation


def write_evaluation(run_dir: str | os.PathLike, res: Mapping[str, Any]) -> Path:
    """Writes an ``hvi evaluate`` result as strict JSON (NaN as null) to ``evaluation.json``, atomically.

    Returns:
        The file written.

    Raises:
        OSError: If the run directory cannot be written (the old file, if any, is kept).
    """
    path = _path(run_dir).expanduser().resolve() / EVALUATION_FILE
    atomic.write_json(path, finite_json(dict(res)))
    return path


def remove_evaluation(run_dir: str | os.PathLike) -> None:
    """Removes ``evaluation.json`` (when a run is extended, it evaluated the shorter run)."""
    (_path(run_dir) / EVALUATION_FILE).unlink(missing_ok=True)
