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
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from hvi.parallel import map_task_chunks, num_task_chunks

__all__ = ["FunctionalNet", "AUTOCAST_DTYPES"]

Weights = Mapping[str, Tensor]

#: ``FunctionalNet.configure(autocast=...)``: the reduced precision the network's forward runs in.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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

    The network's speed options, ``compile`` and ``autocast``, are set with
    :meth:`configure` (``meta.net.configure(...)`` on a :class:`~hvi.MetaModel`).

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
        self.compile: bool | str = False
        self.autocast = "none"

    def configure(self, *, compile: bool | str | None = None, autocast: str | None = None) -> "FunctionalNet":
        """Speed options of the network's forward; None leaves a setting as it is.

        Args:
            compile: ``torch.compile`` the batched forward (True: the default
                ``inductor`` backend; a string names another backend, e.g.
                ``"aot_eager"``; False: off, the default). Each thread compiles
                its own on its first call of each kind (tasks batched or one
                task, with or without sample dims); a new input shape
                recompiles. Calls made with ``batched(..., parallel=False)``,
                the second-order inner loop's, always run uncompiled:
                AOTAutograd's compiled backward is not itself differentiable
                ("torch.compile with aot_autograd does not currently support
                double backward"). So it speeds up first-order inner loops,
                the outer (query) forward and prediction.
            autocast: ``"bf16"`` or ``"fp16"``: run the forward in that
                precision (bf16 on CPU) and return the output in the weights'
                dtype, so likelihoods, the KL and the gradients with respect to
                λ and θ accumulate in full precision; ``"none"`` (default):
                full precision. ``torch.autocast`` itself has no effect inside
                ``torch.func.vmap`` (outputs stay float32), so the weights,
                floating buffers and inputs are cast instead: every op of the
                forward runs in reduced precision, where autocast would keep
                reductions in float32.

        Returns:
            ``self``.

        Raises:
            ValueError: If ``autocast`` is not one of ``AUTOCAST_DTYPES`` or ``compile`` is not a bool or a string.
        """
        if compile is not None:
            if not isinstance(compile, (bool, str)):
                raise ValueError(f"compile={compile!r} must be True, False or a torch.compile backend name (e.g. 'inductor').")
            self.compile = compile
            self._per_thread = threading.local()  # drop compiled functions
        if autocast is not None:
            if autocast not in AUTOCAST_DTYPES:
                raise ValueError(f"autocast={autocast!r} is not understood; use one of {', '.join(map(repr, AUTOCAST_DTYPES))}.")
            self.autocast = autocast
        return self

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

    def activation_bytes(self, x: Tensor) -> int:
        """Bytes of every submodule's output in one forward on ``x``, at the initial weights.

        A size estimate of the activations that one weight draw of one task
        holds at once (functional ops inside a module's ``forward`` are not
        counted), for choosing how many tasks to predict in one call.

        Args:
            x: One task's inputs ``(N, *x_shape)``, on the network's device.

        Returns:
            The summed ``numel * element_size`` of the submodules' tensor outputs.
        """
        total = 0

        def count(_module: nn.Module, _inputs: Any, out: Any) -> None:
            nonlocal total
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, Tensor):
                    total += t.numel() * t.element_size()

        handles = [m.register_forward_hook(count) for m in self.module.modules()]
        try:
            with torch.no_grad():
                self._apply(self.module, self.init_weights, x)
        finally:
            for h in handles:
                h.remove()
        return total

    def __call__(self, weights: Weights, x: Tensor) -> Tensor:
        """One network evaluation: ``x`` is ``(N, *x_shape)``, weights unbatched."""
        return self._apply(self._module(), weights, x)

    def _apply(self, module: nn.Module, weights: Weights, x: Tensor, batched: bool = False) -> Tensor:
        """``module`` at ``weights`` on ``x``; ``batched``: per-task weights through ``module.batched_forward``."""
        dtype = AUTOCAST_DTYPES[self.autocast]
        if batched:
            if dtype is None:
                return module.batched_forward({**weights}, x)
            low = {n: v.to(dtype) for n, v in weights.items()}
            return module.batched_forward(low, x.to(dtype)).to(next(iter(weights.values())).dtype)
        if dtype is None:
            return functional_call(module, ({**weights}, self.buffers), (x,), strict=True)
        # torch.autocast has no effect inside torch.func.vmap (torch 2.13: outputs stay float32),
        # so the weights, floating buffers and inputs are cast: the whole forward runs in `dtype`.
        ref = next(iter(weights.values()))
        low = {n: v.to(dtype) for n, v in weights.items()}
        bufs = {n: v.to(dtype) if v.is_floating_point() else v for n, v in self.buffers.items()}
        xx = x.to(dtype) if x.is_floating_point() else x
        return functional_call(module, (low, bufs), (xx,), strict=True).to(ref.dtype)

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
                backward pass (:mod:`hvi.parallel`) is not itself differentiable,
                nor is a compiled forward's (:meth:`configure`), so such a
                call also runs uncompiled.

        Returns:
            Outputs ``(*S, B, N, *out_shape)``.
        """
        B, tdim, names = x.shape[0], weight_batch_dims - 1, list(weights)

        def run(inputs: list[Tensor], c: slice) -> tuple[Tensor]:
            at = (slice(None),) * tdim + (c,)
            w = {n: t[at] for n, t in zip(names, inputs)}
            return (self._batched(w, inputs[-1][c], weight_batch_dims, compiled=bool(self.compile) and parallel),)

        chunks = num_task_chunks(B, x.device, self.parallel_tasks and parallel)
        return map_task_chunks(run, [*weights.values(), x], B, chunks, task_dim=tdim)[0]

    def _batched(self, weights: Weights, x: Tensor, weight_batch_dims: int, compiled: bool = False) -> Tensor:
        if compiled:
            cache = getattr(self._per_thread, "compiled", None)
            if cache is None:
                cache = self._per_thread.compiled = {}
            key = (weight_batch_dims, x.shape[0] == 1)
            if key not in cache:
                backend = "inductor" if self.compile is True else self.compile
                cache[key] = torch.compile(self._batched_fn(x.shape[0] == 1, weight_batch_dims), backend=backend)
            return cache[key](weights, x)
        return self._batched_fn(x.shape[0] == 1, weight_batch_dims)(weights, x)

    def _folded(self, module: nn.Module, weights: Weights, x: Tensor, sample_dims: int) -> Tensor:
        """``batched_forward`` on weights ``(*S, B, ...)`` as ``prod(S)·B`` tasks; outputs ``(*S, B, ...)``."""
        lead = next(iter(weights.values())).shape[:sample_dims]
        w = {n: v.reshape((-1,) + v.shape[sample_dims + 1:]) for n, v in weights.items()}
        xx = x.expand(lead + x.shape).reshape((-1,) + x.shape[1:])
        out = self._apply(module, w, xx, batched=True)
        return out.reshape(lead + x.shape[:1] + out.shape[1:])

    def _batched_fn(self, single: bool, weight_batch_dims: int):
        # This thread's module, picked here: a compiled function traces only the network.
        module = self._module()

        def call(w: Weights, xx: Tensor) -> Tensor:
            return self._apply(module, w, xx)

        own = callable(getattr(module, "batched_forward", None)) and not self.buffers
        if own and weight_batch_dims > 1:
            # Sample dims folded into the task dim (inputs repeated per draw), as the inner loop
            # folds its draws: one call of the module's own forward, no vmap around it.
            return lambda w, xx: self._folded(module, w, xx, weight_batch_dims - 1)
        if single:
            # One task: vmap's batching rules (e.g. grouped convolutions) only cost here.
            fn = lambda w, xx: call(  # noqa: E731
                {n: v.squeeze(0) for n, v in w.items()}, xx.squeeze(0)
            ).unsqueeze(0)
        elif own:
            # The module's own forward for many tasks (models.unet.BayesUNet, models.conv4.Conv4):
            # equal to the vmap below, with a faster memory layout.
            fn = lambda w, xx: self._apply(module, w, xx, batched=True)  # noqa: E731
        else:
            fn = vmap(call, in_dims=(0, 0))
        for _ in range(weight_batch_dims - 1):
            fn = vmap(fn, in_dims=(0, None))
        return fn
