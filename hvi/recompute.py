"""Inner steps recomputed in the backward pass: ``InnerConfig(memory="checkpoint")``.

Exact second-order meta-gradients with memory that does not grow with the
graph of each inner step:

* :func:`recompute_steps` (Normal family and prior, both updates): the K steps
  as one autograd node (:class:`RecomputedSteps`) that keeps only each step's
  input state and recomputes the step in its backward pass;
* :func:`checkpointed_loop` and :func:`checkpointed` (any prior): one
  ``torch.utils.checkpoint`` per step, its input kept in a
  :class:`StepInputs` buffer;
* :class:`Redraw`: a step's noise kept as its generators' states and redrawn
  in the backward pass.

:mod:`hvi.adapt` chooses between them; the tests compare every path with the
unchecked loop to 1e-10 (``tests/test_memory.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import pyro
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from hvi.noise import TaskNoise

__all__ = ["Redraw", "RecomputedSteps", "StepInputs", "checkpointed", "checkpointed_loop", "recompute_steps", "split_tensors"]


def checkpointed(step):
    """``step`` whose activations are recomputed in the backward pass instead of kept."""
    from torch.utils.checkpoint import checkpoint

    def quiet(*args):
        # The recomputation runs in the backward pass, outside adapt()'s
        # validation_enabled(False): argument checks there would be a host sync per step.
        with pyro.validation_enabled(False):
            return step(*args)

    def run(*args):
        return checkpoint(quiet, *args, use_reentrant=False)

    return run


class Redraw:
    """One step's noise from per-task streams, drawn once and redrawn from the streams' states.

    The forward pass uses the draw; once :meth:`release` drops it, a checkpointed
    step's recomputation redraws the same numbers from the generator states taken
    before the draw (about 5 kB per task on CPU, instead of ``S·D`` numbers).
    """

    def __init__(self, eps: TaskNoise, streams: list[torch.Generator]) -> None:
        self.eps = eps
        self.states = [g.get_state() for g in streams]
        self.drawn: Tensor | None = eps.next(streams)

    def __call__(self) -> Tensor:
        if self.drawn is not None:
            return self.drawn
        gens = []
        for state in self.states:
            g = torch.Generator(device=self.eps.device)
            g.set_state(state)
            gens.append(g)
        return self.eps.next(gens)

    def release(self) -> None:
        self.drawn = None


class StepInputs:
    """The tensors a checkpointed loop keeps of its steps, in one buffer allocated before the loop.

    ``torch.utils.checkpoint`` keeps each step's tensor inputs (λ^(m)) for the
    recomputation. Kept as they come, each is an allocation made among one
    step's temporaries that outlives them, and the C allocator's heap grows
    around them. While :meth:`keeping` is active, the checkpoint saves a copy
    of the given tensors in the next row of a buffer made once, and the step's
    own input is freed after the step.

    Args:
        like: The tensors of one step, by key (shapes, dtype, device).
        rows: Number of steps whose inputs will be kept.
    """

    def __init__(self, like: Mapping[str, Tensor], rows: int) -> None:
        self.buffers = {k: v.new_empty((rows,) + v.shape) for k, v in like.items()}
        self.row = 0

    @contextmanager
    def keeping(self, tensors: Mapping[str, Tensor]) -> Iterator[None]:
        """Saved tensors hooks that store ``tensors`` in the next row (other tensors pass through)."""
        row = self.row
        self.row += 1
        # The hooks outlive the block (autograd keeps them with what they saved): their
        # closure must not keep the tensors themselves, or nothing would be saved.
        targets = {k: v for k, v in tensors.items() if k in self.buffers}

        def pack(t: Tensor):
            for k, v in list(targets.items()):
                if t is v or (t.data_ptr() == v.data_ptr() and t.shape == v.shape and t.stride() == v.stride()):
                    kept = self.buffers[k][row]
                    kept.copy_(t.detach())
                    del targets[k]
                    return kept
            return t

        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                yield
        finally:
            targets.clear()



class RecomputedSteps(torch.autograd.Function):
    """K inner steps as one autograd node that keeps λ^(m) and recomputes each step backward.

    ``forward(ctx, spec, *λ^(0) values, *params)`` runs ``spec.step`` K times
    without a graph (the inner gradients with ``create_graph=False``), writing
    λ^(1..K−1) into one buffer allocated before the first step. ``backward``
    goes through the steps in reverse: it recomputes step m from λ^(m) with
    ``create_graph=True`` and takes the vector-Jacobian product with respect to
    λ^(m) and ``params`` (the tensors of θ the step reads: likelihood sites,
    prior terms, α). Per step only λ^(m) and the noise streams' states are
    kept; no per-step graph either, whose small allocations, interleaved with
    the steps' temporaries, made the C allocator's heap grow.

    ``spec`` has ``keys`` (the state's keys: λ's, or the natural update's
    (m, s[, h])), ``steps``, ``noise_at(m)`` (step m's noise: a tensor, or a
    :class:`Redraw`) and ``step(t, lam, e, params, create_graph) -> λ`` (t:
    the step's index). See :func:`recompute_steps`.
    """

    @staticmethod
    def forward(ctx, spec, *tensors):
        n = len(spec.keys)
        lam = {k: v.detach() for k, v in zip(spec.keys, tensors[:n])}
        params = [p.detach() for p in tensors[n:]]
        rows = {k: v.new_empty((spec.steps - 1,) + v.shape) for k, v in lam.items()} if spec.steps > 1 else {}
        noises = []
        for m in range(spec.steps):
            if m > 0:
                for k, v in lam.items():
                    rows[k][m - 1].copy_(v)
            e = spec.noise_at(m)
            with torch.enable_grad():
                out = spec.step(m, lam, e, params, create_graph=False)
            lam = {k: v.detach() for k, v in out.items()}
            del out
            if isinstance(e, Redraw):
                e.release()
            noises.append(e)
        ctx.spec, ctx.rows, ctx.noises = spec, rows, noises
        ctx.save_for_backward(*tensors)
        return tuple(lam[k] for k in spec.keys)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        spec, rows, noises = ctx.spec, ctx.rows, ctx.noises
        n = len(spec.keys)
        tensors = ctx.saved_tensors
        lam0, params = tensors[:n], tensors[n:]
        need = ctx.needs_input_grad[1 + n:]
        leaves = [p.detach().requires_grad_(bool(w)) for p, w in zip(params, need)]
        wanted = [p for p, w in zip(leaves, need) if w]
        out_grads = [g if g is not None else torch.zeros_like(v) for g, v in zip(grads, lam0)]
        total = [None] * len(wanted)
        # The recomputation runs outside adapt()'s validation_enabled(False):
        # argument checks there would be a host sync per step.
        with pyro.validation_enabled(False):
            for m in reversed(range(spec.steps)):
                src = [(lam0[i] if m == 0 else rows[k][m - 1]).detach().requires_grad_() for i, k in enumerate(spec.keys)]
                with torch.enable_grad():
                    out = spec.step(m, dict(zip(spec.keys, src)), noises[m], leaves, create_graph=True)
                    found = torch.autograd.grad([out[k] for k in spec.keys], src + wanted, out_grads, allow_unused=True)
                del out
                out_grads = [g if g is not None else torch.zeros_like(v) for g, v in zip(found[:n], src)]
                total = [t if g is None else g if t is None else t + g for t, g in zip(total, found[n:])]
        it = iter(total)
        return (None, *out_grads, *(next(it) if w else None for w in need))


def recompute_steps(step, lam: dict[str, Tensor], inputs: Any, noise_at, steps: int) -> dict[str, Tensor]:
    """The state after ``steps`` calls ``lam = step(t, lam, noise_at(t), inputs, create_graph)``, as one
    :class:`RecomputedSteps` node.

    ``inputs`` are what the step reads besides the state: dicts, tuples and
    lists (nested) of the tensors of θ (likelihood sites, prior terms, α) and
    of constants (a fixed α, None). Its tensors become the node's inputs,
    which it differentiates the recomputed steps with respect to; ``step``
    gets ``inputs`` back in the same structure, holding the node's tensors
    (:func:`split_tensors`).
    """
    params, rebuild = split_tensors(inputs)

    def flat_step(t, lam_, e, values, create_graph):
        return step(t, lam_, e, rebuild(values), create_graph)

    spec = SimpleNamespace(keys=list(lam), steps=steps, noise_at=noise_at, step=flat_step)
    return dict(zip(spec.keys, RecomputedSteps.apply(spec, *lam.values(), *params)))


class _Slot:
    """Where :func:`split_tensors` took a tensor out."""


_SLOT = _Slot()


def split_tensors(tree: Any) -> tuple[list[Tensor], Callable[[Sequence[Tensor]], Any]]:
    """The tensors in ``tree`` as a flat list, and the function that puts such a list back.

    Args:
        tree: Mappings, tuples and lists (nested) whose leaves are tensors or
            constants (None, numbers, ...).

    Returns:
        ``(tensors, rebuild)``: ``tensors`` in depth-first order; ``rebuild(values)``
        is ``tree`` (mappings as dicts) with its tensors replaced by ``values``,
        in that order, and its constants kept.
    """
    tensors: list[Tensor] = []

    def take(x):
        if isinstance(x, Tensor):
            tensors.append(x)
            return _SLOT
        if isinstance(x, Mapping):
            return {k: take(v) for k, v in x.items()}
        if isinstance(x, (tuple, list)):
            return (tuple if isinstance(x, tuple) else list)(take(v) for v in x)
        return x

    template = take(tree)

    def rebuild(values: Sequence[Tensor]) -> Any:
        it = iter(values)

        def put(x):
            if x is _SLOT:
                return next(it)
            if isinstance(x, dict):
                return {k: put(v) for k, v in x.items()}
            if isinstance(x, (tuple, list)):
                return (tuple if isinstance(x, tuple) else list)(put(v) for v in x)
            return x

        return put(template)

    return tensors, rebuild


def checkpointed_loop(step, lam: dict[str, Tensor], noise_at, steps: int) -> dict[str, Tensor]:
    """λ^(K) from ``steps`` calls ``lam = step(lam, noise)``, each checkpointed.

    Kept per step for the backward pass: λ^(m) (in one :class:`StepInputs`
    buffer) and the noise streams' states (a :class:`Redraw`) or the view of a
    noise tensor that is kept anyway; the step's activations and noise are
    recomputed. The recomputation gives bit-identical values, so the gradients
    are those of the unchecked loop.
    """
    from torch.utils.checkpoint import checkpoint

    keys = list(lam)

    def quiet(*args):
        # The recomputation runs in the backward pass, outside adapt()'s
        # validation_enabled(False): argument checks there would be a host sync per step.
        with pyro.validation_enabled(False):
            return step(dict(zip(keys, args[:-1])), args[-1])

    store = None
    for m in range(steps):
        e = noise_at(m)
        if m == 0:  # λ^(0) is θ's own (kept by the outer graph): no copy
            lam = checkpoint(quiet, *lam.values(), e, use_reentrant=False)
        else:
            if store is None:
                store = StepInputs(lam, steps - 1)
            with store.keeping(lam):
                lam = checkpoint(quiet, *lam.values(), e, use_reentrant=False)
        if isinstance(e, Redraw):
            e.release()
    return lam
