"""User task data in netCDF / zarr files, read and written through xarray.

File layout
-----------
A task file is an xarray dataset (netCDF ``.nc``, whose engine xarray picks
from the file: netCDF-4 with h5netcdf or netCDF4, netCDF-3 with scipy; or a
``.zarr`` store, which needs ``pip install zarr``):

==============  ======================  =============================================
variable        dims                    meaning
==============  ======================  =============================================
``x``           ``(task, sample, ...)`` inputs; trailing dims are the example shape
``y``           ``(task, sample, ...)`` targets: float = regression, int = class labels
``noise``       same as ``y``           optional known noise std (> 0) of float ``y``
``role``        ``(task, sample)``      optional ``"support"``/``"query"`` (or 1/0)
``is_support``  ``(task, sample)``      optional boolean alternative to ``role``
``split``       ``(task,)``             optional ``"train"``/``"val"``/``"test"`` (or 0/1/2)
==============  ======================  =============================================

* ``task`` and ``sample`` must be dims of ``x``/``y`` (they are moved first if
  they are not); every task has the same number of samples.
* A float variable with no dims beyond ``(task, sample)`` is one feature:
  example shape ``(1,)``. Integer ``y`` are class labels ``0..C-1`` with
  example shape ``()``; ``C`` is the ``num_classes`` attribute of ``y`` (or of
  the dataset) if set, else ``max(y) + 1``.
* Support vs query: a ``role`` or ``is_support`` variable, *or* the
  ``k_shot`` argument (the first ``k_shot`` samples of every task are support,
  the rest query). Every task needs the same number (>= 1) of support samples
  and at least one query sample.
* Splits: the ``split`` variable, else a split of the tasks seeded by
  ``seed`` with ``split_fractions`` (default 80/10/10). Every split needs at
  least one task.
* The whole file is loaded into memory.

Example::

    import numpy as np, xarray as xr
    x = np.random.rand(100, 20, 1).astype("float32")          # 100 tasks x 20 samples
    y = np.sin(3 * x) + 0.1 * np.random.randn(100, 20, 1)
    xr.Dataset({"x": (("task", "sample", "x_dim"), x),
                "y": (("task", "sample", "y_dim"), y.astype("float32"))}).to_netcdf("tasks.nc")
    # hvi.data.files.FileSource("tasks.nc", k_shot=10)

For ``hvi predict`` a *support* file holds ``x`` and ``y`` (every sample is
support) and a *query* file holds ``x`` and optionally ``y`` over the same
tasks (:func:`read_support_query`); predictions are written with
:func:`write_prediction` as ``mean``/``std`` (regression) or ``label``/``probs``
(classes) with dims ``(task, sample, ...)``; ``hvi predict`` writes its own layout, which keeps
the inputs' coordinates and attributes (:func:`hvi.cli.evaluate.predict_files`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hvi.data.base import SPLITS, Split, TaskSource, check_split, register_source
from hvi.tasks import TaskBatch

__all__ = ["FileSource", "read_support_query", "write_prediction", "write_tasks"]

_SOURCE_TAG = 0xF11E
PathLike = str | os.PathLike


# --------------------------------------------------------------------------- reading


def _open_dataset(path: PathLike) -> Any:
    """Loads the dataset at ``path`` into memory (netCDF or zarr) and closes the file."""
    import xarray as xr

    p = Path(os.fspath(path))
    if not p.exists():
        raise ValueError(f"data file {p} does not exist; check the path.")
    if p.suffix == ".zarr" or p.is_dir():
        try:
            import zarr  # noqa: F401
        except ImportError:
            raise ValueError(
                f"reading the zarr store {p} needs the zarr package; pip install zarr."
            ) from None
        try:
            with xr.open_zarr(p) as ds:
                return ds.load()
        except Exception as err:  # noqa: BLE001 - any reader failure is a user-facing file problem
            raise ValueError(
                f"cannot read {p} as a zarr store ({_first_line(err)}); pass a valid .zarr store."
            ) from None
    try:
        with open(p, "rb") as f:
            magic = f.read(8)
    except OSError as err:
        raise ValueError(f"cannot read {p}: {err}.") from None
    if magic[:3] == b"CDF" and not _scipy_available():
        raise ValueError(
            f"{p} is a netCDF-3 file, which xarray reads with scipy; pip install scipy "
            f"(or convert it to netCDF-4: nccopy -k nc4 {p.name} new.nc)."
        )
    try:  # xarray picks the engine from the file's signature (netCDF-4/HDF5, netCDF-3, ...)
        with xr.open_dataset(p) as ds:
            return ds.load()
    except Exception as err:  # noqa: BLE001 - any reader failure is a user-facing file problem
        raise ValueError(
            f"cannot read {p} as netCDF ({_first_line(err)}); pass a netCDF file (netCDF-4 needs h5netcdf or "
            "netCDF4, netCDF-3 scipy) or a .zarr store."
        ) from None


def _scipy_available() -> bool:
    """Whether scipy, xarray's netCDF-3 engine, can be imported."""
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def _is_integer_var(var: Any) -> bool:
    """True for integer variables, also when a _FillValue made xarray decode them as float."""
    if np.issubdtype(var.dtype, np.integer):
        return True
    enc = var.encoding.get("dtype")
    return enc is not None and np.issubdtype(np.dtype(enc), np.integer)


def _task_sample(ds: Any, name: str, path: Path, required: bool = True) -> Any:
    """Variable ``name`` with ``task``, ``sample`` moved first (None if optional and absent)."""
    if name not in ds.variables:
        if required:
            raise ValueError(
                f"{path} has no variable {name!r}; add {name} with dims (task, sample, ...)."
            )
        return None
    var = ds[name]
    if "task" not in var.dims or "sample" not in var.dims:
        raise ValueError(
            f"variable {name!r} in {path} has dims {tuple(var.dims)}; "
            "expected ('task', 'sample', ...); "
            "rename its dims (xarray: ds.rename({...}))."
        )
    return var.transpose("task", "sample", ...)


def _numeric(var: Any, name: str, path: Path, integer: bool) -> np.ndarray:
    """The values of ``var`` as float32 (or int64 labels), checked for NaN/inf."""
    values = np.asarray(var.values)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"variable {name!r} in {path} has dtype {values.dtype}; expected numbers.")
    if values.dtype.kind == "f":
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise ValueError(
                f"variable {name!r} in {path} contains {bad} NaN/inf values; remove or impute them."
            )
    if integer:
        return values.astype(np.int64)
    return values.astype(np.float32)


def _with_feature_dim(values: np.ndarray) -> np.ndarray:
    """``(task, sample)`` float arrays become ``(task, sample, 1)``."""
    return values[..., None] if values.ndim == 2 else values


def _read_xy(
    ds: Any, path: Path, need_y: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, int | None, tuple[str, ...]]:
    """Validated ``x``, ``y``, ``noise``, ``num_classes`` and ``y`` dims of a dataset."""
    xv = _task_sample(ds, "x", path)
    x = _with_feature_dim(_numeric(xv, "x", path, integer=False))
    yv = _task_sample(ds, "y", path, required=need_y)
    if yv is None:
        return x, None, None, None, ()
    if dict(yv.sizes)["task"] != x.shape[0] or dict(yv.sizes)["sample"] != x.shape[1]:
        raise ValueError(
            f"x and y in {path} disagree on the task/sample sizes; "
            "give both dims (task, sample, ...)."
        )
    integer = _is_integer_var(yv)
    if integer and not np.issubdtype(yv.dtype, np.integer):
        bad = int(np.isnan(yv.values).sum())
        raise ValueError(
            f"variable 'y' in {path} contains {bad} missing labels; remove those samples."
        )
    y = _numeric(yv, "y", path, integer=integer)
    num_classes = None
    noise = None
    if integer:
        if y.size and y.min() < 0:
            raise ValueError(
                f"class labels 'y' in {path} must be >= 0 (found {y.min()}); relabel them 0..C-1."
            )
        attr = yv.attrs.get("num_classes", ds.attrs.get("num_classes"))
        num_classes = int(attr) if attr is not None else int(y.max()) + 1 if y.size else 0
        if y.size and num_classes <= int(y.max()):
            raise ValueError(
                f"attribute num_classes={num_classes} of {path} is not above the largest label "
                f"{int(y.max())}; fix or drop the attribute."
            )
        if num_classes < 2:
            raise ValueError(
                f"integer 'y' in {path} has only {num_classes} class; classification needs >= 2."
            )
        if "noise" in ds.variables:
            raise ValueError(
                f"{path} has a 'noise' variable but integer labels 'y'; "
                "drop noise for classification."
            )
    else:
        y = _with_feature_dim(y)
        nv = _task_sample(ds, "noise", path, required=False)
        if nv is not None:
            if tuple(nv.dims) != tuple(yv.dims):
                raise ValueError(
                    f"variable 'noise' in {path} has dims {tuple(nv.dims)}; "
                    f"expected the dims of y {tuple(yv.dims)}."
                )
            noise = _with_feature_dim(_numeric(nv, "noise", path, integer=False))
            if (noise <= 0).any():
                raise ValueError(
                    f"variable 'noise' in {path} must be a positive std everywhere; "
                    "fix the values <= 0."
                )
    return x, y, noise, num_classes, tuple(str(d) for d in yv.dims)


def _support_mask(
    ds: Any, path: Path, k_shot: int | None, n_task: int, n_sample: int
) -> np.ndarray:
    """Boolean ``(task, sample)`` mask of support samples."""
    names = [n for n in ("role", "is_support") if n in ds.variables]
    if len(names) == 2:
        raise ValueError(f"{path} has both 'role' and 'is_support'; keep only one of them.")
    if names and k_shot is not None:
        raise ValueError(
            f"{path} marks support samples with {names[0]!r} and k_shot={k_shot} was given too; "
            "pass k_shot=None."
        )
    if names:
        name = names[0]
        var = ds[name]
        if set(var.dims) != {"task", "sample"}:
            raise ValueError(
                f"variable {name!r} in {path} has dims {tuple(var.dims)}; "
                "expected ('task', 'sample')."
            )
        values = np.asarray(var.transpose("task", "sample").values)
        if values.dtype.kind in "SUO":
            text = np.char.lower(np.char.strip(values.astype(str)))
            bad = sorted(set(text[(text != "support") & (text != "query")].tolist()))
            if bad:
                raise ValueError(
                    f"variable {name!r} in {path} has values {bad[:3]}; use 'support' or 'query'."
                )
            return text == "support"
        if values.dtype.kind in "biu":
            bad = sorted(set(values[(values != 0) & (values != 1)].tolist()))
            if bad:
                raise ValueError(
                    f"variable {name!r} in {path} has values {bad[:3]}; use 1 = support, 0 = query."
                )
            return values.astype(bool)
        raise ValueError(
            f"variable {name!r} in {path} has dtype {values.dtype}; use strings, ints or booleans."
        )
    if k_shot is None:
        raise ValueError(
            f"{path} does not say which samples are support; "
            "add a 'role' variable or pass k_shot (e.g. k_shot=5)."
        )
    if not 1 <= k_shot < n_sample:
        raise ValueError(
            f"k_shot={k_shot} must be between 1 and {n_sample - 1} (the file has {n_sample} "
            "samples per task, and at least one must be query); lower k_shot."
        )
    mask = np.zeros((n_task, n_sample), dtype=bool)
    mask[:, :k_shot] = True
    return mask


def _split_of_tasks(
    ds: Any, path: Path, n_task: int, fractions: tuple[float, float, float], seed: int
) -> dict[str, np.ndarray]:
    """File positions of the tasks of each split (ascending)."""
    if "split" in ds.variables:
        var = ds["split"]
        if tuple(var.dims) != ("task",):
            raise ValueError(
                f"variable 'split' in {path} has dims {tuple(var.dims)}; expected ('task',)."
            )
        values = np.asarray(var.values)
        if values.dtype.kind in "SUO":
            text = np.char.lower(np.char.strip(values.astype(str)))
            codes = np.full(text.shape, -1)
            for i, s in enumerate(SPLITS):
                codes[text == s] = i
        elif values.dtype.kind in "iu":
            codes = values.astype(np.int64)
        else:
            raise ValueError(
                f"variable 'split' in {path} has dtype {values.dtype}; use 'train'/'val'/'test'."
            )
        bad = sorted(set(values[(codes < 0) | (codes > 2)].tolist()))
        if bad:
            raise ValueError(
                f"variable 'split' in {path} has values {bad[:3]}; use 'train', 'val' or 'test'."
            )
        out = {s: np.flatnonzero(codes == i) for i, s in enumerate(SPLITS)}
        for s, ids in out.items():
            if len(ids) == 0:
                raise ValueError(
                    f"split {s!r} of {path} has no tasks; mark at least one task {s!r} in 'split'."
                )
        return out
    n_val = round(fractions[1] * n_task)
    n_test = round(fractions[2] * n_task)
    counts = {"train": n_task - n_val - n_test, "val": n_val, "test": n_test}
    for s, c in counts.items():
        if c < 1:
            raise ValueError(
                f"{path} has {n_task} tasks and split_fractions={fractions} leave {s!r} empty; "
                "add tasks, change split_fractions or add a 'split' variable."
            )
    perm = np.random.default_rng(np.random.SeedSequence((seed, _SOURCE_TAG))).permutation(n_task)
    a, b = counts["train"], counts["train"] + counts["val"]
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:])}


def _default_model(x_shape: tuple[int, ...], y_shape: tuple[int, ...], categorical: bool) -> str:
    if categorical:
        return "conv4" if len(x_shape) == 3 else "mlp"
    if len(x_shape) == 3 and len(y_shape) == 3 and x_shape[1:] == y_shape[1:]:
        return "bayes_unet"
    return "mlp"


@register_source("file")
class FileSource(TaskSource):
    """Tasks read from a netCDF or zarr file (layout in the module doc).

    ``likelihood``, ``num_classes`` and ``default_model`` are set per
    instance from the file: integer ``y`` gives ``"categorical"`` (default
    model ``"conv4"`` for image inputs, else ``"mlp"``); float ``y`` gives
    ``"gaussian"`` (``"bayes_unet"`` for image-to-image data, else ``"mlp"``).
    Tasks of a split keep their file order.

    Args:
        path: The ``.nc`` file or ``.zarr`` store.
        k_shot: Number of leading samples of every task used as support when
            the file has no ``role``/``is_support`` variable. Defaults to None.
        split_fractions: (train, val, test) fractions of the tasks when the
            file has no ``split`` variable. Defaults to ``(0.8, 0.1, 0.1)``.
        seed: Seed of the fraction-based split. Defaults to 0.

    Raises:
        ValueError: If the file is missing, unreadable or malformed, or an
            argument is invalid; the message names the file, the problem and the fix.
    """

    likelihood = "gaussian"
    num_classes = None
    default_model = "mlp"

    def __init__(
        self,
        path: PathLike,
        k_shot: int | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
    ) -> None:
        if k_shot is not None and (
            not isinstance(k_shot, (int, np.integer)) or isinstance(k_shot, bool) or k_shot < 1
        ):
            raise ValueError(f"k_shot={k_shot!r} must be None or an int >= 1; pass e.g. k_shot=5.")
        if (
            not isinstance(split_fractions, (tuple, list))
            or len(split_fractions) != 3
            or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0
                for f in split_fractions
            )
            or not math.isclose(sum(split_fractions), 1.0, abs_tol=1e-6)
        ):
            raise ValueError(
                f"split_fractions={split_fractions!r} must be three non-negative numbers summing "
                "to 1; pass e.g. (0.8, 0.1, 0.1)."
            )
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed={seed!r} must be a non-negative int; pass e.g. seed=0.")
        self.path = Path(os.fspath(path))
        self.seed = int(seed)
        ds = _open_dataset(self.path)
        x, y, noise, num_classes, _ = _read_xy(ds, self.path)
        assert y is not None
        n_task, n_sample = x.shape[:2]
        if n_task < 1:
            raise ValueError(f"{self.path} has no tasks; the task dim must have size >= 1.")
        if n_sample < 2:
            raise ValueError(
                f"{self.path} has {n_sample} sample(s) per task; "
                "each task needs >= 2 (>= 1 support and >= 1 query)."
            )
        mask = _support_mask(
            ds, self.path, None if k_shot is None else int(k_shot), n_task, n_sample
        )
        n_support = mask.sum(axis=1)
        if (n_support < 1).any():
            first = int(np.flatnonzero(n_support < 1)[0])
            raise ValueError(
                f"task {first} of {self.path} has no support samples; mark at least one as support."
            )
        if (n_support != n_support[0]).any():
            raise ValueError(
                f"the number of support samples varies across tasks of {self.path} "
                f"(from {n_support.min()} to {n_support.max()}); give every task the same number."
            )
        if n_support[0] >= n_sample:
            raise ValueError(
                f"{self.path} has no query samples; mark at least one sample per task as query."
            )
        self.k_shot = int(n_support[0])
        self.k_query = n_sample - self.k_shot
        # support positions first, each group in file order
        order = np.argsort(~mask, axis=1, kind="stable")
        self._support_pos = torch.from_numpy(order[:, : self.k_shot].copy())
        self._query_pos = torch.from_numpy(order[:, self.k_shot :].copy())
        self._split_tasks = {
            s: torch.from_numpy(ids.astype(np.int64))
            for s, ids in _split_of_tasks(
                ds, self.path, n_task, tuple(split_fractions), self.seed
            ).items()
        }
        self._x = torch.from_numpy(x)
        self._y = torch.from_numpy(y)
        self._noise = None if noise is None else torch.from_numpy(noise)
        categorical = num_classes is not None
        self.likelihood = "categorical" if categorical else "gaussian"  # type: ignore[misc]
        self.num_classes = num_classes
        self.default_model = _default_model(self.x_shape, self.y_shape, categorical)  # type: ignore[misc]

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input example, as stored in the file."""
        return tuple(self._x.shape[2:])

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target example (``()`` for class labels)."""
        return tuple(self._y.shape[2:])

    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split``."""
        return len(self.task_positions(split))

    def task_positions(self, split: Split) -> Tensor:
        """Positions along the file's ``task`` dim of the tasks of ``split`` (int64, ascending)."""
        check_split(split)
        return self._split_tasks[split]

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """Tasks ``index`` of ``split`` as a :class:`~hvi.tasks.TaskBatch`."""
        ids = self.task_positions(split)
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        m = len(ids)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(
                f"task index out of range for split {split!r} with {m} tasks; "
                f"use indices in [0, {m})."
            )
        rows = ids[index]

        def take(t: Tensor, pos: Tensor) -> Tensor:
            sel = pos[rows]  # (B, n)
            sel = sel.view(*sel.shape, *([1] * (t.dim() - 2))).expand(*sel.shape, *t.shape[2:])
            return torch.gather(t[rows], 1, sel)

        sn = qn = None
        if self._noise is not None:
            sn, qn = take(self._noise, self._support_pos), take(self._noise, self._query_pos)
        return TaskBatch(
            support_x=take(self._x, self._support_pos),
            support_y=take(self._y, self._support_pos),
            query_x=take(self._x, self._query_pos),
            query_y=take(self._y, self._query_pos),
            task_index=index,
            num_tasks=m,
            support_noise=sn,
            query_noise=qn,
        )


def read_support_query(
    support_path: PathLike, query_path: PathLike, *, layout: bool = False
) -> TaskBatch | tuple[TaskBatch, dict[str, Any]]:
    """Reads the inputs of ``hvi predict``: a support file and a query file over the same tasks.

    Every sample of the support file is support (it needs ``x`` and ``y``,
    optionally ``noise``); the query file needs ``x`` and may hold ``y`` (and
    ``noise``). Both use the layout of the module doc and must have the same
    ``task`` size (and equal ``task`` coordinates if both have them).

    Args:
        support_path: The support ``.nc``/``.zarr``.
        query_path: The query ``.nc``/``.zarr``.

    Returns:
        A :class:`~hvi.tasks.TaskBatch` with ``task_index = arange(T)`` and
        ``num_tasks = T``. A missing query ``y`` is filled with NaN (float
        targets) or -1 (class labels); query noise is kept only if both files have it.

        With ``layout=True``, also the dict :func:`hvi.cli.evaluate.predict_files`
        writes its output with: ``task`` and ``sample`` (the query file's
        coordinate values of these dims, or None), ``y_dims`` (the names of
        y's dims after ``(task, sample)`` in the support file; empty when y
        has none, so the feature dim of size 1 was added), ``y_coords``
        (their coordinate values) and ``y_attrs`` (y's attributes).

    Raises:
        ValueError: If a file is missing, unreadable or malformed, or the two disagree.
    """
    sp, qp = Path(os.fspath(support_path)), Path(os.fspath(query_path))
    sds, qds = _open_dataset(sp), _open_dataset(qp)
    sx, sy, snoise, num_classes, y_dims = _read_xy(sds, sp)
    assert sy is not None
    qx, qy, qnoise, _, _ = _read_xy(qds, qp, need_y=False)
    if sx.shape[1] < 1:
        raise ValueError(f"support file {sp} has no samples; it needs >= 1 sample per task.")
    if sx.shape[0] != qx.shape[0]:
        raise ValueError(
            f"support file {sp} has {sx.shape[0]} tasks but query file {qp} has {qx.shape[0]}; "
            "use the same tasks."
        )
    if (
        "task" in sds.coords
        and "task" in qds.coords
        and not np.array_equal(sds["task"].values, qds["task"].values)
    ):
        raise ValueError(
            f"the 'task' coordinates of {sp} and {qp} differ; "
            "list the same tasks in the same order."
        )
    if sx.shape[2:] != qx.shape[2:]:
        raise ValueError(
            f"x examples have shape {sx.shape[2:]} in {sp} but {qx.shape[2:]} in {qp}; "
            "use the same x dims."
        )
    categorical = num_classes is not None
    if qy is None:
        fill = -1 if categorical else float("nan")
        qy = np.full((qx.shape[0], qx.shape[1], *sy.shape[2:]), fill, dtype=sy.dtype)
    elif qy.shape[2:] != sy.shape[2:] or (qy.dtype.kind == "i") != categorical:
        raise ValueError(
            f"y in {qp} does not match y in {sp} (shape or label/float type); "
            "use the same y layout."
        )
    use_noise = snoise is not None and qnoise is not None
    batch = TaskBatch(
        support_x=torch.from_numpy(sx),
        support_y=torch.from_numpy(sy),
        query_x=torch.from_numpy(qx),
        query_y=torch.from_numpy(qy),
        task_index=torch.arange(sx.shape[0]),
        num_tasks=sx.shape[0],
        support_noise=torch.from_numpy(snoise) if use_noise else None,
        query_noise=torch.from_numpy(qnoise) if use_noise else None,
    )
    if not layout:
        return batch
    trailing = tuple(d for d in y_dims if d not in ("task", "sample"))
    coords = {
        dim: (np.asarray(ds[dim].values) if dim in ds.coords else None)
        for dim, ds in (("task", qds if "task" in qds.coords else sds), ("sample", qds))
    }
    return batch, {
        **coords,
        "y_dims": trailing,
        "y_coords": {d: np.asarray(sds[d].values) for d in trailing if d in sds.coords},
        "y_attrs": dict(sds["y"].attrs),
    }


# --------------------------------------------------------------------------- writing


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def clean_attrs(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Attributes netCDF can store: numbers and strings; the rest as JSON/str."""
    out: dict[str, Any] = {}
    for key, value in (attrs or {}).items():
        if isinstance(value, bool):
            out[str(key)] = int(value)
        elif isinstance(value, (int, float, str, np.integer, np.floating)):
            out[str(key)] = value
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            out[str(key)] = np.asarray(value)
        else:
            try:
                out[str(key)] = json.dumps(value, default=str)
            except (TypeError, ValueError):
                out[str(key)] = str(value)
    return out


def _dims(prefix: str, ndim: int, names: Sequence[str] | None) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}_dim_{i}" for i in range(ndim))
    if len(names) != ndim:
        raise ValueError(
            f"{prefix}_dims={tuple(names)!r} must name {ndim} dims; pass {ndim} names or None."
        )
    return tuple(names)


def write_dataset(ds: Any, path: PathLike) -> Path:
    """Writes ``ds`` to ``path`` (netCDF via h5netcdf, or zarr) through a temp file + os.replace."""
    p = Path(os.fspath(path))
    if not p.parent.is_dir():
        raise ValueError(f"cannot write {p}: directory {p.parent} does not exist; create it first.")
    if p.suffix == ".zarr":
        try:
            import zarr  # noqa: F401
        except ImportError:
            raise ValueError(
                f"writing the zarr store {p} needs the zarr package; pip install zarr."
            ) from None
        ds.to_zarr(p, mode="w")
        return p
    from hvi.atomic import atomic_path

    with atomic_path(p) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")
    return p


def write_prediction(
    path: PathLike,
    mean: Tensor | np.ndarray,
    std: Tensor | np.ndarray | None = None,
    probs: Tensor | np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    y_dims: Sequence[str] | None = None,
) -> Path:
    """Writes predictions to a netCDF file atomically (temp file, then ``os.replace``).

    The temporary file is created in the directory of ``path``, so the final
    rename is atomic and readers never see a half-written file. Regression
    predictions are written as ``mean`` (and ``std``); class predictions
    (integer ``mean``, or ``probs`` given) as ``label`` (and ``probs``).

    Args:
        path: Output ``.nc`` path; its directory must exist.
        mean: Predictive mean, or the predicted class labels (integers), shape ``(task, sample, *y_shape)``.
        std: Predictive std, same shape as ``mean``. Defaults to None (not written).
        probs: Class probabilities ``(task, sample, C)``. Defaults to None.
        attrs: Global attributes (numbers and strings; other values are stored
            as JSON text). Defaults to None.
        y_dims: Names of the dims after ``sample``. Defaults to ``y_dim_0, ...``.

    Returns:
        The written path.

    Raises:
        ValueError: If the shapes disagree, std is given with class labels, or
            the directory does not exist.
    """
    import xarray as xr

    m = _as_numpy(mean)
    if m.ndim < 2:
        raise ValueError(f"mean has shape {m.shape}; expected (task, sample, ...).")
    dims = ("task", "sample", *_dims("y", m.ndim - 2, y_dims))
    labels = m.dtype.kind in "iu" or probs is not None
    if labels:
        if std is not None:
            raise ValueError("std was given with class labels (integer mean or probs); pass std for regression only.")
        if m.dtype.kind not in "iu":
            raise ValueError(f"mean holds {m.dtype} values but probs were given; pass the class labels (integers).")
        data = {"label": (dims, m.astype(np.int64), {"long_name": "most probable class"})}
    else:
        data = {"mean": (dims, m.astype(np.float32), {"long_name": "predictive mean"})}
    if std is not None:
        s = _as_numpy(std)
        if s.shape != m.shape:
            raise ValueError(
                f"std has shape {s.shape} but mean has {m.shape}; pass matching arrays."
            )
        data["std"] = (dims, s.astype(np.float32), {"long_name": "predictive standard deviation"})
    if probs is not None:
        pr = _as_numpy(probs)
        if pr.ndim != 3 or pr.shape[:2] != m.shape[:2]:
            raise ValueError(
                f"probs has shape {pr.shape}; "
                f"expected (task, sample, classes) = {m.shape[:2]} + (C,)."
            )
        data["probs"] = (("task", "sample", "class"), pr.astype(np.float32),
                         {"long_name": "predictive class probabilities", "units": "1"})
    ds = xr.Dataset(data, attrs=clean_attrs(attrs))
    return write_dataset(ds, path)


def write_tasks(
    path: PathLike,
    data: TaskBatch | Mapping[str, Any] | tuple[Any, Any],
    split: Sequence[str] | None = None,
    num_classes: int | None = None,
    attrs: Mapping[str, Any] | None = None,
    x_dims: Sequence[str] | None = None,
    y_dims: Sequence[str] | None = None,
) -> Path:
    """Writes tasks in the layout :class:`FileSource` reads (netCDF, atomically; or ``.zarr``).

    Args:
        path: Output ``.nc`` (or ``.zarr``, needs the zarr package).
        data: A :class:`~hvi.tasks.TaskBatch` (written with a ``role``
            variable: support then query samples, plus ``noise`` if both noises
            are set), a mapping with ``x``, ``y`` and optionally ``noise``,
            ``role``, ``is_support``, ``split`` arrays, or an ``(x, y)`` tuple.
            Arrays are ``(task, sample, ...)``; integer ``y`` are class labels.
        split: Per-task ``"train"``/``"val"``/``"test"``. Defaults to None
            (none written, unless in ``data``).
        num_classes: Stored as the ``num_classes`` attribute of integer ``y``.
            Defaults to None.
        attrs: Global attributes. Defaults to None.
        x_dims: Names of the dims of ``x`` after ``sample``. Defaults to ``x_dim_0, ...``.
        y_dims: Names of the dims of ``y`` after ``sample``. Defaults to ``y_dim_0, ...``.

    Returns:
        The written path.

    Raises:
        ValueError: If arrays are missing or their shapes disagree.
    """
    import xarray as xr

    arrays: dict[str, np.ndarray] = {}
    if isinstance(data, TaskBatch):
        x, y, noise = data.joined()
        arrays["x"], arrays["y"] = _as_numpy(x), _as_numpy(y)
        if noise is not None:
            arrays["noise"] = _as_numpy(noise)
        ns, nq = data.support_x.shape[1], data.query_x.shape[1]
        arrays["role"] = np.array(
            [["support"] * ns + ["query"] * nq] * data.batch_size, dtype="<U7"
        )
    elif isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"data tuple has {len(data)} items; expected (x, y).")
        arrays["x"], arrays["y"] = _as_numpy(data[0]), _as_numpy(data[1])
    elif isinstance(data, Mapping):
        for key in ("x", "y"):
            if key not in data:
                raise ValueError(f"data has no {key!r}; pass a mapping with 'x' and 'y' arrays.")
        unknown = set(data) - {"x", "y", "noise", "role", "is_support", "split"}
        if unknown:
            raise ValueError(
                f"data has unknown keys {sorted(unknown)}; "
                "use x, y, noise, role, is_support, split."
            )
        arrays = {k: _as_numpy(v) for k, v in data.items()}
    else:
        raise ValueError(
            f"data of type {type(data).__name__} is not a TaskBatch, mapping or (x, y) tuple."
        )
    if split is not None:
        arrays["split"] = np.asarray(list(split), dtype=str)
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2 or y.ndim < 2 or x.shape[:2] != y.shape[:2]:
        raise ValueError(
            f"x {x.shape} and y {y.shape} must both start with the same (task, sample) sizes."
        )
    integer = y.dtype.kind in "iub"
    variables: dict[str, Any] = {
        "x": (("task", "sample", *_dims("x", x.ndim - 2, x_dims)), x.astype(np.float32)),
    }
    ydims = ("task", "sample", *_dims("y", y.ndim - 2, y_dims))
    variables["y"] = (ydims, y.astype(np.int64) if integer else y.astype(np.float32))
    if "noise" in arrays:
        if arrays["noise"].shape != y.shape:
            raise ValueError(f"noise {arrays['noise'].shape} must have the shape of y {y.shape}.")
        variables["noise"] = (ydims, arrays["noise"].astype(np.float32))
    for key in ("role", "is_support"):
        if key in arrays:
            if arrays[key].shape != x.shape[:2]:
                raise ValueError(
                    f"{key} {arrays[key].shape} must have shape (task, sample) = {x.shape[:2]}."
                )
            variables[key] = (("task", "sample"), arrays[key])
    if "split" in arrays:
        if arrays["split"].shape != x.shape[:1]:
            raise ValueError(
                f"split {arrays['split'].shape} must have one entry per task ({x.shape[0]})."
            )
        variables["split"] = (("task",), arrays["split"])
    ds = xr.Dataset(variables, attrs=clean_attrs(attrs))
    if num_classes is not None:
        if not integer:
            raise ValueError(
                "num_classes was given but y is not integer; "
                "pass integer class labels or drop num_classes."
            )
        ds["y"].attrs["num_classes"] = int(num_classes)
    return write_dataset(ds, path)
