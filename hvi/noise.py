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
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["TaskNoise"]


@dataclass(frozen=True)
class TaskNoise:
    """Standard-normal noise ``(*lead, B, steps, S, D)`` as per-task streams.

    Args:
        seed: Base seed; task ``(p, b)`` uses ``seed + p * num_tasks + b``.
        lead: Particle dims in front of the tasks (``()`` or ``(P,)``).
        num_tasks: B, the tasks of the whole batch.
        steps: Draws per task (inner steps).
        shape: Shape of one draw, ``(S, D)``.
        device, dtype: Where and how the noise is made.
        tasks: The tasks this view covers (a chunk of ``range(num_tasks)``).
    """

    seed: int
    lead: tuple[int, ...]
    num_tasks: int
    steps: int
    shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    tasks: slice | None = None

    @classmethod
    def draw_seed(cls, **kwargs) -> "TaskNoise":
        """A new stream family, seeded from PyTorch's global (CPU) RNG: no device sync."""
        seed = int(torch.randint(0, 2**62, (1,)))
        return cls(seed=seed, **kwargs)

    def chunk(self, tasks: slice) -> "TaskNoise":
        """The same streams for the tasks ``tasks`` only."""
        return replace(self, tasks=tasks)

    def _task_range(self) -> range:
        return range(self.num_tasks)[self.tasks] if self.tasks is not None else range(self.num_tasks)

    def generators(self) -> list[torch.Generator]:
        """One generator per (particle, task) of this view, in ``(*lead, tasks)`` order."""
        gens = []
        for p in range(math.prod(self.lead)):
            for b in self._task_range():
                g = torch.Generator(device=self.device)
                g.manual_seed(self.seed + p * self.num_tasks + b)
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
