"""Checks at the API boundary, so bad input fails with one line naming it.

They run once per batch, outside the inner loop (the NaN check reads values
back from the device, which the inner loop never does).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvi.likelihoods import Likelihood
from hvi.tasks import TaskBatch

__all__ = ["validate_batch"]


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
    idx = batch.task_index
    if idx.shape != (B,) or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"task_index must be an int64 tensor of shape ({B},), got {idx.dtype} {tuple(idx.shape)}.")
    M = batch.num_tasks
    if not (isinstance(M, int) and M >= B):
        raise ValueError(f"num_tasks={M!r} must be an int >= the {B} tasks in the batch.")
    if int(idx.min()) < 0 or int(idx.max()) >= M:
        raise ValueError(f"task_index must lie in [0, num_tasks={M}); got values in [{int(idx.min())}, {int(idx.max())}].")
