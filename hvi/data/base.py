"""Task sources: where batches of (support, query) tasks come from.

A task source owns a finite population of tasks split into disjoint
``train`` / ``val`` / ``test`` subsets (the split is a pure function of the
source's seed, so two processes agree on it), and yields :class:`~hvi.tasks.TaskBatch`
objects in the layout documented there. Procedural sources (sinusoid, clouds)
define a finite population too: task ``i`` is generated from ``(seed, i)``, so
the same index always gives the same task and splits never share a task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import ClassVar, Literal

import numpy as np
import torch

from hvi.registry import Registry
from hvi.tasks import TaskBatch

__all__ = [
    "SPLITS",
    "Split",
    "TaskSource",
    "check_int",
    "check_num_tasks",
    "check_split",
    "split_index",
    "register_source",
    "get_source",
    "list_sources",
]

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_int(name: str, value: object, low: int, hint: str) -> int:
    """``value`` as an int >= ``low``, else a one-line ValueError naming ``name`` with ``hint``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}={value!r} must be an int >= {low}; {hint}.")
    return int(value)


def check_split(split: object) -> Split:
    """``split`` if it is one of :data:`SPLITS` (``"train"``, ``"val"``, ``"test"``), else a one-line ValueError."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}.")
    return split  # type: ignore[return-value]


def split_index(split: object) -> int:
    """The position of ``split`` in :data:`SPLITS` (train 0, val 1, test 2), checked by :func:`check_split`."""
    return SPLITS.index(check_split(split))


def check_num_tasks(num_tasks: object, example: str) -> tuple[int, int, int]:
    """A ``(train, val, test)`` triple of positive task counts; ``example`` shows a valid one."""
    if (
        not isinstance(num_tasks, (tuple, list))
        or len(num_tasks) != 3
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in num_tasks)
    ):
        raise ValueError(
            f"num_tasks={num_tasks!r} must be three positive ints (train, val, test); "
            f"pass e.g. num_tasks={example}."
        )
    return (int(num_tasks[0]), int(num_tasks[1]), int(num_tasks[2]))


class TaskSource(ABC):
    """A population of tasks with a fixed meta-train/val/test split.

    Subclasses set the class attributes and implement :meth:`num_tasks` and
    :meth:`get_tasks`; sampling and iteration are derived from those.

    Attributes:
        likelihood: ``"gaussian"`` (regression) or ``"categorical"``.
        num_classes: Number of classes for categorical sources, else ``None``.
        default_model: Name of the zoo model this source is meant for.
    """

    likelihood: ClassVar[str] = "gaussian"
    num_classes: int | None = None
    default_model: ClassVar[str] = "mlp"

    @property
    @abstractmethod
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input example."""

    @property
    @abstractmethod
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target example (``()`` for class labels)."""

    @abstractmethod
    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split``."""

    @abstractmethod
    def get_tasks(self, split: Split, index: torch.Tensor) -> TaskBatch:
        """The tasks with positions ``index`` (int64, shape ``(B,)``) within ``split``.

        Must be deterministic: the same ``(split, index)`` always gives the
        same tensors. ``task_index`` of the result is ``index`` and
        ``num_tasks`` is ``self.num_tasks(split)``.
        """

    def sample(self, split: Split, batch_size: int, generator: torch.Generator) -> TaskBatch:
        """``batch_size`` distinct tasks of ``split`` drawn uniformly without replacement."""
        m = self.num_tasks(split)
        if not 1 <= batch_size <= m:
            raise ValueError(
                f"batch_size={batch_size} must be between 1 and the {m} tasks of split {split!r}; "
                f"lower the task batch (--task-batch)."
            )
        index = torch.randperm(m, generator=generator)[:batch_size]
        return self.get_tasks(split, index)

    def iterate(self, split: Split, batch_size: int) -> Iterator[TaskBatch]:
        """Every task of ``split`` once, in order, in batches of at most ``batch_size``."""
        m = self.num_tasks(split)
        for start in range(0, m, batch_size):
            yield self.get_tasks(split, torch.arange(start, min(start + batch_size, m)))


#: The registered task sources (see :class:`hvi.registry.Registry`).
SOURCES: Registry[TaskSource] = Registry("task source", "sources")


def register_source(name: str) -> Callable[[Callable[..., TaskSource]], Callable[..., TaskSource]]:
    """Class/function decorator registering a task-source builder under ``name`` (duplicates raise)."""
    return SOURCES.register(name)


def get_source(name: str, **cfg) -> TaskSource:
    """Builds the registered task source ``name`` with keyword configuration ``cfg``."""
    return SOURCES.build(name, **cfg)


def list_sources() -> list[str]:
    """Names of all registered task sources, sorted."""
    return SOURCES.names()
