"""The tensor layout of a batch of tasks: what every task source yields.

A batch holds ``B`` tasks, each with a support set of ``Ns`` examples and a
query set of ``Nq`` examples::

    support_x  (B, Ns, *x_shape)      query_x  (B, Nq, *x_shape)
    support_y  (B, Ns, *y_shape)      query_y  (B, Nq, *y_shape)
    task_index (B,) int64             which of the ``num_tasks`` tasks these are

``x_shape``/``y_shape`` are per example: ``(1,)`` for sinusoid regression,
``(C, H, W)`` for image-to-image regression; classification targets are int64
class labels with ``y_shape == ()``. Optional ``support_noise``/``query_noise``
carry a known per-observation noise standard deviation (same shape as ``y``)
for Gaussian likelihoods with known noise. Optional ``support_mask``/``query_mask``
(bool, same shape as ``y``) say which targets were observed: ``False`` entries
(night pixels of a solar map, missing values of a file) are left out of every
likelihood term, the inner loop's and the outer ELBO's, and of the metrics.

``num_tasks`` (M) is the size of the population the batch was drawn from; the
model scales each task's ELBO term by ``M / B`` (see docs/model.md, "The objective, its scaling, and β").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TaskBatch"]

#: Fields that must be tensors (``query_y`` may be None on the predictive path).
_REQUIRED = frozenset({"support_x", "support_y", "query_x"})


@dataclass(frozen=True)
class TaskBatch:
    """A batch of ``B`` tasks, each with a support and a query set.

    Args:
        support_x: Support inputs, shape ``(B, Ns, *x_shape)``.
        support_y: Support targets, shape ``(B, Ns, *y_shape)``.
        query_x: Query inputs, shape ``(B, Nq, *x_shape)``. ``Nq`` may be 0.
        query_y: Query targets, shape ``(B, Nq, *y_shape)``.
        task_index: Indices of these tasks among ``num_tasks``, shape ``(B,)``.
            Defaults to ``arange(B)``.
        num_tasks: Size ``M`` of the task population. Defaults to ``B``.
        support_noise: Optional known noise std of each support target.
        query_noise: Optional known noise std of each query target.
        support_mask: Optional bool tensor shaped like ``support_y``: which
            support targets are observed (``True``). None: all of them.
        query_mask: Optional bool tensor shaped like ``query_y``, the same for
            the query targets.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    task_index: Tensor | None = None
    num_tasks: int | None = None
    support_noise: Tensor | None = None
    query_noise: Tensor | None = None
    support_mask: Tensor | None = None
    query_mask: Tensor | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "num_tasks":
                if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                    raise TypeError(f"num_tasks must be an int or None, got {v!r} ({type(v).__name__}).")
            elif not (isinstance(v, Tensor) or (v is None and f.name not in _REQUIRED)):
                raise TypeError(
                    f"TaskBatch field {f.name} must be a torch.Tensor, got {type(v).__name__}; "
                    "convert it with torch.as_tensor(...)."
                )
        B = self.support_x.shape[0] if self.support_x.dim() > 0 else 0
        if self.task_index is None:
            object.__setattr__(
                self, "task_index", torch.arange(B, device=self.support_x.device)
            )
        if self.num_tasks is None:
            object.__setattr__(self, "num_tasks", B)

    @property
    def batch_size(self) -> int:
        return self.support_x.shape[0]

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.support_x.shape[2:])

    @property
    def y_shape(self) -> tuple[int, ...]:
        return tuple(self.support_y.shape[2:])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "TaskBatch":
        """Moves every tensor to ``device``; floating tensors are cast to ``dtype`` if given."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return dataclasses.replace(
            self,
            **{
                f.name: move(getattr(self, f.name))
                for f in dataclasses.fields(self)
                if f.name != "num_tasks"
            },
        )

    def tasks(self, index: slice) -> "TaskBatch":
        """The tasks ``index`` of this batch (a view; ``num_tasks`` and ``task_index`` unchanged)."""
        return dataclasses.replace(
            self,
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                for f in dataclasses.fields(self)
                if f.name != "num_tasks"
            },
        )

    def joined(self) -> tuple[Tensor, Tensor, Tensor | None]:
        """Support and query concatenated along the example axis: ``(x, y, noise)``."""
        x = torch.cat([self.support_x, self.query_x], dim=1)
        y = torch.cat([self.support_y, self.query_y], dim=1)
        noise = None
        if self.support_noise is not None and self.query_noise is not None:
            noise = torch.cat([self.support_noise, self.query_noise], dim=1)
        return x, y, noise

    def joined_mask(self) -> Tensor | None:
        """The observed-target mask of :meth:`joined`'s ``y``; None when every target is observed."""
        if self.support_mask is None and self.query_mask is None:
            return None

        def full(mask: Tensor | None, y: Tensor) -> Tensor:
            return torch.ones_like(y, dtype=torch.bool) if mask is None else mask

        return torch.cat([full(self.support_mask, self.support_y), full(self.query_mask, self.query_y)], dim=1)
