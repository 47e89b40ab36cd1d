"""Any ``nn.Module`` as a pure function of a dict of weight tensors.

The engine never mutates a module: weights live in dicts keyed by the
module's parameter names and are run through :func:`torch.func.functional_call`;
tasks and Monte Carlo samples are batched with :func:`torch.func.vmap`.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hvi.parallel import map_task_chunks, num_task_chunks

__all__ = ["FunctionalNet"]

Weights = Mapping[str, Tensor]


class FunctionalNet:
    """A module seen as ``f(weights, x)``.

    Buffers (constants such as fixed frequencies) are shared by every task.
    Running statistics would be shared state across tasks, so modules that
    track them are refused with an error that says how to fix the module.

    Args:
        module: The network. Its current parameter values become
            :attr:`init_weights` (the starting point of the prior mean).
        parallel_tasks: On CPU, evaluate chunks of tasks in parallel worker
            threads (see :mod:`hvi.parallel`; default True).

    Raises:
        ValueError: If the module has no parameters or tracks running statistics.
    """

    def __init__(self, module: nn.Module, parallel_tasks: bool = True) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(module).__name__}.")
        for sub_name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                raise ValueError(
                    f"module '{sub_name or type(module).__name__}' ({type(sub).__name__}) tracks "
                    "running statistics, which would be shared across tasks; build it with "
                    "track_running_stats=False (per-task batch statistics, as in MAML)."
                )
        self.module = module
        self.init_weights: dict[str, Tensor] = {
            n: p.detach().clone() for n, p in module.named_parameters()
        }
        if not self.init_weights:
            raise ValueError(
                f"net {type(module).__name__} has no parameters to put a prior on; "
                "register the per-task weights as nn.Parameter."
            )
        self.buffers: dict[str, Tensor] = dict(module.named_buffers())
        self.parallel_tasks = bool(parallel_tasks)
        self._per_thread = threading.local()

    def _module(self) -> nn.Module:
        # functional_call swaps the module's tensors in and out while it runs, so
        # concurrent calls (hvi.parallel's worker threads) each need their own
        # module shell; its own tensors are never read (all are passed in).
        if threading.current_thread() is threading.main_thread():
            return self.module
        module = getattr(self._per_thread, "module", None)
        if module is None:
            module = self._per_thread.module = copy.deepcopy(self.module)
        return module

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.init_weights)

    @property
    def shapes(self) -> dict[str, torch.Size]:
        return {n: w.shape for n, w in self.init_weights.items()}

    @property
    def num_weights(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def __call__(self, weights: Weights, x: Tensor) -> Tensor:
        """One network evaluation: ``x`` is ``(N, *x_shape)``, weights unbatched."""
        return functional_call(self._module(), ({**weights}, self.buffers), (x,), strict=True)

    def batched(self, weights: Weights, x: Tensor, weight_batch_dims: int = 1, parallel: bool = True) -> Tensor:
        """Evaluates per-task weights on per-task inputs.

        Args:
            weights: Each tensor shaped ``(*S, B, *w_shape)`` with
                ``len(S) == weight_batch_dims - 1`` extra leading sample dims
                (Monte Carlo samples, vectorized particles).
            x: Inputs ``(B, N, *x_shape)``, shared across the sample dims.
            weight_batch_dims: Number of leading batch dims on the weights
                (default 1: tasks only).
            parallel: Allow worker-thread chunks (default True; with
                ``parallel_tasks``). Pass False where the result will be
                differentiated twice (a second-order inner loop): the chunks'
                backward pass (:mod:`hvi.parallel`) is not itself differentiable.

        Returns:
            Outputs ``(*S, B, N, *out_shape)``.
        """
        B, tdim, names = x.shape[0], weight_batch_dims - 1, list(weights)

        def run(inputs: list[Tensor], c: slice) -> tuple[Tensor]:
            at = (slice(None),) * tdim + (c,)
            w = {n: t[at] for n, t in zip(names, inputs)}
            return (self._batched(w, inputs[-1][c], weight_batch_dims),)

        chunks = num_task_chunks(B, x.device, self.parallel_tasks and parallel)
        return map_task_chunks(run, [*weights.values(), x], B, chunks, task_dim=tdim)[0]

    def _batched(self, weights: Weights, x: Tensor, weight_batch_dims: int) -> Tensor:
        if x.shape[0] == 1:
            # One task: vmap's batching rules (e.g. grouped convolutions) only cost here.
            fn = lambda w, xx: self(  # noqa: E731
                {n: v.squeeze(0) for n, v in w.items()}, xx.squeeze(0)
            ).unsqueeze(0)
        else:
            fn = vmap(self.__call__, in_dims=(0, 0))
        for _ in range(weight_batch_dims - 1):
            fn = vmap(fn, in_dims=(0, None))
        return fn(weights, x)
