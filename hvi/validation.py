"""Checks at the API boundary, so bad input fails with one line naming it.

They run once per batch, outside the inner loop (the NaN check reads values
back from the device, which the inner loop never does).
"""

from __future__ import annotations

import torch
import weakref

from torch import Tensor

from hvi.likelihoods import Likelihood
from hvi.tasks import TaskBatch

__all__ = ["validate_batch", "validate_for_model"]


def _finite(name: str, t: Tensor) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf values; remove or impute them before fitting.")


def validate_batch(
    batch: TaskBatch,
    likelihood: Likelihood,
    x_shape: tuple[int, ...] | None = None,
    *,
    query_targets: bool = True,
) -> None:
    """Raises ``ValueError`` naming the offending field if ``batch`` is malformed.

    Args:
        batch: The tasks.
        likelihood: The likelihood the targets must fit.
        x_shape: Expected per-example input shape, if known (e.g. from training).
        query_targets: Check ``query_y`` values (default True). Prediction reads
            only its shape, so unknown query targets (NaN) are allowed there.
    """
    if not isinstance(batch, TaskBatch):
        raise TypeError(f"expected a hvi.TaskBatch, got {type(batch).__name__}.")
    sx, sy, qx, qy = batch.support_x, batch.support_y, batch.query_x, batch.query_y
    if qy is None:
        if query_targets:
            raise ValueError("query_y is None but fitting needs the query targets; pass them (B, Nq, *y_shape).")
        qy = sy.new_zeros((qx.shape[0], qx.shape[1] if qx.dim() > 1 else 0, *sy.shape[2:]))
    for name, t in (("support_x", sx), ("support_y", sy), ("query_x", qx), ("query_y", qy)):
        if t.dim() < 2:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected (tasks, examples, ...) with at least 2 dims."
            )
    B = sx.shape[0]
    if B == 0:
        raise ValueError("the batch holds no tasks (support_x has 0 rows along dim 0).")
    for name, t in (("support_y", sy), ("query_x", qx), ("query_y", qy)):
        if t.shape[0] != B:
            raise ValueError(f"{name} holds {t.shape[0]} tasks but support_x holds {B}; they must match.")
    if sx.shape[1] == 0:
        raise ValueError("support set is empty (support_x has 0 examples per task); give each task at least one support example.")
    if sy.shape[1] != sx.shape[1]:
        raise ValueError(f"support_y has {sy.shape[1]} examples per task but support_x has {sx.shape[1]}; they must match.")
    if qy.shape[1] != qx.shape[1]:
        raise ValueError(f"query_y has {qy.shape[1]} examples per task but query_x has {qx.shape[1]}; they must match.")
    if qx.shape[2:] != sx.shape[2:]:
        raise ValueError(
            f"query_x has per-example shape {tuple(qx.shape[2:])} but support_x has {tuple(sx.shape[2:])}; "
            "support and query must share the input shape."
        )
    if qy.shape[2:] != sy.shape[2:]:
        raise ValueError(
            f"query_y has per-example shape {tuple(qy.shape[2:])} but support_y has {tuple(sy.shape[2:])}; "
            "support and query must share the target shape."
        )
    if x_shape is not None and tuple(sx.shape[2:]) != tuple(x_shape):
        raise ValueError(
            f"support_x has per-example shape {tuple(sx.shape[2:])} but the model was trained on {tuple(x_shape)}."
        )
    checked = [("support_x", sx), ("support_y", sy), ("query_x", qx)]
    if query_targets:
        checked.append(("query_y", qy))
    for name, t in checked:
        _finite(name, t)
    likelihood.check_targets("support_y", sy)
    if query_targets:
        likelihood.check_targets("query_y", qy)
    for name, noise, y in (("support_noise", batch.support_noise, sy), ("query_noise", batch.query_noise, qy)):
        if noise is None:
            if likelihood.needs_noise:
                raise ValueError(f"{name} is missing; the likelihood has noise='known' and needs it per observation.")
            continue
        if noise.shape != y.shape:
            raise ValueError(f"{name} has shape {tuple(noise.shape)} but the targets have {tuple(y.shape)}.")
        _finite(name, noise)
        if not bool((noise > 0).all()):
            raise ValueError(f"{name} has non-positive values; a noise standard deviation must be > 0.")
    for name, mask, y in (("support_mask", batch.support_mask, sy), ("query_mask", batch.query_mask, qy)):
        if mask is None:
            continue
        if mask.dtype != torch.bool or mask.shape != y.shape:
            raise ValueError(
                f"{name} is {mask.dtype} {tuple(mask.shape)} but must be a bool tensor shaped like the targets "
                f"{tuple(y.shape)} (True = observed); build it with e.g. ~torch.isnan(y)."
            )
    idx = batch.task_index
    if idx.shape != (B,) or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"task_index must be an int64 tensor of shape ({B},), got {idx.dtype} {tuple(idx.shape)}.")
    M = batch.num_tasks
    if not (isinstance(M, int) and M >= B):
        raise ValueError(f"num_tasks={M!r} must be an int >= the {B} tasks in the batch.")
    if int(idx.min()) < 0 or int(idx.max()) >= M:
        raise ValueError(f"task_index must lie in [0, num_tasks={M}); got values in [{int(idx.min())}, {int(idx.max())}].")


#: Per model: the per-example output shapes already probed, keyed by (x_shape, dtype, device).
_PROBED: "weakref.WeakKeyDictionary[object, dict[tuple, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def validate_for_model(batch: TaskBatch, meta, *, query_targets: bool = True) -> None:
    """:func:`validate_batch`, then what the batch must share with the model ``meta``.

    The inputs (and float targets and noise) must have the dtype of the
    network's weights; one network evaluation on one example (once per input
    shape, dtype and device of a model) checks that the inputs fit the network,
    that regression outputs broadcast to the targets' shape, and that class
    labels are below the number of classes the network outputs.

    Raises:
        ValueError: Naming the field, what it holds, what the model needs and the fix.
    """
    validate_batch(batch, meta.likelihood, query_targets=query_targets)
    ref = next(iter(meta.net.init_weights.values()))
    classify = meta.likelihood.is_classification
    fields = [("support_x", batch.support_x), ("query_x", batch.query_x)]
    if not classify:
        fields += [("support_y", batch.support_y)]
        if query_targets and batch.query_y is not None:
            fields += [("query_y", batch.query_y)]
    fields += [(n, getattr(batch, n)) for n in ("support_noise", "query_noise") if getattr(batch, n) is not None]
    for name, t in fields:
        if not t.is_floating_point():
            raise ValueError(
                f"{name} has dtype {t.dtype} but the model computes in {ref.dtype}; cast the batch with "
                f"batch.to(dtype={ref.dtype}) (class labels stay int64)."
            )
        if t.dtype != ref.dtype:
            raise ValueError(
                f"{name} has dtype {t.dtype} but the model's weights are {ref.dtype}; cast the batch with "
                f"batch.to(dtype={ref.dtype}) or the network with net.to({t.dtype}) before building the model."
            )
        if t.device != ref.device:
            raise ValueError(
                f"{name} is on {t.device} but the model's weights are on {ref.device}; move the batch with "
                f"batch.to({str(ref.device)!r})."
            )
    sx = batch.support_x
    key = (tuple(sx.shape[2:]), sx.dtype, str(sx.device))
    shapes = _PROBED.setdefault(meta.net, {})
    if key not in shapes:
        try:
            with torch.no_grad():
                out = meta.net(meta.net.init_weights, sx[0, :1])
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"support_x examples of shape {key[0]} do not fit the network ({first}); pass inputs of the "
                "shape it was built for, or build it for these."
            ) from None
        shapes[key] = tuple(out.shape[1:])
    out_shape = shapes[key]
    y_shape = tuple(batch.support_y.shape[2:])
    if classify:
        C = out_shape[-1] if out_shape else 1
        for name, y in (("support_y", batch.support_y), ("query_y", batch.query_y if query_targets else None)):
            if y is not None and y.numel() and int(y.max()) >= C:
                raise ValueError(
                    f"{name} has the class label {int(y.max())} but the network outputs {C} classes "
                    f"(labels 0..{C - 1}); build it with {int(y.max()) + 1} or more outputs."
                )
        return
    try:
        fits = torch.broadcast_shapes(out_shape, y_shape) == y_shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"the network outputs examples of shape {out_shape} but support_y's are {y_shape}; "
            "build the network with matching outputs."
        )
