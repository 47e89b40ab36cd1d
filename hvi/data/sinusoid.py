"""The sinusoid regression benchmark of MAML (Finn et al., 2017).

A task is a sine wave ``y = A sin(x - phi)`` with amplitude ``A ~ U[0.1, 5]``
and phase ``phi ~ U[0, pi]``; inputs are drawn ``x ~ U[-5, 5]``. Targets are
noise-free. Task ``i`` of a split is a pure function of ``(seed, split, i)``,
so repeated calls give identical tensors and the three splits never share a
task (each split draws from its own random stream).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from hvi.data.base import Split, TaskSource, check_int, check_num_tasks, register_source, split_index
from hvi.tasks import TaskBatch

__all__ = ["SinusoidSource"]

_SOURCE_TAG = 0x5105  # decorrelates this source's streams from other sources with the same seed

AMPLITUDE_RANGE: tuple[float, float] = (0.1, 5.0)
PHASE_RANGE: tuple[float, float] = (0.0, math.pi)
X_RANGE: tuple[float, float] = (-5.0, 5.0)


@register_source("sinusoid")
class SinusoidSource(TaskSource):
    """Few-shot sine-wave regression tasks (the MAML benchmark).

    Each example is ``x`` of shape ``(1,)`` and ``y = A sin(x - phi)`` of shape
    ``(1,)``, all float32. Support and query points are independent draws of
    ``x ~ U[-5, 5]`` from the same task.

    Args:
        k_shot: Support points per task. Defaults to 10.
        k_query: Query points per task. Defaults to 10.
        num_tasks: Number of tasks in the (train, val, test) splits.
            Defaults to ``(20000, 1000, 1000)``.
        seed: Seed of the task population. Defaults to 0.

    Raises:
        ValueError: If an argument is out of range.
    """

    likelihood = "gaussian"
    num_classes = None
    default_model = "mlp"

    def __init__(
        self,
        k_shot: int = 10,
        k_query: int = 10,
        num_tasks: tuple[int, int, int] = (20000, 1000, 1000),
        seed: int = 0,
    ) -> None:
        self.k_shot = check_int("k_shot", k_shot, 1, "pass e.g. k_shot=10")
        self.k_query = check_int("k_query", k_query, 0, "pass e.g. k_query=10")
        self._num_tasks = check_num_tasks(num_tasks, "(20000, 1000, 1000)")
        self.seed = check_int("seed", seed, 0, "pass e.g. seed=0")

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(1,)``."""
        return (1,)

    @property
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one target: ``(1,)``."""
        return (1,)

    def num_tasks(self, split: Split) -> int:
        """Number of tasks in ``split``."""
        return self._num_tasks[split_index(split)]

    def _rngs(self, split: Split, index: Tensor | int) -> tuple[Tensor, list[np.random.Generator]]:
        sid = split_index(split)
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        m = self._num_tasks[sid]
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(
                f"task index out of range for split {split!r} with {m} tasks; "
                f"use indices in [0, {m})."
            )
        rngs = [
            np.random.default_rng(np.random.SeedSequence((self.seed, _SOURCE_TAG, sid, int(i))))
            for i in index.tolist()
        ]
        return index, rngs

    def task_params(self, split: Split, index: Tensor | int) -> tuple[Tensor, Tensor]:
        """True amplitude and phase of tasks ``index`` of ``split``.

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            index: Task position(s) within the split (int or int64 tensor).

        Returns:
            ``(amplitude, phase)``, float32 tensors of shape ``(B,)``.
        """
        _, rngs = self._rngs(split, index)
        amp = [r.uniform(*AMPLITUDE_RANGE) for r in rngs]
        phase = [r.uniform(*PHASE_RANGE) for r in rngs]
        return torch.tensor(amp, dtype=torch.float32), torch.tensor(phase, dtype=torch.float32)

    def get_tasks(self, split: Split, index: Tensor) -> TaskBatch:
        """Tasks ``index`` of ``split`` as a :class:`~hvi.tasks.TaskBatch` (see class doc)."""
        index, rngs = self._rngs(split, index)
        n = self.k_shot + self.k_query
        amp, phase, xs = [], [], []
        for r in rngs:  # same draw order as task_params
            amp.append(r.uniform(*AMPLITUDE_RANGE))
            phase.append(r.uniform(*PHASE_RANGE))
            xs.append(r.uniform(*X_RANGE, size=(n, 1)))
        a = torch.tensor(amp, dtype=torch.float32)
        p = torch.tensor(phase, dtype=torch.float32)
        x = torch.from_numpy(np.stack(xs) if xs else np.zeros((0, n, 1))).to(torch.float32)
        y = a[:, None, None] * torch.sin(x - p[:, None, None])
        k = self.k_shot
        return TaskBatch(
            support_x=x[:, :k],
            support_y=y[:, :k],
            query_x=x[:, k:],
            query_y=y[:, k:],
            task_index=index,
            num_tasks=self.num_tasks(split),
        )
