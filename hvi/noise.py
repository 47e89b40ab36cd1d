"""The inner loop's Monte Carlo noise, reproducible per task and drawn where it is used.

Each (θ particle, task) pair gets its own generator, seeded from one number
the guide draws from PyTorch's global RNG (so ``pyro.set_rng_seed`` fixes
everything). Its steps draw their ``(S, D)`` standard-normal noise in order:

* the noise of a task is the same whichever chunk of the batch it is adapted
  in (:mod:`hvi.parallel`) and whichever thread draws it;
* each step's noise exists only while that step runs (first order keeps no
  graph through it), instead of ``(B, K, S, D)`` for the whole loop;
* :meth:`TaskNoise.materialize` redraws the whole tensor for inspection.
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["TaskNoise"]

#: ``(offset, total, local)`` while a data-parallel step adapts tasks ``offset ..
#: offset + local`` of a global batch of ``total`` (set by :mod:`hvi.distributed`):
#: a batch of ``local`` tasks then draws the streams those tasks have in the
#: global batch, so the noise does not depend on how the batch is sharded.
TASK_SHARD: ContextVar[tuple[int, int, int] | None] = ContextVar("hvi_task_shard", default=None)


@dataclass(frozen=True)
class TaskNoise:
    """Standard-normal noise ``(*lead, B, steps, S, D)`` as per-task streams.

    Args:
        seed: Base seed; task ``(p, b)`` uses ``seed + p * total + offset + b``
            (``seed + p * num_tasks + b`` unsharded).
        lead: Particle dims in front of the tasks (``()`` or ``(P,)``).
        num_tasks: B, the tasks of the whole batch.
        steps: Draws per task (inner steps).
        shape: Shape of one draw, ``(S, D)``.
        device, dtype: Where and how the noise is made.
        tasks: The tasks this view covers (a chunk of ``range(num_tasks)``).
        offset: Position of task 0 in the global batch (data-parallel shards).
        total: Tasks of the global batch (None: ``num_tasks``).
    """

    seed: int
    lead: tuple[int, ...]
    num_tasks: int
    steps: int
    shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    tasks: slice | None = None
    offset: int = 0
    total: int | None = None

    @classmethod
    def draw_seed(cls, **kwargs) -> "TaskNoise":
        """A new stream family, seeded from PyTorch's global (CPU) RNG: no device sync.

        Inside a data-parallel step (:data:`TASK_SHARD`) a batch of the shard's
        size gets the shard's ``offset`` and ``total``.
        """
        seed = int(torch.randint(0, 2**62, (1,)))
        shard = TASK_SHARD.get()
        if shard is not None and kwargs.get("num_tasks") == shard[2] and "offset" not in kwargs:
            kwargs = {**kwargs, "offset": shard[0], "total": shard[1]}
        return cls(seed=seed, **kwargs)

    def chunk(self, tasks: slice) -> "TaskNoise":
        """The same streams for the tasks ``tasks`` only."""
        return replace(self, tasks=tasks)

    def _task_range(self) -> range:
        return range(self.num_tasks)[self.tasks] if self.tasks is not None else range(self.num_tasks)

    def generators(self) -> list[torch.Generator]:
        """One generator per (particle, task) of this view, in ``(*lead, tasks)`` order."""
        gens = []
        total = self.num_tasks if self.total is None else self.total
        for p in range(math.prod(self.lead)):
            for b in self._task_range():
                g = torch.Generator(device=self.device)
                g.manual_seed(self.seed + p * total + self.offset + b)
                gens.append(g)
        return gens

    def next(self, generators: list[torch.Generator]) -> Tensor:
        """The next step's noise ``(*lead, tasks, S, D)`` from :meth:`generators`."""
        out = torch.empty((len(generators),) + tuple(self.shape), device=self.device, dtype=self.dtype)
        for row, g in zip(out, generators):  # in place: no second copy as torch.stack would make
            row.normal_(generator=g)
        return out.view(self.lead + (len(self._task_range()),) + tuple(self.shape))

    def materialize(self) -> Tensor:
        """All of it, ``(*lead, tasks, steps, S, D)`` (for inspection and tests)."""
        if self.steps == 0:
            return torch.empty(self.lead + (len(self._task_range()), 0) + tuple(self.shape),
                               device=self.device, dtype=self.dtype)
        gens = self.generators()
        return torch.stack([self.next(gens) for _ in range(self.steps)], dim=len(self.lead) + 1)
